"""The README, executed: its code blocks run in document order, as a new user would paste them, and
what they print is compared as each block's annotation says — so an example that stops working, or a
sample output that changes, fails CI.

Annotations are HTML comments (invisible on GitHub) on the line(s) before a fence:

    <!-- readme-test: status -->             run it; it must exit 0
    <!-- readme-test: exact -->              ... and its stdout must equal the next fenced block
                                             (`...` inside a line matches any text; a line that is
                                             only `...` matches any number of lines)
    <!-- readme-test: json PATH=VALUE ... --> ... and its stdout is JSON documents: PATH is dotted
                                             (`results.1.statuses`, list indices as numbers), `N:`
                                             in front picks the N-th document (default: the last);
                                             VALUE is JSON (`200`, `"ok"`, `[1,2]`), else a string
    <!-- readme-test: until-stopped -->      a command that runs until Ctrl-C: it must still run after
                                             `after=SECONDS` (default 3), then exit 0 on SIGINT
    <!-- readme-test: file path=PATH -->     (a toml block) not run: it must say what the file PATH of
                                             the repository says (compared parsed, so comments and
                                             line breaks may differ)
    <!-- readme-test: skip reason="..." -->  not run here; the reason shows in pytest's summary
    options: server=running (default) | stopped | restarted | any — the "Try it" server (`flotilla
             serve` from "Two commands") is started or stopped before the block so it is in that
             state (restarted: stopped, then started);
             timeout=SECONDS (default 120)

Every `sh`, `bash` and `python` block must carry one (test_every_block_is_annotated), so a new
example is run or skipped on purpose. Other markers on the same block (`<!-- fleet-example -->`, read
by test_fleet.py) stay where they are.

How a block runs: bash (`-e -o pipefail`) or the test venv's Python, in a copy of the repository's
`examples/` and `scripts/` folders, where `target/release/flotilla` is a link to $FLOTILLA_BIN (a
debug build), `.venv` and `.cache` are links to the checkout's, and `cargo run --release --` is
replaced by `target/release/flotilla`. `curl` is `curl --fail-with-body` (unless the block asks for
`-f` itself), so an HTTP error fails the block. What the CDC walkthrough creates in the local
PostgreSQL (role flotilla, database shop, its slot) is dropped before and after.

Ports: the README's 8000/8001/8002 (HTTP, gRPC, metrics) and 9099 (the drift webhook) are replaced,
in every block and in the copied drift.toml, by free ports, and FLOTILLA_HTTP_PORT/GRPC_PORT/
METRICS_PORT name them, so every `flotilla serve` a block starts lands on them. A network namespace
(`unshare -rn`) would keep the README's ports untouched, but it also cuts the examples off from the
local NATS and PostgreSQL they use, and needs unprivileged user namespaces in CI; free ports need
neither, and other tests on the same machine keep theirs.

One deviation from the README's server: FLOTILLA_DRIFT_CPU_BUDGET=0 (every request monitored), since
a debug build can exceed the default 2% budget and then sample, which would change the drift demo's
window numbers.

The blocks depend on each other (an ingest before a read), so they run as one parametrized test per
block, in order, sharing one copy and one server; run the whole file, not one block.
FLOTILLA_README_DUMP=DIR writes each block's stdout to DIR (to refresh an output block after a change).
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib

import pytest
import requests

from conftest import BIN, ROOT, free_port

README = ROOT / "README.md"
CODE = {"sh", "bash", "python"}
MODES = {"status", "exact", "json", "until-stopped", "file", "skip"}
README_PORTS = {"8000": "FLOTILLA_HTTP_PORT", "8001": "FLOTILLA_GRPC_PORT", "8002": "FLOTILLA_METRICS_PORT"}
WEBHOOK_PORT = "9099"
# curl fails on an HTTP error (a block that asks for -f/--fail itself keeps it: the two exclude each other)
CURL = 'curl() { case " $* " in *" -f "*|*" -sf "*|*" --fail "*) command curl "$@";; ' \
       '*) command curl --fail-with-body "$@";; esac; }\n'


# === the README's blocks ===

class Block:
    def __init__(self, line, lang, text, annotation, heading):
        self.line, self.lang, self.text, self.heading = line, lang, text, heading
        self.expected = None  # the fenced block after an `exact` block
        words = shlex.split(annotation) if annotation is not None else []
        self.annotated = annotation is not None
        self.mode = words[0] if words else None
        self.options, self.checks = {}, []
        for w in words[1:]:
            key, sep, value = w.partition("=")
            if self.mode == "json" and key not in ("server", "timeout"):
                self.checks.append(w)
            elif sep:
                self.options[key] = value
            else:
                raise ValueError(f"README.md:{line}: option '{w}' has no value")

    @property
    def id(self):
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"L{self.line}-{slug}-{self.lang}"


def parse(text):
    """Every fenced block, with the readme-test annotation among the comments just above it."""
    lines = text.split("\n")
    blocks, i, heading = [], 0, "top"
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if not line.startswith("```"):
            i += 1
            continue
        lang = line[3:].strip()
        start = i
        i += 1
        body = []
        while not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        annotation, j = None, start - 1
        while j >= 0 and lines[j].startswith("<!--"):
            m = re.match(r"<!--\s*readme-test:\s*(.*?)\s*-->", lines[j])
            if m:
                annotation = m.group(1)
            j -= 1
        blocks.append(Block(start + 1, lang, "\n".join(body) + "\n", annotation, heading))
    for k, b in enumerate(blocks):
        if b.mode == "exact":
            assert k + 1 < len(blocks), f"README.md:{b.line}: 'exact' block without an output block after it"
            b.expected = blocks[k + 1].text
    return blocks


BLOCKS = parse(README.read_text())
RUN = [b for b in BLOCKS if b.lang in CODE or b.annotated]


def test_every_block_is_annotated():
    """A new sh/bash/python block says how it is tested (or why not); modes and options are known."""
    missing = [f"README.md:{b.line}" for b in RUN if not b.annotated]
    assert not missing, f"blocks without <!-- readme-test: ... -->: {missing}"
    for b in RUN:
        assert b.mode in MODES, f"README.md:{b.line}: unknown readme-test mode {b.mode!r}"
        assert set(b.options) <= {"server", "timeout", "reason", "after", "path"}, f"README.md:{b.line}: {b.options}"
        assert b.mode != "file" or (b.lang == "toml" and b.options.get("path")), f"README.md:{b.line}: file needs toml, path="
        assert b.options.get("server", "running") in ("running", "stopped", "restarted", "any"), f"README.md:{b.line}"
        assert b.mode != "skip" or b.options.get("reason"), f"README.md:{b.line}: a skip needs reason=\"...\""


# === the copy, its server and its ports ===

class Session:
    """A copy of examples/ with the README's paths, the "Try it" server, and the port map."""

    def __init__(self, tmp):
        self.tmp = pathlib.Path(tmp)
        self.work = self.tmp / "checkout"
        self.work.mkdir()
        fetched = ROOT / "examples" / "repository" / "minilm"  # a checkout's own fetch: the README makes it
        shutil.copytree(ROOT / "examples", self.work / "examples",
                        ignore=lambda d, names: [n for n in names if n == "__pycache__" or pathlib.Path(d, n) == fetched])
        shutil.copytree(ROOT / "scripts", self.work / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
        (self.work / "target" / "release").mkdir(parents=True)
        (self.work / "target" / "release" / "flotilla").symlink_to(BIN)
        (self.work / ".venv").symlink_to(ROOT / ".venv")
        (ROOT / ".cache").mkdir(exist_ok=True)  # downloads (scripts/fetch_minilm.py) shared with test_text.py
        (self.work / ".cache").symlink_to(ROOT / ".cache")
        self.ports = {p: str(free_port()) for p in (*README_PORTS, WEBHOOK_PORT)}
        drift = self.work / "examples" / "repository" / "fraud_xgb" / "drift.toml"
        drift.write_text(self.substitute(drift.read_text()))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        self.env.update({var: self.ports[p] for p, var in README_PORTS.items()})
        self.env["FLOTILLA_DRIFT_CPU_BUDGET"] = "0"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.server = None
        self.log = self.tmp / "server.log"

    def substitute(self, text):
        text = re.sub(r"\b(localhost|127\.0\.0\.1):(800[012]|9099)\b",
                      lambda m: f"{m.group(1)}:{self.ports[m.group(2)]}", text)
        text = re.sub(r"--webhook-port 9099\b", f"--webhook-port {self.ports[WEBHOOK_PORT]}", text)
        text = text.replace("cargo run --release --", "target/release/flotilla")
        return text.replace("/tmp/", f"{self.tmp}/")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.ports['8000']}"

    def running(self):
        return self.server is not None and self.server.poll() is None

    def start(self):
        """`flotilla serve` as "Two commands" runs it, in the copy; waits until it is ready."""
        log = open(self.log, "a")
        self.server = subprocess.Popen([str(self.work / "target/release/flotilla"), "serve"], cwd=self.work,
                                       env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.running(), "the Try-it server exited:\n" + self.log_tail()
            try:
                if requests.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError("the Try-it server did not become ready:\n" + self.log_tail())

    def stop(self):
        if self.running():
            self.server.send_signal(signal.SIGTERM)
            try:
                code = self.server.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()
                raise AssertionError("the Try-it server did not stop on SIGTERM:\n" + self.log_tail())
            assert code == 0, f"the Try-it server exited {code}:\n" + self.log_tail()
        self.server = None

    def log_tail(self, n=4000):
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def run(self, block, timeout):
        script = self.substitute(block.text)
        if block.lang == "python":
            cmd = [str(ROOT / ".venv" / "bin" / "python"), "-c", script]
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-c", CURL + script]
        proc = subprocess.Popen(cmd, cwd=self.work, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            if block.mode == "until-stopped":
                try:
                    out, err = proc.communicate(timeout=float(block.options.get("after", 3)))
                    raise AssertionError(f"README.md:{block.line}: exited {proc.returncode} before Ctrl-C\n"
                                         f"--- stdout\n{out}\n--- stderr\n{err[-4000:]}")
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends the terminal's foreground group
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"README.md:{block.line}: still running after {timeout} s\n"
                                 f"--- stdout\n{out}\n--- stderr\n{err[-4000:]}")
        finally:
            try:  # whatever the block left in the background
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return proc.returncode, out, err


def drop_cdc_walkthrough():
    """What the README's CDC walkthrough creates in the local PostgreSQL (role flotilla, database shop,
    slot flotilla_card_limits), dropped before and after so the walkthrough runs again."""
    sql = ["SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'flotilla_card_limits'",
           "DROP DATABASE IF EXISTS shop WITH (FORCE)", "DROP ROLE IF EXISTS flotilla"]
    for statement in sql:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-c", statement],
                       capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def session():
    tmp = tempfile.mkdtemp(prefix="flotilla-readme-")
    drop_cdc_walkthrough()
    s = Session(tmp)
    yield s
    try:
        s.stop()
    finally:
        drop_cdc_walkthrough()
        shutil.rmtree(tmp, ignore_errors=True)


# === comparisons ===

def _line_pattern(expected):
    return re.compile("^" + ".*".join(re.escape(part) for part in expected.split("...")) + "$")


def match_lines(expected, actual):
    """True when `actual` lines fit `expected`: `...` in a line is any text, a `...` line any lines."""
    exp = [l.rstrip() for l in expected.rstrip("\n").split("\n")]
    act = [l.rstrip() for l in actual.rstrip("\n").split("\n")]
    memo = {}

    def fit(i, j):
        if (i, j) not in memo:
            if i == len(exp):
                memo[i, j] = j == len(act)
            elif exp[i].strip() == "...":
                memo[i, j] = any(fit(i + 1, k) for k in range(j, len(act) + 1))
            else:
                memo[i, j] = j < len(act) and bool(_line_pattern(exp[i]).match(act[j])) and fit(i + 1, j + 1)
        return memo[i, j]
    return fit(0, 0)


def json_documents(text):
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i == len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def check_json(check, docs):
    """`[N:]path=value` or `[N:]path` (present); returns an error message or None."""
    path, sep, want = check.partition("=")
    index = -1
    m = re.match(r"^(-?\d+):(.*)$", path)
    if m:
        index, path = int(m.group(1)), m.group(2)
    node = docs[index]
    for key in path.split(".") if path else []:
        try:
            node = node[int(key)] if isinstance(node, list) else node[key]
        except (KeyError, IndexError, ValueError, TypeError):
            return f"{check}: document {index} has no {path!r}"
    if not sep:
        return None
    try:
        want = json.loads(want)
    except ValueError:
        pass
    return None if node == want else f"{check}: got {json.dumps(node)}"


# === the blocks, in order ===

@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block(block, session):
    if block.mode == "skip":
        pytest.skip(f"README.md:{block.line}: {block.options['reason']}")
    if block.mode == "file":
        path = block.options["path"]
        assert tomllib.loads(block.text) == tomllib.loads((ROOT / path).read_text()), \
            f"README.md:{block.line} no longer says what {path} says"
        return
    want = block.options.get("server", "running")
    if want in ("stopped", "restarted"):
        session.stop()
    if want in ("running", "restarted") and not session.running():
        session.start()
    code, out, err = session.run(block, float(block.options.get("timeout", 120)))
    if os.environ.get("FLOTILLA_README_DUMP"):  # a folder: each block's stdout, to refresh the README's outputs
        dump = pathlib.Path(os.environ["FLOTILLA_README_DUMP"])
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"{block.id}.out").write_text(out)
    shown = f"README.md:{block.line} ({block.mode})\n--- stdout\n{out[-6000:]}\n--- stderr\n{err[-4000:]}"
    assert code == 0, f"exit status {code}\n{shown}"
    if block.mode == "exact":
        assert match_lines(session.substitute(block.expected), out), f"output differs from README.md's\n--- README\n{block.expected}{shown}"
    elif block.mode == "json":
        try:
            docs = json_documents(out)
        except ValueError as e:
            raise AssertionError(f"output is not JSON documents ({e})\n{shown}")
        errors = [e for e in (check_json(c, docs) for c in block.checks) if e]
        assert not errors, "\n".join(errors) + "\n" + shown
    if want in ("running", "restarted"):
        assert session.running(), "the Try-it server exited during the block:\n" + session.log_tail()


def test_match_lines():
    assert match_lines("a ... c\n...\nend", "a b c\nx\ny\nend\n")
    assert match_lines("a\n...", "a")
    assert not match_lines("a b", "a c")
    assert not match_lines("a\nb", "a\nb\nc")
    assert check_json("1:x.0=2", [{}, {"x": [2]}]) is None
    assert check_json("x", [{"y": 1}]) is not None
