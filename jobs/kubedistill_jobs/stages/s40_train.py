"""Train the student on the teacher's soft targets with Ray Train (N workers, checkpoints in the output);
writes `student/` and `train_report.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs.context import Context, Progress

NAME: Stage = "train"
WEIGHT = 50
UNIT = "steps"
READS = ("data", "teacher", "soft_targets")
WRITES = ("checkpoints", "student", "train_report")

log = logging.getLogger("kubedistill.pipeline")


@dataclass
class TrainingInputs:
    """What the training workers receive (`train.fit`'s arguments) and the student's size."""

    loop: Any  # recipe.LoopConfig
    train_data: dict[str, Any]
    eval_data: dict[str, Any]
    init: dict[str, Any]
    student_params: int
    tokenizer: Any  # the student's: the teacher's, unless its vocabulary is trimmed
    vocabulary: Any = None  # inputs.TrimmedVocabulary, when student.fromTeacher.vocabulary is corpus


def training_inputs(context: Context) -> TrainingInputs:
    """The loop's settings, the tokenised splits with the cached teacher outputs, and the initial student."""
    from kubedistill_jobs import inputs, models, soft_targets
    from kubedistill_jobs.recipe import LoopConfig

    spec, layout = context.spec, context.layout
    tokenizer = context.found.get("student_tokenizer") or context.found["teacher_tokenizer"]
    split = context.split()
    # an endpoint teacher has no weights here: the student is pretrained (student.uri) and the cache complete
    teacher_model = models.load_saved_model(layout.teacher, spec.task.type) if context.teacher_has_graph else None
    train_data = inputs.train_arrays(spec, tokenizer, split.train, layout.soft_targets)
    calibration = inputs.calibration_rows(spec, train_data)  # the teacher's own ids: it ranks the channels
    trimmed = None
    if spec.student.from_teacher is not None and spec.student.from_teacher.vocabulary == "corpus":
        sequence_level = spec.distillation.sequence_level
        train_data, trimmed = inputs.trim_vocabulary(
            tokenizer, train_data, completion_only=sequence_level is not None and sequence_level.completion_only_loss)
        tokenizer = trimmed.tokenizer
        record = trimmed.record()
        log.info("vocabulary trimmed to the training data's tokens: %d of the teacher's %d (%.2f%% of the "
                 "teacher's top-k candidates fall outside, %.2f%% of its probability)", record["student"],
                 record["teacher"], 100 * record["dropped_candidate_share"], 100 * record["dropped_probability"])
    student, init = inputs.student_init(spec, teacher_model, layout.downloads / "student", calibration=calibration,
                                        kept_tokens=None if trimmed is None else trimmed.kept)
    student_params = models.count_parameters(student)
    del teacher_model, student
    loop = LoopConfig.from_spec(spec, str(layout.teacher),
                                vocab_size=len(tokenizer) if spec.task.type == "causal-lm" else None,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cached = spec.distillation.teacher_mode == "cached" and spec.task.type == "causal-lm"
    return TrainingInputs(
        loop=dataclasses.replace(loop, topk_logprobs=cached and soft_targets.holds_logprobs(layout.soft_targets)),
        train_data=train_data,
        eval_data=inputs.eval_arrays(spec, tokenizer, split.eval),
        init=init,
        student_params=student_params,
        tokenizer=tokenizer,
        vocabulary=trimmed,
    )


def run(context: Context, progress: Progress) -> dict[str, Any]:
    import ray

    from kubedistill_jobs import models, train

    spec, layout = context.spec, context.layout
    prepared = training_inputs(context)
    gpus = spec.ray.workers.gpus if ray.cluster_resources().get("GPU", 0) else 0
    cpus = train.cpus_per_worker(ray.nodes(), context.workers)

    def on_epoch(entry: dict[str, Any]) -> None:
        log.info("epoch %s", entry)
        context.display.epoch(entry)
        context.on_status(metrics={k: v for k, v in entry.items() if isinstance(v, int | float)})

    outcome = train.fit(prepared.loop, prepared.train_data, prepared.eval_data, prepared.init,
                        storage=context.output.checkpoint_storage, workers=context.workers, gpus_per_worker=gpus,
                        cpus_per_worker=cpus,
                        progress=progress, on_epoch=on_epoch, model_out=layout.student)
    models.save_tokenizer(prepared.tokenizer, layout.student)
    teacher_marker = context.marker("teacher") or {}
    report = {
        "history": outcome.history,
        "teacher": {"params": teacher_marker.get("params"), "accuracy": teacher_marker.get("accuracy"),
                    "adaptation": teacher_marker.get("method")},
        "student": {"params": prepared.student_params},
        "seconds": outcome.seconds,
        "steps": outcome.history[-1]["step"] if outcome.history else 0,
        "resumed_from_step": outcome.resumed_from_step,
        "resumes": outcome.resumes,  # steps training restarted from (a lost worker, a rerun)
        "workers": context.workers,
        "cpus_per_worker": cpus,
        "teacher_mode": spec.distillation.teacher_mode,
        "loss": spec.distillation.loss,
        "on_policy": spec.distillation.on_policy,
        "cross_tokenizer": context.found.get("cross_tokenizer"),  # None: logit KD over a shared vocabulary
        "vocabulary": None if prepared.vocabulary is None else prepared.vocabulary.record(),
    }
    layout.train_report.write_text(json.dumps(report, indent=2) + "\n")
    return {"steps": report["steps"], "student_params": prepared.student_params, "history": outcome.history,
            "seconds_training": outcome.seconds}


def summary(marker: dict[str, Any]) -> str:
    last = (marker.get("history") or [{}])[-1]
    metric = " ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("eval_"))
    return f"{marker['steps']} steps, {marker['student_params'] / 1e6:.2f}M params, {metric}"
