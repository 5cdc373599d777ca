"""Builds the serving benchmark's models and the three servers' model repositories.

- XGBoost: 100 trees, 30 features, binary:logistic, trained on synthetic data (xgboost-cpu),
  saved as JSON; served by Flotilla (Triton FIL config) and MLServer (mlserver_xgboost).
- ONNX MLP: 30 -> 64 -> 64 -> 1 (Gemm/Relu/Gemm/Relu/Gemm/Sigmoid) with fixed random weights,
  written with onnx.helper; served by Flotilla (onnxruntime_onnx) and Triton (Python backend
  running the same file through onnxruntime, 1 intra-op thread per instance).
- Compute-bound ONNX MLP ("mlp_big"): 256 -> 2048 -> 2048 -> 1, same layout and fixed random weights,
  large enough that batch-1 compute dominates HTTP handling and batching pays off; served by
  Flotilla only, one ONNX Runtime session (instance_group count 1) with BIG_THREADS intra-op
  threads, plain, with dynamic batching (mlp_big_dyn) and with a bounded queue (mlp_big_q). The
  dynamic batching and overload targets are judged on it (the xgb ones are protocol-bound).

Usage: make_models.py WORK_DIR QUEUE_SIZE [BIG_QUEUE_SIZE]   (deterministic; rewrites WORK_DIR/{models,flotilla,mlserver,triton})
"""
import json, shutil, sys
from pathlib import Path

import numpy as np

FEATURES, TREES, HIDDEN = 30, 100, 64
BIG_FEATURES, BIG_HIDDEN, BIG_THREADS = 256, 2048, 2
HERE = Path(__file__).resolve().parent


def xgboost_model(path):
    import xgboost as xgb
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, FEATURES)).astype(np.float32)
    z = X[:, 0] * X[:, 1] + np.sin(X[:, 2] * 3) + X[:, 3:12].sum(axis=1) * 0.3
    y = (z + rng.normal(scale=0.5, size=len(X)) > 0).astype(np.float32)
    params = {"objective": "binary:logistic", "max_depth": 6, "eta": 0.1, "nthread": 2, "seed": 0}
    xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=TREES).save_model(path)


def onnx_mlp(path, features=FEATURES, hidden=HIDDEN, seed=1):
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    rng = np.random.default_rng(seed)
    sizes = [features, hidden, hidden, 1]
    nodes, inits, prev = [], [], "input__0"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.normal(size=(n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.normal(size=n_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"h{i}"]))
        last = i == len(sizes) - 2
        out = "output__0" if last else f"a{i}"
        nodes.append(helper.make_node("Sigmoid" if last else "Relu", [f"h{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("input__0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("output__0", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def io(max_batch, features=FEATURES, instances=2):
    return f"""max_batch_size: {max_batch}
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ {features} ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] }} ]
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
"""


def model_dir(root, name, config, files):
    d = root / name
    (d / "1").mkdir(parents=True)
    (d / "config.pbtxt").write_text(f'name: "{name}"\n{config}')
    for src, dst in files:
        shutil.copy(src, d / "1" / dst)


def main():
    work, queue_size = Path(sys.argv[1]), int(sys.argv[2])
    big_queue_size = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    models = work / "models"
    models.mkdir(parents=True, exist_ok=True)
    xgb_file, mlp_file = models / "xgb.json", models / "mlp.onnx"
    if not xgb_file.exists():
        xgboost_model(xgb_file)
    if not mlp_file.exists():
        onnx_mlp(mlp_file)
    big_file = models / f"mlp_big_{BIG_FEATURES}_{BIG_HIDDEN}.onnx"
    if not big_file.exists():
        onnx_mlp(big_file, BIG_FEATURES, BIG_HIDDEN, seed=3)
    for d in ("flotilla", "mlserver", "triton"):
        shutil.rmtree(work / d, ignore_errors=True)

    # Flotilla: the XGBoost model three times (plain, dynamic batching, bounded queue) and the MLP.
    fl = work / "flotilla"
    fil = io(1024) + 'backend: "fil"\nparameters { key: "model_type" value { string_value: "xgboost_json" } }\n'
    model_dir(fl, "xgb", fil, [(xgb_file, "model.json")])
    model_dir(fl, "xgb_dyn", fil + "dynamic_batching { max_queue_delay_microseconds: 200 }\n",
              [(xgb_file, "model.json")])
    # the same model always handed to an engine thread (no inline runs): what the hand-off costs
    model_dir(fl, "xgb_hop", fil + 'parameters { key: "inline_max_us" value { string_value: "0" } }\n',
              [(xgb_file, "model.json")])
    model_dir(fl, "xgb_q", fil + f"dynamic_batching {{ default_queue_policy {{ max_queue_size: {queue_size} }} }}\n",
              [(xgb_file, "model.json")])
    ort = io(64) + 'platform: "onnxruntime_onnx"\n' \
        'parameters { key: "intra_op_thread_count" value { string_value: "1" } }\n'
    model_dir(fl, "mlp", ort, [(mlp_file, "model.onnx")])
    # Compute-bound MLP: one session (one engine instance), BIG_THREADS intra-op threads.
    big = io(64, BIG_FEATURES, 1) + 'platform: "onnxruntime_onnx"\n' \
        f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{BIG_THREADS}" }} }}\n'
    model_dir(fl, "mlp_big", big, [(big_file, "model.onnx")])
    model_dir(fl, "mlp_big_dyn", big + "dynamic_batching { max_queue_delay_microseconds: 500 }\n",
              [(big_file, "model.onnx")])
    model_dir(fl, "mlp_big_q", big + f"dynamic_batching {{ default_queue_policy {{ max_queue_size: {big_queue_size} }} }}\n",
              [(big_file, "model.onnx")])

    # MLServer: its XGBoost runtime on the same JSON file.
    d = work / "mlserver" / "xgb"
    d.mkdir(parents=True)
    (d / "model-settings.json").write_text(json.dumps({
        "name": "xgb", "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": str(xgb_file.resolve()), "version": "1"}}, indent=2))

    # Triton: Python backend model running the same ONNX file through onnxruntime.
    model_dir(work / "triton", "mlp", io(64) + 'backend: "python"\n',
              [(mlp_file, "model.onnx"), (HERE / "triton_model.py", "model.py")])

    # KServe v2 JSON batch-1 bodies (same row for every server).
    row = [round(float(v), 4) for v in np.random.default_rng(2).normal(size=FEATURES)]
    body = {"inputs": [{"name": "input__0", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]}
    (work / "body.json").write_text(json.dumps(body))
    row = [round(float(v), 4) for v in np.random.default_rng(4).normal(size=BIG_FEATURES)]
    body = {"inputs": [{"name": "input__0", "shape": [1, BIG_FEATURES], "datatype": "FP32", "data": row}]}
    (work / "body_big.json").write_text(json.dumps(body))
    print(f"models and repositories in {work}")


if __name__ == "__main__":
    main()
