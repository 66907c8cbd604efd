"""Ray Train on tiny models: 2 workers lower the loss, a rerun and a worker failure resume the step count."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from kubedistill_jobs import train
from kubedistill_jobs.recipe import LoopConfig
from safetensors.torch import load_file

from kubedistill.api.distillationjob import DistillationJob

from .conftest import job_manifest

pytestmark = pytest.mark.slow


def _student_init():
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    return {"config": config, "state": model.state_dict(), "student_hidden": 16, "teacher_hidden": 16}


def _arrays(n: int, seed: int) -> dict[str, np.ndarray]:
    """Label = whether token 5 occurs; the teacher's logits agree with the label, with some noise."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, 20, size=(n, 8)).astype(np.int32)
    labels = (ids == 5).any(1).astype(np.int64)
    logits = np.stack([-2.0 * labels, 2.0 * labels], 1).astype(np.float32) + rng.normal(0, 0.3, (n, 2))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids, dtype=np.int8), "labels": labels,
            "logits": logits.astype(np.float32)}


def _loop(**overrides) -> LoopConfig:
    """A small job's loop (built from its spec, as the train stage builds it), with the test's values."""
    values = dict(task="sequence-classification", temperature=2.0, alpha=0.7, epochs=None, max_steps=12,
                  batch_size=16, learning_rate=0.01, warmup_ratio=0.0, checkpoint_every=4)
    values.update(overrides)
    spec = DistillationJob.model_validate(job_manifest(Path("/unused"), Path("/teacher"), Path("/data"))).spec
    return dataclasses.replace(LoopConfig.from_spec(spec, teacher_dir=None), **values)


def test_two_workers_lower_the_loss_and_a_rerun_resumes(ray_local, tmp_path):
    storage = str(tmp_path / "ckpt")
    first = train.fit(_loop(max_steps=None, epochs=3), _arrays(96, 0), _arrays(32, 1), _student_init(),
                      storage=storage, workers=2, model_out=tmp_path / "a")
    losses = [entry["train_loss"] for entry in first.history]
    assert [e["step"] for e in first.history] == [6, 12, 18] and first.resumed_from_step == 0
    assert losses[-1] < 0.9 * losses[0]
    assert {"soft_loss", "hard_loss", "eval_accuracy"} <= set(first.history[-1])
    assert "classifier.weight" in load_file(tmp_path / "a" / "model.safetensors")
    assert train.latest_checkpoint(tmp_path / "ckpt") is not None

    # the same job asked for one more epoch: the step count continues from the last checkpoint
    second = train.fit(_loop(max_steps=None, epochs=4), _arrays(96, 0), _arrays(32, 1), _student_init(),
                       storage=storage, workers=2, model_out=tmp_path / "b")
    assert second.resumed_from_step == 18 and second.resumes == [18]
    assert [e["step"] for e in second.history] == [6, 12, 18, 24]


def test_worker_failure_restarts_from_the_checkpoint(ray_local, tmp_path):
    marker = tmp_path / "crashed"

    def crash_once(step: int, rank: int, world: int) -> None:
        """The last worker exits at step 6, once: the restarted worker group goes on."""
        if step == 6 and rank == world - 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    result = train.fit(_loop(max_steps=8), _arrays(64, 0), _arrays(16, 1), _student_init(),
                       storage=str(tmp_path / "ckpt"), workers=2, model_out=tmp_path / "student",
                       step_hook=crash_once)
    assert marker.exists()  # a worker did die
    assert result.resumes == [4]  # and the new worker group continued from step 4, not 0
    assert result.history[-1]["step"] == 8
