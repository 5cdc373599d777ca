"""The REST API's OpenAPI document (`GET /openapi.json`, built in crates/http/src/openapi.rs) run by
schemathesis against the real server: generated requests on every operation (valid, malformed,
wrong types, boundary values, stateful sequences), and no answer may be a 5xx or break the schema.
A bounded run here; `bench/openapi/run.sh` runs many more examples."""
import json
import subprocess
import sys
import pathlib

import requests

from conftest import EXAMPLES, ROOT, Server

ST = pathlib.Path(sys.executable).parent / "st"
CONFIG = '[parameters]\n"path.model" = "simple"\n"path.version" = "1"\n'


def run_schemathesis(server, tmp_path, examples):
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    out = subprocess.run(
        [str(ST), "--config-file", str(tmp_path / "schemathesis.toml"), "run", server.url + "/openapi.json",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", str(examples),
         "--generation-deterministic", "--request-timeout", "30",
         "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, cwd=tmp_path, timeout=900)
    return out


def test_the_document_describes_the_api(tmp_path):
    s = Server(EXAMPLES)
    try:
        doc = requests.get(s.url + "/openapi.json", timeout=10).json()
        assert doc["openapi"].startswith("3.")
        paths = doc["paths"]
        for path in ["/v2", "/v2/models/{model}/infer", "/v2/repository/index", "/get-online-features", "/push",
                     "/v2/models/{model}/drift"]:
            assert path in paths, path
        # every described GET with a model answers for a real model as described
        meta = requests.get(s.url + "/v2/models/simple", timeout=10).json()
        required = doc["components"]["schemas"]["ModelMetadata"]["required"]
        assert all(k in meta for k in required)
    finally:
        assert s.stop() == 0, s.log()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path):
    s = Server(EXAMPLES)
    try:
        out = run_schemathesis(s, tmp_path, 25)
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
        assert " passed" in out.stdout and "failed" not in out.stdout.split("SUMMARY")[-1], out.stdout[-3000:]
        assert s.alive()
        assert "panicked" not in s.log()
    finally:
        assert s.stop() == 0, s.log()
