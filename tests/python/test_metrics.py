"""Prometheus exposition: promtool-clean, with the expected families after traffic."""
import re
import shutil
import subprocess

import requests
import tritonclient.grpc as grpcclient


def test_promtool_check_metrics(server):
    # traffic on both protocols, including an error, so every family has samples
    requests.post(f"{server.url}/v2/models/simple/infer", data=b"{bad")
    grpcclient.InferenceServerClient(server.grpc).is_server_ready()
    text = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics").text
    for family in ["flotilla_responses_total", "flotilla_response_duration_seconds", "flotilla_model_ready"]:
        assert f"# TYPE {family}" in text
    assert 'protocol="grpc"' in text and 'code="400"' in text
    assert not re.search(r"^# TYPE \S+ summary$", text, re.M), "histograms only"
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/test.sh installs Debian's prometheus package"
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
