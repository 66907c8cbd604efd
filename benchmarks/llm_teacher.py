"""Teacher generation by a language model: throughput (rows/s) against concurrency, for the local teacher
(full-answer scoring: rows scored at once on the shared prompt prefix's cache, torch threads; with the CPU
seconds per row, which a loaded machine disturbs less than the wall clock) and for an endpoint teacher (the
loopback OpenAI-compatible test server around the same model, with a per-request delay standing in for a
remote API's latency); then the soft-label vs the hard-label student on the same teacher outputs.

    python benchmarks/llm_teacher.py --job /tmp/kubedistill/llm-teacher-bbc [--rows 16] [--students]

`--job` is the output of examples/llm-teacher (its fp32 teacher copy and teacher_outputs/ are reused).
Results go to benchmarks/results/llm_teacher.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "llm-teacher" / "distillationjob.yaml"


def _texts(job: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in (job / "data" / "train.jsonl").read_text().splitlines()]
    return [r["text"] for r in rows[:n]]


def local_throughput(job: Path, texts: list[str], settings: list[tuple[int, int]]) -> dict[str, dict[str, float]]:
    """{"threads=T batch=B": {"rows_per_second", "cpu_seconds_per_row"}} for each (threads, batch size)."""
    import torch
    from kubedistill_jobs import llm_teacher, models

    from kubedistill.api.distillationjob import DistillationJob
    from kubedistill.api.load import load_manifest

    spec = load_manifest(MANIFEST, DistillationJob).spec
    prompt = llm_teacher.LabelPrompt.from_spec(spec)
    model = models.load_causal_teacher(str(job / "teacher"), None).eval()
    tokenizer = models.load_tokenizer(str(job / "teacher"))
    out = {}
    for threads, batch in settings:
        torch.set_num_threads(threads)
        started, cpu = time.monotonic(), time.process_time()
        llm_teacher.label_texts(model, tokenizer, prompt, texts, max_tokens=spec.task.max_length, calibrated=False,
                                batch_size=batch)
        out[f"threads={threads} batch={batch}"] = {
            "rows_per_second": round(len(texts) / (time.monotonic() - started), 4),
            "cpu_seconds_per_row": round((time.process_time() - cpu) / len(texts), 3)}
        print(f"local threads={threads} batch={batch}: {out[f'threads={threads} batch={batch}']}", file=sys.stderr,
              flush=True)
    return out


def endpoint_throughput(job: Path, texts: list[str], concurrency: list[int], delay: float) -> dict[str, float]:
    from kubedistill_jobs import chat_teacher, llm_teacher

    from kubedistill.api.distillationjob import DistillationJob
    from kubedistill.api.load import load_manifest

    spec = load_manifest(MANIFEST, DistillationJob).spec
    prompt = llm_teacher.LabelPrompt.from_spec(spec)
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "jobs" / "llm_server.py"), str(job / "teacher"),
                               "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{server.stdout.readline().strip().split('=')[1]}/v1"
        out = {}
        for n in concurrency:
            config = chat_teacher.ChatConfig(url=url, model="smollm2", max_tokens=2, max_concurrency=n,
                                             timeout_seconds=600)
            journal = job / f"bench_journal_{n}.jsonl"
            journal.unlink(missing_ok=True)
            started = time.monotonic()
            chat_teacher.label_texts(chat_teacher.ChatTeacher(config, prompt), texts, journal)
            out[f"concurrency={n}"] = round(len(texts) / (time.monotonic() - started), 4)
            print(f"endpoint concurrency={n}: {out[f'concurrency={n}']} rows/s", file=sys.stderr, flush=True)
            journal.unlink(missing_ok=True)
        return out
    finally:
        server.terminate()


def _student(job: Path, record: Path, name: str) -> dict[str, float | None]:
    """A job that reuses `record` as its teacher outputs; its student's accuracy and agreement."""
    import yaml

    manifest = yaml.safe_load(MANIFEST.read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"]["distillation"]["teacherOutputsUri"] = str(record)
    manifest["spec"]["output"]["uri"] = f"file://{job.parent / name}"
    path = job.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    subprocess.run(["kubedistill", "run", str(path)], check=True)
    report = json.loads((job.parent / name / "report.json").read_text())
    metrics = report["student_quantized"]["metrics"]
    return {"accuracy": metrics.get("accuracy"), "agreement": metrics.get("agreement")}


def hard_outputs(job: Path) -> Path:
    """A copy of the job's teacher outputs with each row's distribution made one-hot on its argmax."""
    import shutil

    from datasets import Dataset

    hard = job.parent / f"{job.name}-hard-outputs"
    shutil.rmtree(hard, ignore_errors=True)
    shutil.copytree(job / "teacher_outputs", hard)
    rows = Dataset.from_parquet(str(hard / "rows.parquet")).to_dict()
    onehot = []
    for logprobs in rows["logprobs"]:
        target = np.full(len(logprobs), -1.0e4)
        target[int(np.argmax(logprobs))] = 0.0
        onehot.append(target.tolist())
    rows["logprobs"] = onehot
    Dataset.from_dict(rows).to_parquet(str(hard / "rows.parquet"))
    return hard


def soft_vs_hard(job: Path) -> dict[str, dict[str, float | None]]:
    """The same teacher outputs, as recorded (soft: the example job's own student, `job`'s report) and as
    one-hot argmax labels (hard: a job that reuses them, trained like the example's)."""
    metrics = json.loads((job / "report.json").read_text())["student_quantized"]["metrics"]
    soft = {"accuracy": metrics.get("accuracy"), "agreement": metrics.get("agreement")}
    return {"soft": soft, "hard": _student(job, hard_outputs(job), f"{job.name}-hard")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", type=Path, default=Path("/tmp/kubedistill/llm-teacher-bbc"))
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.5, help="seconds the endpoint waits per request")
    parser.add_argument("--students", action="store_true", help="also train the soft- and hard-label students")
    args = parser.parse_args()
    texts = _texts(args.job, args.rows)
    import os

    results = {"rows": len(texts), "load_average_before": os.getloadavg()[0],
               "local": local_throughput(args.job, texts, [(2, 1), (2, 8)]),
               "endpoint_delay_seconds": args.delay,
               "endpoint_rows_per_second": endpoint_throughput(args.job, texts, [1, 2, 4, 8], args.delay)}
    results["load_average_after"] = os.getloadavg()[0]
    if args.students:
        results["students"] = soft_vs_hard(args.job)
    print(json.dumps(results, indent=2))
    out = ROOT / "benchmarks" / "results" / "llm_teacher.json"
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
