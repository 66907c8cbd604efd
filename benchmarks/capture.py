"""What `router.capture` adds to a request: the router with and without capture, on one machine, in one run.

Two router processes (`python -m kubedistill_router`) in route mode at threshold 1.0, so that every
instance escalates to the teacher and every request is captured (capture's worst case), in front of one
Triton server (the local tritonserver, python backend running the ONNX files). The two alternate in short
rounds so that background load hits them alike; each point gives p50/p99 latency and the router's CPU time
per request. A third figure isolates what capture puts on the request's path: `CaptureSink.offer` of one
record (building it included) while the writer thread writes, timed in-process.

    python benchmarks/capture.py [--repository DIR] [--seconds 10] [--rounds 5]

Without --repository it exports the router benchmark's student and teacher (benchmarks/router.py). Prints
a table and writes benchmarks/results/capture.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from kubedistill_router.capture import CaptureSink
from kubedistill_router.local.repository import build_local_repository
from kubedistill_router.local.triton import start_triton
from kubedistill_router.metrics import RouterMetrics
from published import publish

from kubedistill.api.studentdeployment import CaptureSpec
from kubedistill.capture import CapturedAnswer, CaptureRecord
from router import RouterProcess, Tally, ViaRouter, bbc_texts, build_repository, run_load

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "capture.json"
CONCURRENCY = (1, 8)
# A realistic redaction list: every pattern runs over every captured text, in the writer thread.
REDACT = [r"\b[\w.+-]+@[\w-]+\.[\w.]+\b", r"\b(?:\d[ -]?){13,16}\b"]


def offer_cost(folder: Path, texts: list[str], records: int) -> dict[str, float]:
    """Microseconds per `offer` (the record built, then queued) while the writer thread writes them."""
    metrics = RouterMetrics()
    sink = CaptureSink(CaptureSpec(uri=f"file://{folder}", redact=REDACT, queue_size=records), metrics)
    costs = []
    for i in range(records):
        start = time.perf_counter()
        sink.offer(CaptureRecord(time=time.time(), kind="escalated", task="sequence-classification", model="bench",
                                 model_version="bench", text=texts[i % len(texts)],
                                 student=CapturedAnswer(label="tech", confidence=0.42),
                                 teacher=CapturedAnswer(label="business", confidence=0.91)))
        costs.append(time.perf_counter() - start)
    start = time.perf_counter()
    sink.close(timeout=120)
    drain = time.perf_counter() - start
    us = np.array(costs) * 1e6
    written = sum(len(p.read_text().splitlines()) for p in folder.glob("capture-*.jsonl"))
    return {"records": records, "offer_p50_us": float(np.percentile(us, 50)),
            "offer_p99_us": float(np.percentile(us, 99)), "written": written,
            "writer_records_per_s": written / (sum(costs) + drain)}


async def measure(args: argparse.Namespace, repo: Path, workdir: Path, texts: list[str]) -> dict[str, Any]:
    import aiohttp

    local = build_local_repository(repo, workdir / "local_repository")
    triton = start_triton(local, workdir / "tritonserver.log")
    routers: dict[str, RouterProcess] = {}
    try:
        triton.wait_ready(180)
        for name, capture in (("no capture", None), ("capture", {"uri": f"file://{workdir}/capture",
                                                                   "redact": REDACT})):
            folder = workdir / name.replace(" ", "-")
            folder.mkdir()
            routers[name] = RouterProcess(folder, local, triton, mode="route", threshold=1.0, capture=capture)
        points = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            paths = {name: ViaRouter(r.base, "bench", session) for name, r in routers.items()}
            for concurrency in CONCURRENCY:
                tallies = {name: Tally(concurrency) for name in paths}
                cpu = dict.fromkeys(paths, 0.0)
                for _ in range(args.rounds):
                    for name, call in paths.items():
                        before = routers[name].cpu_seconds()
                        await run_load(call, texts, tallies[name], args.seconds / args.rounds)
                        cpu[name] += routers[name].cpu_seconds() - before
                for name, tally in tallies.items():
                    served = len(tally.latencies) + tally.warmup_requests
                    point = {"path": name, **tally.summary(), "router_cpu_ms_per_request": cpu[name] * 1000 / served}
                    points.append(point)
                    print(f"  {name:<11} c={concurrency:<2} p50 {point['p50_ms']:7.2f} ms  p99 {point['p99_ms']:7.2f} "
                          f"ms  {point['throughput_rps']:6.1f} req/s  router CPU "
                          f"{point['router_cpu_ms_per_request']:.2f} ms/request  failures {point['failures']}",
                          flush=True)
        metrics = routers["capture"].metrics()
        captured = next((float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith("kubedistill_router_capture_records_total")), 0.0)
        return {"points": points, "captured_records": captured}
    finally:
        for router in routers.values():
            router.stop()
        triton.stop()


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    by = {(p["path"], p["concurrency"]): p for p in results["points"]}
    out: dict[str, Any] = {}
    for c in CONCURRENCY:
        on, off = by[("capture", c)], by[("no capture", c)]
        out[f"c{c}"] = {"p50_added_ms": on["p50_ms"] - off["p50_ms"],
                        "cpu_added_ms_per_request": on["router_cpu_ms_per_request"] - off["router_cpu_ms_per_request"]}
    out["offer_p50_us"] = results["offer"]["offer_p50_us"]
    return out


def table(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = ["", "| | capture's added p50 | added router CPU per request |", "|---|---:|---:|"]
    for c in CONCURRENCY:
        row = s[f"c{c}"]
        lines.append(f"| concurrency {c} | {row['p50_added_ms']:+.2f} ms | {row['cpu_added_ms_per_request']:+.3f} ms |")
    o = results["offer"]
    lines.append(f"\non the request's path (in-process): offer p50 {o['offer_p50_us']:.1f} µs, p99 "
                 f"{o['offer_p99_us']:.1f} µs; the writer thread wrote {o['written']} of {o['records']} records "
                 f"({o['writer_records_per_s']:.0f} records/s, redaction included)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, help="a model repository to serve (default: export one)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point and path")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per point")
    parser.add_argument("--records", type=int, default=20000, help="records for the in-process offer timing")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    texts = bbc_texts()
    with tempfile.TemporaryDirectory(prefix="kubedistill-bench-") as tmp:
        workdir = Path(tmp)
        (workdir / "offer").mkdir()
        offer = offer_cost(workdir / "offer", texts, args.records)
        repo = args.repository or build_repository(workdir, texts)
        results = asyncio.run(measure(args, repo, workdir, texts))
    results["offer"] = offer
    results["summary"] = summarise(results)
    publish(results, args.results, table, "load generator, both routers and Triton")
    return 1 if any(p["failures"] for p in results["points"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
