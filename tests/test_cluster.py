"""Several server processes on one PostgreSQL database (SPEC 10): each owed turn
runs once, in one process; a stream on any process gets every stored event of
its session once and in order, and the streamed text of turns that run
elsewhere; cancel and delete reach a turn in another process; a process killed
with SIGKILL has its turns closed as INTERRUPTED and what it owed answered by
the others, and no tool runs twice."""

import dataclasses
import json
import random
import signal
import time

import gevent
import gevent.event
import pytest
import webtest
from conftest import Api, SSEStream, another_connection, http

import everruns

pytestmark = pytest.mark.postgresql


class Target:
    """A web page on 127.0.0.1 for web_fetch that counts how often each path is fetched:
    /hit/KEY answers at once, /slow/KEY only once released (a tool that runs a while)."""

    def __init__(self):
        from gevent.pool import Pool
        from gevent.pywsgi import WSGIServer

        self.hits, self.released = {}, gevent.event.Event()
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None, spawn=Pool())
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        kind, _, key = environ["PATH_INFO"].strip("/").partition("/")
        self.hits[key] = self.hits.get(key, 0) + 1
        if kind == "slow":
            self.released.wait(60)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"page {key}".encode()]

    def fetch(self, kind, key):
        """A message that makes the simulator call web_fetch on this page."""
        return "web_fetch " + json.dumps({"url": f"{self.url}/{kind}/{key}"})


class Stream:
    """A session's live stream on one server, read in the background from the start."""

    def __init__(self, server, session_id):
        self.server, self.items = server, []
        self.sse = SSEStream(server.url, f"/v1/sessions/{session_id}/events", timeout=120)
        self.reader = gevent.spawn(self._read)

    def _read(self):
        try:
            for item in self.sse:
                if "data" in item:
                    self.items.append(item["data"])
        except OSError:
            pass  # closed at the end of the test

    def stored(self):
        return [e for e in self.items if e["seq"] is not None]

    def has(self, predicate):
        return any(predicate(e) for e in self.items)


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        gevent.sleep(0.05)


def call(server, method, path, body=None):
    status, _, answer = http(method, server.url + path, body, timeout=30)
    assert status < 300, (method, path, status, answer)
    return answer


def all_stored(server, session_id):
    events, after = [], 0
    while True:
        page = call(server, "GET", f"/v1/sessions/{session_id}/events?format=json&limit=100&after={after}")
        events += page["data"]
        if not page["has_more"]:
            return events
        after = events[-1]["seq"]


def events_in(client, session_id):
    return client.get(f"/v1/sessions/{session_id}/events?format=json&limit=100").json["data"]


def settled(server, session_id):
    session = call(server, "GET", f"/v1/sessions/{session_id}")
    messages = call(server, "GET", f"/v1/sessions/{session_id}/messages?limit=100")["data"]
    return session["status"] == "idle" and all(m["turn_id"] for m in messages)


def test_three_processes_share_one_database(postgres, start_server):
    rng = random.Random(14)
    db = postgres.new_database()
    target = Target()
    servers = [start_server(db, "--allow-private-fetch") for _ in range(3)]
    a, b, victim = servers
    survivors = [a, b]
    instance = {call(s, "GET", "/health")["instance"]: s for s in servers}
    assert len(instance) == 3 and all(call(s, "GET", "/health")["backend"] == "postgresql" for s in servers)

    provider = call(a, "POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                 "settings": {"token_delay_ms": 15}})  # fmt: skip
    agent = call(b, "POST", "/v1/agents", {"name": "fetcher", "capabilities": ["web_fetch"],
                                           "provider_id": provider["id"]})  # fmt: skip
    sessions = [call(rng.choice(servers), "POST", f"/v1/agents/{agent['id']}/sessions")["id"] for _ in range(50)]
    streams = {sid: Stream(rng.choice(survivors), sid) for sid in sessions}
    wait_until(lambda: all(s.sse.response.status == 200 for s in streams.values()), 10, "streams open")

    plain, cancelled, deleted, killed = sessions[:38], sessions[38:43], sessions[43:45], sessions[45:]
    db_conn = another_connection(db)

    def owner(session_id):
        row = db_conn.execute("SELECT owner FROM turn WHERE session_id = ? AND status = 'running'", (session_id,))
        found = row.fetchone()
        return found and instance.get(found[0])

    # Two messages each (the second waits for the first: FIFO, whichever process takes it), posted at random.
    for sid in plain:
        call(rng.choice(servers), "POST", f"/v1/sessions/{sid}/messages", {"content": target.fetch("hit", sid)})
        call(rng.choice(servers), "POST", f"/v1/sessions/{sid}/messages", {"content": f"plain words for {sid}"})
    for sid in cancelled + deleted:
        call(rng.choice(servers), "POST", f"/v1/sessions/{sid}/messages", {"content": target.fetch("slow", sid)})
    # Turns that run a while on the victim (the process that takes a message for an idle session
    # runs its turn), each with a message owed behind it, posted to another process.
    for sid in killed:
        call(victim, "POST", f"/v1/sessions/{sid}/messages", {"content": target.fetch("slow", sid)})
    wait_until(lambda: all(target.hits.get(sid) for sid in cancelled + deleted + killed), 30, "slow tools running")
    for sid in killed:
        call(rng.choice(survivors), "POST", f"/v1/sessions/{sid}/messages", {"content": "after the crash"})

    # Cancel and delete from a process other than the one running the turn.
    for sid in cancelled:
        runner = owner(sid)
        other = next(s for s in servers if s is not runner and s is not victim)
        answer = call(other, "POST", f"/v1/sessions/{sid}/cancel")
        assert answer["cancelled_turn"]["status"] == "cancelled" and answer["status"] == "idle"
    for sid in deleted:
        runner = owner(sid)
        other = next(s for s in servers if s is not runner and s is not victim)
        call(other, "DELETE", f"/v1/sessions/{sid}")
        wait_until(lambda sid=sid: streams[sid].reader.dead, 10, "the deleted session's stream ends")
        assert db_conn.execute("SELECT count(*) FROM turn WHERE session_id = ?", (sid,)).fetchone()[0] == 0

    # SIGKILL mid-turn: the others close its turns and answer what it owed, within 30 s.
    wait_until(lambda: all(settled(a, sid) for sid in plain + cancelled), 60, "the other sessions settled")
    assert all(owner(sid) is victim for sid in killed)
    victim.stop(signal.SIGKILL)

    def closed_and_answered(sid):
        done = [e for e in streams[sid].items if e["type"] == "session.completed"]
        return len(done) == 2

    wait_until(lambda: all(closed_and_answered(sid) for sid in killed), 30, "the dead process's turns closed")
    target.released.set()
    wait_until(lambda: all(settled(a, sid) for sid in plain + cancelled + killed), 60, "every session settled")

    for sid in killed:
        first, second = [e["data"] for e in streams[sid].items if e["type"] == "session.completed"]
        assert first["status"] == "failed" and first["error"]["code"] == "INTERRUPTED"
        assert second["status"] == "completed"
        results = [e["data"] for e in streams[sid].items if e["type"] == "tool.result"]
        assert len(results) == 1 and results[0]["is_error"] is True

    for sid in plain + cancelled + killed:
        stored = all_stored(rng.choice(survivors), sid)
        assert [e["seq"] for e in stored] == list(range(1, len(stored) + 1))  # gap-free
        got = streams[sid].stored()
        assert [e["seq"] for e in got] == [e["seq"] for e in stored], sid  # every stored event, once, in order
        assert [e["id"] for e in got] == [e["id"] for e in stored]
        # every turn ran once: each user message was taken by exactly one turn, each turn ended once
        started = [e["data"] for e in stored if e["type"] == "session.started"]
        taken = [mid for s in started for mid in s["input_message_ids"]]
        users = [e["data"]["message"]["id"] for e in stored
                 if e["type"] == "message.created" and e["data"]["message"]["role"] == "user"]  # fmt: skip
        assert sorted(taken) == sorted(users)
        ended = [e["data"]["turn_id"] for e in stored if e["type"] == "session.completed"]
        assert sorted(ended) == sorted(s["turn_id"] for s in started)
        # each tool call has one result; the live text of every answer came through, whichever process ran it
        calls = [e["data"]["tool_call"]["id"] for e in stored if e["type"] == "tool.call"]
        results = [e["data"]["tool_call_id"] for e in stored if e["type"] == "tool.result"]
        assert sorted(calls) == sorted(results) and len(set(calls)) == len(calls)
        for e in stored:
            message = e["data"].get("message") if e["type"] == "message.created" else None
            if message and message["role"] == "assistant" and message["content"][0]["type"] == "text":
                deltas = [d["data"] for d in streams[sid].items if d["type"] == "message.delta"]
                text = "".join(d["delta"] for d in deltas if d["message_id"] == message["id"])
                assert text == message["content"][0]["text"], sid

    for sid in plain:
        answers = [e for e in streams[sid].items if e["type"] == "session.completed"]
        assert [e["data"]["status"] for e in answers] == ["completed", "completed"]
    for sid in cancelled:
        assert [e["data"]["status"] for e in streams[sid].items if e["type"] == "session.completed"] == ["cancelled"]
    # no tool ran twice (the dead process's calls were not run again)
    assert all(count == 1 for count in target.hits.values()), target.hits
    assert set(target.hits) == set(plain + cancelled + deleted + killed)

    for stream in streams.values():
        stream.reader.kill()
        stream.sse.close()
    db_conn.close()
    target.server.stop(timeout=0)


def test_a_process_that_stops_renewing_its_lease_loses_its_turns(make_app, monkeypatch):
    """Two apps on one database in this process: the first stops renewing its lease (its
    connection, and so its lock, stay: a machine cut off, say). The second closes its turn
    once the lease is LEASE_S old; the first then finds its lease gone, stops the turn
    without writing, takes a new lease and runs turns again. The tool ran once."""
    monkeypatch.setattr(everruns, "HEARTBEAT_S", 0.1)
    monkeypatch.setattr(everruns, "LEASE_S", 0.5)
    ran, release = [], gevent.event.Event()

    def slow_add(args, tctx):
        ran.append(1)
        release.wait(30)
        return {"result": args.a + args.b}

    capability = everruns.CAPABILITIES["test_math"]
    tools = tuple(dataclasses.replace(t, run=slow_add) if t.name == "add" else t for t in capability.tools)
    monkeypatch.setitem(everruns.CAPABILITIES, "test_math", dataclasses.replace(capability, tools=tools))
    first, second = make_app(), make_app()
    one, two = webtest.TestApp(first), webtest.TestApp(second)
    api = Api(one)
    session = api.session(api.agent(capabilities=["test_math"])["id"])["id"]
    api.message(session, 'add {"a": 1, "b": 2}')
    wait_until(lambda: ran, 10, "the tool running")

    cluster, lease = first.everruns.cluster, first.everruns.store.lease
    cluster.greenlets[0].kill(everruns._Stop)  # it listens and renews: now it does neither
    wait_until(lambda: two.get(f"/v1/sessions/{session}").json["status"] == "idle", 10, "the turn closed")
    closed = [e for e in events_in(two, session) if e["type"] == "session.completed"]
    assert [(e["data"]["status"], e["data"]["error"]["code"]) for e in closed] == [("failed", "INTERRUPTED")]

    cluster.greenlets[0] = gevent.spawn(cluster._listen)  # renewing again: the lease is gone
    wait_until(lambda: first.everruns.store.lease != lease and not first.everruns.scheduler.running(), 10, "new lease")
    release.set()
    api.message(session, "still there?")
    wait_until(lambda: len(one.get(f"/v1/sessions/{session}/messages").json["data"]) == 5, 10, "the answer")
    events = events_in(one, session)
    assert [e["data"]["status"] for e in events if e["type"] == "session.completed"] == ["failed", "completed"]
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 1 and results[0]["is_error"] and len(ran) == 1
