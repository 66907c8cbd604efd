"""`python -m kubedistill_router.fetch SOURCE_URI DEST`: the StudentDeployment's init container.

Copies a model repository from `file://` or `/abs`, `pvc://claim/path` (mounted at /mnt/pvc/<claim>),
`pkg://` or `s3://` (fsspec + s3fs, credentials from the environment) into DEST, and checks it before
anything appears there (kubedistill_router.contract): serving.json parses, and every model, tensor,
tokenizer and label it names is there and consistent.

Atomic: the copy lands in a staging folder first. A DEST that does not exist yet is created by one
rename; a DEST that exists (an emptyDir mount point cannot be renamed over) is cleared and filled
entry by entry, serving.json last, so a reader that sees serving.json sees a complete repository.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubedistill.artifacts import SERVING_MANIFEST, ServingManifest
from kubedistill.routerconfig import ROUTER_CONFIG_DIR
from kubedistill.uris import PVC_MOUNT_ROOT, UriError, local_path, parse_uri
from kubedistill_router.contract import RepositoryError, check_repository
from kubedistill_router.triton_settings import TritonSettings, apply_to_repository
from kubedistill_router.vllm_repository import VllmRepositoryError, to_vllm


class FetchError(RuntimeError):
    """The source is missing, unreadable or not a model repository."""


def verify_repository(repository: Path) -> ServingManifest:
    """The repository serves: see kubedistill_router.contract (the router checks the same at start-up)."""
    try:
        return check_repository(repository)
    except RepositoryError as error:
        raise FetchError(str(error)) from None


def _download(source: str, staging: Path, pvc_root: Path) -> None:
    parsed = parse_uri(source)
    if parsed.is_local:
        root = local_path(source, pvc_root)
        if not root.is_dir():
            raise FetchError(f"{source}: no such folder ({root})"
                             + (" — is the claim mounted?" if parsed.scheme == "pvc" else ""))
        shutil.copytree(root, staging, dirs_exist_ok=True)
    elif parsed.scheme == "s3":
        copy_from_filesystem(*_s3_filesystem(source), staging)
    else:
        raise FetchError(f"{source}: a model repository can be fetched from file://, pvc://, pkg:// or s3://, "
                         f"not {parsed.scheme}://")


def _s3_filesystem(source: str) -> tuple[Any, str]:
    try:
        import fsspec
        import s3fs  # noqa: F401 - fsspec's s3:// implementation
    except ImportError:
        raise FetchError("s3:// needs fsspec and s3fs in the router image: `pip install 'kubedistill[router-s3]'`") \
            from None
    fs, path = fsspec.core.url_to_fs(source)
    return fs, path


def copy_from_filesystem(fs: Any, root: str, staging: Path) -> None:
    """Every file under `root` of an fsspec filesystem into `staging`, keeping the layout."""
    root = root.rstrip("/")
    files = [f for f in fs.find(root) if not fs.isdir(f)]
    if not files:
        raise FetchError(f"{fs.protocol}: nothing under {root}")
    for remote in files:
        target = staging / os.path.relpath(remote, root)
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(remote, str(target))


def fetch(source: str, dest: Path, pvc_root: Path = PVC_MOUNT_ROOT,
          settings: TritonSettings | None = None, vllm_files: Path = Path(ROUTER_CONFIG_DIR),
          served_at: Path | None = None) -> ServingManifest:
    """Copy the repository at `source` into `dest`, verified and atomically; returns its manifest.

    `settings` (the deployment's spec.triton) are written into the models' config.pbtxt while staging; with
    `backend: vllm` the generation models become vLLM models from the files in `vllm_files` (the operator's),
    whose weights must lie under `served_at` (where Triton mounts the repository; default `dest`).
    """
    dest = Path(dest)
    dest_exists = dest.exists()
    if dest_exists and not dest.is_dir():
        raise FetchError(f"{dest} exists and is not a folder")
    # Stage on the same filesystem as DEST, so the final moves are renames.
    parent = dest if dest_exists else dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=parent))
    try:
        _download(source, staging, pvc_root)
        manifest = verify_repository(staging)
        if settings is not None and settings.backend == "vllm":
            try:
                to_vllm(staging, manifest, vllm_files, served_at or dest)
            except VllmRepositoryError as error:
                raise FetchError(str(error)) from None
            manifest = verify_repository(staging)
        if settings is not None:
            apply_to_repository(staging, manifest, settings)
        if not dest_exists:
            staging.rename(dest)
            return manifest
        for entry in dest.iterdir():
            if entry == staging:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        entries = sorted(staging.iterdir(), key=lambda p: p.name == SERVING_MANIFEST)
        for entry in entries:
            entry.rename(dest / entry.name)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubedistill_router.fetch",
                                     description="Copy a model repository (file, pvc, pkg, s3) into a folder.")
    parser.add_argument("source", help="model repository URI: file:///..., /abs, pvc://claim/path, s3://bucket/path")
    parser.add_argument("dest", type=Path, help="destination folder (for example /models)")
    args = parser.parse_args(argv)
    try:
        manifest = fetch(args.source, args.dest, settings=TritonSettings.from_env())
    except (FetchError, UriError, OSError, ValueError) as error:
        print(f"fetch: {error}", file=sys.stderr)
        return 1
    print(f"fetched {args.source} → {args.dest} (model version {manifest.model_version})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
