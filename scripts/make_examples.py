#!/usr/bin/env python3
"""Generates the example model repository (examples/repository).

- simple:   Triton's classic example as ONNX. INPUT0, INPUT1: INT32 [-1, 16];
            OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; max_batch_size 8.
- mlp_iris: a small MLP classifier (4 -> 16 -> 3, ReLU, softmax) trained with
            scikit-learn on the iris data set it ships; FP32 input `input` [4],
            output `probabilities` [3], class labels in labels.txt.

Run with the test venv: .venv/bin/python scripts/make_examples.py
(needs onnx, numpy, scikit-learn). Output is deterministic.
"""
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parent.parent / "examples" / "repository"
OPSET = [helper.make_opsetid("", 13)]


def save(model, path):
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def simple():
    i0 = helper.make_tensor_value_info("INPUT0", TensorProto.INT32, ["batch", 16])
    i1 = helper.make_tensor_value_info("INPUT1", TensorProto.INT32, ["batch", 16])
    o0 = helper.make_tensor_value_info("OUTPUT0", TensorProto.INT32, ["batch", 16])
    o1 = helper.make_tensor_value_info("OUTPUT1", TensorProto.INT32, ["batch", 16])
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="add"),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="sub"),
    ]
    graph = helper.make_graph(nodes, "simple", [i0, i1], [o0, o1])
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="flotilla-examples")
    model.ir_version = 8
    save(model, ROOT / "simple" / "1" / "model.onnx")
    (ROOT / "simple" / "config.pbtxt").write_text(
        """name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""
    )


def mlp_iris():
    from sklearn.datasets import load_iris
    from sklearn.neural_network import MLPClassifier

    data = load_iris()
    x, y = data.data.astype(np.float32), data.target
    clf = MLPClassifier(hidden_layer_sizes=(16,), activation="relu", max_iter=3000, random_state=0)
    clf.fit(x, y)
    w1, w2 = (w.astype(np.float32) for w in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    inits = [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(nodes, "mlp_iris", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="flotilla-examples")
    model.ir_version = 8
    save(model, ROOT / "mlp_iris" / "1" / "model.onnx")
    (ROOT / "mlp_iris" / "labels.txt").write_text("\n".join(data.target_names) + "\n")
    (ROOT / "mlp_iris" / "config.pbtxt").write_text(
        """name: "mlp_iris"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 3 ]
    label_filename: "labels.txt"
  }
]
"""
    )
    print(f"mlp_iris training accuracy: {clf.score(x, y):.3f}")


if __name__ == "__main__":
    simple()
    mlp_iris()
    print(f"wrote {ROOT}")
