"""Offline first (SPEC 18), the file is the deployment: `everruns backup` copies a SQLite database
while a server runs on it; a session goes out as JSON Lines (GET .../export) and comes back as a
new session (POST /v1/agents/{id}/sessions/import)."""

import json
import sqlite3
import subprocess
import sys

import gevent
import pytest
import webtest
from conftest import ROOT, SSEStream, error_of, finish, wait_until

import everruns

JSONL = {"Content-Type": "application/x-ndjson"}


def backup(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "everruns.py"), "backup", *args], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip


def every(call, path):
    """Every item of a listing of a real server, following its pages."""
    items, after = [], ""
    while True:
        status, _, page = call("GET", f"{path}{'&' if '?' in path else '?'}limit=100{after}")
        assert status == 200, page
        items += page["data"]
        if not page["has_more"]:
            return items
        after = f"&after={page['next_after']}"


# ---- backup ---------------------------------------------------------------------


@pytest.mark.sqlite
def test_a_backup_taken_while_20_sessions_talk_has_every_acknowledged_message(start_server, tmp_path, backend):
    server = start_server(str(tmp_path / "live.db"))
    slow = server.call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                     "settings": {"token_delay_ms": 20}})[2]  # fmt: skip
    agent = server.call("POST", "/v1/agents", {"name": "a", "provider_id": slow["id"]})[2]["id"]
    filler = server.call("POST", f"/v1/agents/{agent}/sessions", {})[2]["id"]  # pages enough for several steps
    for i in range(8):
        assert server.call("POST", f"/v1/sessions/{filler}/messages", {"content": f"{i} " + "x" * 600_000})[0] == 201
    server.call("GET", f"/v1/sessions/{filler}/events?until=completed", timeout=60)
    sessions = [server.call("POST", f"/v1/agents/{agent}/sessions", {})[2]["id"] for _ in range(20)]
    acked, stop = [], gevent.event.Event()

    def talk(session_id):
        while not stop.is_set():
            status, _, message = server.call("POST", f"/v1/sessions/{session_id}/messages", {"content": "a b c d e"})
            assert status == 201
            acked.append(message["id"])
            server.call("GET", f"/v1/sessions/{session_id}/events?until=completed", timeout=60)

    talkers = [gevent.spawn(talk, session_id) for session_id in sessions]
    wait_until(lambda: len(acked) >= 60, timeout=60, what="three turns a session")  # the newest: in the WAL
    before = list(acked)
    done = backup(str(tmp_path / "copy.db"), "--db", str(tmp_path / "live.db"))
    stop.set()
    gevent.joinall(talkers, timeout=60, raise_error=True)
    assert done.returncode == 0, done.stderr
    assert "copy.db" in done.stdout and f"schema version {everruns.SCHEMA_VERSION}" in done.stdout
    assert len(before) >= 20 and len(acked) > len(before)  # the talk went on while the copy was made
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    copy = start_server(str(tmp_path / "copy.db"))  # another port: the first one still runs
    stored = set()
    for session_id in [filler, *sessions]:
        copy.call("GET", f"/v1/sessions/{session_id}/events?until=completed", timeout=60)  # its owed turns run
        stored |= {m["id"] for m in every(copy.call, f"/v1/sessions/{session_id}/messages")}
        seqs = [e["seq"] for e in every(copy.call, f"/v1/sessions/{session_id}/events?format=json")]
        assert seqs == list(range(1, len(seqs) + 1))
    assert set(before) <= stored


def test_backup_refuses_in_one_line_what_it_cannot_do(tmp_path):
    source = tmp_path / "source.db"
    everruns.create_app(str(source), env={}).close()
    (tmp_path / "taken.db").write_text("mine")
    password = "s3cr3t-pa55"
    refusals = {
        "exists": backup(str(tmp_path / "taken.db"), "--db", str(source)),
        "does not exist": backup(str(tmp_path / "x.db"), "--db", str(tmp_path / "missing.db")),
        "folder": backup(str(tmp_path / "nowhere" / "x.db"), "--db", str(source)),
        "pg_dump": backup(str(tmp_path / "x.db"), "--db", f"postgresql://me:{password}@127.0.0.1:1/db"),
    }
    for words, done in refusals.items():
        assert done.returncode == 2, done
        assert words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr and password not in done.stderr + done.stdout
    assert (tmp_path / "taken.db").read_text() == "mine" and not (tmp_path / "x.db").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_backup_finds_the_database_as_the_server_does(tmp_path):
    everruns.create_app(str(tmp_path / "from-env.db"), env={}).close()
    env = {"PATH": "/usr/bin:/bin", "EVERRUNS_DB": str(tmp_path / "from-env.db")}
    done = backup(str(tmp_path / "copy.db"), env=env)
    assert done.returncode == 0, done.stderr
    assert "from-env.db" in done.stdout
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("SELECT name FROM provider").fetchall() == [("Built-in simulator",)]


# ---- export and import --------------------------------------------------------------


def export_of(client, session_id):
    """A session's export: its lines, parsed."""
    response = client.get(f"/v1/sessions/{session_id}/export")
    assert response.content_type == "application/x-ndjson"
    assert response.headers["Content-Disposition"] == f'attachment; filename="session-{session_id}.jsonl"'
    return [json.loads(line) for line in response.body.splitlines()]


def imported(client, agent_id, lines, status=201):
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    return client.post(f"/v1/agents/{agent_id}/sessions/import", body, headers=JSONL, status=status)


def listed(client, session_id):
    """A session's messages and events, as the API lists them."""
    messages = client.get(f"/v1/sessions/{session_id}/messages?limit=100").json["data"]
    events = client.get(f"/v1/sessions/{session_id}/events?format=json&limit=100").json["data"]
    return messages, events


def same_but_ids(old, new, old_session, new_session):
    """`new` is `old` with each id it has a new one for (taken by position) in its place."""
    names = {old_session["id"]: new_session["id"]}
    for kind in ("messages", "events"):
        names.update(zip([x["id"] for x in old[kind]], [x["id"] for x in new[kind]], strict=True))
    turns = [list(dict.fromkeys(m["turn_id"] for m in side["messages"])) for side in (old, new)]
    names.update(zip(*turns, strict=True))
    text = json.dumps(old)
    for before, after in names.items():
        text = text.replace(before, after)
    assert json.loads(text) == new


def test_export_then_import_gives_the_same_conversation(api, client):
    agent = api.agent(capabilities=["test_math"])
    session = api.session(agent["id"], title="Sums", tags=["demo"])
    api.message(session["id"], 'add {"a": 2, "b": 3}', status=201)
    finish(client, session["id"])
    for i in range(55):  # more than a page of messages and of events
        api.message(session["id"], f"message {i}", status=201)
    finish(client, session["id"])
    lines, n = export_of(client, session["id"]), 4 + 2 * 55  # the messages: user, tool call, result, answer; ...
    assert lines[0] == {"kind": "session", "format": 1, **client.get(f"/v1/sessions/{session['id']}").json}
    assert [line.pop("kind") for line in lines[1:]] == ["message"] * n + ["event"] * (len(lines) - 1 - n)
    assert lines[1:101] == client.get(f"/v1/sessions/{session['id']}/messages?limit=100").json["data"]
    events = client.get(f"/v1/sessions/{session['id']}/events?format=json&limit=100").json["data"]
    assert lines[n + 1 : n + 101] == events and [e["seq"] for e in lines[n + 1 :]] == list(range(1, len(lines) - n))

    body = client.get(f"/v1/sessions/{session['id']}/export").body
    new = client.post(f"/v1/agents/{agent['id']}/sessions/import", body, headers=JSONL, status=201).json
    assert new["id"] != session["id"] and new["agent_id"] == agent["id"] and new["status"] == "idle"
    assert (new["title"], new["tags"], new["usage"]) == ("Sums", ["demo"], lines[0]["usage"])
    assert client.get(f"/v1/sessions/{new['id']}").json == new
    again = export_of(client, new["id"])  # as the API lists them (the export is, as checked above)
    assert [line.pop("kind") for line in again[1:]] == ["message"] * n + ["event"] * (len(lines) - 1 - n)
    old = {"messages": lines[1 : n + 1], "events": lines[n + 1 :]}
    same_but_ids(old, {"messages": again[1 : n + 1], "events": again[n + 1 :]}, session, new)


def test_an_export_is_the_session_as_it_was_when_the_export_began(app, api, client):
    session = api.session()
    api.message(session["id"], "before", status=201)
    finish(client, session["id"])
    began, go_on = gevent.event.Event(), gevent.event.Event()

    def read():  # in a greenlet of its own, as a request is
        lines = everruns._export_lines(app.everruns, session["id"])
        first = next(lines)
        began.set()
        go_on.wait(10)
        return [json.loads(line) for line in (first + b"".join(lines)).splitlines()]

    reader = gevent.spawn(read)
    assert began.wait(10)
    api.message(session["id"], "after", status=201)  # stored while the export reads
    finish(client, session["id"])
    go_on.set()
    lines = reader.get(timeout=10)
    assert [line["content"][0]["text"] for line in lines if line["kind"] == "message"] == ["before", "You said: before"]
    assert [line["seq"] for line in lines if line["kind"] == "event"] == [1, 2, 3, 4]
    assert len(client.get(f"/v1/sessions/{session['id']}/messages").json["data"]) == 4


def test_an_imported_session_goes_on_talking(api, client):
    agent = api.agent(capabilities=["test_math"])
    session = api.session(agent["id"])
    api.message(session["id"], 'multiply {"a": 6, "b": 7}', status=201)
    finish(client, session["id"])
    new = imported(client, agent["id"], export_of(client, session["id"])).json
    api.message(new["id"], "and now?", status=201)
    seqs = [e["seq"] for e in finish(client, new["id"]) if e["seq"]]  # (deltas have none)
    assert seqs == list(range(1, len(seqs) + 1))
    messages, _ = listed(client, new["id"])
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert messages[2]["content"][0]["result"] == {"result": 42}
    assert messages[-1]["content"][0]["text"] == "You said: and now?"


def test_hooks_see_what_an_imported_session_does_not_its_history(app, api, client):
    seen = []
    app.on("*")(lambda event: seen.append((event.session_id, event.type)))
    agent = api.agent()
    session = api.session(agent["id"])
    api.message(session["id"], "hello", status=201)
    finish(client, session["id"])
    wait_until(lambda: "session.completed" in [t for _, t in seen], what="the first turn's hooks")
    new = imported(client, agent["id"], export_of(client, session["id"])).json
    api.message(new["id"], "and now?", status=201)
    finish(client, new["id"])
    wait_until(lambda: [t for s, t in seen if s == new["id"]][-1:] == ["session.completed"], what="its turn's hooks")
    assert [t for s, t in seen if s == new["id"]] == ["message.created", "session.started", "message.created",
                                                       "session.completed"]  # fmt: skip


def test_an_export_moves_to_another_server(api, client, make_app, other_db):
    provider = api.provider(name="only here", provider_type="llmsim")["id"]
    agent = api.agent()
    session = api.session(agent["id"], provider_id=provider, model="llmsim")
    api.message(session["id"], "hello", status=201)
    finish(client, session["id"])
    elsewhere = webtest.TestApp(make_app(other_db))
    there = elsewhere.post_json("/v1/agents", {"name": "moved"}).json
    new = imported(elsewhere, there["id"], export_of(client, session["id"])).json
    assert (new["provider_id"], new["model"]) == (None, None)  # that provider is not there: the agent's
    assert [m["content"] for m in listed(elsewhere, new["id"])[0]] == [
        m["content"] for m in listed(client, session["id"])[0]
    ]


def test_a_turn_exported_while_it_ran_is_imported_as_interrupted(app, api, client):
    slow = api.provider(provider_type="llmsim", settings={"token_delay_ms": 1000})
    agent = api.agent(provider_id=slow["id"])
    session = api.session(agent["id"])
    api.message(session["id"], "one two three four five six", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session['id']}").json["status"] == "running", what="the turn")
    lines = export_of(client, session["id"])
    assert lines[0]["status"] == "running" and lines[-1]["type"] == "session.started"
    new = imported(client, agent["id"], lines).json
    assert new["status"] == "idle"
    assert new["last_turn"]["status"] == "failed" and new["last_turn"]["error"]["code"] == "INTERRUPTED"
    messages, events = listed(client, new["id"])
    assert [e["type"] for e in events] == ["message.created", "session.started", "session.completed"]
    assert [e["seq"] for e in events] == [1, 2, 3] and events[2]["data"]["error"]["code"] == "INTERRUPTED"
    assert events[1]["data"]["input_message_ids"] == [messages[0]["id"]] and messages[0]["turn_id"] == new[
        "last_turn"]["id"]  # fmt: skip
    client.post_json(f"/v1/sessions/{session['id']}/cancel", {})


def test_a_call_that_waited_for_approval_keeps_its_record_and_gets_an_error_result(api, client):
    agent = api.agent(capabilities=["test_math"], require_approval=["add"])
    session = api.session(agent["id"])
    api.message(session["id"], 'add {"a": 1, "b": 2}', status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session['id']}").json["status"] == "waiting", what="the approval")
    new = imported(client, agent["id"], export_of(client, session["id"])).json
    messages, events = listed(client, new["id"])
    assert [e["type"] for e in events] == ["message.created", "session.started", "message.created", "tool.call",
                                           "tool.approval_requested", "tool.result", "message.created",
                                           "session.completed"]  # fmt: skip
    assert events[3]["data"]["tool_call"]["approval"] == "pending"
    assert events[5]["data"]["is_error"] is True and events[5]["data"]["tool_call_id"] == events[3]["data"][
        "tool_call"]["id"]  # fmt: skip
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert client.get(f"/v1/sessions/{new['id']}").json["status"] == "idle"
    assert client.get(f"/v1/sessions/{session['id']}").json["status"] == "waiting"  # the original waits on


# ---- what an import refuses ---------------------------------------------------------


@pytest.fixture
def exported(api, client):
    """An agent and the export of one of its sessions, a turn with a tool call in it."""
    agent = api.agent(capabilities=["test_math"])
    session = api.session(agent["id"])
    api.message(session["id"], 'add {"a": 2, "b": 3}', status=201)
    finish(client, session["id"])
    return agent, export_of(client, session["id"])


def without(line, name):
    return {k: v for k, v in line.items() if k != name}


DELTA = {"message_id": "m", "delta": "hi"}  # never stored: never in an export
BAD = {
    "not JSON": lambda lines: b"this is not json\n",
    "an empty body": lambda lines: b"",
    "an object that is not a line of an export": lambda lines: b"[1, 2]\n",
    "a message before the session": lambda lines: [lines[1], lines[0], *lines[2:]],
    "an unknown kind": lambda lines: [*lines, {"kind": "widget"}],
    "two sessions": lambda lines: [lines[0], *lines],
    "another format": lambda lines: [{**lines[0], "format": 2}, *lines[1:]],
    "no format": lambda lines: [without(lines[0], "format"), *lines[1:]],
    "an unknown field": lambda lines: [{**lines[0], "colour": "red"}, *lines[1:]],
    "a bad role": lambda lines: [lines[0], {**lines[1], "role": "system"}, *lines[2:]],
    "another session's message": lambda lines: [lines[0], {**lines[1], "session_id": everruns._uuid7()}, *lines[2:]],
    "a message without its event": lambda lines: [line for line in lines if line.get("type") != "message.created"],
    "an event out of order": lambda lines: [*lines[:-2], lines[-1], lines[-2]],
    "an unknown event type": lambda lines: [*lines, {**lines[-1], "type": "turn.exploded", "seq": 99}],
    "a delta": lambda lines: [*lines, {**lines[-1], "type": "message.delta", "seq": None, "data": DELTA}],
    "a bad event data": lambda lines: [*lines[:-1], {**lines[-1], "data": {"status": "great"}}],
    "a title too long": lambda lines: [{**lines[0], "title": "t" * 300}, *lines[1:]],
    "the NUL character": lambda lines: [{**lines[0], "title": "a\u0000b"}, *lines[1:]],
    "a time that is not one": lambda lines: [lines[0], {**lines[1], "created_at": "yesterday"}, *lines[2:]],
    "an event's time that is not one": lambda lines: [*lines[:-1], {**lines[-1], "ts": "2026-13-99"}],
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_export_is_refused_and_nothing_is_stored(exported, client, case):
    agent, lines = exported
    bad = BAD[case](lines)
    body = bad if isinstance(bad, bytes) else "".join(json.dumps(line) + "\n" for line in bad).encode()
    before = client.get(f"/v1/agents/{agent['id']}/sessions").json["data"]
    response = client.post(f"/v1/agents/{agent['id']}/sessions/import", body, headers=JSONL, status="*")
    error = error_of(response, 400, response.json["error"]["code"])
    assert error["code"] in ("BAD_REQUEST", "VALIDATION_ERROR")
    assert client.get(f"/v1/agents/{agent['id']}/sessions").json["data"] == before


def test_an_export_over_the_body_limit_or_not_json_lines_is_refused(exported, client):
    agent, lines = exported
    huge = [lines[0], {**lines[1], "content": [{"type": "text", "text": "x" * everruns.MAX_BODY_BYTES}]}]
    body = "".join(json.dumps(line) + "\n" for line in huge).encode()
    error_of(client.post(f"/v1/agents/{agent['id']}/sessions/import", body, headers=JSONL, status="*"), 413,
             "PAYLOAD_TOO_LARGE")  # fmt: skip
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    error_of(client.post(f"/v1/agents/{agent['id']}/sessions/import", body, headers={"Content-Type": "text/plain"},
                         status="*"), 415, "UNSUPPORTED_MEDIA_TYPE")  # fmt: skip
    assert len(client.get(f"/v1/agents/{agent['id']}/sessions").json["data"]) == 1
    for media in ("application/jsonl", "application/json"):
        taken = client.post(f"/v1/agents/{agent['id']}/sessions/import", body, headers={"Content-Type": media},
                            status=201)  # fmt: skip
        assert taken.json["title"] == lines[0]["title"]


def test_unknown_agents_and_sessions_are_404(exported, client):
    _, lines = exported
    error_of(imported(client, everruns._uuid7(), lines, status="*"), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/sessions/{everruns._uuid7()}/export", status="*"), 404, "NOT_FOUND")


def test_export_streams_over_the_wire(app, api, client, live):
    session = api.session()
    api.message(session["id"], "hello", status=201)
    finish(client, session["id"])
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/export")
    assert stream.response.getheader("Transfer-Encoding") == "chunked"  # written a page at a time
    lines = [json.loads(line) for line in stream.response.read().splitlines()]
    stream.close()
    assert [line["kind"] for line in lines] == ["session", "message", "message"] + ["event"] * 4


@pytest.fixture
def other_db(backend, tmp_path, request):
    """A second database of the test's backend: another server's."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return str(tmp_path / "elsewhere.db")
