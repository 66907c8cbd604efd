"""The mid-size models of `evaluation.tiers`: checked before any compute, exported to ONNX as the teacher is, and
scored with the student and the teacher as one cascade (kubedistill_jobs.cascade) for the report's `cascade`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill.confidence import confidence, softmax
from kubedistill.errors import InputError
from kubedistill.report import Cascade, CascadeModel, CascadeSetting
from kubedistill_jobs.cascade import CascadeFrontier, CascadePoint, cascade_frontier


class TierError(InputError):
    """An evaluation tier that cannot be evaluated with this job."""


@dataclass(frozen=True)
class TierModel:
    name: str
    uri: str
    onnx: Path
    tokenizer: Any
    params: int


def _source(spec: DistillationJobSpec, layout: OutputLayout, index: int) -> str:
    from kubedistill_jobs import models

    assert spec.evaluation.tiers is not None
    tier = spec.evaluation.tiers[index]
    field = f"evaluation.tiers[{index}].uri"
    try:
        source = models.model_source(tier.uri, field, layout.downloads / f"tier-{tier.name}")
        models.check_model_files(source, field)
    except models.ModelError as error:
        raise TierError(str(error)) from None
    return source


def check_labels(config: Any, labels: list[str], field: str) -> None:
    """A tier must score task.labels in their order: its head has len(labels) outputs, and its id2label, when it
    names classes (not transformers' LABEL_i placeholders), names exactly these. TierError naming `field`."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if len(names) != len(labels):
        raise TierError(f"{field}: the model scores {len(names)} classes, task.labels has {len(labels)}: a tier must "
                        "be a classifier over task.labels (e.g. another job's student with the same labels)")
    if names != labels and names != [f"LABEL_{i}" for i in range(len(names))]:
        raise TierError(f"{field}: the model's classes are {names}, task.labels are {labels}: a tier must score the "
                        "same labels in the same order")


def check_tiers(spec: DistillationJobSpec, layout: OutputLayout) -> None:
    """Every tier exists and scores task.labels, from its config alone (before any compute)."""
    from kubedistill_jobs import models

    for index, _ in enumerate(spec.evaluation.tiers or []):
        field = f"evaluation.tiers[{index}].uri"
        try:
            config = models.load_config(_source(spec, layout, index), field)
        except models.ModelError as error:
            raise TierError(str(error)) from None
        check_labels(config, spec.task.labels or [], field)


def prepare_tiers(spec: DistillationJobSpec, layout: OutputLayout) -> list[TierModel]:
    """Each tier as an fp32 ONNX graph in onnx/tier-<name>.onnx (exported once; a rerun reuses it)."""
    from kubedistill_jobs import models
    from kubedistill_jobs.onnx_export import export_onnx

    out = []
    for index, tier in enumerate(spec.evaluation.tiers or []):
        source = _source(spec, layout, index)
        field = f"evaluation.tiers[{index}].uri"
        check_labels(models.load_config(source, field), spec.task.labels or [], field)
        model = models.auto_model_class(spec.task.type).from_pretrained(source, dtype="float32").eval()
        tokenizer = models.load_tokenizer(source)
        path = layout.onnx / f"tier-{tier.name}.onnx"
        if not path.is_file():
            export_onnx(model, tokenizer, path, task=spec.task.type, max_length=spec.task.max_length)
        out.append(TierModel(tier.name, tier.uri, path, tokenizer, models.count_parameters(model)))
    return out


def _setting(point: CascadePoint, names: list[str], teacher_cost: float) -> CascadeSetting:
    def by_name(values: tuple[float, ...]) -> dict[str, float]:
        return {n: round(v, 4) for n, v in zip(names, values, strict=False)}

    return CascadeSetting(thresholds={n: float(t) for n, t in zip(names, point.thresholds, strict=False)},
                          reach=by_name(point.reach), answered=by_name(point.answered),
                          accuracy=round(point.accuracy, 4), cost=point.cost,
                          relative_cost=round(point.cost / teacher_cost, 4))


def cascade_report(spec: DistillationJobSpec, tiers: list[TierModel], logits: dict[str, np.ndarray],
                   gold: np.ndarray | None, params: Mapping[str, int | None],
                   latency: dict[str, dict[str, dict[str, float]]] | None) -> Cascade:
    """The cascade student_quantized → tiers → teacher on the eval split. `logits` holds every model's (n,
    classes) logits by name (student_quantized, teacher, each tier's name); `latency`, when measured, every
    model's (measure_latency); otherwise the parameter counts are the unit costs."""
    names = ["student", *(t.name for t in tiers), "teacher"]
    keys = ["student_quantized", *(t.name for t in tiers), "teacher"]
    reference = gold if gold is not None else logits["teacher"].argmax(-1)
    correct = [logits[k].argmax(-1) == reference for k in keys]
    confs = [confidence(softmax(logits[k]), "max-probability") for k in keys[:-1]]
    tier_params: dict[str, int | None] = {**params, **{t.name: t.params for t in tiers}}
    if latency is not None:
        basis, costs = "latency", [latency[k]["batch1"]["p50"] for k in keys]
    else:
        if any(tier_params.get(k) is None for k in keys):
            raise ValueError("cascade: a model's parameter count is unknown; list latency in evaluation.metrics")
        basis, costs = "parameters", [float(tier_params[k] or 0) for k in keys]
    fr: CascadeFrontier = cascade_frontier(names, confs, correct, costs, cost_basis=basis,
                                           target=spec.evaluation.routing_target)
    uris = {t.name: t.uri for t in tiers}
    return Cascade(
        models=[CascadeModel(name=n, uri=uris.get(n), params=tier_params.get(k), unit_cost=c,
                             accuracy=round(float(ok.mean()), 4))
                for n, k, c, ok in zip(names, keys, costs, correct, strict=True)],
        cost_basis=basis,
        target=fr.target, teacher_accuracy=round(fr.teacher_accuracy, 4),
        recommended=_setting(fr.recommended, names, costs[-1]) if fr.recommended else None,
        frontier=[_setting(p, names, costs[-1]) for p in fr.points],
    )
