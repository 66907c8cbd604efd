"""Student-vs-teacher gap on the quickstart (BBC News): the compression, speed and routing targets.

Reads a finished quickstart output (`kubedistill run examples/quickstart/distillationjob.yaml` writes it),
re-runs the compress stage if its ONNX graphs are missing and the evaluate stage (unless --reuse), then
prints the targets against what was measured and writes the numbers to benchmarks/results/gap.json.

    python benchmarks/gap.py [--output /tmp/kubedistill/bbc-news-topics] [--threads 2] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from kubedistill.api import DistillationJob, load_manifest
from kubedistill.artifacts import OutputLayout
from kubedistill.report import Report

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart" / "distillationjob.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "gap.json"


def targets(report: Report) -> list[dict[str, Any]]:
    """The issue's targets: (name, measured, bar, passed)."""
    t, s, q = (m.metrics for m in (report.teacher, report.student, report.student_quantized))
    routing = report.routing
    rec = routing.recommended if routing else None
    rows = [
        ("retention (quantized / teacher accuracy)", report.retention, ">= 0.95", report.retention >= 0.95),
        ("compression (teacher size / quantized size)", report.compression, ">= 10x", report.compression >= 10),
        ("speedup at batch 1 (teacher p50 / quantized p50)", report.speedup, ">= 5x", report.speedup >= 5),
    ]
    if "accuracy" in s and "accuracy" in q:
        drop = (s["accuracy"] - q["accuracy"]) * 100
        rows.append(("accuracy cost of quantization (points)", drop, "<= 1", drop <= 1))
    if rec and "accuracy" in t:
        kept = rec.accuracy / t["accuracy"]
        rows.append(("cascade at recommended threshold: share of teacher accuracy", kept, ">= 0.99", kept >= 0.99))
        rows.append(("cascade at recommended threshold: escalation rate", rec.escalation_rate, "<= 0.25",
                     rec.escalation_rate <= 0.25))
    return [{"target": n, "measured": float(v), "bar": b, "passed": bool(p)} for n, v, b, p in rows]


def _table(report: Report, rows: list[dict[str, Any]]) -> str:
    lines = [f"{'model':<22}{'params':>12}{'size MB':>10}{'accuracy':>10}{'macro-F1':>10}"
             f"{'p50 b1 ms':>11}{'p95 b1 ms':>11}{'p50 b32 ms':>12}{'items/s b32':>13}"]
    for name in ("teacher", "student", "student_quantized"):
        m = getattr(report, name)
        b32 = m.latency_ms_batch32.p50 if m.latency_ms_batch32 else float("nan")
        lines.append(
            f"{name:<22}{m.params:>12,}{m.size_bytes / 1e6:>10.2f}{m.metrics.get('accuracy', float('nan')):>10.4f}"
            f"{m.metrics.get('macro_f1', float('nan')):>10.4f}{m.latency_ms.p50:>11.2f}{m.latency_ms.p95:>11.2f}"
            f"{b32:>12.2f}{(m.throughput or {}).get('batch32', float('nan')):>13.1f}"
        )
    lines.append("")
    lines += [f"{'PASS' if r['passed'] else 'MISS'}  {r['target']:<62} {r['measured']:>8.4g}  (target {r['bar']})"
              for r in rows]
    return "\n".join(lines)


def _compact(report: Report) -> dict[str, Any]:
    """The report without the per-signal frontier lists (report.json in the output keeps them)."""
    return report.model_dump(mode="json", exclude={"routing": {"signals": {"__all__": {"frontier"}}}})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="the job's output folder (default: the quickstart's output.uri)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--reuse", action="store_true", help="read the existing report.json, do not re-measure")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the numbers (default {RESULTS})")
    args = parser.parse_args(argv)

    from kubedistill_jobs.compress import COMPRESSION_JSON, compress
    from kubedistill_jobs.evaluate import LatencySettings, evaluate

    manifest = load_manifest(QUICKSTART, DistillationJob)
    root = args.output or Path(manifest.spec.output.uri.removeprefix("file://"))
    layout = OutputLayout(root)
    resolved = layout.resolved_spec
    spec = load_manifest(resolved, DistillationJob).spec if resolved.is_file() else manifest.spec
    if not (layout.student / "config.json").is_file():
        print(f"no trained student in {layout.student}: run `kubedistill run {QUICKSTART}` first", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if args.reuse and layout.report_json.is_file():
        report = Report.model_validate_json(layout.report_json.read_text())
    else:
        if not (layout.onnx / COMPRESSION_JSON).is_file():
            compress(spec, layout)
        settings = LatencySettings(threads=args.threads, warmup=10, reps_batch1=300, reps_batch32=20, budget_s=40)
        version = "benchmark"
        if layout.report_json.is_file():  # re-measuring keeps the run's own version in its report
            version = Report.model_validate_json(layout.report_json.read_text()).model_version or version
        report = evaluate(spec, layout, version, settings=settings)
    rows = targets(report)
    print(_table(report, rows))
    print(f"\n{layout.root}: {report.eval_samples} eval examples, "
          f"{args.threads} threads, {time.perf_counter() - started:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "command": "python benchmarks/gap.py" + (f" --output {args.output}" if args.output else "")
        + f" --threads {args.threads}" + (" --reuse" if args.reuse else ""),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "targets": rows,
        "report": _compact(report),
    }, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
