"""Names that clients send never reach outside the model repository: model names with `..`,
absolute paths or separators (plain or percent-encoded) in load/unload, infer and readiness
paths, and version strings, over HTTP and gRPC, answer 4xx and load nothing. A symlink the
operator placed in the repository is followed, as Triton does."""
import json
import os
import shutil

import grpc
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import EXAMPLES, Server

BAD_NAMES = ["..%2F..%2Fetc", "%2Fetc", "..%2Foutside%2Fsimple", "a%2Fb", "..%5Coutside", "..", "."]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    repo = root / "repository"
    shutil.copytree(EXAMPLES / "simple", repo / "simple")
    # a model folder outside the repository that a traversal would reach
    shutil.copytree(EXAMPLES / "simple", root / "outside" / "simple")
    # a model kept elsewhere, linked into the repository by the operator
    shutil.copytree(EXAMPLES / "simple", root / "store" / "linked")
    config = root / "store" / "linked" / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "simple"', 'name: "linked"'))
    os.symlink(root / "store" / "linked", repo / "linked")
    s = Server(repo, "--model-control-mode", "explicit", "--feature-repo", "none")
    yield s
    assert s.alive(), s.log()
    s.stop()


def loaded(server):
    index = requests.post(server.url + "/v2/repository/index", json={}, timeout=10).json()
    return {m["name"] for m in index if m.get("state") == "READY"}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_load_and_unload_refuse_names_outside_the_repository(server, name):
    for action in ("load", "unload"):
        r = requests.post(f"{server.url}/v2/repository/models/{name}/{action}", timeout=10)
        assert r.status_code in (400, 404), (action, name, r.status_code, r.text)
        assert "error" in r.json()
    assert loaded(server) <= {"simple", "linked"}, loaded(server)


def test_grpc_load_refuses_a_traversal(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    for name in ["../outside/simple", "/etc", "a/b", ".."]:
        with pytest.raises(InferenceServerException) as e:
            c.load_model(name)
        assert e.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), (name, e.value)
        assert "invalid model name" in e.value.message() or "no model folder" in e.value.message()
    assert loaded(server) <= {"simple", "linked"}


def test_infer_and_readiness_paths_and_versions_stay_inside(server):
    assert requests.post(f"{server.url}/v2/repository/models/simple/load", timeout=60).status_code == 200
    assert requests.get(f"{server.url}/v2/models/..%2Fsimple/ready", timeout=10).status_code == 404
    r = requests.get(f"{server.url}/v2/models/simple/versions/..%2F1/ready", timeout=10)
    assert r.status_code == 400 and "not a non-negative integer" in r.json()["error"]
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
                       {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}]}
    r = requests.post(f"{server.url}/v2/models/..%2Foutside%2Fsimple/infer", json=body, timeout=10)
    assert r.status_code == 404, r.text
    r = requests.post(f"{server.url}/v2/models/simple/versions/%2E%2E/infer", json=body, timeout=10)
    assert r.status_code in (400, 404), r.text


def test_a_symlink_the_operator_placed_is_followed(server):
    r = requests.post(f"{server.url}/v2/repository/models/linked/load", timeout=60)
    assert r.status_code == 200, r.text
    assert requests.get(f"{server.url}/v2/models/linked/ready", timeout=10).status_code == 200
    assert "linked" in loaded(server)


@pytest.mark.parametrize("filename", ["../../outside/simple/1/model.onnx", "/etc/passwd", "..", "1/../../x"])
def test_a_config_override_cannot_name_a_file_outside_the_version_folder(server, filename):
    """A client's `config` override on load names the model file too: only a file name in the
    version folder is taken; the model in force is untouched."""
    config = {"name": "simple", "platform": "onnxruntime_onnx", "default_model_filename": filename,
              "max_batch_size": 8,
              "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
                        {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
              "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]}]}
    r = requests.post(f"{server.url}/v2/repository/models/simple/load",
                      json={"parameters": {"config": json.dumps(config)}}, timeout=30)
    assert r.status_code == 400, r.text
    assert "default_model_filename must be a file name in the version folder" in r.json()["error"], r.text
    assert "simple" in loaded(server)
