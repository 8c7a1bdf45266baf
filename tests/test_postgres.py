"""What only PostgreSQL does: turns stopped in the middle of a query (cancel, delete,
a tool's timeout) leave every connection usable and no query running on the server."""

import dataclasses
import itertools
import time

import gevent
import gevent.event
import pytest
import webtest
from conftest import Api, another_connection, finish, wait_until

import everruns

pytestmark = pytest.mark.postgresql


def running_sleeps(db_path):
    with another_connection(db_path) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' AND state = 'active'"
        ).fetchone()[0]


def wait_for(predicate, timeout=10.0):
    deadline = gevent.get_hub().loop.now() + timeout
    while not predicate():
        assert gevent.get_hub().loop.now() < deadline, "timed out"
        gevent.sleep(0.02)


@pytest.fixture
def slow_tool(monkeypatch):
    """The `add` tool of test_math, made to sit in a 30 s query: through the write path
    (the one writer connection) every other call, through a pooled connection otherwise."""
    calls = []

    def sleep_in_a_query(args, tctx):
        calls.append(1)
        if len(calls) % 2:
            with tctx.store.write():
                tctx.store.db.execute_sql("SELECT pg_sleep(30)")
        else:
            tctx.store.db.execute_sql("SELECT pg_sleep(30)")
        return {"result": 0}

    capability = everruns.CAPABILITIES["test_math"]
    tools = tuple(dataclasses.replace(t, run=sleep_in_a_query) if t.name == "add" else t for t in capability.tools)
    monkeypatch.setitem(everruns.CAPABILITIES, "test_math", dataclasses.replace(capability, tools=tools))
    return calls


def test_turns_stopped_mid_query_leave_the_database_usable(api, client, db_path, slow_tool, monkeypatch):
    agent = api.agent(capabilities=["test_math"])
    outcomes = []
    for i in range(12):
        how = ("cancel", "delete", "timeout")[i % 3]
        monkeypatch.setattr(everruns, "TOOL_TIMEOUT_S", 0.5 if how == "timeout" else 60)
        session = api.session(agent["id"])["id"]
        api.message(session, 'add {"a": 2, "b": 3}', status=201)
        wait_for(lambda: running_sleeps(db_path) == 1)
        if how == "cancel":
            client.post(f"/v1/sessions/{session}/cancel", status=200)
        elif how == "delete":
            client.delete(f"/v1/sessions/{session}", status=204)
        if how != "delete":
            done = finish(client, session)[-1]["data"]
            outcomes.append(done["status"])
            if how == "timeout":  # the tool's error result went back to the model, which answered
                results = [
                    m for m in client.get(f"/v1/sessions/{session}/messages").json["data"] if m["role"] == "tool"
                ]
                assert "timed out" in results[0]["content"][0]["result"]["error"]
        wait_for(lambda: running_sleeps(db_path) == 0)  # cancelled on the server, not left running
    assert outcomes == ["cancelled", "completed"] * 4
    assert len(slow_tool) == 12
    # every later request is served: writes, reads, turns
    sessions = [api.session(agent["id"])["id"] for _ in range(20)]
    for session in sessions:
        api.message(session, "hello", status=201)
    assert all(finish(client, s)[-1]["data"]["status"] == "completed" for s in sessions)


def test_a_small_pool_serves_many_concurrent_conversations(make_app, db_path, monkeypatch):
    """Greenlets give their connection back whatever the others do (on PostgreSQL a write
    waits on the network, and other greenlets run meanwhile): 30 conversations through a
    pool of 4, then the pool is whole again."""
    monkeypatch.setattr(everruns, "POSTGRES_POOL", 4)
    monkeypatch.setattr(everruns, "POSTGRES_POOL_WAIT_S", 5)
    app = make_app(db_path)
    client = webtest.TestApp(app)
    api = Api(client)
    agent = api.agent()
    sessions = [api.session(agent["id"])["id"] for _ in range(30)]

    def converse(session):
        for i in range(3):
            api.message(session, f"m{i}", status=201)
            assert finish(client, session)[-1]["data"]["status"] == "completed"

    gevent.joinall([gevent.spawn(converse, s) for s in sessions], raise_error=True)
    assert len(client.get(f"/v1/agents/{agent['id']}/sessions?limit=100").json["data"]) == 30
    assert not app.everruns.store.db._in_use  # every connection is back in the pool


# ---- faults: PostgreSQL restarted, its connections cut, stopped for a while -----------


def post(server, session, text):
    """POST a message: its id if it was stored (201), else None (503 while the database is away)."""
    try:
        status, headers, body = server.call("POST", f"/v1/sessions/{session}/messages", {"content": text}, timeout=10)
    except OSError:
        return None
    if status == 503:
        assert body["error"]["code"] == "UNAVAILABLE" and headers["Retry-After"]
        return None
    assert status == 201, body
    return body["id"]


def everything_stored(server, sessions, acked):
    """Every message that got its 201 is there once the sessions settle."""
    for session in sessions:
        status, _, _ = server.call("GET", f"/v1/sessions/{session}/events?until=completed", timeout=60)
        assert status == 200
    listed = {m["id"] for s in sessions for m in server.call("GET", f"/v1/sessions/{s}/messages?limit=100")[2]["data"]}
    assert set(acked) <= listed, f"lost: {set(acked) - listed}"


@pytest.mark.slow
def test_writes_come_back_after_postgresql_restarts_or_cuts_its_connections(own_postgres, start_server):
    db = own_postgres.new_database()
    server = start_server(db)
    agent = server.call("POST", "/v1/agents", {"name": "a"})[2]
    sessions = [server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"] for _ in range(5)]
    acked, refused, stop = [], [], gevent.event.Event()

    def load():
        for i in itertools.count():
            if stop.is_set():
                return
            message = post(server, sessions[i % 5], f"m{i}")
            (acked if message else refused).append(message)
            gevent.sleep(0.01)

    loader = gevent.spawn(load)
    for fault in (lambda: own_postgres.terminate_backends(db.rsplit("/", 1)[1]), own_postgres.restart):
        wait_until(lambda: len(acked) >= 20, 30, "messages stored before the fault")
        fault()
        before = len(acked)
        wait_until(lambda: len(acked) > before + 20, 60, "writes again, without restarting the server")  # noqa: B023
    stop.set()
    loader.join()
    assert refused, "the fault was never seen"
    everything_stored(server, sessions, acked)
    assert server.call("GET", "/health")[2]["database"] == "ok"
    assert "Traceback" not in server.output()


@pytest.mark.slow
def test_a_postgresql_outage_is_503_and_the_server_recovers_by_itself(own_postgres, start_server):
    db = own_postgres.new_database()
    server = start_server(db)
    agent = server.call("POST", "/v1/agents", {"name": "a"})[2]
    session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
    acked = [post(server, session, "before")]
    own_postgres.stop("fast")
    outage = time.monotonic()
    while time.monotonic() - outage < 10:  # stopped for 10 s: every answer quick, and a 503
        started = time.monotonic()
        status, headers, health = server.call("GET", "/health", timeout=5)
        assert (status, health["database"], headers["Retry-After"]) == (503, "unavailable", "2")
        status, headers, body = server.call("GET", f"/v1/sessions/{session}/messages", timeout=5)
        assert status == 503 and body["error"]["code"] == "UNAVAILABLE" and headers["Retry-After"]
        assert post(server, session, "during") is None
        assert time.monotonic() - started < 5
        gevent.sleep(0.5)
    own_postgres.start()
    wait_until(lambda: server.call("GET", "/health", timeout=5)[0] == 200, 30, "/health ok again")
    acked.append(wait_until(lambda: post(server, session, "after"), 30, "a message stored again"))
    everything_stored(server, [session], acked)
    log = server.output()
    assert log.count("database unavailable") == 1 and log.count("database available again") == 1, log
    assert "Traceback" not in log and len(log.splitlines()) < 40, log
