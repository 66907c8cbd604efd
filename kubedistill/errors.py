"""The one base of errors in a job's input: spec, manifest, URI, data, models, output folder.

The same input fails the same way on every retry, so an `InputError` is permanent by definition:
`kubedistill run` exits with its bad-input status on it, and in a cluster the pipeline reports it as
permanent (the operator then stops the RayJob's retries). Torch-free: both reach it without the pipeline.
"""

from __future__ import annotations


class InputError(ValueError):
    """A job's input that cannot be used; the message names the field and the fix."""
