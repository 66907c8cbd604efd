"""The operator's own settings: images and pull secrets, read from the environment the Helm chart sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubedistill import __version__

DEFAULT_JOB_IMAGE = f"ghcr.io/kubedistill/kubedistill-jobs:{__version__}"
DEFAULT_ROUTER_IMAGE = f"ghcr.io/kubedistill/kubedistill-router:{__version__}"
# triton-image/Dockerfile: NVIDIA's Triton with onnxruntime-genai in its python backend (causal-LM students).
DEFAULT_TRITON_IMAGE = f"ghcr.io/kubedistill/kubedistill-triton:{__version__}"

ENV_JOB_IMAGE = "KUBEDISTILL_JOB_IMAGE"
ENV_ROUTER_IMAGE = "KUBEDISTILL_ROUTER_IMAGE"
ENV_TRITON_IMAGE = "KUBEDISTILL_TRITON_IMAGE"
ENV_IMAGE_PULL_SECRETS = "KUBEDISTILL_IMAGE_PULL_SECRETS"


@dataclass(frozen=True)
class OperatorConfig:
    """What the builders need besides the resource itself."""

    job_image: str = DEFAULT_JOB_IMAGE
    router_image: str = DEFAULT_ROUTER_IMAGE
    # Replaces the API's default Triton image (a spec that names its own image keeps it); None keeps the API's.
    triton_image: str | None = DEFAULT_TRITON_IMAGE
    image_pull_secrets: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        secrets = tuple(s.strip() for s in env.get(ENV_IMAGE_PULL_SECRETS, "").split(",") if s.strip())
        return cls(
            job_image=env.get(ENV_JOB_IMAGE) or DEFAULT_JOB_IMAGE,
            router_image=env.get(ENV_ROUTER_IMAGE) or DEFAULT_ROUTER_IMAGE,
            triton_image=env.get(ENV_TRITON_IMAGE) or DEFAULT_TRITON_IMAGE,
            image_pull_secrets=secrets,
        )
