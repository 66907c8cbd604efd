"""Triton python-backend generation model: ONNX Runtime GenAI, decoupled, one response per token.

Copied as `model.py` into `<model>/1/` of a causal-LM model repository, next to the ONNX Runtime GenAI
model in `<model>/1/genai/`. It runs inside Triton's python backend stub (which needs `onnxruntime-genai`
and numpy there), never in the router or the jobs.

Request (tensor names: kubedistill.artifacts.GENERATION_INPUTS):
  input_ids [T] INT64      the prompt, already tokenized (the router applies the chat template)
  max_tokens [1] INT32     tokens to generate at most (clamped to the model's context length)
  temperature [1] FP32     0: greedy; > 0: sampling (optional, default 0)
  top_p [1] FP32           nucleus sampling (optional, default 1)
  seed [1] INT64           sampling seed (optional; -1 or absent: unseeded)
  top_logprobs [1] INT32   k alternatives per token, 0-20 (optional, default 0)
Responses, one per generated token, then a final one with token_id -1 (GENERATION_OUTPUTS):
  token_id [1] INT64, logprob [1] FP32 (the model's own log-probability of the token, at temperature 1),
  top_ids [k] INT64, top_logprobs_values [k] FP32.
Each request runs in its own thread, so concurrent requests generate side by side; a cancelled request
(the client went away) stops at the next token.
"""

import json
import os
import threading

import numpy as np
import onnxruntime_genai as og
import triton_python_backend_utils as pb_utils

MAX_TOP_LOGPROBS = 20


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _log_softmax(logits):
    z = logits.astype(np.float64) - logits.max()
    return z - np.log(np.exp(z).sum())


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"], "genai")
        self.model = og.Model(folder)
        with open(os.path.join(folder, "genai_config.json")) as f:
            self.context_length = int(json.load(f)["model"]["context_length"])
        self.threads = set()
        self.lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._run, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None  # decoupled: responses go through each request's sender

    def _run(self, request):
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
            # The last response is a marker (token_id -1) rather than an empty final response, which
            # clients must ask for with a reserved request parameter that not all of them can set.
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("token_id", np.array([-1], dtype=np.int64)),
                pb_utils.Tensor("logprob", np.array([0.0], dtype=np.float32)),
                pb_utils.Tensor("top_ids", np.zeros(0, dtype=np.int64)),
                pb_utils.Tensor("top_logprobs_values", np.zeros(0, dtype=np.float32)),
            ]), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as error:  # reported to the caller as the stream's error
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _generate(self, request, sender):
        prompt = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().reshape(-1)
        if prompt.size == 0:
            raise ValueError("input_ids is empty")
        if prompt.size >= self.context_length:
            raise ValueError(f"the prompt has {prompt.size} tokens; the model's context is {self.context_length}")
        max_tokens = int(_scalar(request, "max_tokens", 16))
        temperature = float(_scalar(request, "temperature", 0.0))
        top_p = float(_scalar(request, "top_p", 1.0))
        seed = int(_scalar(request, "seed", -1))
        k = max(0, min(int(_scalar(request, "top_logprobs", 0)), MAX_TOP_LOGPROBS))
        params = og.GeneratorParams(self.model)
        options = {"max_length": min(self.context_length, int(prompt.size) + max(max_tokens, 1))}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            if seed >= 0:
                options["random_seed"] = seed
        else:
            options.update(do_sample=False)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt.astype(np.int32))
        for count in range(max_tokens):
            if generator.is_done():
                break
            if sender.is_cancelled():  # the client went away: free the instance now
                pb_utils.Logger.log_info(f"generation cancelled after {count} tokens")
                break
            logprobs = _log_softmax(generator.get_logits().reshape(-1))
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            top = np.argsort(-logprobs)[:k] if k else np.zeros(0, dtype=np.int64)
            sender.send(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("token_id", np.array([token], dtype=np.int64)),
                pb_utils.Tensor("logprob", np.array([logprobs[token]], dtype=np.float32)),
                pb_utils.Tensor("top_ids", top.astype(np.int64)),
                pb_utils.Tensor("top_logprobs_values", logprobs[top].astype(np.float32)),
            ]))

    def finalize(self):
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=10)
