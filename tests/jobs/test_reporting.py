"""Status reporting: the merge-patch bodies, throttling, and no-op outside a cluster."""

from __future__ import annotations

import urllib.error
from datetime import UTC, datetime
from pathlib import Path

import yaml
from kubedistill_jobs.data import DataError
from kubedistill_jobs.models import ModelError
from kubedistill_jobs.preflight import PreflightError
from kubedistill_jobs.reporting import (
    StatusReporter,
    failure_patch,
    is_permanent,
    results_patch,
    status_patch,
)
from kubedistill_patches import merge_patch

from kubedistill.api.distillationjob import DistillationJobStatus
from kubedistill.api.load import ManifestError
from kubedistill.report import CrossTokenizer, Report
from kubedistill.uris import UriError

ROOT = Path(__file__).resolve().parents[2]


class RecordingApi:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        self.calls.append((group, version, namespace, plural, name, body))


def test_patch_bodies_are_valid_status():
    body = status_patch(progress={"stage": "train", "percent": 41.5, "step": 10, "total_steps": 40,
                                  "estimated_remaining_seconds": 12},
                        metrics={"eval_accuracy": 0.9})
    assert body == {"status": {"progress": {"stage": "train", "percent": 41.5, "step": 10, "totalSteps": 40,
                                            "estimatedRemainingSeconds": 12},
                               "metrics": {"eval_accuracy": 0.9}}}
    DistillationJobStatus.model_validate(body["status"])


def test_reporter_is_a_no_op_outside_a_cluster(monkeypatch):
    monkeypatch.delenv("KUBEDISTILL_JOB_NAME", raising=False)
    reporter = StatusReporter()
    assert not reporter.active
    reporter(progress={"stage": "data"})  # nothing to talk to, nothing raised


def test_reporter_patches_the_status_subresource_and_throttles_progress():
    reporter = StatusReporter(name="bbc", namespace="ml", min_interval=3600)
    api = RecordingApi()
    reporter._api = api
    reporter(progress={"stage": "train", "percent": 10})
    reporter(progress={"stage": "train", "percent": 11})  # same stage, within the interval: dropped
    reporter(progress={"stage": "compress", "percent": 80})  # a new stage always goes out
    reporter(metrics={"train_loss": 0.5})
    reporter(results={"gatePassed": True})
    bodies = [call[-1]["status"] for call in api.calls]
    assert api.calls[0][:5] == ("kubedistill.io", "v1alpha1", "ml", "distillationjobs", "bbc")
    assert [b.get("progress", {}).get("percent") for b in bodies[:2]] == [10, 80]
    assert bodies[2] == {"metrics": {"train_loss": 0.5}}
    assert bodies[3] == {"results": {"gatePassed": True}}


def reported_status(api: RecordingApi) -> dict:
    status: dict = {}
    for call in api.calls:
        status = merge_patch(status, call[-1]["status"])
    return status


def run_stages(reporter: StatusReporter) -> None:
    """The pipeline's progress calls: training steps with an ETA, then later stages without either."""
    for step in range(1, 301):
        reporter(progress={"stage": "train", "percent": 40 + step / 10, "step": step, "total_steps": 300,
                           "estimated_remaining_seconds": 300 - step})
    reporter(progress={"stage": "compress", "percent": 80.0})
    reporter(progress={"stage": "export", "percent": 95.0})
    reporter(progress={"stage": "export", "percent": 97.0, "estimated_remaining_seconds": 3})  # throttled


def test_a_new_stage_clears_the_training_step_and_eta():
    reporter = StatusReporter(name="bbc", namespace="ml", min_interval=3600)
    reporter._api = api = RecordingApi()
    run_stages(reporter)
    assert reported_status(api)["progress"] == {"stage": "export", "percent": 95.0}
    DistillationJobStatus.model_validate(reported_status(api))


def test_a_finished_run_shows_complete_progress_and_its_results_whatever_was_throttled():
    reporter = StatusReporter(name="bbc", namespace="ml", min_interval=3600)
    reporter._api = api = RecordingApi()
    run_stages(reporter)
    reporter.finished({"gatePassed": True, "retention": 0.97})
    status = reported_status(api)
    assert status["progress"] == {"stage": "export", "percent": 100.0}
    assert status["results"] == {"gatePassed": True, "retention": 0.97}
    assert "progress" in api.calls[-1][-1]["status"] and "results" in api.calls[-1][-1]["status"]  # one patch


def test_a_failed_run_keeps_where_it_stopped_without_an_eta():
    reporter = StatusReporter(name="bbc", namespace="ml", min_interval=3600)
    reporter._api = api = RecordingApi()
    for step in range(1, 120):
        reporter(progress={"stage": "train", "percent": 40 + step / 10, "step": step, "total_steps": 300,
                           "estimated_remaining_seconds": 300 - step})
    reporter.failure(failure_patch(OSError("disk full"), "train", permanent=False, run="bbc-g1"))
    status = reported_status(api)
    assert status["progress"] == {"stage": "train", "percent": 51.9, "step": 119, "totalSteps": 300}
    assert status["failure"]["message"] == "disk full"
    reporter.failure(None)  # clearing an earlier attempt's failure leaves progress alone
    assert reported_status(api)["progress"] == status["progress"] and "failure" not in reported_status(api)


# status.failure: what the operator reads to stop the retries of an input error.

def _model(accuracy: float, size: int) -> dict:
    return {"params": size // 4, "size_bytes": size, "metrics": {"accuracy": accuracy},
            "latency_ms": {"p50": 1.0, "p95": 2.0}}


def _report(signals: dict | None) -> Report:
    routing = {"signal": "max-probability", "frontier": [{"threshold": 0.8, "escalation_rate": 0.2, "accuracy": 0.9}],
               "recommended_threshold": 0.8, "target": 0.99}
    if signals is not None:
        routing["signals"] = signals
    return Report.model_validate({
        "task": "sequence-classification", "teacher": _model(0.95, 4000), "student": _model(0.9, 1000),
        "student_quantized": _model(0.9, 250), "retention": 0.947, "agreement": 0.93, "speedup": 4.0,
        "compression": 16.0, "routing": routing, "gate": {"min_retention": 0.9, "passed": True}})


def test_results_carry_the_threshold_of_every_signal():
    signals = {name: {"recommended_threshold": value, "escalation_rate": 0.2, "accuracy": 0.9, "frontier": []}
               for name, value in (("max-probability", 0.8), ("margin", 0.35), ("entropy", None))}
    wire = results_patch(_report(signals), "pvc://models/bbc")
    assert wire["recommendedThreshold"] == 0.8
    assert wire["recommendedThresholds"] == {"max-probability": 0.8, "margin": 0.35}  # entropy found none
    DistillationJobStatus.model_validate({"results": wire})
    older = results_patch(_report(None), "pvc://models/bbc")  # a report without per-signal sweeps
    assert older["recommendedThresholds"] == {"max-probability": 0.8}


def test_results_say_when_a_student_of_another_tokenizer_was_taught_without_logit_kd():
    from kubedistill_jobs.render import markdown

    report = _report(None)
    assert "crossTokenizer" not in results_patch(report, "pvc://models/x")  # logit KD: nothing to say
    report = report.model_copy(update={"cross_tokenizer": CrossTokenizer(
        method="sequence-kd", note="teacher and student tokenizers differ", teacher_vocabulary=49152,
        student_vocabulary=32000)})
    wire = results_patch(report, "pvc://models/x")
    assert wire["crossTokenizer"] == "sequence-kd"
    assert DistillationJobStatus.model_validate({"results": wire}).results.cross_tokenizer == "sequence-kd"
    assert "Cross-tokenizer (sequence-kd): teacher and student tokenizers differ." in markdown(report, {})


def test_input_errors_are_permanent_and_name_the_run(monkeypatch):
    monkeypatch.setenv("KUBEDISTILL_RUN_ID", "bbc-g3")
    error = PreflightError("training.batchSize: 1 is smaller than the 2 training workers")
    body = failure_patch(error, "prepare", permanent=is_permanent(RuntimeError("wrapper"), error),
                         now=datetime(2026, 11, 23, 10, 0, tzinfo=UTC))
    assert body == {"stage": "prepare", "error": "PreflightError", "message": str(error), "permanent": True,
                    "rayJobName": "bbc-g3", "time": "2026-11-23T10:00:00Z"}
    DistillationJobStatus.model_validate({"failure": body})
    for permanent in (DataError("dataset.textField: no column 'body'"), ModelError("teacher.uri: not found"),
                      ManifestError("spec.task: required"), UriError("output.uri: bad scheme")):
        assert is_permanent(permanent)
    for transient in (MemoryError(), OSError("connection reset"), RuntimeError("node lost"), ValueError("odd")):
        assert not is_permanent(transient)
    long = failure_patch(OSError("x" * 10_000), "train", permanent=False)
    assert len(long["message"]) == 4000 and long["permanent"] is False


def _raised(error: BaseException, cause: BaseException, *, suppress: bool = True) -> BaseException:
    """`error` raised while handling `cause` (with `from None` when `suppress`), as the loaders do."""
    try:
        try:
            raise cause
        except BaseException:
            if suppress:
                raise error from None
            raise error  # noqa: B904
    except BaseException as raised:
        return raised


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _HubError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.response = _Response(status_code)


def test_a_network_failure_under_an_input_error_is_left_to_retries():
    from kubedistill_jobs.endpoint_teacher import EndpointError, EndpointRefused

    offline = _raised(PreflightError("teacher.uri: cannot load the tokenizer: couldn't connect"),
                      ConnectionRefusedError("connection refused"))
    assert not is_permanent(offline)
    assert not is_permanent(_raised(DataError("dataset.uri: hf://x"), TimeoutError("read timed out")))
    assert not is_permanent(_raised(ModelError("teacher.uri: hf://x"), _HubError(503)))
    assert not is_permanent(_raised(ModelError("teacher.uri: hf://x"), _HubError(429), suppress=False))
    # the hub answered "no such repository": the same input fails the same way next time
    assert is_permanent(_raised(ModelError("teacher.uri: hf://x not found"), _HubError(404)))
    # an endpoint that answered and refused is permanent; one that could not be reached is not
    http_404 = urllib.error.HTTPError("http://t/v1/completions", 404, "Not Found", {}, None)  # type: ignore[arg-type]
    assert is_permanent(_raised(EndpointRefused("teacher.endpoint.url: HTTP 404"), http_404))
    assert not is_permanent(_raised(EndpointError("teacher.endpoint.url: cannot be reached"),
                                    urllib.error.URLError("refused")))


def _entrypoint(monkeypatch, tmp_path, manifest: dict | str):
    """Run the RayJob's entrypoint with the status subresource recorded (and no Ray cluster to connect to)."""
    import ray
    from kubedistill_jobs import entrypoint

    api = RecordingApi()
    monkeypatch.setenv("KUBEDISTILL_JOB_NAME", "bbc")
    monkeypatch.setenv("KUBEDISTILL_JOB_NAMESPACE", "ml")
    monkeypatch.setenv("KUBEDISTILL_RUN_ID", "bbc-g1")
    monkeypatch.setattr(StatusReporter, "_connect", staticmethod(lambda: api))
    monkeypatch.setattr(ray, "init", lambda *a, **k: None)
    path = tmp_path / "distillationjob.yaml"
    path.write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(manifest))
    code = entrypoint.main([str(path)])
    return code, [call[-1]["status"] for call in api.calls]


def _job(tmp_path) -> dict:
    job = yaml.safe_load((ROOT / "examples" / "quickstart" / "distillationjob.yaml").read_text())
    job["spec"]["output"]["uri"] = str(tmp_path / "out")
    return job


def test_entrypoint_reports_a_preflight_error_as_permanent(monkeypatch, tmp_path):
    job = _job(tmp_path)
    job["spec"]["training"]["batchSize"] = 1  # fewer examples per step than the 2 workers: preflight refuses it
    code, bodies = _entrypoint(monkeypatch, tmp_path, job)
    assert code == 1
    (failure,) = [b["failure"] for b in bodies if "failure" in b]
    assert failure["permanent"] is True and failure["error"] == "PreflightError"
    assert failure["stage"] == "prepare" and failure["rayJobName"] == "bbc-g1"
    assert failure["message"].startswith("training.batchSize:")


def test_entrypoint_reports_an_unreadable_manifest_as_permanent(monkeypatch, tmp_path):
    code, bodies = _entrypoint(monkeypatch, tmp_path, "apiVersion: kubedistill.io/v1alpha1\nkind: DistillationJob\n")
    assert code == 1
    (failure,) = [b["failure"] for b in bodies]
    assert failure["permanent"] is True and failure["stage"] == "load" and failure["error"] == "ManifestError"


def test_entrypoint_reports_other_failures_as_transient(monkeypatch, tmp_path):
    from kubedistill_jobs import runner

    def lost(*_a, **_k):
        raise OSError("the output volume went away")

    monkeypatch.setattr(runner, "prepare_output", lost)
    code, bodies = _entrypoint(monkeypatch, tmp_path, _job(tmp_path))
    assert code == 1
    (failure,) = [b["failure"] for b in bodies]
    assert failure == {**failure, "permanent": False, "error": "OSError", "stage": "load",
                       "message": "the output volume went away"}


def test_the_in_cluster_api_merge_patches_the_status_with_the_token_read_at_each_call(tmp_path, monkeypatch):
    """The pipeline's one API call, stdlib only, against a real HTTP server; the kubelet rotates the token; the
    pod's proxy settings (for downloads) are not used for it."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubedistill_jobs.reporting import InClusterApi

    seen: list[tuple] = []

    class Server(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], self.headers["Authorization"], json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):  # a job pod's, for downloads
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("one\n")
    try:
        api = InClusterApi(f"http://127.0.0.1:{server.server_port}", account)
        reporter = StatusReporter(name="bbc", namespace="ml", min_interval=3600)
        reporter._api = api
        reporter(progress={"stage": "train", "percent": 10})
        (account / "token").write_text("two\n")
        reporter.finished({"accuracy": 0.9})
    finally:
        server.shutdown()
        server.server_close()
    assert [s[:3] for s in seen] == [
        ("/apis/kubedistill.io/v1alpha1/namespaces/ml/distillationjobs/bbc/status", "application/merge-patch+json",
         "Bearer one"),
        ("/apis/kubedistill.io/v1alpha1/namespaces/ml/distillationjobs/bbc/status", "application/merge-patch+json",
         "Bearer two")]
    assert seen[0][3]["status"]["progress"]["percent"] == 10 and seen[1][3]["status"]["results"] == {"accuracy": 0.9}


def test_the_in_cluster_api_is_found_only_in_a_pod(tmp_path, monkeypatch):
    from kubedistill_jobs.reporting import InClusterApi

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert InClusterApi.from_pod(tmp_path) is None
    (tmp_path / "token").write_text("t")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert InClusterApi.from_pod(tmp_path).server == "https://[fd00::1]:6443"
