"""A small OpenAI-compatible server around a real (tiny) causal LM, for tests on loopback: `/v1/chat/completions`
and `/v1/completions` with greedy decoding and `logprobs`/`top_logprobs` (which `transformers serve` refuses).

    python tests/jobs/llm_server.py MODEL_DIR [--api-key K] [--fail-429 N --retry-after S] [--no-logprobs]
                                               [--delay S]

Prints `port=N` once it listens. `GET /stats` tells what it received: requests in all, the time each
arrived (`arrivals`, on the server's clock, before any refusal), the sha256 of each answered prompt with its
count, each answered request's time, and the messages of each answered chat request.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class Model:
    def __init__(self, folder: str) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.lock = threading.Lock()

    def render(self, messages: list[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def generate(self, prompt: str, max_tokens: int, top: int) -> tuple[list[dict[str, Any]], int]:
        """Greedy tokens, each with its logprob and the `top` most likely candidates; prompt token count."""
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        n_prompt, out = len(ids), []
        cache, fed = None, ids  # the prompt once, then one token at a time on its KV cache
        with self.lock, torch.inference_mode():
            for _ in range(max_tokens):
                step = self.model(input_ids=torch.as_tensor([fed]), cache=cache, use_cache=True)
                cache = step.cache
                logp = torch.log_softmax(step.logits[0, -1].double(), -1)
                values, indices = logp.topk(top)
                token = int(indices[0])
                top_tokens = [(self.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, indices, strict=True)]
                out.append({"id": token, "token": self.tokenizer.decode([token]), "logprob": float(values[0]),
                            "top": top_tokens})
                ids.append(token)
                fed = [token]
                if token == self.tokenizer.eos_token_id:
                    break
        return out, n_prompt


def make_handler(model: Model, args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    stats: dict[str, Any] = {"requests": 0, "arrivals": [], "answered": {}, "times": [], "chats": []}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with lock:
                self._send(200, stats)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                stats["requests"] += 1
                stats["arrivals"].append(time.time())
                number = stats["requests"]
            if args.api_key and self.headers.get("Authorization") != f"Bearer {args.api_key}":
                return self._send(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
            if number <= args.fail_429:
                return self._send(429, {"error": {"message": "slow down", "type": "rate_limit"}},
                                  {"Retry-After": str(args.retry_after)})
            if args.delay:
                time.sleep(args.delay)
            chat = self.path.endswith("/chat/completions")
            prompt = model.render(body["messages"]) if chat else body["prompt"]
            top = int(body.get("top_logprobs") or 1) if chat else int(body.get("logprobs") or 1)
            tokens, n_prompt = model.generate(prompt, int(body.get("max_tokens") or 16), max(1, top))
            text = model.tokenizer.decode([t["id"] for t in tokens], skip_special_tokens=True)
            ended = bool(tokens) and tokens[-1]["id"] == model.tokenizer.eos_token_id
            finish = "stop" if ended or len(tokens) < int(body.get("max_tokens") or 16) else "length"
            with lock:
                key = hashlib.sha256(prompt.encode()).hexdigest()
                stats["answered"][key] = stats["answered"].get(key, 0) + 1
                stats["times"].append(time.time())
                if chat:
                    stats["chats"].append(body["messages"])
            usage = {"prompt_tokens": n_prompt, "completion_tokens": len(tokens),
                     "total_tokens": n_prompt + len(tokens)}
            wants = body.get("logprobs") and not args.no_logprobs
            if chat:
                logprobs = {"content": [{"token": t["token"], "logprob": t["logprob"], "bytes": None,
                                         "top_logprobs": [{"token": s, "logprob": v, "bytes": None}
                                                          for s, v in t["top"]]} for t in tokens]}
                choice = {"index": 0, "finish_reason": finish, "logprobs": logprobs if wants else None,
                          "message": {"role": "assistant", "content": text}}
                return self._send(200, {"id": f"chat-{number}", "object": "chat.completion", "created": 0,
                                        "model": body["model"], "choices": [choice], "usage": usage})
            logprobs = {"tokens": [t["token"] for t in tokens], "token_logprobs": [t["logprob"] for t in tokens],
                        "top_logprobs": [dict(t["top"]) for t in tokens], "text_offset": [0] * len(tokens)}
            choice = {"index": 0, "finish_reason": finish, "text": text, "logprobs": logprobs if wants else None}
            return self._send(200, {"id": f"cmpl-{number}", "object": "text_completion", "created": 0,
                                    "model": body["model"], "choices": [choice], "usage": usage})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--api-key")
    parser.add_argument("--fail-429", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--no-logprobs", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(Model(str(Path(args.model))), args))
    print(f"port={server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
