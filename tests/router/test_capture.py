"""router.capture: the writer (rotation, retention, redaction before write, a full or failing sink) and the real
router under load (escalations recorded with the teacher's answers; no request fails when the sink cannot
take the records)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import fsspec
import numpy as np
import pytest
from aiohttp import ClientSession
from kubedistill_router.capture import CaptureSink, Remote, RotatingFiles
from kubedistill_router.metrics import RouterMetrics

from kubedistill.api.studentdeployment import CaptureSpec
from kubedistill.capture import CapturedAnswer, CaptureRecord, capture_file_name, read_capture_folder

from .conftest import TEXTS, router_config, running_router, wait_for
from .test_router import expected, predict, scrape

SECRET_CARD = "4111-1111-1111-1111"
CARD_PATTERN = r"\b\d{4}-\d{4}-\d{4}-\d{4}\b"


def record(text: str = "a text", label: str = "sport") -> CaptureRecord:
    return CaptureRecord(time=1.0e9, kind="escalated", task="sequence-classification", model="news",
                         model_version="v1", text=text, student=CapturedAnswer(label="tech", confidence=0.4),
                         teacher=CapturedAnswer(label=label, confidence=0.9))


def dropped(metrics: RouterMetrics) -> dict[str, float]:
    return {s.labels["reason"]: s.value for family in metrics.capture_dropped.collect() for s in family.samples
            if s.name.endswith("_total")}


def written(metrics: RouterMetrics) -> float:
    return next(s.value for f in metrics.capture_records.collect() for s in f.samples if s.name.endswith("_total"))


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# The writer, without a router.

def test_files_rotate_at_the_size_cap_and_the_oldest_go_above_the_total_cap(tmp_path):
    spec = CaptureSpec(uri=f"file://{tmp_path}", max_file_bytes=1024, max_total_bytes=4096)
    clock = Clock()
    files = RotatingFiles(tmp_path, spec, "w", clock=clock)
    line = (json.dumps({"x": "y" * 200}) + "\n").encode()  # 213 bytes: 4 per file
    for _ in range(40):
        clock.now += 1
        files.write(line)
    files.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    sizes = [(tmp_path / n).stat().st_size for n in names]
    assert all(size <= 1024 for size in sizes)
    assert sum(sizes) <= 4096
    assert len(names) == 4  # 10 files were written; the 6 oldest are gone
    assert names[-1] == capture_file_name(clock.now - 3, "w", 10)  # the newest file survives


def test_files_past_retention_are_deleted_and_a_quiet_file_rotates_on_time(tmp_path):
    spec = CaptureSpec(uri=f"file://{tmp_path}", retention_hours=1, rotate_seconds=60)
    clock = Clock()
    files = RotatingFiles(tmp_path, spec, "w", clock=clock)
    files.write(b'{"old": 1}\n')
    clock.now += 61
    files.tick()  # no record for a minute: the file is closed
    assert files.current is None
    clock.now += 3600
    files.write(b'{"new": 1}\n')  # a new file; the first is now past retention
    files.enforce(clock.now)
    (only,) = tmp_path.iterdir()
    assert only.read_text() == '{"new": 1}\n'


def test_redaction_is_applied_before_anything_is_written(tmp_path):
    spec = CaptureSpec(uri=f"file://{tmp_path}", redact=[CARD_PATTERN, r"(?i)secret\w*", r"\d{14}"])
    metrics = RouterMetrics()
    sink = CaptureSink(spec, metrics, writer="w")
    sink.offer(record(f"my card is {SECRET_CARD}, SecretWord here", label="sport").model_copy(
        update={"model_version": "news-v1-20261130121340"}))
    sink.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET_CARD.encode() not in raw and b"SecretWord" not in raw
    (kept,) = read_capture_folder(tmp_path).records
    assert kept.text == "my card is [redacted], [redacted] here"
    assert kept.teacher.label == "sport" and kept.student.confidence == 0.4
    assert kept.model_version == "news-v1-20261130121340"  # the router's own fields are not the user's text
    assert written(metrics) == 1


def test_a_full_disk_drops_records_counts_them_and_never_raises(tmp_path):
    spec = CaptureSpec(uri=f"file://{tmp_path}")
    clock = Clock()
    # The first file the writer opens is /dev/full: every write fails with ENOSPC.
    (tmp_path / capture_file_name(clock.now, "w", 1)).symlink_to("/dev/full")
    metrics = RouterMetrics()
    sink = CaptureSink(spec, metrics, writer="w", clock=clock)
    for _ in range(3):
        sink.offer(record())
    sink.close()
    assert dropped(metrics)["write-error"] >= 1
    # The writer moved on to a new file after the failure: the later records were kept.
    assert dropped(metrics)["write-error"] + written(metrics) == 3


def test_a_folder_that_cannot_be_created_drops_everything_and_the_offer_still_returns_at_once(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    metrics = RouterMetrics()
    sink = CaptureSink(CaptureSpec(uri=f"file://{blocker}/capture"), metrics, writer="w")
    for _ in range(5):
        sink.offer(record())
    sink.close()
    assert dropped(metrics)["write-error"] == 5
    assert written(metrics) == 0


def test_a_full_queue_drops_records_without_waiting(tmp_path):
    metrics = RouterMetrics()
    sink = CaptureSink(CaptureSpec(uri=f"file://{tmp_path}", queue_size=2), metrics, writer="w")
    gate = threading.Event()
    original = sink.files.write
    sink.files.write = lambda line: (gate.wait(10), original(line))[1]  # type: ignore[method-assign]
    for _ in range(10):
        sink.offer(record())
    gate.set()
    sink.close()
    # At most one record in the writer's hands and two in the queue; the rest were dropped, none lost silently.
    assert dropped(metrics)["queue-full"] >= 7
    assert dropped(metrics)["queue-full"] + written(metrics) == 10


def test_s3_files_are_uploaded_when_rotated_and_a_failed_upload_is_retried(tmp_path):
    fs = fsspec.filesystem("memory")
    fs.mkdir("/bucket/capture")
    spec = CaptureSpec(uri="s3://bucket/capture", max_file_bytes=1024)
    remote = Remote("s3://bucket/capture", fs=fs)
    fail = {"left": 1}
    upload = remote.upload

    def flaky(path: Path) -> None:
        if fail["left"]:
            fail["left"] -= 1
            raise ConnectionError("bucket unreachable")
        upload(path)

    remote.upload = flaky  # type: ignore[method-assign]
    clock = Clock()
    files = RotatingFiles(tmp_path, spec, "w", remote=remote, clock=clock)
    line = (json.dumps({"x": "y" * 400}) + "\n").encode()
    for _ in range(5):  # 2 per file: rotations after the 2nd and 4th records
        clock.now += 1
        files.write(line)
    files.close()
    uploaded = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("/bucket/capture", detail=False))
    assert len(uploaded) == 3  # the first upload failed and was retried at the next rotation
    assert list(tmp_path.iterdir()) == []  # the spool is empty once everything is uploaded
    assert sum(len(fs.cat(f"/bucket/capture/{n}").splitlines()) for n in uploaded) == 5


def test_bad_redaction_patterns_are_refused_with_their_position():
    with pytest.raises(ValueError, match=r"router.capture.redact\[1\]: '\[a-' is not a valid regular expression"):
        CaptureSpec(uri="file:///tmp/x", redact=["ok", "[a-"])


# The real router (tritonserver with a tiny student and teacher).

@pytest.mark.slow
async def test_escalated_requests_are_recorded_with_the_teachers_answers(triton, model_repository, reference,
                                                                         threshold, tmp_path):
    folder = tmp_path / "capture"
    secret_text = f"card {SECRET_CARD} charged twice by the bank"
    texts = [*TEXTS, secret_text]
    config = router_config(model_repository, triton.grpc_url, threshold=threshold,
                           capture={"uri": f"file://{folder}", "redact": [CARD_PATTERN]})
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, texts)
    # The app's cleanup closed the sink: everything queued is on disk.
    escalated = [t for t, p in zip(texts, predictions, strict=True) if p["served_by"] == "teacher"]
    assert escalated, "the threshold should escalate some texts"
    records = read_capture_folder(folder).records
    redacted = [t.replace(SECRET_CARD, "[redacted]") for t in escalated]
    assert sorted(r.text or "" for r in records) == sorted(redacted)
    teacher_labels = dict(zip(texts, expected(reference, "teacher", texts)[0], strict=True))
    student_labels = dict(zip(texts, expected(reference, "student", texts)[0], strict=True))
    for r, original in zip(sorted(records, key=lambda r: r.text or ""), sorted(escalated, key=lambda t: t.replace(
            SECRET_CARD, "[redacted]")), strict=True):
        assert r.kind == "escalated" and r.model_version == "test-1"
        assert r.teacher.label == teacher_labels[original]
        assert r.student.label == student_labels[original]
        assert r.student.confidence is not None and r.student.confidence < threshold
    assert SECRET_CARD.encode() not in b"".join(p.read_bytes() for p in folder.iterdir())


@pytest.mark.slow
async def test_shadow_disagreements_are_sampled_into_the_capture(triton, model_repository, reference, tmp_path):
    folder = tmp_path / "capture"
    config = router_config(model_repository, triton.grpc_url, mode="shadow", shadow_sample_rate=1.0,
                           capture={"uri": f"file://{folder}", "shadowDisagreementRate": 1.0})
    student_labels = expected(reference, "student", TEXTS)[0]
    teacher_labels = expected(reference, "teacher", TEXTS)[0]
    disagree = [t for t, s, te in zip(TEXTS, student_labels, teacher_labels, strict=True) if s != te]
    assert disagree, "the tiny student and teacher should disagree somewhere"
    async with running_router(config) as base, ClientSession() as session:
        await predict(session, base, TEXTS)

        async def compared() -> bool:
            return (await scrape(session, base)).get(("kubedistill_router_shadow_compared_total", ())) == len(TEXTS)

        await wait_for(compared)
    records = read_capture_folder(folder).records
    assert sorted(r.text or "" for r in records) == sorted(disagree)
    assert {r.kind for r in records} == {"shadow-disagreement"}
    assert all(r.student.label != r.teacher.label for r in records)


@pytest.mark.slow
@pytest.mark.parametrize("sink", ["full-queue", "unwritable"])
async def test_under_load_no_request_fails_when_the_sink_cannot_keep_up(triton, model_repository, threshold,
                                                                        tmp_path, sink):
    if sink == "unwritable":
        (tmp_path / "a-file").write_text("")
        capture = {"uri": f"file://{tmp_path}/a-file/capture"}
    else:
        capture = {"uri": f"file://{tmp_path}/capture", "queueSize": 1}
    config = router_config(model_repository, triton.grpc_url, threshold=threshold, capture=capture,
                           max_concurrency=256)
    rng = np.random.default_rng(0)
    batches = [[TEXTS[i] for i in rng.choice(len(TEXTS), 6)] for _ in range(120)]
    async with running_router(config) as base, ClientSession() as session:
        answers = await asyncio.gather(*(predict(session, base, batch) for batch in batches))  # each asserts 200

        async def accounted() -> bool:  # every escalation written or dropped (the writer may still be busy)
            m = await scrape(session, base)
            lost = sum(v for (name, _), v in m.items() if name == "kubedistill_router_capture_dropped_total")
            return m[("kubedistill_router_capture_records_total", ())] + lost == \
                m[("kubedistill_router_escalations_total", ())]

        await wait_for(accounted)
        metrics = await scrape(session, base)
    assert len(answers) == len(batches)
    codes = {labels: v for (name, labels), v in metrics.items() if name == "kubedistill_router_requests_total"}
    assert all(("code", "200") in labels for labels in codes)
    escalated = metrics[("kubedistill_router_escalations_total", ())]
    lost = {dict(labels)["reason"]: v for (name, labels), v in metrics.items()
            if name == "kubedistill_router_capture_dropped_total"}
    kept = metrics[("kubedistill_router_capture_records_total", ())]
    assert escalated > 0
    if sink == "unwritable":
        assert kept == 0 and lost["write-error"] > 0
    else:
        assert lost["queue-full"] > 0 and kept > 0  # one slot for 120 concurrent requests' escalations


def test_s3_capture_without_s3fs_is_refused_at_start_naming_the_field(tmp_path):
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here")
    with pytest.raises(ValueError, match=r"router.capture.uri: s3:// needs fsspec and s3fs"):
        CaptureSink(CaptureSpec(uri="s3://bucket/capture"), RouterMetrics(), writer="w")
