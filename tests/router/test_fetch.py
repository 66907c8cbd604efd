"""`python -m kubedistill_router.fetch`: the init container that copies a model repository into /models."""

from __future__ import annotations

import subprocess
import sys

import pytest
from kubedistill_router.fetch import FetchError, copy_from_filesystem, fetch

from kubedistill.artifacts import SERVING_MANIFEST, ServingManifest


def tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_fetch_command_copies_a_repository_into_a_new_folder(model_repository, tmp_path):
    dest = tmp_path / "models"
    result = subprocess.run([sys.executable, "-m", "kubedistill_router.fetch", f"file://{model_repository}",
                             str(dest)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert tree(dest) == tree(model_repository)
    assert ServingManifest.read(dest).model_version == "test-1"
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no staging left behind


def test_fetch_into_an_existing_mount_replaces_its_content(model_repository, tmp_path):
    dest = tmp_path / "models"
    (dest / "stale").mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    fetch(str(model_repository), dest)
    assert tree(dest) == tree(model_repository)


def test_fetch_from_a_pvc_path(model_repository, tmp_path):
    import shutil

    shutil.copytree(model_repository, tmp_path / "pvc" / "claim" / "out" / "model_repository")
    fetch("pvc://claim/out/model_repository", tmp_path / "models", pvc_root=tmp_path / "pvc")
    assert tree(tmp_path / "models") == tree(model_repository)


def test_fetch_through_an_fsspec_filesystem(model_repository, tmp_path):
    # The s3:// path goes through fsspec; its in-memory filesystem exercises the same copy.
    import fsspec

    fs = fsspec.filesystem("memory")
    for path, data in tree(model_repository).items():
        fs.pipe_file(f"/bucket/repo/{path}", data)
    copy_from_filesystem(fs, "/bucket/repo", tmp_path / "staged")
    assert tree(tmp_path / "staged") == tree(model_repository)


def test_fetch_refuses_what_is_not_a_model_repository(model_repository, tmp_path):
    with pytest.raises(FetchError, match="no such folder"):
        fetch(str(tmp_path / "missing"), tmp_path / "models")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match=r"serving\.json is missing"):
        fetch(str(tmp_path / "empty"), tmp_path / "models")
    broken = tmp_path / "broken"
    import shutil

    shutil.copytree(model_repository, broken)
    (broken / "teacher" / "config.pbtxt").unlink()
    with pytest.raises(FetchError, match=r"teacher/config\.pbtxt"):
        fetch(str(broken), tmp_path / "models")
    (broken / SERVING_MANIFEST).write_text("{}")
    with pytest.raises(FetchError, match="not a valid serving manifest"):
        fetch(str(broken), tmp_path / "models")
    assert not (tmp_path / "models").exists()
    with pytest.raises(FetchError, match="not hf://"):
        fetch("hf://org/model", tmp_path / "models")


def test_fetch_command_reports_errors_on_stderr(tmp_path):
    result = subprocess.run([sys.executable, "-m", "kubedistill_router.fetch", str(tmp_path / "nope"),
                             str(tmp_path / "models")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "fetch: " in result.stderr and "no such folder" in result.stderr
