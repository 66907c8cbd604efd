"""The training stage: Ray Train `TorchTrainer`, N workers (DDP; gloo on CPU, nccl on GPU, mixed precision
on GPU), distillation loss from `losses`, checkpoints every N steps in the job's output storage.

Everything a worker needs travels through the Ray object store (tokenised data, cached teacher outputs,
the initial student), so workers on other nodes need no shared filesystem; only an online teacher is
loaded from `layout.teacher` (a PVC or the local disk).

Resume: each checkpoint holds model, optimizer, schedule, step and history. A worker failure restarts the
worker group from the last checkpoint (`FailureConfig`); a rerun of the job finds the latest checkpoint in
the output and continues the step count from there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

Progress = Callable[[int, int], None]
STATE_FILE = "state.pt"
STEP_FILE = "step.json"


@dataclass(frozen=True)
class LoopConfig:
    """The training loop's settings (plain values, sent to every worker)."""

    task: str
    loss: str = "forward-kl"
    temperature: float = 2.0
    alpha: float = 0.5
    beta: float = 0.5
    teacher_mode: str = "cached"
    hidden_states: bool = False
    hidden_weight: float = 1.0
    epochs: int | None = 3
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    seed: int = 42
    checkpoint_every: int = 200
    mixed_precision: str = "auto"
    teacher_dir: str | None = None
    eval_batch_size: int = 64
    # causal-lm: the tokenizer's size, the token range teacher and student share (their logits may be padded)
    vocab_size: int | None = None
    # Fault injection for recovery tests: the last rank exits at this step, once (see fit's crash_marker).
    crash_at_step: int | None = None

    def total_steps(self, n_train: int) -> int:
        return self.max_steps or (self.epochs or 1) * steps_per_epoch(n_train, self.batch_size)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, n_train // batch_size)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


# ------------------------------------------------------------------------------------------- worker side


def _autocast(device: Any, mode: str) -> tuple[Any, bool]:
    """(autocast context, whether a GradScaler is needed) for the mixed-precision setting."""
    import contextlib

    import torch

    if device.type != "cuda" or mode == "no":
        return contextlib.nullcontext(), False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), dtype == torch.float16


def _load_teacher(cfg: LoopConfig, device: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if cfg.task == "sequence-classification" else AutoModelForCausalLM
    teacher = auto.from_pretrained(cfg.teacher_dir, torch_dtype=torch.float32).to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


SEQUENCE_KEYS = ("input_ids", "attention_mask", "topk_values", "topk_indices")


def _batch(data: dict[str, np.ndarray], idx: np.ndarray, device: Any) -> dict[str, Any]:
    """Rows `idx` as tensors, cut to the longest sequence among them (the arrays are right-padded)."""
    import torch

    length = max(1, int(data["attention_mask"][idx].sum(1).max()))
    return {k: torch.as_tensor(v[idx][:, :length] if k in SEQUENCE_KEYS else v[idx]).to(device)
            for k, v in data.items()}


def _step_loss(cfg: LoopConfig, model: Any, teacher: Any, projection: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """Forward student (and an online teacher) on one batch; the loss and its parts."""
    import torch

    from kubedistill_jobs import losses

    ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=cfg.hidden_states)
    teacher_out = None
    if teacher is not None:
        with torch.no_grad():
            teacher_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=cfg.hidden_states)
    topk_indices = None
    if cfg.task == "sequence-classification":
        logits, labels, token_mask = out.logits, batch["labels"].long(), None
        teacher_logits = teacher_out.logits if teacher_out is not None else batch.get("logits")
        if cfg.hidden_states:
            student_h = out.hidden_states[-1][:, 0]
            teacher_h = teacher_out.hidden_states[-1][:, 0] if teacher_out is not None else batch["features"]
    else:
        logits = losses.shared_vocab_logits(out.logits[:, :-1], cfg.vocab_size)
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, losses.IGNORE_INDEX)
        token_mask = mask[:, 1:].bool()
        if teacher_out is not None:
            teacher_logits = losses.shared_vocab_logits(teacher_out.logits[:, :-1], cfg.vocab_size)
        elif "topk_values" in batch:
            teacher_logits, topk_indices = batch["topk_values"][:, :-1].float(), batch["topk_indices"][:, :-1]
        else:
            teacher_logits = None
        if cfg.hidden_states:
            student_h, teacher_h = out.hidden_states[-1], teacher_out.hidden_states[-1]
    parts = losses.distillation_loss(
        logits, teacher_logits, labels, loss=cfg.loss, temperature=cfg.temperature, alpha=cfg.alpha,
        beta=cfg.beta, teacher_topk_indices=topk_indices, mask=token_mask,
    )
    result = {"loss": parts.total, "soft_loss": parts.soft.detach(), "hard_loss": parts.hard.detach()}
    if cfg.hidden_states and projection is not None:
        hidden = losses.hidden_state_loss(projection, student_h, teacher_h, token_mask)
        result["loss"] = result["loss"] + cfg.hidden_weight * hidden
        result["hidden_loss"] = hidden.detach()
    return result


def evaluate_student(cfg: LoopConfig, model: Any, data: dict[str, np.ndarray], device: Any) -> dict[str, float]:
    """Eval accuracy (classification) or perplexity (causal LM) on the eval split."""
    import torch

    model.eval()
    n = len(data["input_ids"])
    correct = counted = 0
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, cfg.eval_batch_size):
            batch = _batch(data, np.arange(start, min(n, start + cfg.eval_batch_size)), device)
            ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            if cfg.task != "sequence-classification":
                logits = logits[..., :cfg.vocab_size]  # padded rows are no tokens
            if cfg.task == "sequence-classification":
                labels = batch["labels"].long()
                keep = labels >= 0
                correct += int((logits.argmax(-1)[keep] == labels[keep]).sum())
                counted += int(keep.sum())
            else:
                target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
                nll += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                    reduction="sum"))
                tokens += int((target != -100).sum())
    model.train()
    if cfg.task == "sequence-classification":
        return {"eval_accuracy": correct / counted} if counted else {}
    return {"eval_perplexity": math.exp(nll / max(1, tokens))}


def _save_checkpoint(folder: Path, state: dict[str, Any], model: Any | None = None) -> None:
    import torch

    torch.save(state, folder / STATE_FILE)
    (folder / STEP_FILE).write_text(json.dumps({"step": state["step"]}))
    if model is not None:
        model.save_pretrained(folder / "model", safe_serialization=True)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function."""
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from ray.train import Checkpoint

    from kubedistill_jobs import losses

    cfg = LoopConfig(**config["loop"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    train_data, eval_data = ray.get(config["train_data"]), ray.get(config["eval_data"])
    init = ray.get(config["student"])
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if cfg.task == "sequence-classification" else AutoModelForCausalLM
    model = auto.from_config(init["config"])
    model.load_state_dict(init["state"])
    model.to(device)
    projection = None
    if cfg.hidden_states:
        projection = losses.HiddenStateProjection(init["student_hidden"], init["teacher_hidden"]).to(device)
    teacher = _load_teacher(cfg, device) if cfg.teacher_mode == "online" and cfg.alpha > 0 else None
    if teacher is None and cfg.hidden_states and cfg.task != "sequence-classification":
        teacher = _load_teacher(cfg, device)  # token-level hidden states are never cached

    params = list(model.parameters()) + (list(projection.parameters()) if projection is not None else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    n_train = len(train_data["input_ids"])
    total = cfg.total_steps(n_train)
    per_epoch = steps_per_epoch(n_train, cfg.batch_size)
    warmup = int(cfg.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    autocast, needs_scaler = _autocast(device, cfg.mixed_precision)
    scaler = torch.amp.GradScaler("cuda") if needs_scaler else None

    step, history, sums, resumes = 0, [], {}, []
    # On local or mounted storage the newest checkpoint on disk wins: it includes one the Ray controller
    # had not registered yet when a worker died (and, on a rerun, the previous run's last one).
    on_disk = latest_checkpoint(Path(config["local_storage"])) if config.get("local_storage") else None
    checkpoint = Checkpoint.from_directory(str(on_disk)) if on_disk else ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if projection is not None and state.get("projection"):
            projection.load_state_dict(state["projection"])
        step, history, sums = state["step"], state["history"], state.get("sums", {})
        resumes = [*state.get("resumes", []), step]
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    progress_actor = config.get("progress")
    per_worker = max(1, cfg.batch_size // world)
    epoch_start = time.monotonic()

    def state_dict() -> dict[str, Any]:
        return {"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "history": history, "sums": sums,
                "resumes": resumes,
                "projection": projection.state_dict() if projection is not None else None,
                "loop": asdict(cfg)}

    def report(metrics: dict[str, Any], with_model: bool = False, checkpoint_now: bool = True) -> None:
        if not checkpoint_now:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                _save_checkpoint(Path(tmp), state_dict(), core if with_model else None)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)

    model.train()
    while step < total:
        epoch, within = divmod(step, per_epoch)
        order = np.random.default_rng(cfg.seed + epoch).permutation(n_train)
        idx = order[within * cfg.batch_size:(within + 1) * cfg.batch_size][rank::world][:per_worker]
        crash_marker = config.get("crash_marker")
        if cfg.crash_at_step == step and rank == world - 1 and crash_marker and not Path(crash_marker).exists():
            Path(crash_marker).touch()  # once: the restarted worker group goes on
            os._exit(1)
        batch = _batch(train_data, idx, device)
        with autocast:
            parts = _step_loss(cfg, model, teacher, projection, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(parts["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            scaler.step(optimizer)
            scaler.update()
        else:
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        scheduler.step()
        step += 1
        for key, value in parts.items():
            name = "train_loss" if key == "loss" else key
            sums[name] = sums.get(name, 0.0) + float(value)
        sums["_n"] = sums.get("_n", 0) + 1
        if rank == 0 and progress_actor is not None:
            progress_actor.update.remote(step, total, float(parts["loss"]))
        end_of_epoch = step % per_epoch == 0 or step == total
        if end_of_epoch:
            n = max(1, sums.pop("_n"))
            entry: dict[str, Any] = {"epoch": math.ceil(step / per_epoch), "step": step,
                                     **{k: round(v / n, 5) for k, v in sums.items()}}
            if rank == 0:
                entry.update(evaluate_student(cfg, core, eval_data, device))
            elapsed = time.monotonic() - epoch_start
            entry["seconds"] = round(elapsed, 2)
            entry["examples_per_second"] = round(n * cfg.batch_size / max(elapsed, 1e-9), 2)
            history.append(entry)
            sums = {}
            epoch_start = time.monotonic()
            if rank == 0 and progress_actor is not None:
                progress_actor.epoch.remote(entry)
        if step == total:
            break
        if step % cfg.checkpoint_every == 0:
            report({"step": step, "done": False})
    # also when a rerun found the loop already complete: the final checkpoint carries the model
    report({"step": step, "done": True, "history": history, "resumes": resumes}, with_model=True)


# ------------------------------------------------------------------------------------------- driver side


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint with the highest step under `root` (a rerun resumes from it)."""
    best: tuple[int, Path] | None = None
    for marker in root.rglob(STEP_FILE) if root.exists() else []:
        try:
            step = json.loads(marker.read_text())["step"]
        except (ValueError, KeyError):
            continue
        if (marker.parent / STATE_FILE).is_file() and (best is None or step > best[0]):
            best = (step, marker.parent)
    return best[1] if best else None


def make_progress_actor() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class TrainProgress:
        """Rank 0 posts its step here; the driver polls it for the progress bar and status."""

        def __init__(self) -> None:
            self.step, self.total, self.loss, self.history = 0, 0, None, []

        def update(self, step: int, total: int, loss: float) -> None:
            self.step, self.total, self.loss = step, total, loss

        def epoch(self, entry: dict[str, Any]) -> None:
            self.history.append(entry)

        def get(self) -> dict[str, Any]:
            return {"step": self.step, "total": self.total, "loss": self.loss, "history": self.history}

    return TrainProgress.remote()


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    model_dir: Path
    seconds: float
    resumed_from_step: int
    resumes: list[int]  # steps the loop restarted from (after a worker failure or a rerun)


def fit(
    loop: LoopConfig,
    train_data: dict[str, np.ndarray],
    eval_data: dict[str, np.ndarray],
    student_init: dict[str, Any],
    *,
    storage: str,
    workers: int,
    gpus_per_worker: int = 0,
    cpus_per_worker: float = 1,
    max_failures: int = 2,
    progress: Progress | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    model_out: Path,
    crash_marker: Path | None = None,
) -> TrainResult:
    """Run the TorchTrainer to the end and copy the final student's weights to `model_out`."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resume_from = latest_checkpoint(Path(storage)) if "://" not in storage else None
    resumed_step = json.loads((resume_from / STEP_FILE).read_text())["step"] if resume_from else 0
    actor = make_progress_actor()
    config = {
        "loop": asdict(loop),
        "train_data": ray.put(train_data),
        "eval_data": ray.put(eval_data),
        "student": ray.put(student_init),
        "progress": actor,
        "local_storage": storage if "://" not in storage else None,
        "crash_marker": str(crash_marker) if crash_marker else None,
    }
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if gpus_per_worker else "gloo"),
        run_config=ray.train.RunConfig(
            name="train",
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as error:  # handed to the main thread
            outcome["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=run, name="ray-train-fit", daemon=True)
    thread.start()
    seen_epochs = 0
    while True:
        thread.join(timeout=0.5)
        try:
            state = ray.get(actor.get.remote(), timeout=5)
        except Exception:  # the actor is only for display; training goes on without it
            state = None
        if state:
            if progress and state["total"]:
                progress(state["step"], state["total"])
            for entry in state["history"][seen_epochs:]:
                if on_epoch:
                    on_epoch(entry)
            seen_epochs = len(state["history"])
        if not thread.is_alive():
            break
    ray.kill(actor)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if result.error is not None:
        raise result.error
    metrics = result.metrics or {}
    with result.checkpoint.as_directory() as folder:
        shutil.rmtree(model_out, ignore_errors=True)
        shutil.copytree(Path(folder) / "model", model_out)
    return TrainResult(history=list(metrics.get("history", [])), model_dir=model_out,
                       seconds=round(time.monotonic() - started, 2), resumed_from_step=resumed_step,
                       resumes=list(metrics.get("resumes", [])))
