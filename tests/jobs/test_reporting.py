"""Status reporting: the merge-patch bodies, throttling, and no-op outside a cluster."""

from __future__ import annotations

from kubedistill_jobs.reporting import StatusReporter, status_patch

from kubedistill.api.distillationjob import DistillationJobStatus


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
