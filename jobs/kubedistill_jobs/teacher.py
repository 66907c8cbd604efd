"""The teacher stage: make the teacher ready for the task and save it to `layout.teacher`.

Classification: a teacher without a trained head for the task's labels is adapted first (task-specific
distillation, as DistilBERT and TextBrewer do) and its eval accuracy is reported:
- `head`: a linear classifier fitted (L-BFGS; L2 and scale by cross-validation on train) on the frozen
  teacher's pooled features; feature standardisation is folded into the BERT pooler's dense layer, so
  the saved model computes exactly what was fitted.
- `finetune`: the whole teacher trained on the labelled train split (a Ray task; a GPU where there is one).
- `none`: used as it is.
Causal LM: the teacher is saved as an fp32 copy (a GGUF checkpoint dequantised once).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill.artifacts import OutputLayout
from kubedistill_jobs import models, soft_targets
from kubedistill_jobs.data import Split
from kubedistill_jobs.teacher_outputs import TeacherRun, run_teacher

Progress = Callable[[int, int], None]
# The pooler computes tanh(scale · standardised feature): small scales keep it near-linear.
POOLER_SCALES = (0.1, 0.25, 0.5)
L2_GRID = (1e-4, 1e-3, 1e-2)


@dataclass
class TeacherResult:
    method: str
    params: int
    accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def teacher_source(spec: DistillationJobSpec, layout: OutputLayout) -> str:
    assert spec.teacher.uri is not None
    source = models.model_source(spec.teacher.uri, "teacher.uri", layout.downloads / "teacher")
    models.check_model_files(source, "teacher.uri", spec.teacher.gguf_file)
    return source


def _fit_linear(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> tuple[Any, Any]:
    import torch

    features, targets = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.long)
    weight = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, targets) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _pooled(features: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float) -> np.ndarray:
    return np.tanh(scale * (features - mean) / std)


def _cv_accuracy(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, folds: list[np.ndarray]) -> float:
    import torch

    scores = []
    for held in folds:
        fit = np.setdiff1d(np.arange(len(x)), held)
        w, b = _fit_linear(x[fit], y[fit], num_classes, l2)
        logits = torch.as_tensor(x[held], dtype=torch.float64) @ w.T + b
        scores.append(float((logits.argmax(1).numpy() == y[held]).mean()))
    return float(np.mean(scores))


def fit_head(model: Any, train_x: np.ndarray, train_y: np.ndarray, num_classes: int, seed: int) -> dict[str, float]:
    """Fit the classifier on frozen features and write it (and the folded standardisation) into the model.
    The pooler scale and L2 strength are chosen by 3-fold cross-validation on train; returns them."""
    import torch

    pooler = getattr(model.base_model, "pooler", None)
    classifier = getattr(model, "classifier", None)
    if pooler is None or not isinstance(getattr(pooler, "dense", None), torch.nn.Linear) or not isinstance(
        classifier, torch.nn.Linear
    ):
        raise models.ModelError(
            "teacher.adapt.method: `head` fits BERT-style teachers (a pooler and a linear classifier); "
            "use `finetune` for this teacher"
        )
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    folds = np.array_split(np.random.default_rng(seed).permutation(len(train_x)), 3)
    grid = [(scale, l2) for scale in POOLER_SCALES for l2 in L2_GRID]
    if len(train_x) >= 3 * num_classes:
        scale, l2 = max(grid, key=lambda g: _cv_accuracy(_pooled(train_x, mean, std, g[0]), train_y,
                                                         num_classes, g[1], folds))
    else:
        scale, l2 = POOLER_SCALES[1], L2_GRID[1]
    weight, bias = _fit_linear(_pooled(train_x, mean, std, scale), train_y, num_classes, l2)
    with torch.no_grad():
        folded = torch.as_tensor(scale / std, dtype=torch.float32)
        pooler.dense.weight.copy_(torch.diag(folded))
        pooler.dense.bias.copy_(-folded * torch.as_tensor(mean, dtype=torch.float32))
        classifier.weight.copy_(weight.float())
        classifier.bias.copy_(bias.float())
    return {"pooler_scale": scale, "l2": l2}


def head_logits(model: Any, features: np.ndarray) -> np.ndarray:
    """The fitted model's logits from its pre-pooler features (the same arithmetic as its forward pass)."""
    import torch

    with torch.no_grad():
        x = torch.as_tensor(features, dtype=torch.float32)
        return model.classifier(model.base_model.pooler.activation(model.base_model.pooler.dense(x))).numpy()


def _finetune_task(source: str, labels: list[str], texts: list[str], targets: list[int], max_length: int,
                   epochs: int, learning_rate: float, batch_size: int, seed: int) -> dict[str, Any]:
    import torch

    torch.manual_seed(seed)
    model, _ = models.load_classification_teacher(source, labels)
    tokenizer = models.load_tokenizer(source)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    generator = np.random.default_rng(seed)
    for _ in range(epochs):
        order = generator.permutation(len(texts))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in idx], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt").to(device)
            loss = model(**batch, labels=torch.as_tensor([targets[i] for i in idx], device=device)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {k: v.cpu() for k, v in model.state_dict().items()}


def finetune(spec: DistillationJobSpec, source: str, split: Split) -> Any:
    """Fine-tune the whole teacher on the labelled train split in a Ray task (one GPU where there is one)."""
    import ray

    labels = spec.task.labels or []
    rows = [r for r in split.train if "label" in r]
    if not rows:
        raise models.ModelError("teacher.adapt.method: `finetune` needs labelled data (dataset.labelField)")
    gpus = 1 if ray.cluster_resources().get("GPU", 0) else 0
    cpus = max(1, int(ray.available_resources().get("CPU", 1))) if not gpus else 1
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_finetune_task)
    state = ray.get(task.remote(
        source, labels, [r["text"] for r in rows], [r["label"] for r in rows], spec.task.max_length,
        spec.teacher.adapt.epochs, spec.teacher.adapt.learning_rate, min(16, spec.training.batch_size),
        spec.training.seed,
    ))
    model, _ = models.load_classification_teacher(source, labels)
    model.load_state_dict(state)
    return model.eval()


def _accuracy(logits: np.ndarray, rows: list[dict]) -> float | None:
    labelled = [(i, r["label"]) for i, r in enumerate(rows) if "label" in r]
    if not labelled:
        return None
    idx, gold = zip(*labelled, strict=True)
    return float((logits[list(idx)].argmax(-1) == np.asarray(gold)).mean())


def prepare_classification_teacher(
    spec: DistillationJobSpec, layout: OutputLayout, split: Split, progress: Progress | None = None
) -> TeacherResult:
    labels = spec.task.labels or []
    source = teacher_source(spec, layout)
    model, has_head = models.load_classification_teacher(source, labels)
    tokenizer = models.load_tokenizer(source)
    method = spec.teacher.adapt.method
    if method == "auto":
        method = "none" if has_head else "head"
    texts = [r["text"] for r in split.train + split.eval]
    n_train = len(split.train)
    extra: dict[str, Any] = {"had_head": has_head}
    if method == "head":
        labelled = [i for i, r in enumerate(split.train) if "label" in r]
        if not labelled:
            raise models.ModelError("teacher.adapt.method: `head` needs labelled data (dataset.labelField)")
        run = TeacherRun(source, "features", tuple(labels), spec.task.max_length)
        features = run_teacher(run, {"text": texts}, progress=progress)["features"]
        train_y = np.asarray([split.train[i]["label"] for i in labelled])
        extra.update(fit_head(model, features[labelled], train_y, len(labels), spec.training.seed))
        models.save_model(model, tokenizer, layout.teacher)
        logits = head_logits(model, features)
        if spec.distillation.teacher_mode == "cached":  # the teacher's outputs on train are already known
            soft_targets.write(layout.soft_targets, {"logits": logits[:n_train], "features": features[:n_train]},
                               {"kind": "logits", "rows": n_train, "from": "teacher-stage"})
        accuracy = _accuracy(logits[n_train:], split.eval)
    else:
        if method == "finetune":
            model = finetune(spec, source, split)
        models.save_model(model, tokenizer, layout.teacher)
        run = TeacherRun(str(layout.teacher), "logits", tuple(labels), spec.task.max_length)
        logits = run_teacher(run, {"text": [r["text"] for r in split.eval]}, progress=progress)["logits"]
        accuracy = _accuracy(logits, split.eval)
    return TeacherResult(method=method, params=models.count_parameters(model), accuracy=accuracy, extra=extra)


def prepare_causal_teacher(spec: DistillationJobSpec, layout: OutputLayout) -> TeacherResult:
    source = teacher_source(spec, layout)
    model = models.load_causal_teacher(source, spec.teacher.gguf_file)
    tokenizer = models.load_tokenizer(source, spec.teacher.gguf_file)
    models.save_model(model, tokenizer, layout.teacher)
    return TeacherResult(method="none", params=models.count_parameters(model))
