"""People in the loop (SPEC 11): tool calls that wait for a person's approval, and tools the client runs."""

import dataclasses
import signal
import time

import gevent
import pytest
from conftest import SSEStream, error_of, finish, http, wait_until

import everruns


@pytest.fixture
def counted(monkeypatch):
    """test_math's `add` and `multiply`, counting how often each really runs."""
    runs = []
    capability = everruns.CAPABILITIES["test_math"]

    def counting(tool):
        def run(args, tctx):
            runs.append(tool.name)
            return tool.run(args, tctx)

        return dataclasses.replace(tool, run=run)

    tools = tuple(counting(t) for t in capability.tools)
    monkeypatch.setitem(everruns.CAPABILITIES, "test_math", dataclasses.replace(capability, tools=tools))
    return runs


def wait_for_status(client, session_id, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while (session := client.get(f"/v1/sessions/{session_id}").json)["status"] != status:
        assert time.monotonic() < deadline, f"the session is {session['status']}, not {status}"
        gevent.sleep(0.02)
    return session


def types_of(events):
    return [e["type"] for e in events if e["type"] != "message.delta"]


def asking(api, **fields):
    agent = api.agent(capabilities=["test_math"], require_approval=["add"], **fields)
    return api.session(agent["id"])["id"]


def pending_call(client, session_id):
    events = client.get(f"/v1/sessions/{session_id}/events?format=json&limit=100").json["data"]
    return next(e for e in events if e["type"] == "tool.approval_requested")["data"]["tool_call"]


def decide(client, session_id, call_id, status=200, **body):
    return client.post_json(f"/v1/sessions/{session_id}/tool-calls/{call_id}/approval", body, status=status).json


def test_an_approved_call_runs_once_and_the_turn_goes_on(api, client, counted):
    sid = asking(api)
    api.message(sid, 'add {"a": 2, "b": 3}')
    waiting = wait_for_status(client, sid, "waiting")
    assert waiting["last_turn"]["status"] == "waiting" and counted == []
    runner = client.app.everruns.scheduler
    wait_until_idle = time.monotonic() + 5
    while runner.busy(sid):  # the worker ends once the turn waits: nothing is parked for it
        assert time.monotonic() < wait_until_idle
        gevent.sleep(0.01)
    assert runner.running() == []
    call = pending_call(client, sid)
    assert call["name"] == "add" and call["arguments"] == {"a": 2, "b": 3}
    session = decide(client, sid, call["id"], approved=True)
    assert session["id"] == sid
    events = finish(client, sid)
    assert types_of(events) == ["message.created", "session.started", "message.created", "tool.call",
                                "tool.approval_requested", "tool.approval_resolved", "tool.result", "message.created",
                                "message.created", "session.completed"]  # fmt: skip
    stored_call = next(e for e in events if e["type"] == "tool.call")["data"]["tool_call"]
    assert stored_call == {**call, "approval": "pending"}
    resolved = next(e for e in events if e["type"] == "tool.approval_resolved")["data"]
    assert resolved == {"tool_call_id": call["id"], "approved": True, "reason": None}
    result = next(e for e in events if e["type"] == "tool.result")["data"]
    assert result["is_error"] is False and result["result"] == {"result": 5}
    assert events[-1]["data"]["status"] == "completed" and counted == ["add"]


def test_a_denied_call_never_runs_and_its_result_says_why(api, client, counted):
    sid = asking(api)
    api.message(sid, 'add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    call = pending_call(client, sid)
    decide(client, sid, call["id"], approved=False, reason="not today")
    events = finish(client, sid)
    result = next(e for e in events if e["type"] == "tool.result")["data"]
    assert result["is_error"] is True and "not today" in result["result"]["error"]
    assert events[-1]["data"]["status"] == "completed" and counted == []
    answer = [e for e in events if e["type"] == "message.created"][-1]["data"]["message"]
    assert "add failed with" in answer["content"][0]["text"]


def test_two_calls_in_one_answer_only_one_of_them_waits(api, client, counted):
    sid = asking(api)
    api.message(sid, 'multiply and add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    assert counted == ["multiply"]  # ran at once; add waits
    call = pending_call(client, sid)
    decide(client, sid, call["id"], approved=True)
    events = finish(client, sid)
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert [(r["name"], r["result"]) for r in results] == [("multiply", {"result": 6}), ("add", {"result": 5})]
    assert counted == ["multiply", "add"] and events[-1]["data"]["status"] == "completed"


def test_wrong_and_repeated_decisions(api, client, counted):
    sid = asking(api)
    api.message(sid, 'multiply and add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    call = pending_call(client, sid)
    error_of(client.post_json(f"/v1/sessions/{sid}/tool-calls/call_nope/approval", {"approved": True}, status=404),
             404, "NOT_FOUND")  # fmt: skip
    error_of(client.post_json(f"/v1/sessions/nope/tool-calls/{call['id']}/approval", {"approved": True}, status=404),
             404, "NOT_FOUND")  # fmt: skip
    other = next(e for e in client.get(f"/v1/sessions/{sid}/events?format=json").json["data"]
                 if e["type"] == "tool.call" and e["data"]["tool_call"]["name"] == "multiply")  # fmt: skip
    decide(client, sid, other["data"]["tool_call"]["id"], status=409, approved=True)  # it never waited
    client.post_json(f"/v1/sessions/{sid}/tool-calls/{call['id']}/approval", {"approved": "maybe"}, status=400)
    decide(client, sid, call["id"], approved=False)
    decide(client, sid, call["id"], status=409, approved=True)  # decided already
    events = finish(client, sid)
    assert [e["type"] for e in events].count("tool.approval_resolved") == 1 and counted == ["multiply"]


def test_cancel_while_waiting(api, client, counted):
    sid = asking(api)
    api.message(sid, 'add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    call = pending_call(client, sid)
    cancelled = client.post_json(f"/v1/sessions/{sid}/cancel", {}).json
    assert cancelled["status"] == "idle" and cancelled["cancelled_turn"]["status"] == "cancelled"
    events = finish(client, sid)
    result = next(e for e in events if e["type"] == "tool.result")["data"]
    assert result["tool_call_id"] == call["id"] and result["is_error"] is True
    assert events[-1]["data"]["status"] == "cancelled" and counted == []
    decide(client, sid, call["id"], status=409, approved=True)


def test_a_message_posted_while_waiting_is_answered_afterwards(api, client, counted):
    sid = asking(api)
    api.message(sid, 'add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    api.message(sid, "and then?")
    assert wait_for_status(client, sid, "waiting")["last_turn"]["status"] == "waiting"  # it waits its turn
    decide(client, sid, pending_call(client, sid)["id"], approved=True)
    events = finish(client, sid)
    completed = [e["data"] for e in events if e["type"] == "session.completed"]
    assert [c["status"] for c in completed] == ["completed", "completed"]
    last = [e for e in events if e["type"] == "message.created"][-1]["data"]["message"]
    assert last["content"][0]["text"] == "You said: and then?"


def test_a_waiting_session_blocks_nothing_and_its_stream_stays_open(api, client, live, counted):
    sid = asking(api)
    api.message(sid, 'add {"a": 2, "b": 3}')
    wait_for_status(client, sid, "waiting")
    stream = SSEStream(live.url, f"/v1/sessions/{sid}/events?until=completed")
    other = api.session()["id"]
    api.message(other, "hello")
    assert finish(client, other)[-1]["data"]["status"] == "completed"  # while the first one waits
    got = stream.until(lambda e: e["type"] == "tool.approval_requested")
    assert all(e["event"] != "session.completed" for e in got)
    decide(client, sid, pending_call(client, sid)["id"], approved=True)
    rest = stream.rest()
    assert [e["event"] for e in rest if "event" in e][-1] == "session.completed"
    stream.close()


def test_require_approval_names_tools_of_the_agent(api, client):
    assert api.agent(capabilities=["test_math"], require_approval=["*"])["require_approval"] == ["*"]
    assert api.agent()["require_approval"] == []
    error_of(client.post_json("/v1/agents", {"name": "a", "require_approval": ["add"]}, status=400),
             400, "VALIDATION_ERROR")  # fmt: skip
    agent = api.agent(capabilities=["test_math"], require_approval=["add", "add"])
    assert agent["require_approval"] == ["add"]
    client.patch_json(f"/v1/agents/{agent['id']}", {"capabilities": []}, status=400)  # add would not be a tool
    client.patch_json(f"/v1/agents/{agent['id']}", {"require_approval": ["nope"]}, status=400)
    assert client.get(f"/v1/agents/{agent['id']}").json["require_approval"] == ["add"]


def test_a_waiting_turn_survives_a_kill_and_goes_on_after_the_restart(db_path, start_server):
    server = start_server(db_path)
    agent = server.call("POST", "/v1/agents", {"name": "a", "capabilities": ["test_math"],
                                               "require_approval": ["add"]})[2]  # fmt: skip
    sid = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
    server.call("POST", f"/v1/sessions/{sid}/messages", {"content": 'add {"a": 2, "b": 3}'})
    wait_until(lambda: server.call("GET", f"/v1/sessions/{sid}")[2]["status"] == "waiting", what="the approval")
    server.stop(signal.SIGKILL)
    again = start_server(db_path)
    assert again.call("GET", f"/v1/sessions/{sid}")[2]["status"] == "waiting"  # not INTERRUPTED
    events = again.call("GET", f"/v1/sessions/{sid}/events?format=json")[2]["data"]
    call = next(e for e in events if e["type"] == "tool.approval_requested")["data"]["tool_call"]
    status, _, _ = again.call("POST", f"/v1/sessions/{sid}/tool-calls/{call['id']}/approval", {"approved": True})
    assert status == 200
    status, _, raw = http("GET", again.url + f"/v1/sessions/{sid}/events?until=completed", timeout=20)
    assert status == 200 and b'"status":"completed"' in raw and b'"result":{"result":5}' in raw


LOCATION = {"name": "get_location", "description": "Where the user is.",
            "parameters": {"type": "object", "properties": {"precision": {"type": "string"}}}}  # fmt: skip


def test_a_client_tool_round_trip(api, client):
    agent = api.agent(client_tools=[LOCATION])
    assert agent["client_tools"] == [LOCATION]
    sid = api.session(agent["id"])["id"]
    api.message(sid, 'get_location {"precision": "city"}')
    wait_for_status(client, sid, "waiting")
    events = client.get(f"/v1/sessions/{sid}/events?format=json").json["data"]
    call = next(e for e in events if e["type"] == "tool.call")["data"]["tool_call"]
    assert call["executor"] == "client" and call["name"] == "get_location"
    assert call["arguments"] == {"precision": "city"}
    session = client.post_json(f"/v1/sessions/{sid}/tool-results",
                               {"tool_call_id": call["id"], "result": {"city": "Lisbon"}}).json  # fmt: skip
    assert session["id"] == sid
    events = finish(client, sid)
    result = next(e for e in events if e["type"] == "tool.result")["data"]
    assert result["result"] == {"city": "Lisbon"} and result["is_error"] is False
    answer = [e for e in events if e["type"] == "message.created"][-1]["data"]["message"]
    assert "Lisbon" in answer["content"][0]["text"] and events[-1]["data"]["status"] == "completed"


def test_client_tool_results_that_do_not_fit(api, client, counted):
    agent = api.agent(capabilities=["test_math"], require_approval=["add"], client_tools=[LOCATION])
    sid = api.session(agent["id"])["id"]
    api.message(sid, 'get_location and add {"a": 1, "b": 2}')
    wait_for_status(client, sid, "waiting")
    events = client.get(f"/v1/sessions/{sid}/events?format=json").json["data"]
    calls = {e["data"]["tool_call"]["name"]: e["data"]["tool_call"] for e in events if e["type"] == "tool.call"}
    post = f"/v1/sessions/{sid}/tool-results"
    error_of(client.post_json(post, {"tool_call_id": "nope", "result": 1}, status=404), 404, "NOT_FOUND")
    error_of(client.post_json(post, {"tool_call_id": calls["add"]["id"], "result": 1}, status=409), 409, "CONFLICT")
    decide(client, sid, calls["get_location"]["id"], status=409, approved=True)  # the client answers, not a person
    big = {"tool_call_id": calls["get_location"]["id"], "result": "x" * (300 * 1024)}
    client.post_json(post, big, status=413)
    client.post_json(post, {"tool_call_id": calls["get_location"]["id"], "result": "no GPS", "is_error": True})
    client.post_json(post, {"tool_call_id": calls["get_location"]["id"], "result": 2}, status=409)
    assert wait_for_status(client, sid, "waiting")  # add still waits for a person
    decide(client, sid, calls["add"]["id"], approved=True)
    events = finish(client, sid)
    results = {e["data"]["name"]: e["data"] for e in events if e["type"] == "tool.result"}
    assert results["get_location"]["is_error"] is True and results["get_location"]["result"] == "no GPS"
    assert results["add"]["result"] == {"result": 3} and counted == ["add"]


def test_client_tools_are_checked(api, client):
    def refused(*tools, capabilities=()):
        body = {"name": "a", "capabilities": list(capabilities), "client_tools": list(tools)}
        return client.post_json("/v1/agents", body, status=400).json["error"]

    assert "capabilities" in refused({**LOCATION, "name": "add"}, capabilities=["test_math"])["details"][0]["msg"]
    refused(LOCATION, LOCATION)  # twice
    refused({**LOCATION, "parameters": {"type": "string"}})
    refused({**LOCATION, "parameters": {"type": "object", "properties": {"x": 1}}})
    refused({**LOCATION, "name": "no spaces allowed"})
    agent = api.agent(client_tools=[{"name": "ping"}])
    empty = {"type": "object", "properties": {}}
    assert agent["client_tools"] == [{"name": "ping", "description": "", "parameters": empty}]
    client.patch_json(f"/v1/agents/{agent['id']}", {"client_tools": [{**LOCATION, "name": "add"}],
                                                    "capabilities": ["test_math"]}, status=400)  # fmt: skip
    changed = client.patch_json(f"/v1/agents/{agent['id']}", {"client_tools": [LOCATION]}).json
    assert changed["client_tools"] == [LOCATION]
