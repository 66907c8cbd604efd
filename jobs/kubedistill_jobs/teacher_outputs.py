"""The teacher's forward pass over a dataset, once, through Ray Data (`map_batches` on an actor pool; one
GPU per actor when the cluster has GPUs).

Outputs per row, by `kind`:
- `features`: the base teacher adapted to the labels (see models.load_classification_teacher), its
  pre-pooler [CLS] state `features (H)` — what a classification head is fitted on.
- `logits`: a saved classification teacher: `logits (C)` and `features (H)` (its last [CLS] state, for
  hidden-state distillation).
- `topk`: a causal LM over pre-tokenised `input_ids (L)`: the `k` largest logits per position,
  `topk_values (L, k)` float16 (full-vocabulary log-probabilities) and `topk_indices (L, k)` int32.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from kubedistill_jobs.batch_journal import BatchJournal

log = logging.getLogger(__name__)

Kind = Literal["features", "logits", "topk"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class TeacherRun:
    """What the actors need to rebuild the teacher on their own node."""

    source: str
    kind: Kind
    labels: tuple[str, ...] = ()
    max_length: int = 128
    top_k: int = 32
    gguf_file: str | None = None
    vocab_size: int | None = None  # topk: the tokenizer's size; a padded embedding's extra rows are no tokens


class TeacherPredictor:
    """A Ray Data callable class: loads the teacher once per actor, then maps batches."""

    def __init__(self, run: TeacherRun) -> None:
        import torch

        from kubedistill_jobs import models

        self.run = run
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if run.kind == "features":
            self.model, _ = models.load_classification_teacher(run.source, list(run.labels))
        elif run.kind == "logits":
            from transformers import AutoModelForSequenceClassification

            models._quiet_transformers()
            self.model = AutoModelForSequenceClassification.from_pretrained(run.source, torch_dtype=torch.float32)
        else:
            self.model = models.load_causal_teacher(run.source, run.gguf_file)
        self.model.to(self.device).eval()
        self.tokenizer = models.load_tokenizer(run.source, run.gguf_file) if run.kind != "topk" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            if self.run.kind == "topk":
                return {"idx": batch["idx"], **self._topk(batch)}
            encoded = self.tokenizer(
                [str(t) for t in batch["text"]], truncation=True, max_length=self.run.max_length,
                padding=True, return_tensors="pt",
            ).to(self.device)
            out = self.model(**encoded, output_hidden_states=True)
            features = out.hidden_states[-1][:, 0].float().cpu().numpy()
            result = {"idx": batch["idx"], "features": features}
            if self.run.kind == "logits":
                result["logits"] = out.logits.float().cpu().numpy()
            return result

    def _topk(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ids = torch.as_tensor(np.stack(batch["input_ids"]), dtype=torch.long, device=self.device)
        mask = torch.as_tensor(np.stack(batch["attention_mask"]), dtype=torch.long, device=self.device)
        full = ids.shape[1]
        length = max(1, int(mask.sum(1).max()))  # right-padded: skip the all-padding tail
        logits = self.model(input_ids=ids[:, :length], attention_mask=mask[:, :length]).logits.float()
        logits = logits[..., :self.run.vocab_size]  # never an id the student's tokenizer does not have
        # Log-probabilities, not raw logits: the same top-k softmax at any temperature (a shift), and at T = 1
        # the mass outside the k tokens is known (1 - Σ exp), which the loss keeps as one more bucket.
        values, indices = torch.log_softmax(logits, dim=-1).topk(self.run.top_k, dim=-1)
        pad = (0, 0, 0, full - length)
        values = torch.nn.functional.pad(values, pad)
        indices = torch.nn.functional.pad(indices, pad)
        return {"topk_values": values.half().cpu().numpy(), "topk_indices": indices.int().cpu().numpy()}


def actor_resources() -> tuple[int, dict[str, float]]:
    """How many teacher actors to run and what each reserves: one GPU each where there are GPUs,
    else as many CPUs as the largest node offers (up to 8, torch's intra-op sweet spot)."""
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus:
        return gpus, {"num_gpus": 1, "num_cpus": 1}
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=1)
    per_actor = max(1, min(8, int(node_cpus)))
    return max(1, int(total.get("CPU", 1)) // per_actor), {"num_cpus": per_actor}


def run_teacher(
    run: TeacherRun,
    rows: dict[str, Any],
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Map the teacher over `rows` (columns of equal length: `text`, or `input_ids` + `attention_mask`) and
    return its outputs as arrays in the rows' order."""
    concurrency, resources = actor_resources()
    return map_rows(TeacherPredictor, {"run": run}, rows, batch_size=batch_size, actors=concurrency,
                    resources=resources, progress=progress)


def block_plan(rows: int, batch_size: int, gpus: bool) -> tuple[int, int | None]:
    """(blocks, map_batches' batch_size) for `rows`: ceil(rows / batch_size) blocks, within a row of each other
    in size, each one batch (batch_size None). Ray Data batches within a block: 990 rows in 30 blocks of 33 left
    30 batches of one row, and a batch of one row costs a generating teacher a whole batch's decoding. Ray asks
    for a batch size with GPUs: the largest block's, so that two smaller blocks make batches of b and b - 2 at
    worst."""
    blocks = max(1, -(-rows // batch_size))
    return blocks, (-(-rows // blocks) if gpus else None)


def map_rows(
    predictor: type,
    kwargs: dict[str, Any],
    rows: dict[str, Any],
    *,
    batch_size: int,
    actors: int,
    resources: dict[str, float],
    progress: Progress | None = None,
    journal: BatchJournal | None = None,
    per_row: int = 1,
) -> dict[str, np.ndarray]:
    """Map a callable class (`predictor(**kwargs)`, on a pool of `actors`) over `rows` through Ray Data;
    its outputs as arrays in the rows' order (each output batch carries the rows' `idx`; `per_row` outputs per
    row). With a `journal`, each finished batch is kept as it arrives and the rows an earlier, interrupted map
    finished are not mapped again; the outputs then also hold `journaled (N,)` bool, the rows taken from it.
    `progress(done, total)` counts outputs."""
    n = len(next(iter(rows.values())))
    parts = journal.load(per_row) if journal is not None else []
    finished = {int(i) for part in parts for i in part["idx"]}
    if finished and journal is not None:
        log.info("%d of %d rows were answered before this run (%s): only the other %d are mapped", len(finished), n,
                 journal.folder, n - len(finished))
    parts = [{**part, "journaled": np.ones(len(part["idx"]), dtype=bool)} for part in parts]
    items = [{"idx": i, **{k: v[i] for k, v in rows.items()}} for i in range(n) if i not in finished]
    done = sum(len(part["idx"]) for part in parts)
    if progress:
        progress(done, n * per_row)
    if items:
        for batch in _mapped(predictor, kwargs, items, batch_size, actors, resources):
            if journal is not None:
                journal.add(batch)
                batch = {**batch, "journaled": np.zeros(len(batch["idx"]), dtype=bool)}
            parts.append(batch)
            done += len(batch["idx"])
            if progress:
                progress(done, n * per_row)
    order = np.argsort(np.concatenate([p["idx"] for p in parts]), kind="stable")
    return {key: np.concatenate([p[key] for p in parts])[order] for key in parts[0] if key != "idx"}


def _mapped(predictor: type, kwargs: dict[str, Any], items: list[dict[str, Any]], batch_size: int, actors: int,
            resources: dict[str, float]) -> Iterator[dict[str, np.ndarray]]:
    """The output batches of `predictor` over `items`, as Ray Data finishes them."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().print_on_execution_start = False
    blocks, block_batch = block_plan(len(items), batch_size, bool(resources.get("num_gpus")))
    # Ray Data restarts its map actors by default, and Ray then prints an advisory about their constructor
    # arguments (ray-project/ray#53727, #57733) to the terminal. Restarts guard against losing a node; on one
    # node (`kubedistill run`) there is none to lose, so none are asked for, and nothing is printed. Ray 2.60
    # deprecates such extra remote args with no named replacement for max_restarts: that warning is dropped.
    restarts = {"max_restarts": 0} if len([node for node in ray.nodes() if node.get("Alive")]) == 1 else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            predictor,
            fn_constructor_kwargs=kwargs,
            batch_size=block_batch,  # a block is a batch (block_plan)
            compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)),  # no idle actors on small data
            batch_format="numpy",
            **resources,
            **restarts,
        )
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
