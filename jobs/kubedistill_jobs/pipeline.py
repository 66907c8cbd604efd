"""The pipeline: data → teacher → soft targets → train → compress → evaluate → export.

Each finished stage leaves a marker (`layout.stage_marker`); a rerun with the same output skips finished
stages and training resumes from its last checkpoint. The same code runs as the RayJob entrypoint and
under `kubedistill run`; they differ only in how progress is shown (`Display`) and reported (`reporting`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml

from kubedistill.api.distillationjob import DistillationJob, DistillationJobSpec
from kubedistill.artifacts import STAGES, OutputLayout, Stage
from kubedistill_jobs import data, preflight
from kubedistill_jobs.storage import Output

log = logging.getLogger("kubedistill.pipeline")
Progress = Callable[[int, int], None]
# Rough share of a run's time per stage, for the overall percentage.
STAGE_WEIGHTS = {"data": 2, "teacher": 15, "soft-targets": 10, "train": 50, "compress": 8, "evaluate": 10,
                 "export": 5}
LATER_STAGES = ("compress", "evaluate", "export")
GENERATED_TRAIN = "train_generated.jsonl"  # prompt + an endpoint teacher's completion, per training row


class Display(Protocol):
    """How a run shows itself: a progress bar per stage (CLI) or log lines and status patches (cluster)."""

    def stage_started(self, stage: str) -> Progress: ...

    def stage_finished(self, stage: str, summary: str, skipped: bool) -> None: ...

    def epoch(self, entry: dict[str, Any]) -> None: ...

    def message(self, text: str) -> None: ...


class SpecChangedError(ValueError):
    """The output folder holds a run of a different spec: resuming it would mix two jobs."""


@dataclass
class RunResult:
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: Any = None  # kubedistill.report.Report, once evaluation ran
    manifest: Any = None  # ServingManifest, once export ran
    missing_stages: list[str] = field(default_factory=list)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Pipeline:
    def __init__(self, job: DistillationJob, output: Output, *, workers: int | None = None,
                 display: Display, on_status: Callable[..., None] | None = None) -> None:
        self.job = job
        self.spec: DistillationJobSpec = job.spec
        self.output = output
        self.layout = OutputLayout(output.local)
        self.workers = workers or job.spec.ray.workers.replicas
        self.display = display
        self.on_status = on_status or (lambda **_: None)
        self.found: dict[str, Any] = {}
        self._split: data.Split | None = None
        self._shown: set[str] = set()

    # ------------------------------------------------------------------ bookkeeping

    def _check_resolved_spec(self) -> None:
        wire = self.job.spec.to_wire()
        wire.pop("ray", None)  # workers and resources may change between attempts
        path = self.layout.resolved_spec
        if path.is_file():
            previous = (yaml.safe_load(path.read_text()) or {}).get("spec", {})
            previous.pop("ray", None)
            if previous != wire:
                raise SpecChangedError(
                    f"output.uri: {self.output.uri} holds a run of a different spec; use another output "
                    "(--output) or delete the folder to start over"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.job.to_wire(), sort_keys=False))

    def _marker(self, stage: Stage) -> dict[str, Any] | None:
        path = self.layout.stage_marker(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def _finish(self, stage: Stage, info: dict[str, Any], seconds: float) -> dict[str, Any]:
        marker = {"stage": stage, "finished_at": _now(), "seconds": round(seconds, 2), **info}
        path = self.layout.stage_marker(stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(marker, indent=2, default=str) + "\n")
        log.info("stage %s finished in %.1f s: %s", stage, seconds,
                 {k: v for k, v in info.items() if k != "history"})
        self.output.push()
        return marker

    def _percent(self, stage: str, fraction: float) -> float:
        done = sum(STAGE_WEIGHTS[s] for s in STAGES[: STAGES.index(stage)])  # type: ignore[arg-type]
        return round(100 * (done + fraction * STAGE_WEIGHTS[stage]) / sum(STAGE_WEIGHTS.values()), 1)

    def _progress(self, stage: str) -> Progress:
        show = self.display.stage_started(stage)
        started = time.monotonic()

        def progress(done: int, total: int) -> None:
            show(done, total)
            fraction = done / total if total else 0.0
            elapsed = time.monotonic() - started
            eta = int(elapsed / fraction - elapsed) if fraction > 0 else None
            extra = {"step": done, "total_steps": total} if stage == "train" else {}
            self.on_status(progress={"stage": stage, "percent": self._percent(stage, fraction),
                                     "estimated_remaining_seconds": eta, **extra})

        return progress

    @property
    def endpoint_teacher(self) -> bool:
        return self.spec.teacher.endpoint is not None

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the data is rendered and tokenised with: the teacher's, or the student's when the
        teacher is a remote endpoint."""
        return self.found["student_tokenizer"] if self.endpoint_teacher else self.found["teacher_tokenizer"]

    @property
    def model_version(self) -> str:
        path = self.layout.stages / "run.json"
        if path.is_file():
            return json.loads(path.read_text())["model_version"]
        version = f"{self.job.metadata.name}-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"model_version": version}) + "\n")
        return version

    # ------------------------------------------------------------------ stages

    def prepare(self) -> None:
        """Everything that needs no Ray: fetch the output, refuse a changed spec, preflight checks."""
        if self.found:
            return
        self.output.pull()
        self._check_resolved_spec()
        preflight.check_spec(self.spec, self.workers)
        self.found = preflight.check_models(self.spec, self.layout)

    def run(self, *, stop_after: Stage | None = None) -> RunResult:
        self.prepare()
        result = RunResult()
        for stage in STAGES:
            if stage in LATER_STAGES and importlib.util.find_spec(f"kubedistill_jobs.{stage}") is None:
                result.missing_stages.append(stage)
                continue
            marker = self._marker(stage)
            if marker is not None and stage in self._shown:  # finished by an earlier run() of this process
                result.stages[stage] = marker
            elif marker is not None:
                log.info("stage %s: done earlier, skipped", stage)
                self.display.stage_started(stage)(1, 1)
                self.display.stage_finished(stage, self._summary(stage, marker), True)
                result.stages[stage] = marker
                self._after_skip(stage, result)
            else:
                self.on_status(progress={"stage": stage, "percent": self._percent(stage, 0.0)})
                started = time.monotonic()
                info = getattr(self, "_stage_" + stage.replace("-", "_"))(result)
                marker = self._finish(stage, info, time.monotonic() - started)
                result.stages[stage] = marker
                self.display.stage_finished(stage, self._summary(stage, marker), False)
            self._shown.add(stage)
            if stage == stop_after:
                break
        if result.missing_stages and stop_after is None:
            self.display.message(
                "compression, evaluation and export are not installed: the run stops after training"
            )
        return result

    def _after_skip(self, stage: str, result: RunResult) -> None:
        if stage == "evaluate" and self.layout.report_json.is_file():
            from kubedistill.report import load_report

            result.report = load_report(self.layout.report_json.read_text())
        if stage == "export" and self.layout.serving_manifest.is_file():
            from kubedistill.artifacts import ServingManifest

            result.manifest = ServingManifest.read(self.layout.model_repository)

    def _summary(self, stage: str, marker: dict[str, Any]) -> str:
        if stage == "data":
            dropped = f" ({marker['duplicates']} repeated texts dropped)" if marker.get("duplicates") else ""
            return f"{marker['train']} train / {marker['eval']} eval rows{dropped}"
        if stage == "teacher" and marker.get("method") == "endpoint":
            return f"endpoint {marker['url']} (model {marker['model']})"
        if stage == "teacher":
            accuracy = marker.get("accuracy")
            text = f"{marker['params'] / 1e6:.1f}M params, adaptation {marker['method']}"
            return text + (f", eval accuracy {accuracy:.4f}" if accuracy is not None else "")
        if stage == "soft-targets":
            return marker.get("summary", "")
        if stage == "train":
            last = (marker.get("history") or [{}])[-1]
            metric = " ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("eval_"))
            return f"{marker['steps']} steps, {marker['student_params'] / 1e6:.2f}M params, {metric}"
        return marker.get("summary", "")

    def split(self) -> data.Split:
        if self._split is None:
            generated = self.layout.data / GENERATED_TRAIN  # an endpoint teacher's generations (sequence-level KD)
            train = generated if generated.is_file() else self.layout.data / "train.jsonl"
            self._split = data.Split(train=data.read_jsonl(train),
                                     eval=data.read_jsonl(self.layout.data / "eval.jsonl"))
        return self._split

    def _stage_data(self, result: RunResult) -> dict[str, Any]:
        progress = self._progress("data")
        render = data.plain_chat
        tokenizer = self.tokenizer
        (self.layout.data / GENERATED_TRAIN).unlink(missing_ok=True)
        if self.spec.task.type == "causal-lm" and getattr(tokenizer, "chat_template", None):
            def render(turns: list[str]) -> str:
                roles = ("user", "assistant")
                messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
                try:  # an empty system turn: a template's default system prompt is text no model was trained on
                    return tokenizer.apply_chat_template([{"role": "system", "content": ""}, *messages],
                                                         tokenize=False)
                except Exception:  # templates without a system role
                    return tokenizer.apply_chat_template(messages, tokenize=False)
        split = data.load_split(self.spec, render)
        data.write_jsonl(split.train, self.layout.data / "train.jsonl")
        data.write_jsonl(split.eval, self.layout.data / "eval.jsonl")
        self._split = split
        progress(1, 1)
        return {"train": len(split.train), "eval": len(split.eval), "duplicates": split.duplicates}

    def _stage_teacher(self, result: RunResult) -> dict[str, Any]:
        from kubedistill_jobs import teacher

        progress = self._progress("teacher")
        if self.endpoint_teacher:  # nothing to download: check it answers, with logprobs, before any compute
            from kubedistill_jobs import endpoint_teacher

            config = endpoint_teacher.EndpointConfig.from_spec(self.spec)
            found = endpoint_teacher.probe(config, self._prompts()[0], self.tokenizer)
            progress(1, 1)
            return {"method": "endpoint", "params": None, "accuracy": None, **found}
        if self.spec.task.type == "sequence-classification":
            outcome = teacher.prepare_classification_teacher(self.spec, self.layout, self.split(), progress)
        else:
            outcome = teacher.prepare_causal_teacher(self.spec, self.layout)
            progress(1, 1)
        if outcome.accuracy is not None:
            self.on_status(metrics={"teacher_accuracy": round(outcome.accuracy, 4)})
        return {"method": outcome.method, "params": outcome.params, "accuracy": outcome.accuracy, **outcome.extra}

    def _stage_soft_targets(self, result: RunResult) -> dict[str, Any]:
        from kubedistill_jobs import soft_targets
        from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher

        progress = self._progress("soft-targets")
        cache = self.layout.soft_targets
        if self.spec.distillation.teacher_mode == "online":
            return {"mode": "online", "summary": "online mode: the teacher runs in every training step"}
        if soft_targets.exists(cache):  # written by the teacher stage from the same forward pass
            meta = soft_targets.read(cache)[1]
            progress(meta["rows"], meta["rows"])
            return {"mode": "cached", "rows": meta["rows"],
                    "summary": f"{meta['rows']} rows, class distributions (from the teacher stage's pass)"}
        if self.endpoint_teacher:
            return self._endpoint_soft_targets(self._prompts(), progress)
        train = self.split().train
        texts = [r["text"] for r in train]
        if self.spec.task.type == "sequence-classification":
            run = TeacherRun(str(self.layout.teacher), "logits", tuple(self.spec.task.labels or []),
                             self.spec.task.max_length)
            out = run_teacher(run, {"text": texts}, progress=progress)
            soft_targets.write(cache, {"logits": out["logits"], "features": out["features"]},
                               {"kind": "logits", "rows": len(train)})
            return {"mode": "cached", "rows": len(train), "summary": f"{len(train)} rows, class distributions"}
        k = self.spec.distillation.top_k
        tokens = soft_targets.tokenize_lm(self.tokenizer, texts, self.spec.task.max_length)
        run = TeacherRun(str(self.layout.teacher), "topk", max_length=self.spec.task.max_length, top_k=k)
        rows = {"input_ids": list(tokens["input_ids"]), "attention_mask": list(tokens["attention_mask"])}
        started = time.monotonic()
        out = run_teacher(run, rows, batch_size=8, progress=progress)
        n_tokens = int(tokens["attention_mask"].sum())
        soft_targets.write(cache, {**tokens, **out}, {"kind": "topk", "rows": len(train), "k": k, "tokens": n_tokens})
        rate = n_tokens / max(1e-9, time.monotonic() - started)
        return {"mode": "cached", "rows": len(train), "tokens": n_tokens, "k": k,
                "summary": f"{len(train)} rows, {n_tokens} tokens, top-{k} logits ({rate:.0f} tokens/s)"}

    def _prompts(self) -> list[str]:
        """The training texts as the data stage wrote them (an endpoint teacher's prompts)."""
        return [r["text"] for r in data.read_jsonl(self.layout.data / "train.jsonl")]

    def _endpoint_soft_targets(self, prompts: list[str], progress: Progress) -> dict[str, Any]:
        """Sequence-level KD from an endpoint: its generations become the training text, and its top-k
        logprobs (one-hot targets inside the prompts) the cache, in the student's token ids."""
        from kubedistill_jobs import endpoint_teacher, soft_targets

        k = self.spec.distillation.top_k
        config = endpoint_teacher.EndpointConfig.from_spec(self.spec)
        started = time.monotonic()
        out = endpoint_teacher.run_endpoint(config, self.tokenizer, prompts, self.spec.task.max_length,
                                            progress=progress)
        arrays = {key: out[key] for key in ("input_ids", "attention_mask", "topk_values", "topk_indices")}
        n_tokens, generated = int(arrays["attention_mask"].sum()), int(out["generated"].sum())
        dropped = int(out["dropped"].sum())
        generated_rows = [{"text": str(text), "prompt": prompt} for text, prompt in zip(out["text"], prompts,
                                                                                      strict=True)]
        data.write_jsonl(generated_rows, self.layout.data / GENERATED_TRAIN)
        soft_targets.write(self.layout.soft_targets, arrays,
                           {"kind": "topk", "rows": len(prompts), "k": k, "tokens": n_tokens, "source": "endpoint",
                            "generated_tokens": generated, "dropped_candidates": dropped})
        self._split = None
        rate = generated / max(1e-9, time.monotonic() - started)
        return {"mode": "cached", "rows": len(prompts), "tokens": n_tokens, "generated_tokens": generated,
                "dropped_candidates": dropped, "k": k,
                "summary": f"{len(prompts)} rows, {generated} generated tokens, top-{k} logprobs from the endpoint "
                           f"({rate:.0f} tokens/s)"}

    def _stage_train(self, result: RunResult) -> dict[str, Any]:
        import ray

        from kubedistill_jobs import inputs, models, train

        progress = self._progress("train")
        spec = self.spec
        tokenizer = self.found.get("student_tokenizer") or self.found["teacher_tokenizer"]
        split = self.split()
        # an endpoint teacher has no weights here: the student is pretrained (student.uri) and the cache complete
        teacher_model = None if self.endpoint_teacher else inputs.load_saved_teacher(spec, self.layout.teacher)
        student, init = inputs.student_init(spec, teacher_model, self.layout.root / "downloads" / "student")
        student_params = models.count_parameters(student)
        del teacher_model, student
        train_data = inputs.train_arrays(spec, tokenizer, split.train, self.layout.soft_targets)
        eval_data = inputs.eval_arrays(spec, tokenizer, split.eval)
        loop = loop_config(spec, str(self.layout.teacher))
        gpus = spec.ray.workers.gpus if ray.cluster_resources().get("GPU", 0) else 0

        def on_epoch(entry: dict[str, Any]) -> None:
            log.info("epoch %s", entry)
            self.display.epoch(entry)
            self.on_status(metrics={k: v for k, v in entry.items() if isinstance(v, int | float)})

        outcome = train.fit(loop, train_data, eval_data, init, storage=self.output.checkpoint_storage,
                            workers=self.workers, gpus_per_worker=gpus, progress=progress, on_epoch=on_epoch,
                            model_out=self.layout.student)
        tokenizer.save_pretrained(self.layout.student)
        teacher_marker = self._marker("teacher") or {}
        report = {
            "history": outcome.history,
            "teacher": {"params": teacher_marker.get("params"), "accuracy": teacher_marker.get("accuracy"),
                        "adaptation": teacher_marker.get("method")},
            "student": {"params": student_params},
            "seconds": outcome.seconds,
            "steps": outcome.history[-1]["step"] if outcome.history else 0,
            "resumed_from_step": outcome.resumed_from_step,
            "resumes": outcome.resumes,  # steps training restarted from (a lost worker, a rerun)
            "workers": self.workers,
            "teacher_mode": spec.distillation.teacher_mode,
            "loss": spec.distillation.loss,
        }
        self.layout.train_report.write_text(json.dumps(report, indent=2) + "\n")
        return {"steps": report["steps"], "student_params": student_params, "history": outcome.history,
                "seconds_training": outcome.seconds}

    def _stage_compress(self, result: RunResult) -> dict[str, Any]:
        from kubedistill_jobs import compress

        progress = self._progress("compress")
        outcome = compress.compress(self.spec, self.layout, progress=progress)
        return {"summary": str(outcome) if isinstance(outcome, str) else "done"}

    def _stage_evaluate(self, result: RunResult) -> dict[str, Any]:
        from kubedistill_jobs import evaluate

        progress = self._progress("evaluate")
        report = evaluate.evaluate(self.spec, self.layout, self.model_version, progress=progress)
        result.report = report
        retention = "unknown" if report.retention is None else f"{report.retention:.4f}"
        return {"retention": report.retention, "gate_passed": report.gate.passed,
                "summary": f"retention {retention}, gate {'passed' if report.gate.passed else 'NOT met'}"}

    def _stage_export(self, result: RunResult) -> dict[str, Any]:
        from kubedistill_jobs import export

        progress = self._progress("export")
        if result.report is None:
            from kubedistill.report import load_report

            result.report = load_report(self.layout.report_json.read_text())
        result.manifest = export.export(self.spec, self.layout, result.report)
        progress(1, 1)
        return {"model_version": result.manifest.model_version, "summary": str(self.layout.model_repository)}


def loop_config(spec: DistillationJobSpec, teacher_dir: str, **overrides: Any) -> Any:
    from kubedistill_jobs.train import LoopConfig

    d, t = spec.distillation, spec.training
    values = dict(
        task=spec.task.type, loss=d.loss, temperature=d.temperature, alpha=d.alpha, beta=d.beta,
        teacher_mode=d.teacher_mode, hidden_states=d.hidden_states.enabled, hidden_weight=d.hidden_states.weight,
        epochs=t.resolved_epochs, max_steps=t.max_steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
        weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, seed=t.seed,
        checkpoint_every=t.checkpoint_every_steps, mixed_precision=t.mixed_precision, teacher_dir=teacher_dir,
    )
    values.update(overrides)
    return LoopConfig(**values)

