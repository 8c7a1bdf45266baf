"""What only PostgreSQL does: turns stopped in the middle of a query (cancel, delete,
a tool's timeout) leave every connection usable and no query running on the server."""

import dataclasses

import gevent
import pytest
import webtest
from conftest import Api, another_connection, finish

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
