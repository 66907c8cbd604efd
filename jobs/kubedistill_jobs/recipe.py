"""The distillation recipe each Ray Train worker runs, read top to bottom: setup and resume, the loss step,
the optimiser step, the end of an epoch, and the loop that strings them together.

Everything a worker needs travels through the Ray object store (tokenised data, cached teacher outputs, the
initial student), so workers on other nodes need no shared filesystem; only an online teacher is loaded from
`teacher_dir` (a PVC or the local disk). Each checkpoint holds the loop's whole state (`checkpoints`): a
worker group restarted after a failure, or a rerun of the job, continues the step count from the latest.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill.api.distillationjob import DistillationJobSpec
from kubedistill_jobs import precision
from kubedistill_jobs.checkpoints import STATE_FILE, latest_checkpoint, save_checkpoint
from kubedistill_jobs.models import takes_argument

SEQUENCE_KEYS = ("input_ids", "attention_mask", "topk_values", "topk_indices")
# Called by every worker before each optimiser step with (step, rank, world size); tests inject faults with it.
StepHook = Callable[[int, int, int], None]


@dataclass(frozen=True)
class LoopConfig:
    """The training loop's settings (plain values, sent to every worker); built from a spec by `from_spec`."""

    task: str
    loss: str
    temperature: float
    alpha: float
    beta: float
    teacher_mode: str
    hidden_states: bool
    hidden_weight: float
    epochs: int | None
    max_steps: int | None
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    seed: int
    checkpoint_every: int
    mixed_precision: str
    teacher_dir: str | None
    # causal-lm: the tokenizer's size, the token range teacher and student share (their logits may be padded)
    vocab_size: int | None
    eval_batch_size: int = 64  # the per-epoch evaluation's batch (not in the spec: it changes no result)
    # on-policy batches (causal-lm): their share, the student's sampling, and the tokens that end and pad a sample
    on_policy: float = 0.0
    max_new_tokens: int = 32
    sample_temperature: float = 1.0
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    # causal-lm, cached: the top-k values are the teacher's full-vocabulary log-probabilities (soft_targets.LOGPROBS)
    topk_logprobs: bool = False
    # a local teacher's answers (distillation.sequenceLevel): the loss on the answers alone, or on this share of
    # the prompts' positions, drawn afresh every step, and every answer position
    completion_only: bool = False
    prompt_token_share: float = 1.0

    @classmethod
    def from_spec(cls, spec: DistillationJobSpec, teacher_dir: str | None, vocab_size: int | None,
                  eos_token_id: int | None = None, pad_token_id: int | None = None) -> LoopConfig:
        d, t = spec.distillation, spec.training
        return cls(
            task=spec.task.type, loss=d.loss, temperature=d.temperature, alpha=d.alpha, beta=d.beta,
            teacher_mode=d.teacher_mode, hidden_states=d.hidden_states.enabled, hidden_weight=d.hidden_states.weight,
            epochs=t.resolved_epochs, max_steps=t.max_steps, batch_size=t.batch_size, learning_rate=t.learning_rate,
            weight_decay=t.weight_decay, warmup_ratio=t.warmup_ratio, seed=t.seed,
            checkpoint_every=t.checkpoint_every_steps, mixed_precision=t.mixed_precision, teacher_dir=teacher_dir,
            vocab_size=vocab_size, on_policy=d.on_policy, max_new_tokens=d.sampling.max_new_tokens,
            sample_temperature=d.sampling.temperature, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            completion_only=d.sequence_level is not None and d.sequence_level.completion_only_loss,
            prompt_token_share=d.sequence_level.prompt_token_share if d.sequence_level is not None else 1.0,
        )

    def on_policy_step(self, step: int) -> bool:
        """Whether `step` is an on-policy batch: a draw seeded by (seed, step), so every worker agrees and a
        resumed run repeats the same choices; on average `on_policy` of the steps."""
        return self.on_policy > 0 and float(np.random.default_rng([self.seed, step]).random()) < self.on_policy

    def total_steps(self, n_train: int) -> int:
        return self.max_steps or (self.epochs or 1) * steps_per_epoch(n_train, self.batch_size)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, n_train // batch_size)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then linear decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def _load_teacher(cfg: LoopConfig, device: Any) -> Any:
    import torch

    from kubedistill_jobs.models import auto_model_class

    teacher = auto_model_class(cfg.task).from_pretrained(cfg.teacher_dir, torch_dtype=torch.float32)
    teacher = teacher.to(device).eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def _batch(data: dict[str, np.ndarray], idx: np.ndarray, device: Any) -> dict[str, Any]:
    """Rows `idx` as tensors, cut to the longest sequence among them (the arrays are right-padded)."""
    import torch

    length = max(1, int(data["attention_mask"][idx].sum(1).max()))
    return {k: torch.as_tensor(v[idx][:, :length] if k in SEQUENCE_KEYS else v[idx]).to(device)
            for k, v in data.items()}


def evaluate_student(cfg: LoopConfig, model: Any, data: dict[str, np.ndarray], device: Any) -> dict[str, float]:
    """Eval accuracy (classification) or perplexity (causal LM) on the eval split."""
    import torch

    from kubedistill_jobs.losses import IGNORE_INDEX

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
                target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)
                nll += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE_INDEX,
                    reduction="sum"))
                tokens += int((target != IGNORE_INDEX).sum())
    model.train()
    if cfg.task == "sequence-classification":
        return {"eval_accuracy": correct / counted} if counted else {}
    return {"eval_perplexity": math.exp(nll / max(1, tokens))}


class DistillationRecipe:
    """One worker's training: `setup` (and resume), then `train`; rank 0 saves the checkpoints."""

    def __init__(self, cfg: LoopConfig, *, rank: int, world: int, device: Any) -> None:
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.sums: dict[str, float] = {}  # running sums of the epoch's losses, and their count ("_n")
        self.resumes: list[int] = []  # steps the loop restarted from
        # Whether the models can compute logits for the last positions only (transformers' `logits_to_keep`);
        # None until the first step looks.
        self.keeps_logits: bool | None = None

    # ------------------------------------------------------------------ setup and resume

    def setup(self, init: dict[str, Any], n_train: int, checkpoint: Any) -> None:
        """Student (from `init`), projection, teacher, optimiser and schedule; then the checkpoint's state."""
        import ray.train.torch
        import torch

        from kubedistill_jobs import losses
        from kubedistill_jobs.models import auto_model_class

        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        model = auto_model_class(cfg.task).from_config(init["config"])
        model.load_state_dict(init["state"])
        model.to(device)
        self.projection = None
        if cfg.hidden_states:
            self.projection = losses.HiddenStateProjection(init["student_hidden"], init["teacher_hidden"]).to(device)
        online = cfg.teacher_mode == "online" and (cfg.alpha > 0 or cfg.on_policy > 0)
        self.teacher = _load_teacher(cfg, device) if online else None
        if self.teacher is None and cfg.hidden_states and cfg.task != "sequence-classification":
            self.teacher = _load_teacher(cfg, device)  # token-level hidden states are never cached

        self.params = list(model.parameters()) + (list(self.projection.parameters()) if self.projection else [])
        # The fused kernel updates all parameters in one pass: on CPU ten times faster than the loop over them
        # (a 49k-token embedding matrix updated every step weighs as much as a small student's forward pass).
        fused = torch.device(device).type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                           fused=fused)
        self.n_train, self.total = n_train, cfg.total_steps(n_train)
        self.per_epoch = steps_per_epoch(n_train, cfg.batch_size)
        total, warmup = self.total, int(cfg.warmup_ratio * self.total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, total, warmup))
        self.autocast, needs_scaler = precision.autocast(device, cfg.mixed_precision)
        self.scaler = torch.amp.GradScaler("cuda") if needs_scaler else None
        if checkpoint is not None:
            self.resume(model, checkpoint)
        self.model = ray.train.torch.prepare_model(model)
        self.core = self.model.module if hasattr(self.model, "module") else self.model

    def resume(self, model: Any, checkpoint: Any) -> None:
        """Model, optimiser, schedule, step and history from a checkpoint (before DDP wraps the model)."""
        import torch

        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / STATE_FILE, map_location=self.device, weights_only=False)
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.projection is not None and state.get("projection"):
            self.projection.load_state_dict(state["projection"])
        self.step, self.history, self.sums = state["step"], state["history"], state.get("sums", {})
        self.resumes = [*state.get("resumes", []), self.step]

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.core.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "step": self.step, "history": self.history,
                "sums": self.sums, "resumes": self.resumes,
                "projection": self.projection.state_dict() if self.projection is not None else None,
                "loop": asdict(self.cfg)}

    # ------------------------------------------------------------------ one step

    def batch_rows(self) -> np.ndarray:
        """This worker's rows of the current step: the epoch's seeded permutation, split across ranks."""
        cfg = self.cfg
        epoch, within = divmod(self.step, self.per_epoch)
        order = np.random.default_rng(cfg.seed + epoch).permutation(self.n_train)
        per_worker = max(1, cfg.batch_size // self.world)
        return order[within * cfg.batch_size:(within + 1) * cfg.batch_size][self.rank::self.world][:per_worker]

    def sample_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """An on-policy batch: the student's own answers to the batch's prompts (`prompt_ids`, `prompt_mask`
        (B, P), right-padded), as `input_ids` / `attention_mask` (B, L) right-padded with `loss_mask` (B, L-1)
        True where position t predicts a sampled token (the end-of-sequence token included, what follows it
        not). See `sampling.sample_answers`."""
        from kubedistill_jobs import sampling

        cfg = self.cfg
        if self.teacher is None:
            raise RuntimeError("distillation.onPolicy: on-policy batches need the online teacher to score samples")
        return sampling.sample_answers(
            self.core, batch["prompt_ids"], batch["prompt_mask"], max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.sample_temperature, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
            vocab_size=cfg.vocab_size,
        )

    def loss_step(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Forward the student (and an online teacher) on one batch; the loss and its parts (B batch rows,
        L tokens, C classes, V vocabulary, K cached top-k, H hidden size). A batch with `loss_mask` is the
        student's own samples (`sample_batch`): only the divergence from the teacher on the sampled tokens
        counts there (GKD), no hard term."""
        import torch

        from kubedistill_jobs import losses

        cfg = self.cfg
        sampled = "loss_mask" in batch
        ids, mask = batch["input_ids"].long(), batch["attention_mask"].long()  # (B, L)
        # Positions before `first` count for no row (the prompts of a completion-only loss or of the student's
        # samples): their logits, the largest tensors of a step, are never computed.
        if self.keeps_logits is None:
            self.keeps_logits = takes_argument(getattr(self.model, "module", self.model), "logits_to_keep") and (
                self.teacher is None or takes_argument(self.teacher, "logits_to_keep"))
        first = self.first_counted(batch) if self.keeps_logits else 0
        keep: dict[str, Any] = {"logits_to_keep": ids.shape[1] - first} if first else {}
        # (W,): a share of the prompts' positions and every answer position. A model without logits_to_keep
        # computes every position's logits and the draw picks them out: the same loss, without the saving.
        positions = self.drawn_positions(batch, ids.shape[1]) if not first else None
        if positions is not None and self.keeps_logits:
            keep = {"logits_to_keep": positions}
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=cfg.hidden_states, **keep)
        teacher_out = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_out = self.teacher(input_ids=ids, attention_mask=mask, output_hidden_states=cfg.hidden_states,
                                           **keep)
        topk_indices = student_h = teacher_h = None
        if cfg.task == "sequence-classification":
            logits, labels, token_mask = out.logits, batch["labels"].long(), None  # (B, C), (B,)
            teacher_logits = teacher_out.logits if teacher_out is not None else batch.get("logits")  # (B, C)
            if cfg.hidden_states:  # the [CLS] states, (B, H); cached as `features`
                student_h = out.hidden_states[-1][:, 0]
                teacher_h = teacher_out.hidden_states[-1][:, 0] if teacher_out is not None else batch["features"]
        elif positions is not None:  # position t predicts token t + 1, for the W drawn positions t
            drawn = slice(None) if self.keeps_logits else positions  # only the drawn positions were computed
            logits = losses.shared_vocab_logits(out.logits[:, drawn], cfg.vocab_size)  # (B, W, V)
            # the draw, then each row's answer: a row whose answer starts later keeps the prompt between out
            in_prompt = positions < int(batch["answer_start"].min()) - 1  # (W,)
            counted = in_prompt[None, :] | losses.answer_positions(batch["answer_start"], positions)  # (B, W)
            labels = ids[:, positions + 1].masked_fill((mask[:, positions + 1] == 0) | ~counted,
                                                       losses.IGNORE_INDEX)  # (B, W)
            token_mask = mask[:, positions + 1].bool() & counted  # (B, W)
            teacher_logits = None
            if teacher_out is not None:
                teacher_logits = losses.shared_vocab_logits(teacher_out.logits[:, drawn], cfg.vocab_size)  # (B, W, V)
            elif "topk_values" in batch:
                teacher_logits = batch["topk_values"][:, positions].float()
                topk_indices = batch["topk_indices"][:, positions]
        else:  # position t predicts token t + 1; positions `first` to L-2, W = L-1-first of them
            logits = losses.shared_vocab_logits(out.logits[:, :-1], cfg.vocab_size)  # (B, W, V)
            labels = ids[:, first + 1:].masked_fill(mask[:, first + 1:] == 0, losses.IGNORE_INDEX)  # (B, W)
            token_mask = mask[:, first + 1:].bool()  # (B, W)
            if sampled:  # the student's own tokens are no gold labels
                labels, token_mask = None, batch["loss_mask"][:, first:].bool()
            elif cfg.completion_only and "answer_start" in batch and "sorted_probs" not in batch:  # the answers'
                answer = losses.answer_positions(batch["answer_start"],
                                                 torch.arange(first, ids.shape[1] - 1, device=ids.device))  # (B, W)
                labels, token_mask = labels.masked_fill(~answer, losses.IGNORE_INDEX), token_mask & answer
            if teacher_out is not None:
                teacher_logits = losses.shared_vocab_logits(teacher_out.logits[:, :-1], cfg.vocab_size)  # (B, W, V)
            elif "topk_values" in batch:  # (B, W, K) values and their vocabulary indices
                teacher_logits = batch["topk_values"][:, first:-1].float()
                topk_indices = batch["topk_indices"][:, first:-1]
            else:
                teacher_logits = None
            if cfg.hidden_states:  # every token's state, (B, L, H)
                student_h, teacher_h = out.hidden_states[-1], teacher_out.hidden_states[-1]
        if "sorted_probs" in batch:  # another tokenizer than the teacher's: ULD on the aligned answer positions
            parts = self.uld_parts(batch, logits, labels)
        else:
            parts = losses.distillation_loss(
                logits, teacher_logits, labels, loss=cfg.loss, temperature=cfg.temperature,
                alpha=1.0 if sampled else cfg.alpha, beta=cfg.beta, teacher_topk_indices=topk_indices,
                mask=token_mask, teacher_topk_logprobs=cfg.topk_logprobs,
            )
        del teacher_out, teacher_logits  # the teacher's (B, L, V) logits are not needed for the backward pass
        result = {"loss": parts.total, "soft_loss": parts.soft.detach(), "hard_loss": parts.hard.detach()}
        if cfg.on_policy > 0:  # epoch means: the share of on-policy batches, and the tokens sampled per batch
            result["on_policy"] = float(sampled)
            result["sampled_tokens"] = float(token_mask.sum()) if sampled and token_mask is not None else 0.0
        if cfg.hidden_states and self.projection is not None:
            hidden = losses.hidden_state_loss(self.projection, student_h, teacher_h, token_mask)
            result["loss"] = result["loss"] + cfg.hidden_weight * hidden
            result["hidden_loss"] = hidden.detach()
        return result

    def first_counted(self, batch: dict[str, Any]) -> int:
        """The first position whose prediction counts in any row of a causal-LM batch (0: all may count).

        Only a completion-only loss (`answer_start (B,)`) or the student's own samples (`loss_mask (B, L-1)`)
        leave positions out; hidden-state and ULD losses read every position."""
        import torch

        if self.cfg.task == "sequence-classification" or self.cfg.hidden_states or "sorted_probs" in batch:
            return 0
        if "loss_mask" in batch:
            counted = torch.nonzero(batch["loss_mask"].any(dim=0))
            return int(counted[0]) if len(counted) else 0
        if self.cfg.completion_only and "answer_start" in batch:
            return max(0, int(batch["answer_start"].min()) - 1)
        return 0

    def drawn_positions(self, batch: dict[str, Any], length: int) -> Any:
        """The positions whose predictions count this step when distillation.sequenceLevel.promptTokenShare
        is below 1: that share of the positions before the batch's first answer token, drawn by (seed, step),
        and every position from there on, as a sorted `(W,)` index tensor; None when all positions count.

        The logits of the positions left out, the largest tensors of a step, are never computed (by a model
        that takes `logits_to_keep`; others compute them and the loss leaves them out)."""
        import torch

        cfg = self.cfg
        if (cfg.prompt_token_share >= 1 or cfg.completion_only or cfg.task == "sequence-classification"
                or cfg.hidden_states or "answer_start" not in batch or "loss_mask" in batch
                or "sorted_probs" in batch):
            return None
        start = min(int(batch["answer_start"].min()) - 1, length - 1)  # the first position predicting an answer
        if start <= 1:
            return None
        drawn = np.random.default_rng([cfg.seed, self.step]).choice(
            start, size=max(1, math.ceil(cfg.prompt_token_share * start)), replace=False)
        kept = np.concatenate([np.sort(drawn), np.arange(start, length - 1)])
        return torch.as_tensor(kept, dtype=torch.long, device=batch["input_ids"].device)

    def uld_parts(self, batch: dict[str, Any], logits: Any, labels: Any) -> Any:
        """alpha · ULD + (1 − alpha) · CE for the teacher's answers in the student's tokens. The student's
        prediction of its j-th answer token (position answer_start − 1 + j of `logits (B, L-1, V)`) is compared
        with the teacher's distribution over its own j-th answer token (`sorted_probs (B, A, k)`), for j below
        both answers' lengths (`answer_tokens (B,)` in the teacher's tokens, the labelled positions in the
        student's)."""
        import torch

        from kubedistill_jobs import losses

        cfg = self.cfg
        teacher = batch["sorted_probs"]  # (B, A, k)
        width = teacher.shape[1]
        steps = torch.arange(width, device=logits.device)
        positions = batch["answer_start"].long()[:, None] - 1 + steps[None, :]  # (B, A)
        inside = (positions >= 0) & (positions < logits.shape[1]) & (steps[None, :] < batch["answer_tokens"][:, None])
        positions = positions.clamp(0, logits.shape[1] - 1)
        inside &= labels.gather(1, positions) != losses.IGNORE_INDEX  # the student's answer is that long too
        aligned = logits.gather(1, positions[..., None].expand(-1, -1, logits.shape[-1]))  # (B, A, V)
        soft = losses.uld_loss(aligned, teacher, temperature=cfg.temperature, mask=inside)
        hard = losses.hard_loss(logits, labels)
        return losses.LossParts(cfg.alpha * soft + (1.0 - cfg.alpha) * hard, soft, hard)

    def optimizer_step(self, loss: Any) -> None:
        """Backward, clip the gradient norm to 1, step the optimiser and the schedule (a GradScaler for fp16)."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1

    def end_of_epoch(self, eval_data: dict[str, np.ndarray], seconds: float) -> dict[str, Any]:
        """The epoch's history entry: mean losses, rank 0's eval metrics, time and throughput."""
        n = max(1, self.sums.pop("_n"))
        entry: dict[str, Any] = {"epoch": math.ceil(self.step / self.per_epoch), "step": self.step,
                                 **{k: round(v / n, 5) for k, v in self.sums.items()}}
        if self.rank == 0:
            entry.update(evaluate_student(self.cfg, self.core, eval_data, self.device))
        entry["seconds"] = round(seconds, 2)
        entry["examples_per_second"] = round(n * self.cfg.batch_size / max(seconds, 1e-9), 2)
        self.history.append(entry)
        self.sums = {}
        return entry

    # ------------------------------------------------------------------ the loop

    def report(self, metrics: dict[str, Any], with_model: bool = False) -> None:
        """Hand metrics and a checkpoint (written by rank 0) to Ray Train."""
        import ray.train
        from ray.train import Checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            if self.rank == 0:
                save_checkpoint(Path(tmp), self.state_dict(), self.core if with_model else None)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if self.rank == 0 else None)

    def train(self, train_data: dict[str, np.ndarray], eval_data: dict[str, np.ndarray], *,
              progress_actor: Any = None, step_hook: StepHook | None = None) -> None:
        cfg = self.cfg
        self.model.train()
        epoch_start = time.monotonic()
        while self.step < self.total:
            if step_hook is not None:
                step_hook(self.step, self.rank, self.world)
            batch = _batch(train_data, self.batch_rows(), self.device)
            with self.autocast:
                if cfg.on_policy_step(self.step):
                    batch = self.sample_batch(batch)
                parts = self.loss_step(batch)
            self.optimizer_step(parts["loss"])
            for key, value in parts.items():
                name = "train_loss" if key == "loss" else key
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.sums["_n"] = self.sums.get("_n", 0) + 1
            if self.rank == 0 and progress_actor is not None:
                progress_actor.update.remote(self.step, self.total, float(parts["loss"]))
            if self.step % self.per_epoch == 0 or self.step == self.total:
                entry = self.end_of_epoch(eval_data, time.monotonic() - epoch_start)
                epoch_start = time.monotonic()
                if self.rank == 0 and progress_actor is not None:
                    progress_actor.epoch.remote(entry)
            if self.step == self.total:
                break
            if self.step % cfg.checkpoint_every == 0:
                self.report({"step": self.step, "done": False})
        # also when a rerun found the loop already complete: the final checkpoint carries the model
        self.report({"step": self.step, "done": True, "history": self.history, "resumes": self.resumes},
                    with_model=True)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function (`config`: see `train.fit`)."""
    import ray
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    context = ray.train.get_context()
    recipe = DistillationRecipe(LoopConfig(**config["loop"]), rank=context.get_world_rank(),
                                world=context.get_world_size(), device=ray.train.torch.get_device())
    train_data, eval_data = ray.get(config["train_data"]), ray.get(config["eval_data"])
    # On local or mounted storage the newest checkpoint on disk wins: it includes one the Ray controller
    # had not registered yet when a worker died (and, on a rerun, the previous run's last one).
    on_disk = latest_checkpoint(Path(config["local_storage"])) if config.get("local_storage") else None
    checkpoint = Checkpoint.from_directory(str(on_disk)) if on_disk else ray.train.get_checkpoint()
    recipe.setup(ray.get(config["student"]), len(train_data["input_ids"]), checkpoint)
    recipe.train(train_data, eval_data, progress_actor=config.get("progress"), step_hook=config.get("step_hook"))
