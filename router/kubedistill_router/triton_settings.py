"""A StudentDeployment's Triton settings (`spec.triton`), written into the fetched models' config.pbtxt.

The operator passes them to the fetch init container as environment variables (`kubedistill.env.TritonEnv`),
so a job's model repository stays what the job wrote, and each deployment serves it with its own batching
and instances.
Configs are edited through Triton's own ModelConfig protobuf, never as text.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from kubedistill.artifacts import ServedModel, ServingManifest
from kubedistill.env import TritonEnv


class TritonSettings(TritonEnv):
    """The settings as the operator passed them (`TritonEnv.from_env`), applied to Triton's ModelConfig."""

    @property
    def empty(self) -> bool:
        return self.model_copy(update={"backend": None}) == TritonSettings()

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
        if model is None or model.kind == "vllm":  # vLLM batches and places itself: its config stays as rendered
            continue
        path = repository / model.name / "config.pbtxt"
        config = settings.apply(read_config(path))
        path.write_text(text_format.MessageToString(config))
        changed.append(path)
    return changed
