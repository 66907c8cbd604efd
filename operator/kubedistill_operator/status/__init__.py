"""Status logic as pure functions: observed children in, the parent's status fields and conditions out."""
