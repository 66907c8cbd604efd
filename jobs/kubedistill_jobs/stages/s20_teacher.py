"""Make the teacher ready for the task and save it to `teacher/` (classification: adapt it to the labels;
causal LM: an fp32 copy), or check that an endpoint teacher answers with logprobs before any compute.
A language-model teacher (`teacher.prompt`) labels both splits here (see kubedistill_jobs.prompt_teacher), and
several teachers (`teachers`) each label them and are combined (kubedistill_jobs.ensemble)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubedistill.artifacts import Stage
from kubedistill_jobs.context import Context, Progress

NAME: Stage = "teacher"
WEIGHT = 15
UNIT = "rows"
READS = ("data",)
WRITES = ("teacher", "soft_targets", "teacher_outputs")  # a fitted head's or an LLM's pass caches class logits


def run(context: Context, progress: Progress) -> dict[str, Any]:
    from kubedistill_jobs import teacher

    spec = context.spec
    if context.ensemble:
        from kubedistill_jobs import ensemble

        marker = ensemble.prepare(spec, context.layout, context.split(), progress, on_usage=_usage_reporter(context))
        if marker.get("accuracy") is not None:
            context.on_status(metrics={"teacher_accuracy": round(marker["accuracy"], 4)})
        return marker
    if context.prompt_teacher:
        from kubedistill_jobs import prompt_teacher

        marker = prompt_teacher.prepare(spec, context.layout, context.split(), progress,
                                        on_usage=_usage_reporter(context))
        metrics = {k: round(marker[k], 4) for k in ("accuracy", "majority_baseline", "cost")
                   if marker.get(k) is not None}
        metrics.update({k: float(marker[k]) for k in ("prompt_tokens", "completion_tokens") if marker.get(k)})
        context.on_status(metrics={f"teacher_{k}": v for k, v in metrics.items()})
        return marker
    if context.endpoint_teacher:  # nothing to download: check it answers, with logprobs, before any compute
        from kubedistill_jobs import endpoint_teacher

        config = endpoint_teacher.EndpointConfig.from_spec(spec)
        found = endpoint_teacher.probe(config, context.prompts()[0], context.tokenizer)
        progress(1, 1)
        return {"method": "endpoint", "params": None, "accuracy": None, **found}
    if spec.task.type == "sequence-classification":
        outcome = teacher.prepare_classification_teacher(spec, context.layout, context.split(), progress)
    else:
        outcome = teacher.prepare_causal_teacher(spec, context.layout)
        progress(1, 1)
    if outcome.accuracy is not None:
        context.on_status(metrics={"teacher_accuracy": round(outcome.accuracy, 4)})
    return {"method": outcome.method, "params": outcome.params, "accuracy": outcome.accuracy, **outcome.extra}


def _usage_reporter(context: Context) -> Callable[[int, int], None]:
    """Token usage and cost of an endpoint teacher into the job's live metrics, every few seconds at most."""
    endpoint = next((t.endpoint for _, t in context.spec.all_teachers() if t.endpoint is not None), None)
    pricing = endpoint.pricing if endpoint else None
    last = [0.0]

    def report(prompt_tokens: int, completion_tokens: int) -> None:
        now = time.monotonic()
        if now - last[0] < 5:
            return
        last[0] = now
        metrics = {"teacher_prompt_tokens": float(prompt_tokens), "teacher_completion_tokens": float(completion_tokens)}
        if pricing is not None:
            metrics["teacher_cost"] = round((prompt_tokens * pricing.input_per_million
                                             + completion_tokens * pricing.output_per_million) / 1e6, 6)
        context.on_status(metrics=metrics)

    return report


def summary(marker: dict[str, Any]) -> str:
    if marker.get("method") == "ensemble":
        from kubedistill_jobs import ensemble

        return ensemble.summary(marker)
    if marker.get("method") == "prompt":
        from kubedistill_jobs import prompt_teacher

        return prompt_teacher.summary(marker)
    if marker.get("method") == "endpoint":
        return f"endpoint {marker['url']} (model {marker['model']})"
    accuracy = marker.get("accuracy")
    text = f"{marker['params'] / 1e6:.1f}M params, adaptation {marker['method']}"
    return text + (f", eval accuracy {accuracy:.4f}" if accuracy is not None else "")
