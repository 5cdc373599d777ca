"""Triton Python-backend model for the serving benchmark: runs model.onnx (beside this file)
through onnxruntime on CPU, one intra-op and one inter-op thread per instance (two instances
share the two cores, as Flotilla's two sessions do).

The stub's embedded interpreter ignores PYTHONPATH, so the venv's site-packages (passed in
PYTHONPATH by bench.py) are put on sys.path here, before onnxruntime and numpy are imported."""
import os
import sys

sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(":") if p and p not in sys.path]

import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "input__0").as_numpy()
            (y,) = self.session.run(None, {"input__0": x})
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("output__0", y)]))
        return responses
