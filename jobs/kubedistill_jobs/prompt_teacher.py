"""The teacher stage for a language-model teacher (`teacher.prompt`): label the train and eval texts once,
write the train split's soft targets (`soft_targets/`, class log-probabilities as logits) and the record of
both splits (`teacher_outputs/`), and measure the teacher against gold labels and the majority class.

With `distillation.teacherOutputsUri` the record of an earlier job is reused and the teacher is not run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs import llm_teacher, soft_targets, teacher_record
from kubedistill_jobs.data import Split

Progress = Callable[[int, int], None]
METHOD = "full-answer scoring"


def gold_accuracy(logprobs: np.ndarray, rows: list[dict[str, Any]]) -> float | None:
    """Accuracy of the argmax on the rows that carry a gold label; None when none does."""
    labelled = [(i, r["label"]) for i, r in enumerate(rows) if "label" in r]
    if not labelled:
        return None
    idx, gold = zip(*labelled, strict=True)
    return float((logprobs[list(idx)].argmax(-1) == np.asarray(gold)).mean())


def majority_baseline(train: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> float | None:
    """Accuracy on eval of always answering train's most common gold label (the bar a teacher must clear)."""
    train_gold = [r["label"] for r in train if "label" in r]
    eval_gold = [r["label"] for r in eval_rows if "label" in r]
    if not train_gold or not eval_gold:
        return None
    majority = np.bincount(train_gold).argmax()
    return float(np.mean(np.asarray(eval_gold) == majority))


def _label(spec: DistillationJobSpec, layout: OutputLayout, prompt: llm_teacher.LabelPrompt, texts: list[str],
           progress: Progress) -> tuple[llm_teacher.Labelled, int]:
    from kubedistill_jobs import models
    from kubedistill_jobs.teacher import prepare_causal_teacher

    if not (layout.teacher / "config.json").is_file():  # an fp32 copy, once (a GGUF dequantised)
        prepare_causal_teacher(spec, layout)
    model = models.load_causal_teacher(str(layout.teacher), None).eval()
    tokenizer = models.load_tokenizer(str(layout.teacher))
    calibrated = spec.teacher.prompt is not None and spec.teacher.prompt.calibrate
    out = llm_teacher.label_texts(model, tokenizer, prompt, texts, max_tokens=spec.task.max_length,
                                  calibrated=calibrated, progress=progress)
    return out, models.count_parameters(model)


def _ask_endpoint(spec: DistillationJobSpec, layout: OutputLayout, prompt: llm_teacher.LabelPrompt,
                  texts: list[str], progress: Progress, on_usage: Callable[[int, int], None] | None,
                  ) -> tuple[np.ndarray, dict[str, Any]]:
    from kubedistill_jobs import chat_teacher

    config = chat_teacher.ChatConfig.from_spec(spec)
    teacher = chat_teacher.ChatTeacher(config, prompt)
    out = chat_teacher.label_texts(teacher, texts, layout.teacher_journal, progress=progress, on_usage=on_usage)
    kinds = out.kinds
    prompt_tokens, completion_tokens = int(out.prompt_tokens.sum()), int(out.completion_tokens.sum())
    return out.logprobs, {
        "method": f"{config.api} completions, first-token logprobs" if "soft" in kinds
        else f"{config.api} completions, answers only (no logprobs)",
        "model": f"{config.model} at {config.url}", "hard_labels": "soft" not in kinds,
        "hard_rows": kinds.count("hard"), "unmatched_answers": kinds.count("unmatched"),
        "prompt_tokens_array": out.prompt_tokens, "completion_tokens_array": out.completion_tokens,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "cost": config.cost(prompt_tokens, completion_tokens), "sent": out.sent, "retried": out.retried,
    }


def prepare(spec: DistillationJobSpec, layout: OutputLayout, split: Split, progress: Progress,
            on_usage: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Label both splits (or reuse a record); returns the stage's marker fields. `on_usage(prompt tokens,
    completion tokens)` follows an endpoint's token usage as answers arrive."""
    prompt = llm_teacher.LabelPrompt.from_spec(spec)
    labels = list(prompt.labels)
    texts = [r["text"] for r in split.train + split.eval]
    n_train = len(split.train)
    started = time.monotonic()
    reused = spec.distillation.teacher_outputs_uri
    if reused:
        from kubedistill_jobs import models

        folder = models.model_source(reused, "distillation.teacherOutputsUri", layout.downloads / "teacher_outputs")
        logprobs, meta = teacher_record.reuse(Path(folder), texts, labels, prompt.template_hash)
        progress(len(texts), len(texts))
        raw, prior, params, prompt_tokens = None, meta.get("prior"), None, np.zeros(len(texts), dtype=np.int64)
        model_id, calibrated = meta.get("model"), bool(meta.get("sampling", {}).get("calibrated"))
        method, extra = meta.get("sampling", {}).get("method", METHOD), {}
        completion_tokens = np.zeros(len(texts), dtype=np.int64)
    elif spec.teacher.endpoint is not None:
        logprobs, extra = _ask_endpoint(spec, layout, prompt, texts, progress, on_usage)
        prompt_tokens, completion_tokens = extra.pop("prompt_tokens_array"), extra.pop("completion_tokens_array")
        raw, prior, params, calibrated = None, None, None, False
        model_id, method = extra.pop("model"), extra.pop("method")
    else:
        out, params = _label(spec, layout, prompt, texts, progress)
        logprobs, raw, prompt_tokens = out.logprobs, out.raw if out.calibrated is not None else None, out.prompt_tokens
        prior = out.prior.tolist() if out.prior is not None else None
        calibrated = out.calibrated is not None
        method, extra = METHOD, {}
        completion_tokens = np.zeros(len(texts), dtype=np.int64)
        model_id = spec.teacher.uri + (f"#{spec.teacher.gguf_file}" if spec.teacher.gguf_file else "")
    seconds = max(1e-9, time.monotonic() - started)
    meta = {"model": model_id, "labels": labels, "answers": list(prompt.answers), "system": prompt.system,
            "user": prompt.user, "few_shot": [list(s) for s in prompt.few_shot],
            "template_hash": prompt.template_hash,
            "sampling": {"method": method, "temperature": 0.0 if spec.teacher.endpoint else 1.0,
                         "calibrated": calibrated, "content_free": list(llm_teacher.CONTENT_FREE),
                         "max_text_tokens": spec.task.max_length},
            "prior": prior, "source": reused or "teacher"}
    teacher_record.TeacherRecord(
        split=["train"] * n_train + ["eval"] * len(split.eval), texts=texts, logprobs=logprobs, raw_logprobs=raw,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, meta=meta,
    ).write(layout.teacher_outputs)
    soft_targets.write(layout.soft_targets, {"logits": logprobs[:n_train].astype(np.float32)},
                       {"kind": "logits", "rows": n_train, "from": "teacher-stage", "source": "prompt"})
    eval_logprobs = logprobs[n_train:]
    accuracy = gold_accuracy(eval_logprobs, split.eval)
    predicted = np.bincount(logprobs.argmax(-1), minlength=len(labels)) if len(logprobs) else np.zeros(len(labels))
    return {
        "unmatched_answers": 0,  # every label is scored by a local teacher: no free-form answer to match
        "completion_tokens": int(completion_tokens.sum()), **extra,
        "method": "prompt", "generation": method, "params": params, "model": model_id, "accuracy": accuracy,
        "accuracy_uncalibrated": gold_accuracy(raw[n_train:], split.eval) if raw is not None else None,
        "majority_baseline": majority_baseline(split.train, split.eval),
        "calibrated": meta["sampling"]["calibrated"], "prior": prior,
        "predicted_share": {label: round(float(c) / max(1, len(logprobs)), 4) for label, c in zip(
            labels, predicted, strict=True)},
        "rows": len(texts), "prompt_tokens": int(prompt_tokens.sum()), "rows_per_second": len(texts) / seconds,
        "template_hash": prompt.template_hash, "reused": reused,
    }


def summary(marker: dict[str, Any]) -> str:
    """One line: the teacher against gold and the majority class."""
    accuracy, baseline = marker.get("accuracy"), marker.get("majority_baseline")
    text = f"{marker['rows']} rows labelled by {marker.get('model')} ({marker.get('generation', METHOD)}"
    text += ", calibrated)" if marker.get("calibrated") else ")"
    if marker.get("reused"):
        text += f", reused from {marker['reused']}"
    else:
        text += f", {marker['rows_per_second']:.1f} rows/s"
    if marker.get("hard_labels"):
        text += ", hard-label distillation (no logprobs from the teacher)"
    if marker.get("unmatched_answers"):
        text += f", {marker['unmatched_answers']} answers matched no label"
    if marker.get("cost") is not None:
        text += f", cost {marker['cost']:.4f}"
    if accuracy is not None:
        text += f", eval accuracy {accuracy:.4f}"
        if baseline is not None:
            text += f" (majority class {baseline:.4f})"
    return text
