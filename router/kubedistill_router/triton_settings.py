"""A StudentDeployment's Triton settings (`spec.triton`), written into the fetched models' config.pbtxt.

The operator passes them to the fetch init container as environment variables, so a job's model
repository stays what the job wrote, and each deployment serves it with its own batching and instances.
Configs are edited through Triton's own ModelConfig protobuf, never as text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubedistill.artifacts import ServedModel, ServingManifest

PREFIX = "KUBEDISTILL_TRITON_"


@dataclass(frozen=True)
class TritonSettings:
    max_batch_size: int | None = None
    instance_count: int | None = None
    instance_kind: str | None = None  # KIND_CPU or KIND_GPU
    dynamic_batching: bool | None = None
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TritonSettings:
        def number(key: str) -> int | None:
            value = env.get(PREFIX + key)
            if value is None:
                return None
            if not value.isdigit() or int(value) < 0:
                raise ValueError(f"{PREFIX}{key}={value!r}: expected a non-negative integer")
            return int(value)

        batching = env.get(PREFIX + "DYNAMIC_BATCHING")
        preferred = env.get(PREFIX + "PREFERRED_BATCH_SIZES", "")
        kind = env.get(PREFIX + "INSTANCE_KIND")
        if kind is not None and kind not in ("KIND_CPU", "KIND_GPU"):
            raise ValueError(f"{PREFIX}INSTANCE_KIND={kind!r}: expected KIND_CPU or KIND_GPU")
        return cls(
            max_batch_size=number("MAX_BATCH_SIZE"),
            instance_count=number("INSTANCE_COUNT"),
            instance_kind=kind,
            dynamic_batching=None if batching is None else batching.lower() == "true",
            max_queue_delay_us=number("MAX_QUEUE_DELAY_US"),
            preferred_batch_sizes=tuple(int(b) for b in preferred.split(",") if b.strip()),
        )

    @property
    def empty(self) -> bool:
        return self == TritonSettings()

    def apply(self, config: model_config_pb2.ModelConfig) -> model_config_pb2.ModelConfig:
        """A copy of `config` with these settings in it."""
        out = model_config_pb2.ModelConfig()
        out.CopyFrom(config)
        if self.max_batch_size is not None:
            out.max_batch_size = self.max_batch_size
        if self.dynamic_batching is False:
            out.ClearField("dynamic_batching")
        elif self.dynamic_batching or self.max_queue_delay_us is not None or self.preferred_batch_sizes:
            batching = out.dynamic_batching
            if self.max_queue_delay_us is not None:
                batching.max_queue_delay_microseconds = self.max_queue_delay_us
            limit = out.max_batch_size
            wrong = [b for b in self.preferred_batch_sizes if not 0 < b <= limit]
            if wrong:  # the deployment's own sizes: refused, never dropped unseen (the export's are filtered)
                raise ValueError(f"triton.dynamicBatching.preferredBatchSizes: {wrong} outside 1..{limit} "
                                 "(the model's max_batch_size); remove them or raise triton.maxBatchSize")
            sizes = self.preferred_batch_sizes or tuple(batching.preferred_batch_size)
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.extend(sorted({b for b in sizes if 0 < b <= limit}))
        if self.instance_count is not None or self.instance_kind is not None:
            del out.instance_group[:]
            group = out.instance_group.add()
            group.count = self.instance_count or 1
            group.kind = model_config_pb2.ModelInstanceGroup.Kind.Value(self.instance_kind or "KIND_AUTO")
        return out


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def serving_limits(repository: Path, model: ServedModel) -> tuple[int, int]:
    """(max_batch_size, model instances) as Triton loads `model`: from its config.pbtxt, into which a
    StudentDeployment's settings have been written; serving.json's batch size where there is no file."""
    path = repository / model.name / "config.pbtxt"
    if not path.exists():
        return model.max_batch_size, 1
    config = read_config(path)
    instances = sum(group.count or 1 for group in config.instance_group) or 1
    return config.max_batch_size or model.max_batch_size, instances


def apply_to_repository(repository: Path, manifest: ServingManifest, settings: TritonSettings) -> list[Path]:
    """Rewrite the config.pbtxt of every model the manifest names; returns the files changed."""
    if settings.empty:
        return []
    changed = []
    for model in (manifest.student, manifest.teacher):
        if model is None:
            continue
        path = repository / model.name / "config.pbtxt"
        config = settings.apply(read_config(path))
        path.write_text(text_format.MessageToString(config))
        changed.append(path)
    return changed
