"""The training stage's driver: Ray Train's `TorchTrainer` with N workers (DDP; gloo on CPU, nccl on GPU,
mixed precision on GPU) running `recipe.train_loop`, checkpoints every N steps in the job's output storage.

Resume: a worker failure restarts the worker group from the last checkpoint (`FailureConfig`); a rerun of
the job finds the latest checkpoint in the output and continues the step count from there.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kubedistill_jobs.checkpoints import MODEL_DIR, checkpoint_step, latest_checkpoint
from kubedistill_jobs.recipe import LoopConfig, StepHook, train_loop

Progress = Callable[[int, int], None]


def cpus_per_worker(nodes: list[dict[str, Any]], workers: int) -> int:
    """CPUs each Ray Train worker reserves, which are also its torch threads (Ray sets OMP_NUM_THREADS from
    them). `nodes`: `ray.nodes()`. On one node (the embedded Ray of `kubedistill run`) its CPUs are shared
    evenly, so that one worker on a 2-core machine trains with both cores rather than one; on a cluster each
    worker pod is a node of its own and its worker takes the smallest such node's CPUs. At least 1."""
    alive = [node for node in nodes if node.get("Alive", True)]
    if len(alive) == 1:
        return max(1, int(alive[0].get("Resources", {}).get("CPU", 1)) // max(1, workers))
    resources = [node.get("Resources", {}) for node in alive]
    worker_nodes = [r.get("CPU", 0) for r in resources if "node:__internal_head__" not in r and r.get("CPU", 0) >= 1]
    return max(1, int(min(worker_nodes))) if worker_nodes else 1


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
    step_hook: StepHook | None = None,
) -> TrainResult:
    """Run the TorchTrainer to the end and copy the final student's weights to `model_out`.

    `train_data` / `eval_data`: arrays with one row per example (`inputs.train_arrays`); `student_init`: the
    initial student (`inputs.student_init`); `storage`: where Ray Train keeps checkpoints (a folder or URI);
    `step_hook`: called by every worker before each step (tests inject faults with it). Raises what the
    trainer raised once its retries (`max_failures`) are spent."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    resume_from = latest_checkpoint(Path(storage)) if "://" not in storage else None
    resumed_step = checkpoint_step(resume_from) if resume_from else 0
    actor = make_progress_actor()
    config = {
        "loop": asdict(loop),
        "train_data": ray.put(train_data),
        "eval_data": ray.put(eval_data),
        "student": ray.put(student_init),
        "progress": actor,
        "local_storage": storage if "://" not in storage else None,
        "step_hook": step_hook,
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
        shutil.copytree(Path(folder) / MODEL_DIR, model_out)
    return TrainResult(history=list(metrics.get("history", [])), model_dir=model_out,
                       seconds=round(time.monotonic() - started, 2), resumed_from_step=resumed_step,
                       resumes=list(metrics.get("resumes", [])))
