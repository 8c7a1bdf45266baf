"""`everruns chat`: the terminal chat, a client of the HTTP API (SPEC section 9)."""

import os
import signal
import subprocess
import sys

from conftest import ROOT, free_port

CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("EVERRUNS_") and not k.endswith("_API_KEY")}


def chat(*args, text="", env=None, cwd=ROOT):
    """Run the chat with `text` on standard input (not a terminal): (exit status, output)."""
    command = [sys.executable, str(ROOT / "everruns.py"), "chat", *args]
    done = subprocess.run(command, input=text, capture_output=True, text=True, timeout=60, env={**CLEAN, **(env or {})},
                          cwd=cwd)  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def agent(server, **fields):
    return server.call("POST", "/v1/agents", {"name": "Calc", **fields})[2]


def test_answers_and_tool_lines(start_server):
    server = start_server()
    agent(server, capabilities=["test_math"])
    status, out, _ = chat("Calc", "--url", server.url, text='hello\nadd {"a": 2, "b": 3}\n')
    assert status == 0
    assert "You said: hello" in out
    assert '→ add {"a": 2, "b": 3}\n← 5\n' in out and "returned" in out


def test_without_an_agent_name_the_assistant_is_used_and_created(start_server):
    server = start_server()
    assert chat("--url", server.url, text="hi\n")[0] == 0
    assert chat("--url", server.url, text="again\n")[1] == "You said: again\n"  # the same session goes on
    agents = server.call("GET", "/v1/agents")[2]["data"]
    assert [a["name"] for a in agents] == ["Assistant"]
    sessions = server.call("GET", f"/v1/agents/{agents[0]['id']}/sessions")[2]["data"]
    assert len(sessions) == 1
    chat("--url", server.url, "--new", text="fresh\n")
    assert len(server.call("GET", f"/v1/agents/{agents[0]['id']}/sessions")[2]["data"]) == 2


def test_a_failed_turn_is_a_non_zero_exit(start_server):
    server = start_server()
    dead = server.call("POST", "/v1/llm-providers", {"name": "dead", "provider_type": "openai",
                                                     "base_url": "http://127.0.0.1:9/v1"})[2]  # fmt: skip
    agent(server, name="Broken", provider_id=dead["id"])
    status, out, _ = chat("Broken", "--url", server.url, text="hello\n")
    assert status == 1 and "✗ the turn failed" in out and "PROVIDER_UNAVAILABLE" in out


def test_an_unknown_agent_is_one_line(start_server):
    server = start_server()
    status, out, err = chat("Nobody", "--url", server.url)
    assert status == 1 and out == "" and err.strip() == "everruns chat: no agent named 'Nobody'"


def test_ctrl_c_cancels_the_running_turn(start_server):
    server = start_server()
    slow = server.call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                     "settings": {"token_delay_ms": 200}})[2]  # fmt: skip
    agent(server, name="Slow", provider_id=slow["id"])
    command = [sys.executable, str(ROOT / "everruns.py"), "chat", "Slow", "--url", server.url]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CLEAN)
    proc.stdin.write("one two three four five six seven eight nine ten\n")
    proc.stdin.flush()
    assert proc.stdout.read(4) == "You "  # the answer is streaming
    proc.send_signal(signal.SIGINT)
    proc.stdin.close()
    out = proc.stdout.read()
    assert proc.wait(timeout=30) == 0 and "(cancelled)" in out
    sessions = server.call("GET", "/v1/agents?limit=1")[2]["data"][0]
    session = server.call("GET", f"/v1/agents/{sessions['id']}/sessions")[2]["data"][0]
    assert session["last_turn"]["status"] == "cancelled"


def test_with_nothing_at_the_default_url_it_serves_in_process(tmp_path):
    port = str(free_port())  # where `everruns` with this environment would listen (not 9000: it may be taken)
    env = {"EVERRUNS_DB": str(tmp_path / "local.db"), "EVERRUNS_PORT": port}
    status, out, err = chat(text="hello\n", env=env, cwd=tmp_path)
    assert status == 0 and out == "You said: hello\n"
    assert err.count("\n") == 1 and "running one in this process" in err and f"127.0.0.1:{port}" in err
    assert (tmp_path / "local.db").exists()


class Dropping:
    """An API whose event stream breaks off once mid-turn, as a flaky network does."""

    def __init__(self):
        self.reads = 0

    def call(self, method, path, body=None):
        return {}

    def events(self, session_id, after):
        self.reads += 1
        turn = [
            {"seq": 2, "type": "session.started", "data": {}},
            {"seq": None, "type": "message.delta", "data": {"message_id": "m", "delta": "You said: "}},
        ]
        answer = {"id": "m", "role": "assistant", "content": [{"type": "text", "text": "You said: hi"}]}
        rest = [
            {"seq": 3, "type": "message.created", "data": {"message": answer}},
            {"seq": 4, "type": "session.completed", "data": {"status": "completed", "error": None}},
        ]
        if self.reads == 1:
            yield from turn
            raise ConnectionResetError("the network went away")
        yield from [e for e in rest if e["seq"] > after]


def test_a_stream_that_breaks_off_is_read_again_from_the_last_seq():
    import io

    import everruns

    out = io.StringIO()
    chat = everruns._Chat(Dropping(), out)
    chat.session_id = "s"
    assert chat.turn("hi") == "completed"
    assert out.getvalue() == "You said: hi\n" and chat.seq == 4


def careful(server, **fields):
    return agent(server, name="Careful", capabilities=["test_math"], require_approval=["add"], **fields)


def test_an_approval_is_answered_from_the_next_line(start_server):
    server = start_server()
    careful(server)
    status, out, _ = chat("Careful", "--url", server.url, text='add {"a": 2, "b": 3}\ny\nadd {"a": 1, "b": 1}\nn\n')
    assert status == 0
    assert 'approve add {"a": 2, "b": 3}? [y/N] y\n← 5\n' in out
    assert 'approve add {"a": 1, "b": 1}? [y/N] n\n← ✗ denied by the user: denied in the chat' in out


def test_piped_input_that_ends_before_an_answer_cancels_the_turn(start_server):
    server = start_server()
    careful(server)
    status, out, _ = chat("Careful", "--url", server.url, text='add {"a": 2, "b": 3}\n')
    assert status == 1 and "✗ no answer to the approval before the end of the input: the turn is cancelled" in out
    location = {"name": "get_location", "description": "Where the user is.", "parameters": {"type": "object"}}
    agent(server, name="Phone", client_tools=[location])
    status, out, _ = chat("Phone", "--url", server.url, text="get_location {}\n")
    assert status == 1 and "the turn waits for a client result: POST /v1/sessions/" in out
    assert "✗ the turn waits for a client result and the input has ended: the turn is cancelled" in out
    sessions = server.call("GET", "/v1/agents?limit=100")[2]["data"]
    for a in sessions:
        for session in server.call("GET", f"/v1/agents/{a['id']}/sessions")[2]["data"]:
            assert session["status"] == "idle" and session["last_turn"]["status"] == "cancelled"


def test_commands_in_piped_input_are_never_sent(start_server):
    server = start_server()
    agent(server)
    status, out, _ = chat("Calc", "--url", server.url, text="one\n/new\n//two\n/help\n/what\n/exit\nthree\n")
    assert status == 0 and "(a new session)" in out and "You said: /two" in out
    assert "/new: a new session" in out and "unknown command /what" in out and "three" not in out
    calc = server.call("GET", "/v1/agents")[2]["data"][0]
    sessions = server.call("GET", f"/v1/agents/{calc['id']}/sessions")[2]["data"]
    texts = [[m["content"][0]["text"] for m in server.call("GET", f"/v1/sessions/{s['id']}/messages")[2]["data"]
              if m["role"] == "user"] for s in sessions]  # fmt: skip
    assert sorted(texts) == [["/two"], ["one"]]


def test_an_approval_in_a_terminal(start_server):
    import pty
    import select
    import time

    server = start_server()
    careful(server)
    leader, follower = pty.openpty()
    command = [sys.executable, str(ROOT / "everruns.py"), "chat", "Careful", "--url", server.url]
    proc = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower, env=CLEAN)
    os.close(follower)
    seen = b""

    def until(text, limit=30):
        nonlocal seen
        deadline = time.monotonic() + limit
        while text.encode() not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([leader], [], [], 1)[0]:
                seen += os.read(leader, 4096)

    until("you> ")
    os.write(leader, b'add {"a": 2, "b": 3}\n')
    until("[y/N] ")
    os.write(leader, b"y\n")
    until("← 5")
    os.write(leader, b"/exit\n")
    assert proc.wait(timeout=30) == 0
    os.close(leader)
