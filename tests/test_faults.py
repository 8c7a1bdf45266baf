"""Fault tests: a real server (a child process) against hostile upstreams (tests/hostile.py,
another child process): providers and MCP servers that stream without end, send nothing
useful, answer with 300 MB, trickle a byte a second, or answer odd JSON; and a session of
16,000 events replayed to 100 streams at once. Each test checks that the turn ends in
time with the right error, that /health answers within 1 s throughout, that memory comes
back, and that a normal turn still works after."""

import functools
import json
import math
import re
import sqlite3
import subprocess
import sys
import time
import uuid

import gevent
import gevent.event
import pytest
from conftest import ROOT, SSEStream

HOSTILE = str(ROOT / "tests" / "hostile.py")
HEALTHY_S = 1.0  # every /health answer within this
RSS_SLACK_MB = 10.0


def bounded(seconds):
    """The test fails (rather than hangs) once it has run this long."""

    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            with gevent.Timeout(seconds, AssertionError(f"the test ran over its bound of {seconds} s")):
                return test(*args, **kwargs)

        return run

    return wrap


# ---- helpers ----------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path):
    """Start tests/hostile.py in MODE; its port. Every one started is killed after the test."""
    procs = []

    def start(mode, *args):
        log = open(tmp_path / f"hostile-{len(procs)}.log", "w")
        proc = subprocess.Popen([sys.executable, HOSTILE, mode, *args], stdout=subprocess.PIPE, stderr=log)
        procs.append((proc, log))
        with gevent.Timeout(10, AssertionError(f"hostile.py {mode} did not print its port")):
            return int(proc.stdout.readline())

    yield start
    for proc, log in procs:
        proc.kill()
        proc.wait()
        log.close()


def rss_mb(pid):
    """The resident memory of a process, in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def assert_rss_back(server, baseline, within=5.0):
    """The server's RSS settles to at most baseline + RSS_SLACK_MB (given `within` s to)."""
    deadline = time.monotonic() + within
    while (rss := rss_mb(server.proc.pid)) > baseline + RSS_SLACK_MB and time.monotonic() < deadline:
        gevent.sleep(0.1)
    assert rss <= baseline + RSS_SLACK_MB, f"RSS {rss:.0f} MB, baseline {baseline:.0f} MB"


class Health:
    """Polls GET /health in a greenlet while the block runs; `latencies` in seconds
    (inf for an answer that did not come within 5 s, or not 200)."""

    def __init__(self, server):
        self.server, self.latencies, self._stop = server, [], gevent.event.Event()

    def __enter__(self):
        self._poller = gevent.spawn(self._poll)
        return self

    def _poll(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = self.server.call("GET", "/health", timeout=5)[0] == 200
            except OSError:
                ok = False
            self.latencies.append(time.monotonic() - started if ok else math.inf)
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._poller.join(6)

    def assert_live(self):
        assert self.latencies, "/health was never asked"
        slow = [round(x, 2) for x in self.latencies if x >= HEALTHY_S]
        assert not slow, f"/health took {slow} s ({len(slow)} of {len(self.latencies)} answers over {HEALTHY_S} s)"


def create(server, path, body):
    status, _, created = server.call("POST", path, body)
    assert status == 201, created
    return created


def provider(server, port, **settings):
    return create(server, "/v1/llm-providers", {
        "name": "hostile", "provider_type": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
        "api_key": "sk-test-hostile-0001", "default_model": "m", "settings": settings})  # fmt: skip


def against(hostile, start_server, tmp_path, *mode, **settings):
    """A server, and a provider of it that is the hostile upstream in this mode: (server, provider id)."""
    port = hostile(*mode)
    server = start_server(str(tmp_path / "x.db"))
    return server, provider(server, port, **settings)["id"]


def session(server, provider_id=None, capabilities=()):
    """A new session of a new agent (on the simulator unless a provider is given)."""
    agent = {"name": "a", "capabilities": list(capabilities)}
    if provider_id:
        agent["provider_id"] = provider_id
    agent_id = create(server, "/v1/agents", agent)["id"]
    return create(server, f"/v1/agents/{agent_id}/sessions", {})["id"]


def post(server, session_id, text="hello"):
    """Post a message; the monotonic time it was posted."""
    posted = time.monotonic()
    create(server, f"/v1/sessions/{session_id}/messages", {"content": text})
    return posted


def wait_event(server, session_id, type_, within):
    """The data of the session's last stored event of this type, once there is one (polled;
    AssertionError after `within` s)."""
    deadline = time.monotonic() + within
    path = f"/v1/sessions/{session_id}/events?format=json&limit=100&types={type_}"
    while True:
        try:
            status, _, page = server.call("GET", path, timeout=max(0.5, deadline - time.monotonic()))
            if status == 200 and page["data"]:
                return page["data"][-1]["data"]
        except OSError:
            pass  # the server did not answer in time: wait on
        if time.monotonic() >= deadline:
            raise AssertionError(f"no {type_} within {within} s")
        gevent.sleep(0.1)


def turn(server, session_id, text="hello", within=15.0):
    """Post a message and wait for its turn's end: (session.completed data, seconds it took)."""
    posted = post(server, session_id, text)
    done = wait_event(server, session_id, "session.completed", within)
    return done, time.monotonic() - posted


def assert_still_works(server):
    """A normal turn (the simulator) completes."""
    done, _ = turn(server, session(server), "still there?")
    assert done["status"] == "completed", done


def warm_baseline(server):
    """One simulator turn and one capabilities listing, then the idle RSS in MB."""
    assert_still_works(server)
    assert server.call("GET", "/v1/capabilities?limit=100")[0] == 200
    return rss_mb(server.proc.pid)


def recovered(server, health, baseline):
    """After the episode: /health answered in time throughout, the memory is back, a turn still works."""
    health.assert_live()
    assert_rss_back(server, baseline)
    assert_still_works(server)


def failed_with(done, code):
    assert (done["status"], (done.get("error") or {}).get("code")) == ("failed", code), done


def mcp_config(tmp_path, spec):
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"hostile": spec}}))
    return str(path)


def with_hostile_mcp(hostile, start_server, tmp_path, mode):
    """A server whose --mcp-config has the hostile MCP server (over HTTP) in this mode, as mcp:hostile."""
    config = mcp_config(tmp_path, {"url": f"http://127.0.0.1:{hostile(mode)}/mcp"})
    return start_server(str(tmp_path / "x.db"), "--mcp-config", config)


def tool_result(server, session_id, within):
    return wait_event(server, session_id, "tool.result", within)


# ---- providers that never end -------------------------------------------------


@pytest.mark.parametrize("mode", ["keepalive", "empty-deltas"])
@bounded(40)
def test_a_stream_without_progress_times_out(mode, hostile, start_server, tmp_path):
    """Blank lines and comments, or chunks with no text, as fast as they come: no progress,
    so the turn fails with PROVIDER_TIMEOUT (timeout_s 2) and the server keeps answering."""
    server, provider_id = against(hostile, start_server, tmp_path, mode, timeout_s=2)
    session_id = session(server, provider_id)
    with Health(server) as health:
        done, took = turn(server, session_id, within=15)
    failed_with(done, "PROVIDER_TIMEOUT")
    assert took < 15
    health.assert_live()
    assert_still_works(server)


@bounded(40)
def test_a_slow_model_that_never_stops_is_cut_at_max_call_s(hostile, start_server, tmp_path):
    # a word every 0.5 s, forever
    server, provider_id = against(hostile, start_server, tmp_path, "words", "0.5", timeout_s=2, max_call_s=3)
    session_id = session(server, provider_id)
    with Health(server) as health:
        done, took = turn(server, session_id, within=12)
    failed_with(done, "PROVIDER_TIMEOUT")
    assert 2.5 < took < 12
    health.assert_live()
    assert_still_works(server)


@bounded(40)
def test_a_slow_model_that_makes_progress_is_not_cut(hostile, start_server, tmp_path):
    """Ten words 0.4 s apart with timeout_s 1: each word resets the idle timeout."""
    server, provider_id = against(hostile, start_server, tmp_path, "words", "0.4", "10", timeout_s=1)
    session_id = session(server, provider_id)
    done, _ = turn(server, session_id, within=15)
    assert done["status"] == "completed", done
    answer = wait_event(server, session_id, "message.created", 1)["message"]
    assert answer["role"] == "assistant"
    assert answer["content"] == [{"type": "text", "text": "".join(f"word{i} " for i in range(10))}]


# ---- providers that answer too much, or too slowly --------------------------------


@bounded(60)
def test_a_300_mb_error_body(hostile, start_server, tmp_path):
    server, provider_id = against(hostile, start_server, tmp_path, "huge-400")
    baseline = warm_baseline(server)
    session_id = session(server, provider_id)
    with Health(server) as health:
        done, took = turn(server, session_id, within=15)
    failed_with(done, "PROVIDER_ERROR")
    assert took < 15 and len(done["error"]["message"]) <= 1000
    recovered(server, health, baseline)


@bounded(60)
def test_a_300_mb_model_listing(hostile, start_server, tmp_path):
    server, provider_id = against(hostile, start_server, tmp_path, "huge-models")
    baseline = warm_baseline(server)
    with Health(server) as health:
        started = time.monotonic()
        status, _, body = server.call("GET", f"/v1/llm-providers/{provider_id}/models", timeout=20)
        took = time.monotonic() - started
    assert status == 502, (status, str(body)[:300])
    assert set(body) == {"error"} and isinstance(body["error"]["code"], str) and body["error"]["message"]
    assert took < 15
    recovered(server, health, baseline)


@bounded(30)
def test_an_error_body_at_a_byte_a_second(hostile, start_server, tmp_path):
    """400 with Content-Length 1000, sent at a byte a second: ended well before 1000 s."""
    server, provider_id = against(hostile, start_server, tmp_path, "slow-400", timeout_s=2)
    session_id = session(server, provider_id)
    with Health(server) as health:
        done, took = turn(server, session_id, within=10)
    assert done["status"] == "failed" and done["error"]["code"].startswith("PROVIDER_"), done
    assert took < 10
    health.assert_live()
    assert_still_works(server)


# ---- MCP servers ----------------------------------------------------------------------


def call_tool(server, capability):
    """A simulator session with the capability, its tool named in a message; (session id, posted at)."""
    session_id = session(server, capabilities=[capability])
    return session_id, post(server, session_id, "hostile__echo {}")


@pytest.mark.slow
@bounded(75)
def test_an_mcp_call_that_streams_forever_ends_at_its_limit(hostile, start_server, tmp_path):
    server = with_hostile_mcp(hostile, start_server, tmp_path, "mcp-progress")
    with Health(server) as health:
        session_id, posted = call_tool(server, "mcp:hostile")
        result = tool_result(server, session_id, within=40)
        assert result["is_error"] is True, result
        assert time.monotonic() - posted < 40
        done = wait_event(server, session_id, "session.completed", 10)
    assert done["status"] == "completed", done
    health.assert_live()
    assert_still_works(server)


def capability_status(server, capability_id="mcp:hostile"):
    """(the capability's status in GET /v1/capabilities, seconds the listing took)."""
    started = time.monotonic()
    status, _, page = server.call("GET", "/v1/capabilities?limit=100", timeout=15)
    took = time.monotonic() - started
    assert status == 200, page
    return next(c["status"] for c in page["data"] if c["id"] == capability_id), took


def poll(check, within, what):
    """Call check() until it returns something truthy; that value (AssertionError after `within` s)."""
    deadline = time.monotonic() + within
    while not (value := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within} s")
        gevent.sleep(0.1)
    return value


@pytest.mark.slow
@bounded(180)
def test_mcp_tool_pages_without_end(hostile, start_server, tmp_path):
    """tools/list pages of one tool with an 8 MB schema, always another page: the listing
    never holds up GET /v1/capabilities, gives up in time, and keeps no memory."""
    port = hostile("mcp-pages")
    server = start_server(str(tmp_path / "x.db"), "--allow-private-mcp")
    baseline = warm_baseline(server)
    create(server, "/v1/mcp-servers", {"name": "hostile", "url": f"http://127.0.0.1:{port}/mcp"})

    def settled():
        listed = {s["name"]: s for s in server.call("GET", "/v1/mcp-servers?limit=100", timeout=15)[2]["data"]}
        return listed["hostile"]["status"] in ("ready", "unavailable") and listed["hostile"]

    with Health(server) as health:
        status, took = capability_status(server)
        assert took < HEALTHY_S, f"GET /v1/capabilities took {took:.1f} s"
        assert status in ("starting", "available", "unavailable")
        poll(settled, 30, "the MCP server's status is ready or unavailable")
    health.assert_live()
    assert_rss_back(server, baseline)
    for _ in range(3):
        with Health(server) as health:
            took = capability_status(server)[1]
            assert took < HEALTHY_S, f"GET /v1/capabilities took {took:.1f} s"
            poll(lambda: capability_status(server)[0] != "starting", 30, "mcp:hostile is no longer starting")
        health.assert_live()
        assert_rss_back(server, baseline)
    assert_still_works(server)


@bounded(60)
def test_an_mcp_answer_of_300_mb(hostile, start_server, tmp_path):
    server = with_hostile_mcp(hostile, start_server, tmp_path, "mcp-huge")
    baseline = warm_baseline(server)  # its listing started the MCP server
    with Health(server) as health:
        session_id, posted = call_tool(server, "mcp:hostile")
        result = tool_result(server, session_id, within=20)
        assert result["is_error"] is True and time.monotonic() - posted < 20, result
        done = wait_event(server, session_id, "session.completed", 10)
    assert done["status"] == "completed", done
    recovered(server, health, baseline)


@bounded(40)
def test_an_mcp_text_with_a_lone_surrogate(hostile, start_server, tmp_path):
    server = with_hostile_mcp(hostile, start_server, tmp_path, "mcp-surrogate")
    session_id, _ = call_tool(server, "mcp:hostile")
    done = wait_event(server, session_id, "session.completed", 15)
    assert done["status"] == "completed", done
    result = tool_result(server, session_id, within=1)
    assert "internal error" not in json.dumps(result), result
    assert "Traceback" not in server.output()
    assert_still_works(server)


@pytest.mark.parametrize("transport", ["http", "stdio"])
@bounded(60)
def test_an_mcp_result_nested_100000_deep(transport, hostile, start_server, tmp_path):
    if transport == "http":
        spec = {"url": f"http://127.0.0.1:{hostile('mcp-deep')}/mcp"}
    else:
        spec = {"command": sys.executable, "args": [HOSTILE, "stdio-deep"]}
    server = start_server(str(tmp_path / "x.db"), "--mcp-config", mcp_config(tmp_path, spec))
    assert capability_status(server)[0] != "unavailable"  # listed, for stdio: its program started
    poll(lambda: capability_status(server)[0] == "available", 15, "mcp:hostile is available")
    session_id, posted = call_tool(server, "mcp:hostile")
    result = tool_result(server, session_id, within=5)
    assert result["is_error"] is True and time.monotonic() - posted < 5, result
    assert wait_event(server, session_id, "session.completed", 10)["status"] == "completed"
    assert "Traceback" not in server.output()
    assert_still_works(server)


# ---- a long replay, to many streams at once ---------------------------------------------

EVENTS = 16_000
STREAMS = 100


def add_events(db, session_id, count):
    """Store `count` message.created events (seq 1..count) of about 200 bytes of data each."""
    rows = []
    for seq in range(1, count + 1):
        message = {"id": str(uuid.uuid4()), "session_id": session_id, "role": "user",
                   "content": [{"type": "text", "text": f"stored message number {seq:05d}, " + "z" * 40}]}  # fmt: skip
        rows.append((str(uuid.uuid4()), session_id, seq, "message.created", None, "2026-01-01T00:00:00.000Z",
                     json.dumps({"message": message}, separators=(",", ":"))))  # fmt: skip
    with sqlite3.connect(db) as conn:
        conn.executemany("INSERT INTO event (id, session_id, seq, type, turn_id, ts, data) VALUES (?,?,?,?,?,?,?)",
                         rows)  # fmt: skip
    conn.close()


def replayed_seqs(server, session_id, last):
    """Read the session's stream from the start until event `last`; the seqs, in the order received."""
    stream = SSEStream(server.url, f"/v1/sessions/{session_id}/events?after=0", timeout=60)
    seqs, tail = [], b""
    try:
        while not seqs or seqs[-1] < last:
            block = stream.response.read1(65536)
            assert block, f"the stream ended after {len(seqs)} events"
            text = tail + block
            cut = text.rfind(b"\n")
            seqs += [int(s) for s in re.findall(rb"^id: (\d+)$", text[: cut + 1], re.M)]
            tail = text[cut + 1 :]
    finally:
        stream.close()
    return seqs


@pytest.mark.slow
@bounded(180)
def test_a_replay_of_16000_events_to_100_streams(start_server, tmp_path):
    db = str(tmp_path / "x.db")
    server = start_server(db)
    session_id = session(server)
    assert server.stop() == 0
    add_events(db, session_id, EVENTS)
    server = start_server(db)
    with Health(server) as health:
        readers = [gevent.spawn(replayed_seqs, server, session_id, EVENTS) for _ in range(STREAMS)]
        gevent.joinall(readers, raise_error=True)
    expected = list(range(1, EVENTS + 1))
    for reader in readers:
        assert reader.value == expected
    health.assert_live()
    assert_still_works(server)
