"""Triton python-backend models copied into model repositories (run inside Triton, never imported here)."""
