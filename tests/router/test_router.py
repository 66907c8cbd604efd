"""The router against a real tritonserver: predictions, escalation, teachers, modes and metrics."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiohttp import ClientSession, web
from prometheus_client.parser import text_string_to_metric_families

from kubedistill.confidence import confidence

from .conftest import LABELS, TEXTS, loopback_server, router_config, running_router, wait_for

pytestmark = pytest.mark.slow


async def predict(session: ClientSession, base: str, texts: list[str], name: str = "news") -> list[dict]:
    async with session.post(f"{base}/v1/models/{name}:predict", json={"instances": texts}) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["predictions"]


async def scrape(session: ClientSession, base: str) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics, keyed by (name, sorted labels), parsed with prometheus_client's parser."""
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def expected(reference, model: str, texts: list[str]) -> tuple[list[str], np.ndarray]:
    probs = reference.probs(model, texts)
    return [LABELS[i] for i in probs.argmax(axis=1)], confidence(probs, "max-probability")


async def test_student_predictions_match_onnxruntime(triton, model_repository, reference):
    config = router_config(model_repository, triton.grpc_url, mode="student-only")
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
        singles = [(await predict(session, base, [text]))[0] for text in TEXTS[:3]]
    labels, conf = expected(reference, "student", TEXTS)
    assert [p["label"] for p in predictions] == labels
    np.testing.assert_allclose([p["confidence"] for p in predictions], conf, atol=1e-5)
    assert {p["served_by"] for p in predictions} == {"student"}
    # One text per request (no padding) answers as it does inside a padded batch.
    assert [p["label"] for p in singles] == labels[:3]
    np.testing.assert_allclose([p["confidence"] for p in singles], conf[:3], atol=1e-5)


async def test_http_protocol_to_triton_gives_the_same_answers(triton, model_repository, reference):
    config = router_config(model_repository, triton.http_url, triton_protocol="http", mode="student-only")
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS[:3])
    assert [p["label"] for p in predictions] == expected(reference, "student", TEXTS[:3])[0]


async def test_escalates_exactly_the_items_below_the_threshold(triton, model_repository, reference, threshold):
    config = router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold)
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
        metrics = await scrape(session, base)
    student_labels, student_conf = expected(reference, "student", TEXTS)
    teacher_labels, teacher_conf = expected(reference, "teacher", TEXTS)
    below = student_conf < threshold
    assert 0 < below.sum() < len(TEXTS)
    for i, p in enumerate(predictions):
        if below[i]:
            assert (p["served_by"], p["label"]) == ("teacher", teacher_labels[i])
            assert p["confidence"] == pytest.approx(teacher_conf[i], abs=1e-5)
        else:
            assert (p["served_by"], p["label"]) == ("student", student_labels[i])
            assert p["confidence"] == pytest.approx(student_conf[i], abs=1e-5)
        assert "degraded" not in p
    assert metrics[("kubedistill_router_escalations_total", ())] == below.sum()
    assert metrics[("kubedistill_router_escalation_ratio", ())] == pytest.approx(below.mean())


async def test_recommended_threshold_from_serving_json(triton, model_repository, reference, threshold):
    # No threshold in the config: the export's recommended one (the same value here) applies.
    config = router_config(model_repository, triton.grpc_url, mode="route")
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
    below = expected(reference, "student", TEXTS)[1] < threshold
    assert [p["served_by"] == "teacher" for p in predictions] == list(below)


async def test_teacher_only_mode(triton, model_repository, reference):
    config = router_config(model_repository, triton.grpc_url, mode="teacher-only")
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)
    assert [p["label"] for p in predictions] == expected(reference, "teacher", TEXTS)[0]
    assert {p["served_by"] for p in predictions} == {"teacher"}


async def test_shadow_mode_serves_the_student_and_tracks_agreement(triton, model_repository, reference):
    config = router_config(model_repository, triton.grpc_url, mode="shadow", shadow_sample_rate=1.0)
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, TEXTS)

        async def compared() -> bool:
            return (await scrape(session, base)).get(("kubedistill_router_shadow_compared_total", ())) == len(TEXTS)

        await wait_for(compared)
        metrics = await scrape(session, base)
    student_labels = expected(reference, "student", TEXTS)[0]
    teacher_labels = expected(reference, "teacher", TEXTS)[0]
    assert [p["label"] for p in predictions] == student_labels
    assert {p["served_by"] for p in predictions} == {"student"}
    agreement = np.mean([s == t for s, t in zip(student_labels, teacher_labels, strict=True)])
    assert metrics[("kubedistill_router_shadow_agreement", ())] == pytest.approx(agreement)


def kserve_v1_teacher(reference, seen: list) -> list[web.RouteDef]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.match_info["name"], body["instances"]))
        labels, conf = expected(reference, "teacher", body["instances"])
        return web.json_response({"predictions": [{"label": lab, "confidence": float(c)}
                                                  for lab, c in zip(labels, conf, strict=True)]})

    return [web.post("/v1/models/{name}:predict", handle)]


async def test_remote_kserve_teacher_gets_only_the_escalated_items(triton, model_repository, reference, threshold):
    seen: list = []
    async with loopback_server(kserve_v1_teacher(reference, seen)) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, threshold=threshold,
                               teacher={"url": teacher_url, "protocol": "kserve-v1", "model": "big"})
        async with running_router(config) as base, ClientSession() as session:
            predictions = await predict(session, base, TEXTS)
    below = expected(reference, "student", TEXTS)[1] < threshold
    assert seen == [("big", [t for t, b in zip(TEXTS, below, strict=True) if b])]
    teacher_labels = expected(reference, "teacher", TEXTS)[0]
    assert [p["label"] for p, b in zip(predictions, below, strict=True) if b] == \
        [lab for lab, b in zip(teacher_labels, below, strict=True) if b]


async def test_teacher_down_degrades_to_the_student_and_opens_the_circuit(triton, model_repository, reference,
                                                                          threshold):
    from kubedistill_router.local.triton import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    config = router_config(model_repository, triton.grpc_url, threshold=threshold,
                           teacher={"url": dead, "protocol": "kserve-v1", "model": "big", "timeoutSeconds": 1})
    student_labels, student_conf = expected(reference, "student", TEXTS)
    below = student_conf < threshold
    async with running_router(config) as base, ClientSession() as session:
        for _ in range(7):  # past the breaker's 5 consecutive failures
            predictions = await predict(session, base, TEXTS)
            assert [p["label"] for p in predictions] == student_labels
            assert [p.get("degraded", False) for p in predictions] == list(below)
            assert {p["served_by"] for p in predictions} == {"student"}
        metrics = await scrape(session, base)
    assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "error"),))] == 5
    assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "circuit-open"),))] == 2
    assert metrics[("kubedistill_router_teacher_circuit_open", ())] == 1
    assert metrics[("kubedistill_router_instances_total", (("degraded", "true"), ("served_by", "student")))] \
        == 7 * below.sum()


async def test_slow_teacher_times_out_into_degraded_answers(triton, model_repository):
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()  # answers only after the router has given up on it
        return web.json_response({})

    async with loopback_server([web.post("/v1/models/{name}:predict", slow)]) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, mode="teacher-only",
                               teacher={"url": teacher_url, "model": "big", "timeoutSeconds": 0.3})
        async with running_router(config) as base, ClientSession() as session:
            predictions = await predict(session, base, TEXTS[:2])
            metrics = await scrape(session, base)
        release.set()
    assert all(p["served_by"] == "student" and p["degraded"] for p in predictions)
    assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "timeout"),))] == 1


async def test_kserve_v2_teacher_with_scores(triton, model_repository, reference):
    async def infer(request: web.Request) -> web.Response:
        texts = (await request.json())["inputs"][0]["data"]
        probs = reference.probs("teacher", texts)
        return web.json_response({"outputs": [{"name": "probabilities", "datatype": "FP32",
                                               "shape": list(probs.shape), "data": probs.ravel().tolist()}]})

    async with loopback_server([web.post("/v2/models/{name}/infer", infer)]) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, mode="teacher-only",
                               teacher={"url": teacher_url, "protocol": "kserve-v2", "model": "big"})
        async with running_router(config) as base, ClientSession() as session:
            predictions = await predict(session, base, TEXTS)
    labels, conf = expected(reference, "teacher", TEXTS)
    assert [p["label"] for p in predictions] == labels
    np.testing.assert_allclose([p["confidence"] for p in predictions], conf, atol=1e-5)


async def test_openai_teacher_reads_its_key_from_the_secret_file(triton, model_repository, tmp_path):
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-test-123\n")
    auth: list[str] = []

    async def chat(request: web.Request) -> web.Response:
        auth.append(request.headers.get("Authorization", ""))
        body = await request.json()
        assert body["model"] == "teacher-llm" and "sport" in body["messages"][0]["content"]
        text = body["messages"][1]["content"]
        label = "Sport." if "team" in text else "tech"
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": label},
                                               "logprobs": {"content": [{"token": label, "logprob": -0.1}]}}]})

    async with loopback_server([web.post("/v1/chat/completions", chat)]) as teacher_url:
        config = router_config(model_repository, triton.grpc_url, mode="teacher-only",
                               teacher={"url": f"{teacher_url}/v1", "protocol": "openai", "model": "teacher-llm"},
                               teacher_api_key_file=str(key_file))
        async with running_router(config) as base, ClientSession() as session:
            predictions = await predict(session, base, ["the team lost at home", "robots are learning to cook"])
    assert [p["label"] for p in predictions] == ["sport", "tech"]
    assert predictions[0]["confidence"] == pytest.approx(np.exp(-0.1))
    assert auth == ["Bearer sk-test-123"] * 2


async def test_metrics_count_what_was_sent(triton, model_repository, threshold, reference):
    config = router_config(model_repository, triton.grpc_url, threshold=threshold)
    batches = [TEXTS[:1], TEXTS[1:4], TEXTS[4:]]
    async with running_router(config) as base, ClientSession() as session:
        for batch in batches:
            await predict(session, base, batch)
        async with session.post(f"{base}/v1/models/news:predict", data=b"not json") as response:
            assert response.status == 400
        metrics = await scrape(session, base)
    below = int((expected(reference, "student", TEXTS)[1] < threshold).sum())
    requests = {labels: v for (name, labels), v in metrics.items() if name == "kubedistill_router_requests_total"}
    assert sum(v for labels, v in requests.items() if ("code", "200") in labels) == len(batches)
    assert requests[(("code", "400"), ("served_by", "none"))] == 1
    instances = {labels: v for (name, labels), v in metrics.items() if name == "kubedistill_router_instances_total"}
    assert instances[(("degraded", "false"), ("served_by", "teacher"))] == below
    assert instances[(("degraded", "false"), ("served_by", "student"))] == len(TEXTS) - below
    assert metrics[("kubedistill_router_request_seconds_count", ())] == len(batches) + 1
    assert metrics[("kubedistill_router_student_seconds_count", ())] == len(batches)
    assert metrics[("kubedistill_router_teacher_seconds_count", ())] >= 1


async def test_concurrent_requests_share_triton_calls_and_keep_their_own_answers(triton, model_repository,
                                                                                 reference):
    config = router_config(model_repository, triton.grpc_url, mode="student-only", max_calls_in_flight=1)
    requests = TEXTS * 4
    async with running_router(config) as base, ClientSession() as session:
        answers = await asyncio.gather(*(predict(session, base, [text]) for text in requests))
        metrics = await scrape(session, base)
    labels, conf = expected(reference, "student", requests)
    assert [a[0]["label"] for a in answers] == labels
    np.testing.assert_allclose([a[0]["confidence"] for a in answers], conf, atol=1e-5)
    calls = metrics[("kubedistill_router_triton_call_instances_count", (("model", "student"),))]
    assert metrics[("kubedistill_router_triton_call_instances_sum", (("model", "student"),))] == len(requests)
    assert calls < len(requests)  # one call in flight at a time: the requests behind it shared calls


async def test_without_coalescing_each_request_is_its_own_call(triton, model_repository):
    config = router_config(model_repository, triton.grpc_url, mode="student-only", coalesce=False)
    async with running_router(config) as base, ClientSession() as session:
        await asyncio.gather(*(predict(session, base, [text]) for text in TEXTS))
        metrics = await scrape(session, base)
    assert metrics[("kubedistill_router_triton_call_instances_count", (("model", "student"),))] == len(TEXTS)


async def test_a_request_larger_than_tritons_max_batch_size_is_split(triton, model_repository, reference, threshold):
    config = router_config(model_repository, triton.grpc_url, mode="route", threshold=threshold)
    texts = (TEXTS * 4)[:40]  # the repository's max_batch_size is 32
    async with running_router(config) as base, ClientSession() as session:
        predictions = await predict(session, base, texts)
        metrics = await scrape(session, base)
    student_labels, student_conf = expected(reference, "student", texts)
    teacher_labels, _ = expected(reference, "teacher", texts)
    assert [p["label"] for p in predictions] == [teacher_labels[i] if student_conf[i] < threshold
                                                 else student_labels[i] for i in range(len(texts))]
    assert metrics[("kubedistill_router_triton_call_instances_count", (("model", "student"),))] == 2
    assert metrics[("kubedistill_router_triton_call_instances_sum", (("model", "student"),))] == 40
    assert metrics[("kubedistill_router_triton_call_instances_sum", (("model", "teacher"),))] == \
        (student_conf < threshold).sum()


async def test_a_failed_teacher_call_shared_by_requests_counts_once_toward_the_breaker(
        triton, model_repository, reference, threshold, tmp_path):
    import json
    import shutil

    from kubedistill.artifacts import SERVING_MANIFEST

    repository = tmp_path / "repository"
    shutil.copytree(model_repository, repository)
    manifest = json.loads((repository / SERVING_MANIFEST).read_text())
    manifest["teacher"]["name"] = "absent"  # Triton refuses every teacher call: it has no such model
    (repository / SERVING_MANIFEST).write_text(json.dumps(manifest))
    shutil.copytree(repository / "teacher", repository / "absent")  # the router's copy is complete
    config = router_config(repository, triton.grpc_url, threshold=threshold, max_calls_in_flight=1)
    escalated = [text for text, conf in zip(TEXTS, expected(reference, "student", TEXTS)[1], strict=True)
                 if conf < threshold]
    async with running_router(config) as base, ClientSession() as session:
        answers = await asyncio.gather(*(predict(session, base, [text]) for text in escalated * 3))
        metrics = await scrape(session, base)
    assert all(a[0]["served_by"] == "student" and a[0]["degraded"] for a in answers)
    teacher_calls = metrics[("kubedistill_router_triton_call_instances_count", (("model", "teacher"),))]
    assert teacher_calls < len(answers)  # the requests shared calls
    assert metrics[("kubedistill_router_teacher_errors_total", (("reason", "error"),))] == teacher_calls
