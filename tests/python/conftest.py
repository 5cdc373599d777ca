"""Black-box fixtures: start the real `flotilla` binary on free ports."""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("FLOTILLA_BIN", str(ROOT / "target" / "debug" / "flotilla"))
EXAMPLES = ROOT / "examples" / "repository"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=60, what="condition", every=0.2):
    """Polls `predicate` until it returns something true (returned), or fails after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class PortTaken(RuntimeError):
    """The process could not bind a port the test picked (another process took it meanwhile)."""


class Process:
    """A running `flotilla` subcommand; ports come from its own `listening` log line."""

    def __init__(self, cmd, env=None, cwd=None, what="flotilla"):
        environ = dict(os.environ)
        for key, value in (env or {}).items():
            if value is None:
                environ.pop(key, None)
            else:
                environ[key] = value
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=environ, cwd=cwd)
        self.lines = []
        self.http_port = self.grpc_port = None
        self.listening_fields = {}
        listening = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                try:
                    fields = json.loads(line).get("fields", {})
                except ValueError:
                    continue
                if fields.get("message") == "listening":
                    self.listening_fields = fields
                    self.http_port = int(fields["http"].rsplit(":", 1)[1])
                    self.grpc_port = int(fields["grpc"].rsplit(":", 1)[1])
                    listening.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.time() + 120
        while not listening.wait(0.1) and time.time() < deadline and self.proc.poll() is None:
            pass
        if not listening.is_set():
            self.stop()
            time.sleep(0.1)  # the pump's last lines
            log = "".join(self.lines)
            error = PortTaken if "Address already in use" in log else RuntimeError
            raise error(f"{what} did not start:\n" + log)
        self.http = f"127.0.0.1:{self.http_port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        # Over TLS (--tls-cert) the URL is https; the liveness wait does not check the
        # certificate (the TLS tests do).
        tls = "--tls-cert" in cmd or "FLOTILLA_TLS_CERT" in (env or {})
        self.url = f"{'https' if tls else 'http'}://{self.http}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                requests.get(self.url + "/v2/health/live", timeout=1, verify=False)
                break
            except requests.exceptions.SSLError:
                break  # mutual TLS: it answers, and wants a client certificate
            except requests.ConnectionError:
                time.sleep(0.05)

    def log(self):
        return "".join(self.lines)

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_on_free_port(start, tries=5):
    """Runs `start`, again with a fresh port when the one `free_port` gave was taken before the process bound it."""
    for attempt in range(tries):
        try:
            return start()
        except PortTaken:
            if attempt == tries - 1:
                raise


class Server(Process):
    """A running `flotilla serve` on free ports."""

    def __init__(self, repository, *args, metrics=True, env=None, cwd=None):
        """`env` adds to (None values remove from) the inherited environment; `cwd` is the server's folder."""
        start_on_free_port(lambda: self._start(repository, args, metrics, env, cwd))

    def _start(self, repository, args, metrics, env, cwd):
        self.metrics_port = free_port() if metrics else 0
        cmd = [
            BIN, "serve",
            "--model-repository", str(repository),
            "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0",
            "--metrics-port", str(self.metrics_port),
            "--log-format", "json",
            *args,
        ]
        # Each server gets its own embedded online store (one process may hold a redb file).
        self.store_dir = tempfile.mkdtemp(prefix="flotilla-online-")
        defaults = {
            "FLOTILLA_ONLINE_STORE": f"embedded:{self.store_dir}/online.redb",
            # ... and its own drift snapshots (windows survive a restart of the same server folder).
            "FLOTILLA_DRIFT_STATE_DIR": f"{self.store_dir}/drift",
            # Every request monitored (no CPU-budget sampling), so tests can count rows exactly.
            "FLOTILLA_DRIFT_CPU_BUDGET": "0",
            # Stream consumers only where a test asks for them (env={"FLOTILLA_CONSUME_STREAMS": "true"}).
            "FLOTILLA_CONSUME_STREAMS": "false",
        }
        super().__init__(cmd, env={**defaults, **(env or {})}, cwd=cwd, what="flotilla serve")


class Router(Process):
    """A running `flotilla route` on free ports."""

    def __init__(self, *args, metrics=True, env=None):
        start_on_free_port(lambda: self._start(args, metrics, env))

    def _start(self, args, metrics, env):
        self.metrics_port = free_port() if metrics else 0
        cmd = [
            BIN, "route",
            "--host", "127.0.0.1",
            "--http-port", "0", "--grpc-port", "0",
            "--metrics-port", str(self.metrics_port),
            "--log-format", "json",
            *args,
        ]
        super().__init__(cmd, env=env, what="flotilla route")

    def fleet(self):
        return requests.get(self.url + "/v2/fleet", timeout=10).json()

    def events(self, kind=None, worker=None):
        events = requests.get(self.url + "/v2/fleet/events", timeout=10).json()["events"]
        return [e for e in events if (kind is None or e["kind"] == kind) and (worker is None or e["worker"] == worker)]

    def wait_workers(self, ids, state="serving", timeout=60):
        """Waits until the workers `ids` are all in `state` (and, for "serving", have a model)."""
        def ok():
            workers = {w["id"]: w for w in self.fleet()["workers"]}
            return all(i in workers and workers[i]["state"] == state
                       and (state != "serving" or workers[i]["models"]) for i in ids)
        wait_for(ok, timeout=timeout, what=f"workers {ids} {state}:\n" + self.log()[-3000:])


@pytest.fixture(scope="session")
def server():
    s = Server(EXAMPLES)
    yield s
    assert s.alive(), "server died during the session:\n" + s.log()
    assert s.stop() == 0, s.log()


@pytest.fixture
def repo_copy(tmp_path):
    """A writable copy of the example repository."""
    dst = tmp_path / "repository"
    shutil.copytree(EXAMPLES, dst)
    return dst
