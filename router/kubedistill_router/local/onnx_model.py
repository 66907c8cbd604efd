"""Triton python-backend model that runs an ONNX file with onnxruntime.

Copied as `model.py` next to `model.onnx` in the local repository that `kubedistill serve` generates
(the tritonserver in the nvidia-pytriton wheel has no onnxruntime backend). It runs inside Triton's
python backend stub, never in the router. Same tensor names and shapes as the ONNX model.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        # default_model_filename names this file (model.py); the ONNX graph sits beside it.
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        threads = int(os.environ.get("KUBEDISTILL_ORT_THREADS", "0"))
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        onnx_inputs = {i.name for i in self.session.get_inputs()}
        self.inputs = [i["name"] for i in config["input"] if i["name"] in onnx_inputs]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        # Requests with equal shapes run as one batch; the rest one by one.
        feeds = []
        for request in requests:
            feeds.append({name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs})
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, feed in enumerate(feeds):
            key = tuple(feed[name].shape[1:] for name in self.inputs)
            groups.setdefault(key, []).append(index)
        responses = [None] * len(requests)
        for indices in groups.values():
            try:
                batch = {name: np.concatenate([feeds[i][name] for i in indices]) for name in self.inputs}
                results = self.session.run(self.outputs, batch)
                start = 0
                for i in indices:
                    rows = feeds[i][self.inputs[0]].shape[0]
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(result[start:start + rows]))
                               for name, result in zip(self.outputs, results, strict=True)]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += rows
            except Exception as error:  # reported to the caller as a Triton error
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(error)))
        return responses
