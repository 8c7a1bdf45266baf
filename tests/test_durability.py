"""Durability (SPEC section 6): crashes and restarts lose nothing acknowledged,
close interrupted turns exactly once, never re-run a tool, answer owed messages."""

import signal

import gevent
import webtest
from conftest import SSEStream, another_connection, finish, stored_events

import everruns


def setup_slow_session(server, delay_ms=200, **agent):
    provider = server.call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                         "settings": {"token_delay_ms": delay_ms}})[2]  # fmt: skip
    agent = server.call("POST", "/v1/agents", {"name": "a", "provider_id": provider["id"], **agent})[2]
    return server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]


def test_kill_9_mid_turn_then_restart_recovers(start_server, db_path):
    db = db_path
    server = start_server(db)
    sid = setup_slow_session(server)
    stream = SSEStream(server.url, f"/v1/sessions/{sid}/events")
    first = server.call("POST", f"/v1/sessions/{sid}/messages", {"content": "one two three four five six"})[2]
    stream.until(lambda e: e["type"] == "message.delta")
    second = server.call("POST", f"/v1/sessions/{sid}/messages", {"content": "owed"})[2]
    server.stop(signal.SIGKILL)

    again = start_server(db)
    stream = SSEStream(again.url, f"/v1/sessions/{sid}/events?until=completed", timeout=30)
    events = [e["data"] for e in stream.rest() if "data" in e and e["id"]]
    completed = [e["data"] for e in events if e["type"] == "session.completed"]
    assert [(c["status"], (c["error"] or {}).get("code")) for c in completed] == [
        ("failed", "INTERRUPTED"),
        ("completed", None),
    ]
    started = [e["data"]["input_message_ids"] for e in events if e["type"] == "session.started"]
    assert started == [[first["id"]], [second["id"]]]  # the interrupted message is not re-run
    messages = again.call("GET", f"/v1/sessions/{sid}/messages")[2]["data"]
    assert [m["id"] for m in messages if m["role"] == "user"] == [first["id"], second["id"]]
    assert messages[-1]["content"][0]["text"] == "You said: owed"
    assert again.call("GET", f"/v1/sessions/{sid}")[2]["status"] == "idle"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_every_acknowledged_message_survives_kill_9(start_server, db_path):
    db = db_path
    server = start_server(db)
    sid = setup_slow_session(server, delay_ms=0)
    acked = [server.call("POST", f"/v1/sessions/{sid}/messages", {"content": f"m{i}"})[2]["id"] for i in range(30)]
    server.stop(signal.SIGKILL)
    again = start_server(db)
    stream = SSEStream(again.url, f"/v1/sessions/{sid}/events?until=completed", timeout=30)
    completed = [e["data"]["data"] for e in stream.rest() if e.get("event") == "session.completed"]
    messages = again.call("GET", f"/v1/sessions/{sid}/messages?limit=100")[2]["data"]
    assert [m["id"] for m in messages if m["role"] == "user"] == acked
    assert len(completed) == 30  # every acknowledged message got its turn
    interrupted = [c for c in completed if c["status"] != "completed"]  # the one running at the kill, if any
    assert len(interrupted) <= 1 and all(c["error"]["code"] == "INTERRUPTED" for c in interrupted)
    assert sum(m["role"] == "assistant" for m in messages) == 30 - len(interrupted)


def crashed_mid_tool(make_app, db_path):
    """The database as a crash leaves it: a running turn whose tool.call is
    stored but whose tool never answered."""
    app = make_app(db_path)
    client = webtest.TestApp(app)
    agent = client.post_json("/v1/agents", {"name": "a", "capabilities": ["test_math"]}).json
    session = client.post_json(f"/v1/agents/{agent['id']}/sessions", {}).json
    m, sid, turn_id = app.everruns.store.m, session["id"], everruns._uuid7()
    call = {"id": "call_1", "name": "add", "arguments": {"a": 1, "b": 2}}
    with app.everruns.journal.tx(sid) as tx:
        user = m.Message.create(id=everruns._uuid7(), session_id=sid, role="user", turn_id=turn_id,
                                content=[{"type": "text", "text": "add"}], created_at=everruns._now_iso())  # fmt: skip
        m.Turn.create(id=turn_id, session_id=sid, status="running", started_at=everruns._now_iso())
        m.Session.update(status="running").where(m.Session.id == sid).execute()
        tx.emit("session.started", {"turn_id": turn_id, "input_message_ids": [user.id]}, turn_id)
        m.Message.create(id=everruns._uuid7(), session_id=sid, role="assistant", turn_id=turn_id,
                         content=[{"type": "tool_call", **call}], created_at=everruns._now_iso())  # fmt: skip
        tx.emit("tool.call", {"tool_call": call}, turn_id)
    app.everruns.scheduler.closing = True  # the process dies here: nothing else runs
    app.everruns.store.close()
    return sid


def test_restart_gives_an_unanswered_tool_call_an_error_result(make_app, db_path, monkeypatch):
    sid = crashed_mid_tool(make_app, db_path)
    ran = []
    monkeypatch.setattr(everruns, "_run_tool", lambda *a, **k: ran.append(a) or ({}, False))
    client = webtest.TestApp(make_app(db_path))
    events = finish(client, sid)
    assert [e["type"] for e in events[2:]] == ["tool.result", "message.created", "session.completed"]
    assert events[2]["data"]["is_error"] is True and events[2]["data"]["tool_call_id"] == "call_1"
    assert events[-1]["data"]["error"]["code"] == "INTERRUPTED"
    assert ran == []  # never re-run
    assert client.get(f"/v1/sessions/{sid}").json["status"] == "idle"
    roles = [m["role"] for m in client.get(f"/v1/sessions/{sid}/messages").json["data"]]
    assert roles == ["user", "assistant", "tool"]


def test_the_transcript_never_has_a_dangling_tool_call(make_app, db_path):
    sid = crashed_mid_tool(make_app, db_path)
    app = make_app(db_path)
    webtest.TestApp(app).post_json(f"/v1/sessions/{sid}/messages", {"content": "next"})
    transcript = everruns._transcript(everruns._history(app.everruns.store.m, sid, 1 << 20))
    calls = [c["id"] for m in transcript if m["role"] == "assistant" for c in m["tool_calls"]]
    answered = [m["tool_call_id"] for m in transcript if m["role"] == "tool"]
    assert calls == answered == ["call_1"]


def test_graceful_shutdown_interrupts_a_turn_past_the_grace(start_server, db_path):
    db = db_path
    server = start_server(db, "--shutdown-grace", "0.2")
    sid = setup_slow_session(server, delay_ms=300)
    stream = SSEStream(server.url, f"/v1/sessions/{sid}/events")
    server.call("POST", f"/v1/sessions/{sid}/messages", {"content": " ".join(["w"] * 50)})
    stream.until(lambda e: e["type"] == "message.delta")
    assert server.stop(signal.SIGTERM) == 0
    tail = [e["data"] for e in stream.rest() if "data" in e]  # the stream is ended, after the close
    assert tail[-1]["type"] == "session.completed" and tail[-1]["data"]["error"]["code"] == "INTERRUPTED"
    again = start_server(db)
    completed = [e for e in stored_events(again, sid) if e["type"] == "session.completed"]
    assert len(completed) == 1 and again.call("GET", f"/v1/sessions/{sid}")[2]["status"] == "idle"


def test_graceful_shutdown_lets_a_short_turn_finish(start_server, tmp_path):
    db = str(tmp_path / "finish.db")
    server = start_server(db, "--shutdown-grace", "10")
    sid = setup_slow_session(server, delay_ms=100)
    stream = SSEStream(server.url, f"/v1/sessions/{sid}/events")
    server.call("POST", f"/v1/sessions/{sid}/messages", {"content": "a b c d e"})
    stream.until(lambda e: e["type"] == "message.delta")
    assert server.stop(signal.SIGTERM) == 0
    again = start_server(db)
    completed = [e["data"] for e in stored_events(again, sid) if e["type"] == "session.completed"]
    assert [c["status"] for c in completed] == ["completed"]


# ---- group commit: writes ready together share one transaction ---------------


def test_every_acknowledged_write_is_committed_when_many_share_commits(app, api, client, db_path):
    sessions = [api.session()["id"] for _ in range(10)]
    seen_by_another_connection = []

    def post(session_id, i):
        message = client.post_json(f"/v1/sessions/{session_id}/messages", {"content": f"m{i}"}, status=201).json
        with another_connection(db_path) as other:  # what a crash right now would keep
            row = other.execute("SELECT content FROM message WHERE id = ?", (message["id"],)).fetchone()
        seen_by_another_connection.append(row is not None)

    gevent.joinall([gevent.spawn(post, sid, i) for i in range(5) for sid in sessions], raise_error=True)
    assert seen_by_another_connection == [True] * 50
    for session_id in sessions:
        finish(client, session_id)
        events = client.get(f"/v1/sessions/{session_id}/events?format=json&limit=100").json["data"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # no gap, no duplicate
        assert [e["data"]["status"] for e in events if e["type"] == "session.completed"] == ["completed"] * 5


def test_a_failed_commit_fails_every_write_that_shared_it_and_publishes_nothing(app, api, client, live, monkeypatch):
    one, two = api.session()["id"], api.session()["id"]
    stream = SSEStream(live.url, f"/v1/sessions/{one}/events")
    store, execute, failed = app.everruns.store, app.everruns.store.db.execute_sql, []

    def commit_fails_once(sql, params=None):
        if sql == "COMMIT" and not failed:
            failed.append(sql)
            raise everruns.pw.OperationalError("disk I/O error")
        return execute(sql, params)

    monkeypatch.setattr(store.db, "execute_sql", commit_fails_once)
    posts = [gevent.spawn(client.post_json, f"/v1/sessions/{sid}/messages", {"content": "lost"}, status="*")
             for sid in (one, two)]  # fmt: skip
    gevent.joinall(posts, raise_error=True)
    assert failed and [p.value.status_int for p in posts] == [503, 503]  # neither was told it is stored
    for sid in (one, two):
        assert client.get(f"/v1/sessions/{sid}/messages").json["data"] == []
    again = api.message(one, "kept", status=201)
    first = stream.until(lambda e: e["type"] == "message.created")[0]  # nothing of the failed group was published
    assert (first["id"], first["data"]["data"]["message"]["id"]) == ("1", again["id"])
    assert [e["seq"] for e in finish(client, one) if e["seq"]] == [1, 2, 3, 4]


def test_a_failed_write_rolls_back_alone_and_the_others_of_its_group_commit(app, api, client, monkeypatch):
    one, two = api.session()["id"], api.session()["id"]
    original = everruns._insert_message

    def refuse_bad(m, session_id, seq, role, content, *args, **kwargs):
        if content == [{"type": "text", "text": "bad"}]:
            raise everruns.pw.OperationalError("this one fails")
        return original(m, session_id, seq, role, content, *args, **kwargs)

    monkeypatch.setattr(everruns, "_insert_message", refuse_bad)
    posts = [gevent.spawn(client.post_json, f"/v1/sessions/{sid}/messages", {"content": text}, status="*")
             for sid, text in ((one, "bad"), (two, "good"))]  # fmt: skip
    gevent.joinall(posts, raise_error=True)
    assert [p.value.status_int for p in posts] == [503, 201]
    assert client.get(f"/v1/sessions/{one}/messages").json["data"] == []
    assert [e["seq"] for e in finish(client, two) if e["seq"]] == [1, 2, 3, 4]
    assert client.get(f"/v1/sessions/{one}/events?format=json").json["data"] == []
