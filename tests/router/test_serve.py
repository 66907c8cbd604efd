"""`kubedistill serve` end to end (its own Triton and router processes), and the router's own entry point."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubedistill_processes import post, read_until, running, terminate
from kubedistill_router.local.serve import ServeError, resolve_target
from kubedistill_router.local.triton import free_port

from kubedistill.routerconfig import RouterConfig

from .conftest import LABELS, router_config

pytestmark = pytest.mark.slow


def refuses(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError):
        return True
    return False


def test_kubedistill_serve_starts_triton_and_the_router_and_stops_both(model_repository, tmp_path):
    output = tmp_path / "output"
    shutil.copytree(model_repository, output / "model_repository")
    (output / "distillationjob.yaml").write_text(yaml.safe_dump({"metadata": {"name": "bbc-news"}}))
    port = free_port()
    serve = [sys.executable, "-m", "kubedistill.cli", "serve", str(output), "--port", str(port), "--timeout", "540"]
    with running(serve) as process:
        banner = read_until(process, "Ctrl-C stops both.", timeout=600)
        base = f"http://127.0.0.1:{port}"
        assert "serving 'bbc-news' (version test-1, mode route" in banner
        assert f"curl -s {base}/v1/models/bbc-news:predict" in banner
        triton_http = banner.split("triton:  ")[1].split()[0]
        status, body = post(f"{base}/v1/models/bbc-news:predict", {"instances": ["a match report", "a chip"]})
        assert status == 200 and len(body["predictions"]) == 2
        assert all(p["label"] in LABELS for p in body["predictions"])
        process.send_signal(signal.SIGINT)  # Ctrl-C: the status a shell reports for it, as `kubedistill run`
        # Stopping takes about 2 s; by design at most the router's 15 s and Triton's 20 s before each is killed.
        assert process.wait(180) == 130
        assert refuses(f"{base}/healthz") and refuses(f"{triton_http}/v2/health/live")
    # A restart on the same port at once, with the last connections still in TIME_WAIT.
    with running(serve) as process:
        read_until(process, "Ctrl-C stops both.", timeout=600)
        assert terminate(process, 60) == 143  # SIGTERM: 128 + 15


def test_serve_resolves_a_student_deployment_manifest(model_repository, tmp_path):
    manifest = tmp_path / "sd.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "kubedistill.io/v1alpha1", "kind": "StudentDeployment", "metadata": {"name": "news"},
        "spec": {"source": {"modelRepositoryUri": f"file://{model_repository}"},
                 "router": {"mode": "shadow", "shadowSampleRate": 0.5, "threshold": 0.7}},
    }))
    target = resolve_target(manifest, tmp_path)
    assert target.repository == model_repository
    assert (target.config.model_name, target.config.mode, target.config.threshold) == ("news", "shadow", 0.7)
    assert target.config.shadow_sample_rate == 0.5


def test_serve_says_what_is_wrong_with_its_target(tmp_path):
    with pytest.raises(ServeError, match="holds no model repository"):
        resolve_target(tmp_path, tmp_path)
    manifest = tmp_path / "sd.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "kubedistill.io/v1alpha1", "kind": "StudentDeployment",
                                        "metadata": {"name": "news"}, "spec": {"source": {"jobRef": {"name": "j"}}}}))
    with pytest.raises(ServeError, match="jobRef needs a cluster"):
        resolve_target(manifest, tmp_path)


def test_router_entry_point_runs_from_a_config_file(triton, model_repository, tmp_path):
    port = free_port()
    config = router_config(model_repository, triton.grpc_url, mode="student-only", port=port)
    path = tmp_path / "router.yaml"
    path.write_text(config.to_yaml())
    assert RouterConfig.read(path) == config
    with running([sys.executable, "-m", "kubedistill_router", "--config", str(path), "--host", "127.0.0.1"]) \
            as process:
        deadline = time.monotonic() + 60
        while refuses(f"http://127.0.0.1:{port}/readyz"):
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
            time.sleep(0.1)
        status, body = post(f"http://127.0.0.1:{port}/v1/models/news:predict", {"instances": ["hello"]})
        assert status == 200 and body["predictions"][0]["served_by"] == "student"
        assert terminate(process, 30) == 0


def test_router_refuses_a_bad_config_before_serving(model_repository, tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"modelName": "x"}))
    result = subprocess.run([sys.executable, "-m", "kubedistill_router", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "model_name" in result.stderr
    path.write_text(router_config(model_repository, "127.0.0.1:1", mode="route", threshold=None).to_yaml()
                    .replace(str(model_repository), str(tmp_path)))
    result = subprocess.run([sys.executable, "-m", "kubedistill_router", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "serving.json is missing" in result.stderr


def test_serve_refuses_bad_input_with_status_2_before_starting_anything(tmp_path):
    """What to serve cannot work as given: exit 2 (as `kubedistill run`), one line naming the fix."""
    manifest = tmp_path / "sd.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "kubedistill.io/v1alpha1", "kind": "StudentDeployment", "metadata": {"name": "news"},
        "spec": {"source": {"jobRef": {"name": "news"}}}}))
    for target, says in ((tmp_path / "missing", "no such folder or file"), (tmp_path, "holds no model repository"),
                         (manifest, "source.jobRef needs a cluster")):
        result = subprocess.run([sys.executable, "-m", "kubedistill.cli", "serve", str(target), "--port", "1"],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert says in result.stderr


def test_router_package_imports_nothing_heavy():
    code = ("import sys, kubedistill_router.app, kubedistill_router.fetch, kubedistill_router.local.serve; "
            "heavy = {'torch', 'transformers', 'ray', 'kubedistill_jobs', 'datasets'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=os.environ | {"PYTHONWARNINGS": ""})
    assert Path(__file__).parent.name == "router"
