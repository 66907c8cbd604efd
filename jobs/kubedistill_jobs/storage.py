"""Where a job's output lives: a local (or mounted) folder, or object storage mirrored into a local one.

`file://`, `/abs` and `pvc://` outputs are written in place. For `s3://` the pipeline works in a local
folder and mirrors it with fsspec: down once at the start (so a rerun resumes), up after every stage.
Training checkpoints go to object storage directly (Ray Train writes them there).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from kubedistill.artifacts import CHECKPOINTS, OutputLayout
from kubedistill.uris import UriError, join_uri, local_path, parse_uri


@dataclass(frozen=True)
class Output:
    uri: str
    local: Path

    @property
    def remote(self) -> bool:
        return parse_uri(self.uri).scheme == "s3"

    @property
    def checkpoint_storage(self) -> str:
        return join_uri(self.uri, CHECKPOINTS) if self.remote else str(OutputLayout(self.local).checkpoints)

    def pull(self) -> None:
        if not self.remote:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.uri)
        if fs.exists(root):
            fs.get(root.rstrip("/") + "/", str(self.local), recursive=True)

    def push(self) -> None:
        if not self.remote:
            return
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.uri)
        fs.put(str(self.local).rstrip("/") + "/", root, recursive=True)


def resolve_output(uri: str, name: str) -> Output:
    try:
        parsed = parse_uri(uri)
    except UriError as error:
        raise ValueError(f"output.uri: {error}") from None
    if parsed.scheme == "s3":
        local = Path(tempfile.gettempdir()) / "kubedistill" / name
    elif parsed.scheme in ("file", "pvc"):
        local = local_path(uri)
    else:
        raise ValueError(f"output.uri: {uri}: outputs go to file://, /abs, pvc:// or s3://")
    local.mkdir(parents=True, exist_ok=True)
    return Output(uri=uri, local=local)
