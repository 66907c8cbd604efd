"""`python -m kubedistill_router.fetch`: the init container that copies a model repository into /models."""

from __future__ import annotations

import os
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


def test_fetch_writes_the_deployments_triton_settings_into_each_config(model_repository, tmp_path):
    # The env comes from the operator's own builder, so the two sides of this contract are tested together.
    from kubedistill_operator.builders import ModelSourceInfo, build_student_children
    from kubedistill_operator.config import OperatorConfig
    from kubedistill_router.triton_settings import read_config

    from kubedistill.api import StudentDeployment

    sd = StudentDeployment.model_validate({
        "metadata": {"name": "topics", "namespace": "ml", "uid": "u-1"},
        "spec": {"source": {"modelRepositoryUri": f"file://{model_repository}"},
                 "triton": {"maxBatchSize": 8, "instanceCount": 3, "gpus": 1,
                            "dynamicBatching": {"maxQueueDelayMicroseconds": 250, "preferredBatchSizes": [2, 4]}}},
    })
    objects = build_student_children(sd, ModelSourceInfo(f"file://{model_repository}", "v1"), OperatorConfig())
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"] if "value" in e}

    dest = tmp_path / "models"
    result = subprocess.run([sys.executable, "-m", "kubedistill_router.fetch", str(model_repository), str(dest)],
                            capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    for model in ("student", "teacher"):
        config = read_config(dest / model / "config.pbtxt")
        assert config.max_batch_size == 8
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
        assert [(g.count, g.kind) for g in config.instance_group] == [(3, config.instance_group[0].KIND_GPU)]
        assert [i.name for i in config.input] == ["input_ids", "attention_mask"]  # the graph's signature kept
    # The source repository is left as the job wrote it.
    assert read_config(model_repository / "student" / "config.pbtxt").max_batch_size != 8


def test_fetch_without_dynamic_batching_removes_it(model_repository, tmp_path):
    from kubedistill_router.triton_settings import TritonSettings, read_config

    fetch(str(model_repository), tmp_path / "models", settings=TritonSettings.from_env(
        {"KUBEDISTILL_TRITON_DYNAMIC_BATCHING": "false"}))
    assert not read_config(tmp_path / "models" / "student" / "config.pbtxt").HasField("dynamic_batching")
    with pytest.raises(ValueError, match="KUBEDISTILL_TRITON_MAX_BATCH_SIZE"):
        TritonSettings.from_env({"KUBEDISTILL_TRITON_MAX_BATCH_SIZE": "lots"})


def test_preferred_batch_sizes_beyond_the_batch_limit_are_refused_not_dropped(model_repository):
    from kubedistill_router.triton_settings import TritonSettings, read_config

    config = read_config(model_repository / "student" / "config.pbtxt")
    with pytest.raises(ValueError, match=r"preferredBatchSizes: \[0, 64\] outside 1\.\.8"):
        TritonSettings(max_batch_size=8, preferred_batch_sizes=(0, 2, 64)).apply(config)
    applied = TritonSettings(max_batch_size=8, preferred_batch_sizes=(2, 8)).apply(config)
    assert list(applied.dynamic_batching.preferred_batch_size) == [2, 8]
