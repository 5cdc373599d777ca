"""Triton's perf_analyzer (from the tritonclient 2.50.0 wheel) against `simple`, HTTP and gRPC."""
import os
import pathlib
import re
import subprocess
import sys

import pytest


def perf_analyzer():
    venv = pathlib.Path(sys.executable).parent
    exe = venv / "perf_analyzer"
    import nvidia.cuda_runtime
    lib = pathlib.Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    return exe, env


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_simple(server, protocol, tmp_path):
    exe, env = perf_analyzer()
    url = server.http if protocol == "http" else server.grpc
    csv = tmp_path / "pa.csv"
    cmd = [str(exe), "-m", "simple", "-u", url, "-i", protocol, "--concurrency-range", "1:4",
           "--measurement-interval", "800", "--stability-percentage", "100", "-f", str(csv)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"Concurrency: 4, throughput: [\d.]+ infer/sec", p.stdout), p.stdout
    assert csv.read_text().count("\n") >= 5
