"""The official Everruns SDK for Python (everruns-sdk 0.3.1, a test dependency) against a
live server, unmodified, with only EVERRUNS_API_URL and EVERRUNS_API_KEY set: the programs
in tests/sdk_flows.py run as their users run them. The /api/v1 surface itself is tested
with plain HTTP in tests/test_api_v1.py, on every interpreter."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="everruns-sdk's event stream needs Python 3.11 (asyncio.timeout)"
)

FLOWS = str(ROOT / "tests" / "sdk_flows.py")
KEY = "sdk-key-1234567890"


def sdk(server, flow, *args, key="any", timeout=90):
    """Run one SDK program against the server; what it printed (one dict per line)."""
    env = {"EVERRUNS_API_URL": f"{server.url}/api", "EVERRUNS_API_KEY": key, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-W", "ignore", FLOWS, flow, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    seen = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and seen, done.stderr[-3000:]
    return seen


@pytest.fixture(params=[(), ("--api-key", KEY)], ids=["no-key", "api-key"])
def server(request, start_server):
    server = start_server(None, *request.param)
    server.key = KEY if request.param else "any"  # the SDK needs one, any value when the server has none
    return server


def test_the_basic_example_flow(server):
    run, left = sdk(server, "basic", key=server.key)
    assert run["agent"] == ["example-assistant-py", "active", "generic", ["current_time"]]
    assert run["session"][1:] == ["idle", "generic"] and run["session_after"] == "idle"
    assert run["types"] == ["input.message", "turn.started", "output.message.completed", "turn.completed"]
    assert run["sequences"] == [1, 2, 3, 4] and run["answer"] == ["You said: What time is it right now?"]
    assert run["roles"] == ["user", "agent"] and left == {"agents_left": []}


def test_a_tool_turn(server):
    (run,) = sdk(server, "tool", key=server.key)
    assert run["types"] == ["input.message", "turn.started", "output.message.completed", "tool.started",
                            "tool.completed", "output.message.completed", "turn.completed"]  # fmt: skip
    started, completed = run["tool"]
    assert started["tool_call"]["name"] == "add" and started["tool_call"]["arguments"] == {"a": 2, "b": 3}
    assert completed["success"] is True and completed["result"] == [{"type": "text", "text": '{"result":5}'}]
    assert run["answer"][-1] == 'Tool results: add returned {"result":5}.'


def test_a_client_tool_answered_through_the_sdk(server):
    accepted, run = sdk(server, "client_tool", key=server.key)
    assert accepted == {"accepted": [1, "active"]}
    assert "tool.call_requested" in run["types"] and run["types"][-1] == "turn.completed"
    assert run["answer"][-1] == 'Tool results: get_weather returned {"city":"Paris","celsius":18}.'


def test_agent_client_run(server):
    (run,) = sdk(server, "agent_client", key=server.key)
    assert run == {"card": "channel-agent", "reply": "You said: hello there", "again": "You said: and again"}


def test_a_wrong_key_is_refused_in_the_sdks_own_terms(start_server):
    server = start_server(None, "--api-key", KEY)
    env = {"EVERRUNS_API_URL": f"{server.url}/api", "EVERRUNS_API_KEY": "wrong", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-W", "ignore", FLOWS, "tool"], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert done.returncode != 0 and "AuthenticationError" in done.stderr


class Follower:
    """The SDK's stream of one session, read in a thread as it comes (the program never ends)."""

    def __init__(self, server, session_id, idle_timeout):
        env = {"EVERRUNS_API_URL": f"{server.url}/api", "EVERRUNS_API_KEY": "any", "PATH": "/usr/bin:/bin"}
        self.proc = subprocess.Popen([sys.executable, "-W", "ignore", FLOWS, "follow", session_id, str(idle_timeout)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        self.seen, self.lock = [], threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.lock:
                self.seen.append(json.loads(line))

    def wait_for(self, count, type_="turn.completed", timeout=60):
        deadline = time.monotonic() + timeout
        while sum(e["type"] == type_ for e in self.events()) < count:
            assert time.monotonic() < deadline, f"waited for {count} {type_}: {[e['type'] for e in self.events()]}"
            time.sleep(0.05)

    def events(self):
        with self.lock:
            return list(self.seen)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_a_stream_that_reconnects_gets_each_stored_event_once(start_server, tmp_path, how):
    db = str(tmp_path / "x.db")
    server = start_server(db)
    agent = server.call("POST", "/api/v1/agents", {"name": "a", "system_prompt": ""})[2]
    session = server.call("POST", "/api/v1/sessions", {"agent_id": agent["id"]})[2]["id"]
    message = {"message": {"role": "user", "content": [{"type": "text", "text": "one"}]}}
    follower = Follower(server, session, idle_timeout=1.0)  # it also reconnects after a second of quiet
    try:
        server.call("POST", f"/api/v1/sessions/{session}/messages", message)
        follower.wait_for(1)
        time.sleep(2.5)  # quiet: the SDK reconnects (twice) with since_id
        server.stop(how)
        server = start_server(db, port=server.port)  # where the SDK reconnects to
        server.call("POST", f"/api/v1/sessions/{session}/messages", message)
        follower.wait_for(2)
    finally:
        follower.stop()
    stored = server.call("GET", f"/api/v1/sessions/{session}/events")[2]["data"]
    streamed = [e for e in follower.events() if e["sequence"] is not None]
    assert [e["id"] for e in streamed] == [e["id"] for e in stored]  # each once, in order, none missing
    assert len(stored) == 8  # two turns: input, started, answer, completed
