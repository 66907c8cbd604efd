"""`python benchmarks/ready_tokens_router.py CONFIG TOKENS_JSON`: the router process, unchanged but for Triton's
token stream, which yields the given token ids at once (log-probability -0.1 each). What it then costs per
request is the router's own work: HTTP, the chat template and tokenizer, the text stream, the confidence,
metrics, the response. For benchmarks/generation.py only."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from kubedistill_router import generation_models
from kubedistill_router.openai_api import GenerationRequest, TokenOut


def main() -> int:
    config, tokens = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())

    async def ready_stream(self: Any, model: str, prompt: list[int],
                           request: GenerationRequest) -> AsyncGenerator[TokenOut, None]:
        for token in tokens[:request.max_tokens]:
            yield TokenOut(int(token), -0.1, [])

    async def ready(self: Any, model: str) -> bool:
        return True

    generation_models.TritonGenerator.stream = ready_stream  # type: ignore[method-assign]
    generation_models.TritonGenerator.is_ready = ready  # type: ignore[method-assign]
    from kubedistill_router.__main__ import main as router

    return router(["--config", config, "--host", "127.0.0.1", "--log-level", "WARNING"])


if __name__ == "__main__":
    raise SystemExit(main())
