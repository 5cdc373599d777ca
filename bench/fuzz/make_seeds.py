"""Writes the seed corpora of the fuzz targets that have no fixture files of their own into
fuzz/seeds/<target>/ (small, committed): KServe v2 JSON and binary-extension bodies, gRPC
ModelInferRequest messages (tritonclient's protobufs), stream messages (JSON rows and Debezium
envelopes for the example feature views) and PostgreSQL replication frames with pgoutput
messages; `config.pbtxt` files (the examples' and three that use more of Triton's grammar: dynamic
batching with queue policies, an ensemble, version policies, warm-up); and for the drift profile reader a small profile (64 rows: small sketches, so the fuzzer
runs hundreds of times faster than on the 250 KB example) made by `flotilla profile` with the
binary at $FLOTILLA_BIN (default target/debug/flotilla), and the example's drift.toml.
Run: .venv/bin/python bench/fuzz/make_seeds.py"""
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
from tritonclient.grpc import service_pb2

OUT = pathlib.Path(__file__).resolve().parents[2] / "fuzz" / "seeds"


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def rest():
    bodies = {
        "simple": {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                              {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]},
        "nested_fp32": {"id": "r1", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                                "data": [[1.5, -2.0], [3.25, 1e-3]]}],
                        "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
        "bytes": {"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": ["hello", "wörld"]}],
                  "parameters": {"priority": 1, "timeout": 1000}},
        "bool_fp16": {"inputs": [{"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
                                 {"name": "h", "shape": [1], "datatype": "FP16", "data": [0.5]}]},
        "huge_shape": {"inputs": [{"name": "x", "shape": [1, 4611686018427387904], "datatype": "FP32", "data": [1.0]}]},
        "uint64": {"inputs": [{"name": "u", "shape": [2], "datatype": "UINT64", "data": [0, 18446744073709551615]}]},
    }
    for name, body in bodies.items():
        write("rest_json", name + ".json", json.dumps(body))
    # binary extension: two little-endian bytes give the header length, then header + tensors
    a = np.arange(16, dtype=np.int32).tobytes()
    header = json.dumps({"inputs": [
        {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": len(a)}},
        {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "parameters": {"binary_data_size": len(a)}}],
        "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    write("rest_binary", "simple.bin", struct.pack("<H", len(header)) + header + a + a)
    strings = b"".join(struct.pack("<I", len(s)) + s for s in [b"abc", b"", "é".encode()])
    header = json.dumps({"inputs": [{"name": "TEXT", "shape": [3], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(strings)}}]}).encode()
    write("rest_binary", "bytes.bin", struct.pack("<H", len(header)) + header + strings)


def grpc():
    r = service_pb2.ModelInferRequest(model_name="simple", id="1")
    for name in ("INPUT0", "INPUT1"):
        t = r.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        t.contents.int_contents.extend(range(16))
    write("grpc_infer", "contents.pb", r.SerializeToString())
    r = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        r.inputs.add(name=name, datatype="INT32", shape=[1, 16])
        r.raw_input_contents.append(np.arange(16, dtype=np.int32).tobytes())
    r.outputs.add(name="OUTPUT0")
    write("grpc_infer", "raw.pb", r.SerializeToString())
    r = service_pb2.ModelInferRequest(model_name="minilm")
    t = r.inputs.add(name="TEXT", datatype="BYTES", shape=[2, 1])
    t.contents.bytes_contents.extend([b"hello", b"world"])
    r.parameters["priority"].int64_param = 2
    write("grpc_infer", "bytes.pb", r.SerializeToString())


def streams():
    rows = {
        "txn_row": {"card_id": 42, "event_timestamp": "2026-11-02T00:00:00Z", "last_amount": 12.5, "txn_count_1h": 3},
        "profile_row": {"card_id": 7, "event_timestamp": 1762041600, "avg_amount_30d": 55.0},
        "string_key": {"card_id": "x", "event_timestamp": "yesterday"},
    }
    for name, row in rows.items():
        write("stream_message", name + ".json", json.dumps(row))
    schema = {"type": "struct", "fields": [
        {"field": "after", "type": "struct", "fields": [{"field": "card_id", "type": "int64"},
                                                         {"field": "avg_amount_30d", "type": "double"}]}]}
    for op, before, after in [("c", None, {"card_id": 1, "avg_amount_30d": 2.5}),
                              ("u", {"card_id": 1, "avg_amount_30d": 2.5}, {"card_id": 1, "avg_amount_30d": 3.5}),
                              ("d", {"card_id": 1, "avg_amount_30d": 3.5}, None),
                              ("r", None, {"card_id": 2, "avg_amount_30d": 1.0})]:
        payload = {"before": before, "after": after, "op": op, "ts_ms": 1762041600000,
                   "source": {"ts_ms": 1762041600000, "lsn": 100, "table": "cards"}}
        write("stream_message", f"debezium_{op}.json", json.dumps({"schema": schema, "payload": payload}))
        write("stream_message", f"debezium_{op}_bare.json", json.dumps(payload))
    write("stream_message", "debezium_truncate.json", json.dumps({"op": "t", "ts_ms": 1, "source": {"ts_ms": 1}}))


def cstr(s):
    return s.encode() + b"\0"


def pg():
    begin = b"B" + struct.pack(">QqI", 0x16B3748, 800000000000, 741)
    relation = (b"R" + struct.pack(">I", 16385) + cstr("public") + cstr("cards") + b"d" + struct.pack(">H", 3)
                + b"\x01" + cstr("card_id") + struct.pack(">Ii", 20, -1)
                + b"\x00" + cstr("credit_limit") + struct.pack(">Ii", 1700, 786438)
                + b"\x00" + cstr("status") + struct.pack(">Ii", 25, -1))

    def tup(*values):
        out = struct.pack(">H", len(values))
        for v in values:
            if v is None:
                out += b"n"
            else:
                out += b"t" + struct.pack(">I", len(v)) + v
        return out
    insert = b"I" + struct.pack(">I", 16385) + b"N" + tup(b"42", b"5000.00", b"active")
    update = b"U" + struct.pack(">I", 16385) + b"K" + tup(b"42", None, None) + b"N" + tup(b"43", b"1.5", None)
    delete = b"D" + struct.pack(">I", 16385) + b"K" + tup(b"42", None, None)
    truncate = b"T" + struct.pack(">IB", 1, 0) + struct.pack(">I", 16385)
    commit = b"C" + b"\x00" + struct.pack(">QQq", 0x16B3748, 0x16B3780, 800000000001)
    for name, m in [("begin", begin), ("relation", relation), ("insert", insert), ("update", update),
                    ("delete", delete), ("truncate", truncate), ("commit", commit)]:
        write("pgoutput", name + ".msg", m)
        # the same inside an XLogData frame, as the replication stream carries it
        write("pgoutput", name + ".frame", b"w" + struct.pack(">QQq", 0x16B3748, 0x16B3780, 800000000000) + m)
    write("pgoutput", "keepalive.frame", b"k" + struct.pack(">Qq", 0x16B3780, 800000000000) + b"\x01")


CONFIGS = {
    "batching.pbtxt": """name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "x" data_type: TYPE_FP32 dims: [ 256 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] label_filename: "labels.txt" } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 timeout_action: REJECT default_timeout_microseconds: 50000 }
  priority_levels: 2
  default_priority_level: 1
}
version_policy: { latest: { num_versions: 2 } }
parameters: { key: "intra_op_threads" value: { string_value: "1" } }
""",
    "ensemble.pbtxt": """name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "SCORE" data_type: TYPE_FP32 dims: [ 2 ] } ]
ensemble_scheduling {
  step [
    { model_name: "tokenizer" model_version: -1 input_map { key: "in" value: "TEXT" } output_map { key: "ids" value: "IDS" } },
    { model_name: "classifier" model_version: 1 input_map { key: "ids" value: "IDS" } output_map { key: "logits" value: "SCORE" } }
  ]
}
""",
    "trees.pbtxt": """name: "fraud"
backend: "fil"
max_batch_size: 1024
default_model_filename: "xgboost.json"
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 8 ] allow_ragged_batch: false } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]
version_policy: { specific: { versions: [ 1, 3 ] } }
parameters [ { key: "output_class" value: { string_value: "false" } }, { key: "threshold" value: { string_value: "0.5" } } ]
optimization { input_pinned_memory { enable: true } }
model_warmup [ { name: "zeros" batch_size: 1 inputs { key: "input__0" value: { data_type: TYPE_FP32 dims: [ 8 ] zero_data: true } } } ]
""",
}


def configs():
    """Every config.pbtxt of the examples, and three that use more of the grammar."""
    root = OUT.parents[1]
    for path in sorted(root.glob("examples/**/config.pbtxt")):
        write("config_pbtxt", f"{path.parent.name}.pbtxt", path.read_text())
    for name, text in CONFIGS.items():
        write("config_pbtxt", name, text)


def drift():
    root = OUT.parents[1]
    binary = pathlib.Path(os.environ.get("FLOTILLA_BIN", root / "target/debug/flotilla"))
    if not binary.exists():
        print(f"drift_profile seeds: no binary at {binary}; build it or set FLOTILLA_BIN", file=sys.stderr)
        return
    rng = np.random.default_rng(20261204)
    columns = (root / "examples/repository/fraud_xgb/features.txt").read_text().split()
    with tempfile.TemporaryDirectory() as tmp:
        repo = pathlib.Path(tmp) / "repository"
        shutil.copytree(root / "examples/repository/fraud_xgb", repo / "fraud_xgb",
                        ignore=shutil.ignore_patterns("drift_profile.json"))
        data = pathlib.Path(tmp) / "rows.csv"
        rows = rng.lognormal(2.0, 1.0, size=(64, len(columns))).round(3)
        rows[::7, 6] = np.nan  # some missing values, as avg_amount_30d has
        lines = [",".join(columns)] + [",".join("" if np.isnan(v) else str(v) for v in r) for r in rows]
        data.write_text("\n".join(lines) + "\n")
        out = OUT / "drift_profile" / "small_profile.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(binary), "profile", "--model-repository", str(repo), "--model", "fraud_xgb",
                        "--data", str(data), "--out", str(out)], check=True, capture_output=True)
        # the same bytes on every run: a fixed creation time and source name
        profile = json.loads(out.read_text())
        profile["created"], profile["source"] = "2026-12-04T00:00:00Z", "rows.csv"
        out.write_text(json.dumps(profile, indent=1))
    shutil.copy(root / "examples/repository/fraud_xgb/drift.toml", OUT / "drift_profile" / "drift.toml")


if __name__ == "__main__":
    rest()
    grpc()
    streams()
    pg()
    configs()
    drift()
    print("seeds in", OUT)
