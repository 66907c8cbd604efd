"""Distillation benchmarks: does the student learn more from the teacher than from the labels alone?

    python benchmarks/distillation.py [--bbc-output DIR] [--lm-output DIR] [--skip-lm] [--skip-bbc]

- BBC News (examples/quickstart): teacher accuracy; the 2-layer student distilled (soft targets + labels)
  vs the same student trained on hard labels only (same data, init and steps); parameter ratio and
  retention; 1 vs 2 Ray Train workers (throughput over one epoch); cached vs online teacher (time per
  epoch and accuracy after one epoch).
- Causal LM (examples/causal-lm): held-out perplexity of the student distilled from cached top-k
  logits vs the same student trained with plain next-token cross-entropy; seconds per step cached vs
  online (10 steps).

The pipeline runs up to the soft targets in each output folder (reused when a previous run of the same
example left them there), then each variant trains with Ray Train on an embedded Ray. Prints a table
and writes benchmarks/results/distillation.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "distillation.json"


class Quiet:
    """A pipeline Display that prints only stage completions."""

    def stage_started(self, stage):
        return lambda done, total: None

    def stage_finished(self, stage, summary, skipped):
        print(f"  {stage}: {summary}{' (done earlier)' if skipped else ''}", flush=True)

    def stage_failed(self, stage, error):
        print(f"  {stage}: failed ({type(error).__name__})", flush=True)

    def epoch(self, entry):
        pass

    def message(self, text):
        pass


def prepare(manifest: Path, output: Path, workers: int) -> Any:
    """The example's pipeline up to its soft targets; returns (pipeline, spec)."""
    from kubedistill_jobs import runner
    from kubedistill_jobs.pipeline import Pipeline

    job = runner.load_job(manifest, str(output))
    pipeline = Pipeline(job, runner.prepare_output(job), workers=workers, display=Quiet())
    pipeline.run(stop_after="soft-targets")
    return pipeline


def train_variant(pipeline: Any, name: str, workers: int, scratch: Path, **overrides: Any) -> dict[str, Any]:
    """Train the example's student with loop overrides; returns its history and timings."""
    from kubedistill_jobs import train
    from kubedistill_jobs.stages import s40_train

    prepared = s40_train.training_inputs(pipeline.context)
    loop = dataclasses.replace(prepared.loop, **overrides)
    storage = scratch / name
    shutil.rmtree(storage, ignore_errors=True)
    started = time.monotonic()
    result = train.fit(loop, prepared.train_data, prepared.eval_data, prepared.init, storage=str(storage / "ckpt"),
                       workers=workers, model_out=storage / "student")
    seconds = time.monotonic() - started
    shutil.rmtree(storage, ignore_errors=True)
    history = result.history
    train_seconds = sum(e["seconds"] for e in history)
    steps = history[-1]["step"]
    print(f"  {name}: {history[-1]} ({seconds:.0f} s)", flush=True)
    return {"history": history, "steps": steps, "wall_seconds": round(seconds, 1),
            "train_seconds": round(train_seconds, 1), "seconds_per_step": round(train_seconds / steps, 3),
            "examples_per_second": round(steps * loop.batch_size / max(train_seconds, 1e-9), 1),
            "final": {k: v for k, v in history[-1].items() if k.startswith("eval_")}}


def distilled_variant(pipeline: Any, scratch: Path) -> dict[str, Any]:
    """The example's own training run when the pipeline already trained it (same spec, init and steps)."""
    path = pipeline.layout.train_report
    if not path.is_file():
        return train_variant(pipeline, "distilled", 2, scratch)
    history = json.loads(path.read_text())["history"]
    train_seconds = sum(e["seconds"] for e in history)
    steps = history[-1]["step"]
    print(f"  distilled (the pipeline's own run): {history[-1]}", flush=True)
    return {"history": history, "steps": steps, "from": "pipeline train stage",
            "train_seconds": round(train_seconds, 1), "seconds_per_step": round(train_seconds / steps, 3),
            "examples_per_second": round(steps * pipeline.context.spec.training.batch_size / train_seconds, 1),
            "final": {k: v for k, v in history[-1].items() if k.startswith("eval_")}}


def bbc(output: Path, scratch: Path) -> dict[str, Any]:
    from kubedistill_jobs import inputs, models

    print("BBC News (examples/quickstart)", flush=True)
    pipeline = prepare(REPO / "examples" / "quickstart" / "distillationjob.yaml", output, workers=2)
    spec = pipeline.context.spec
    teacher = models.load_saved_model(pipeline.layout.teacher, spec.task.type)
    student, _ = inputs.student_init(spec, teacher, pipeline.layout.downloads / "student")
    teacher_params, student_params = models.count_parameters(teacher), models.count_parameters(student)
    teacher_accuracy = pipeline.context.marker("teacher")["accuracy"]
    del teacher, student
    kd = distilled_variant(pipeline, scratch)
    hard = train_variant(pipeline, "hard-labels-only", 2, scratch, alpha=0.0)
    one_epoch = train_variant(pipeline, "1-epoch-2-workers", 2, scratch, epochs=None,
                              max_steps=kd["history"][0]["step"])
    one_worker = train_variant(pipeline, "1-epoch-1-worker", 1, scratch, epochs=None,
                               max_steps=kd["history"][0]["step"])
    online = train_variant(pipeline, "1-epoch-online-teacher", 2, scratch, epochs=None,
                           max_steps=kd["history"][0]["step"], teacher_mode="online")
    student_accuracy = kd["final"]["eval_accuracy"]
    return {
        "teacher": {"params": teacher_params, "eval_accuracy": teacher_accuracy,
                    "adaptation": pipeline.context.marker("teacher")["method"]},
        "student": {"params": student_params, "param_ratio": round(student_params / teacher_params, 4)},
        "distilled": kd,
        "hard_labels_only": hard,
        "retention": round(student_accuracy / teacher_accuracy, 4),
        "distillation_gain": round(student_accuracy - hard["final"]["eval_accuracy"], 4),
        "workers": {"1": one_worker, "2": one_epoch,
                    "throughput_ratio_2_over_1": round(one_epoch["examples_per_second"]
                                                       / one_worker["examples_per_second"], 3)},
        "cached_vs_online": {"cached": one_epoch, "online": online,
                             "epoch_seconds_cached": one_epoch["train_seconds"],
                             "epoch_seconds_online": online["train_seconds"],
                             "accuracy_cached": one_epoch["final"]["eval_accuracy"],
                             "accuracy_online": online["final"]["eval_accuracy"]},
    }


def causal_lm(output: Path, scratch: Path) -> dict[str, Any]:
    print("Causal LM (examples/causal-lm)", flush=True)
    pipeline = prepare(REPO / "examples" / "causal-lm" / "distillationjob.yaml", output, workers=2)
    kd = distilled_variant(pipeline, scratch)
    ce = train_variant(pipeline, "cross-entropy-only", 2, scratch, alpha=0.0)
    online = train_variant(pipeline, "online-10-steps", 2, scratch, epochs=None, max_steps=10,
                           teacher_mode="online")
    cached = train_variant(pipeline, "cached-10-steps", 2, scratch, epochs=None, max_steps=10)
    return {
        "teacher_params": pipeline.context.marker("teacher")["params"],
        "soft_targets": pipeline.context.marker("soft-targets"),
        "distilled": kd,
        "cross_entropy_only": ce,
        "perplexity_distilled": kd["final"]["eval_perplexity"],
        "perplexity_cross_entropy": ce["final"]["eval_perplexity"],
        "seconds_per_step_cached": cached["seconds_per_step"],
        "seconds_per_step_online": online["seconds_per_step"],
    }


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kubedistill distillation benchmarks")
    table.add_column("benchmark")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = []
    if "bbc_news" in results:
        b = results["bbc_news"]
        rows += [
            ("BBC teacher accuracy", f"{b['teacher']['eval_accuracy']:.4f}"),
            ("student / teacher params", f"{b['student']['params'] / 1e6:.2f}M / {b['teacher']['params'] / 1e6:.1f}M"
                                         f" = {b['student']['param_ratio']:.1%}"),
            ("student accuracy, distilled", f"{b['distilled']['final']['eval_accuracy']:.4f}"),
            ("student accuracy, hard labels only", f"{b['hard_labels_only']['final']['eval_accuracy']:.4f}"),
            ("retention (distilled / teacher)", f"{b['retention']:.4f}"),
            ("examples/s, 1 worker", f"{b['workers']['1']['examples_per_second']:.1f}"),
            ("examples/s, 2 workers", f"{b['workers']['2']['examples_per_second']:.1f}"),
            ("throughput ratio 2 / 1 workers", f"{b['workers']['throughput_ratio_2_over_1']:.2f}"),
            ("epoch seconds, cached / online", f"{b['cached_vs_online']['epoch_seconds_cached']:.1f} / "
                                               f"{b['cached_vs_online']['epoch_seconds_online']:.1f}"),
            ("1-epoch accuracy, cached / online", f"{b['cached_vs_online']['accuracy_cached']:.4f} / "
                                                  f"{b['cached_vs_online']['accuracy_online']:.4f}"),
        ]
    if "causal_lm" in results:
        c = results["causal_lm"]
        rows += [
            ("LM eval perplexity, distilled (top-k)", f"{c['perplexity_distilled']:.2f}"),
            ("LM eval perplexity, cross-entropy only", f"{c['perplexity_cross_entropy']:.2f}"),
            ("LM seconds/step, cached / online", f"{c['seconds_per_step_cached']:.2f} / "
                                                 f"{c['seconds_per_step_online']:.2f}"),
        ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bbc-output", type=Path, default=Path("/tmp/kubedistill-bench/bbc-news"))
    parser.add_argument("--lm-output", type=Path, default=Path("/tmp/kubedistill-bench/causal-lm"))
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/kubedistill-bench/scratch"))
    parser.add_argument("--skip-bbc", action="store_true")
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    from kubedistill_jobs import runner

    runner.start_local_ray()
    results: dict[str, Any] = {}
    if args.json.is_file():  # keep the other half when only one benchmark is rerun
        results = json.loads(args.json.read_text())
    import os

    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    if not args.skip_bbc:
        results["bbc_news"] = bbc(args.bbc_output, args.scratch)
    if not args.skip_lm:
        results["causal_lm"] = causal_lm(args.lm_output, args.scratch)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
