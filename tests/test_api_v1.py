"""The official SDKs' surface (/api/v1, SPEC section 13) with plain HTTP, on every
interpreter: the shapes of everruns-sdk 0.3.1, the stream in its vocabulary, channels,
batch tool results, what is not here (501), over the same data as /v1."""

import gevent
import gevent.event
import pytest
from conftest import CANARY_KEY, DONE, SSEStream, chunk, error_of, finish, wait_until

import everruns

SDK = "/api/v1"
ENDS = ("turn.completed", "turn.failed", "turn.cancelled")


def text(words):
    return {"message": {"role": "user", "content": [{"type": "text", "text": words}]}}


def sdk_agent(client, status=201, **fields):
    return client.post_json(f"{SDK}/agents", {"name": "helper", "system_prompt": "Be brief.", **fields},
                            status=status).json  # fmt: skip


def sdk_session(client, status=201, **fields):
    return client.post_json(f"{SDK}/sessions", fields, status=status).json


def settle(client, session_id):
    """Wait for the session's turns to end; its events in the SDK's vocabulary."""
    finish(client, session_id)
    return client.get(f"{SDK}/sessions/{session_id}/events").json["data"]


def types_of(events):
    return [e["type"] for e in events]


# ---- agents ---------------------------------------------------------------------


def test_an_agent_in_the_sdks_shape_is_the_same_agent_on_v1(client):
    weather = {"name": "get_weather", "description": "Weather of a city.", "type": "client_side",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}  # fmt: skip
    agent = sdk_agent(client, display_name="Helper", description="Helps.", default_model_id="m-1", tags=["x"],
                      capabilities=[{"ref": "current_time"}, {"ref": "current_time", "config": {}}], tools=[weather],
                      initial_files=[{"path": "/workspace/notes.md", "content": "# Notes"}],
                      max_iterations=4)  # fmt: skip
    assert agent["name"] == "helper" and agent["display_name"] == "Helper" and agent["status"] == "active"
    assert agent["harness_id"] == "generic" and agent["default_model_id"] == "m-1" and agent["max_iterations"] == 4
    assert agent["capabilities"] == [{"ref": "current_time", "config": None}]
    assert agent["tools"] == [weather]
    assert agent["initial_files"] == [{"path": "/workspace/notes.md", "content": "# Notes", "encoding": "text",
                                       "is_readonly": False}]  # fmt: skip
    seed = client.get(f"/v1/agents/{agent['id']}").json
    assert seed["capabilities"] == ["current_time"] and seed["model"] == "m-1" and seed["description"] == "Helps."
    assert seed["client_tools"] == [{k: weather[k] for k in ("name", "description", "parameters")}]
    assert client.get(f"{SDK}/agents/{agent['id']}").json == agent
    assert client.get(f"{SDK}/agents/helper").json == agent  # by name too


def test_posting_an_agent_again_updates_it_by_id_or_by_name(client):
    first = sdk_agent(client)
    by_name = sdk_agent(client, status=200, system_prompt="Be long.")
    assert by_name["id"] == first["id"] and by_name["system_prompt"] == "Be long."
    chosen = everruns._uuid7()
    created = sdk_agent(client, id=chosen, name="other")
    assert created["id"] == chosen
    renamed = sdk_agent(client, status=200, id=chosen, name="renamed")
    assert renamed["id"] == chosen and renamed["name"] == "renamed"
    assert [a["name"] for a in client.get(f"{SDK}/agents").json["data"]] == ["renamed", "helper"]


def test_agents_are_listed_searched_copied_and_deleted(client):
    sdk_agent(client, name="Weather Bot", description="Tells the weather.")
    sdk_agent(client, name="calc")
    assert [a["name"] for a in client.get(f"{SDK}/agents?search=weather").json["data"]] == ["Weather Bot"]
    assert [a["name"] for a in client.get(f"{SDK}/agents?search=TELLS").json["data"]] == ["Weather Bot"]
    copy = client.post(f"{SDK}/agents/calc/copy", status=201).json
    again = client.post(f"{SDK}/agents/calc/copy", status=201).json
    assert (copy["name"], again["name"]) == ("calc-copy", "calc-copy-2") and copy["system_prompt"] == "Be brief."
    session = sdk_session(client, agent_id=copy["id"])
    client.delete(f"{SDK}/agents/{copy['id']}", status=204)
    error_of(client.get(f"{SDK}/agents/{copy['id']}", status=404), 404, "NOT_FOUND")
    error_of(client.get(f"{SDK}/sessions/{session['id']}", status=404), 404, "NOT_FOUND")  # its sessions went too
    error_of(client.delete(f"{SDK}/agents/{copy['id']}", status=404), 404, "NOT_FOUND")


@pytest.mark.parametrize("body, code, words", [
    ({"capabilities": [{"ref": "no_such_capability"}]}, 400, "no_such_capability"),
    ({"capabilities": ["current_time"]}, 400, "capabilities"),
    ({"tools": [{"name": "t", "type": "builtin"}]}, 400, "client_side"),
    ({"tools": [{"name": "get_current_time"}], "capabilities": [{"ref": "current_time"}]}, 400, "get_current_time"),
    ({"tools": [{"name": "t"}, {"name": "t"}]}, 400, "twice"),
    ({"initial_files": [{"path": "../x", "content": ""}]}, 400, "path"),
    ({"surprise": 1}, 400, "surprise"),
    ({"harness_id": "deep-research"}, 501, "harness"),
])  # fmt: skip
def test_a_bad_agent_is_refused_and_changes_nothing(client, body, code, words):
    response = client.post_json(f"{SDK}/agents", {"name": "a", "system_prompt": "", **body}, status="*")
    error = error_of(response, code, "NOT_IMPLEMENTED" if code == 501 else "VALIDATION_ERROR")
    assert words in error["message"] + str(error.get("details"))
    assert client.get(f"{SDK}/agents").json["data"] == []


# ---- sessions -------------------------------------------------------------------


def test_sessions_open_with_an_agent_id_a_name_or_none(client):
    agent = sdk_agent(client, default_model_id="m-1")
    by_id = sdk_session(client, agent_id=agent["id"], title="First", tags=["t"], model_id="m-2")
    by_name = sdk_session(client, agent_name="helper")
    assert by_id["agent_id"] == by_name["agent_id"] == agent["id"]
    assert by_id["status"] == "idle" and by_id["harness_id"] == "generic" and by_id["organization_id"]
    assert (by_id["title"], by_id["tags"], by_id["model_id"]) == ("First", ["t"], "m-2")
    assert by_id["usage"] == {"input_tokens": 0, "output_tokens": 0}
    plain, other = sdk_session(client), sdk_session(client, title="Second")
    assert plain["agent_id"] == other["agent_id"] != agent["id"]  # the built-in agent, created once
    generic = client.get(f"{SDK}/agents/{plain['agent_id']}").json
    assert (generic["name"], generic["system_prompt"], generic["capabilities"]) == ("generic", "", [])
    assert client.get(f"/v1/sessions/{by_id['id']}").json["model"] == "m-2"
    listed = client.get(f"{SDK}/sessions?agent_id={agent['id']}").json["data"]
    assert [s["id"] for s in listed] == [by_name["id"], by_id["id"]]
    assert [s["id"] for s in client.get(f"{SDK}/sessions?search=sec").json["data"]] == [other["id"]]
    assert client.get(f"{SDK}/sessions/{by_id['id']}").json == by_id
    client.delete(f"{SDK}/sessions/{by_id['id']}", status=204)
    error_of(client.get(f"{SDK}/sessions/{by_id['id']}", status=404), 404, "NOT_FOUND")


@pytest.mark.parametrize("body, code", [
    ({"agent_id": "0190a000-0000-7000-8000-000000000000"}, 404),
    ({"agent_name": "nobody"}, 404),
    ({"capabilities": [{"ref": "nope"}]}, 400),
    ({"harness_name": "other"}, 501),
    ({"title": 7}, 400),
])  # fmt: skip
def test_a_bad_session_is_refused_and_changes_nothing(client, body, code):
    before = client.get(f"{SDK}/agents").json["data"]
    response = client.post_json(f"{SDK}/sessions", body, status="*")
    error_of(response, code, {400: "VALIDATION_ERROR", 404: "NOT_FOUND", 501: "NOT_IMPLEMENTED"}[code])
    assert client.get(f"{SDK}/sessions").json["data"] == [] and client.get(f"{SDK}/agents").json["data"] == before


def test_a_sessions_capabilities_tools_and_files_come_on_top_of_its_agents(client):
    agent = sdk_agent(client, initial_files=[{"path": "/workspace/a.md", "content": "agent's"},
                                             {"path": "b.md", "content": "agent's"}])  # fmt: skip
    tool = {"name": "get_weather", "description": "Weather.", "parameters": {"type": "object", "properties": {}}}
    session = sdk_session(client, agent_id=agent["id"], capabilities=[{"ref": "test_math"}], tools=[tool],
                          initial_files=[{"path": "/workspace/b.md", "content": "session's"},
                                         {"path": "bin/c.dat", "content": "AAE=", "encoding": "base64"}])  # fmt: skip
    assert session["capabilities"] == [{"ref": "test_math", "config": None}]
    assert session["tools"] == [{"type": "client_side", **tool}]
    files = f"/v1/sessions/{session['id']}/fs"
    assert client.get(f"{files}/a.md").json["content"] == "agent's"
    assert client.get(f"{files}/b.md").json["content"] == "session's"
    assert client.get(f"{files}/bin/c.dat").json["content"] == "AAE="
    assert sdk_session(client, agent_id=agent["id"]) and client.get(f"{files}/b.md").json["content"] == "session's"
    client.post_json(f"{SDK}/sessions/{session['id']}/messages", text('add {"a": 2, "b": 3}'), status=201)
    events = settle(client, session["id"])  # the session's capability, which its agent does not have
    assert types_of(events) == ["input.message", "turn.started", "output.message.completed", "tool.started",
                                "tool.completed", "output.message.completed", "turn.completed"]  # fmt: skip
    client.post_json(f"{SDK}/sessions/{session['id']}/messages", text('get_weather {"city": "Oslo"}'), status=201)
    wait_until(lambda: client.get(f"{SDK}/sessions/{session['id']}").json["status"] == "waitingfortoolresults")
    requested = client.get(f"{SDK}/sessions/{session['id']}/events?types=tool.call_requested").json["data"]
    assert [c["name"] for c in requested[0]["data"]["tool_calls"]] == ["get_weather"]


# ---- messages and tool results ----------------------------------------------------


def test_messages_in_the_sdks_roles_and_parts(client):
    session = sdk_session(client, agent_id=sdk_agent(client, capabilities=[{"ref": "test_math"}])["id"])
    sid = session["id"]
    posted = client.post_json(f"{SDK}/sessions/{sid}/messages", text('add {"a": 2, "b": 3}'), status=201).json
    assert posted["role"] == "user" and posted["session_id"] == sid
    assert posted["content"] == [{"type": "text", "text": 'add {"a": 2, "b": 3}', "id": None, "name": None,
                                  "arguments": None, "tool_call_id": None, "result": None, "error": None}]  # fmt: skip
    settle(client, sid)
    messages = client.get(f"{SDK}/sessions/{sid}/messages").json["data"]
    assert [m["role"] for m in messages] == ["user", "agent", "tool_result", "agent"]
    call = next(p for p in messages[1]["content"] if p["type"] == "tool_call")
    assert call["name"] == "add" and call["arguments"] == {"a": 2, "b": 3}
    (result,) = messages[2]["content"]
    assert (result["type"], result["tool_call_id"], result["result"]) == ("tool_result", call["id"], {"result": 5})
    assert client.get(f"{SDK}/sessions/{sid}").json["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("body", [
    {"message": {"role": "agent", "content": [{"type": "text", "text": "x"}]}},
    {"message": {"role": "user", "content": []}},
    {"message": {"role": "user", "content": [{"type": "image", "url": "x"}]}},
    {"content": "hello"},
])  # fmt: skip
def test_a_bad_message_is_refused_and_changes_nothing(client, body):
    sid = sdk_session(client)["id"]
    error_of(client.post_json(f"{SDK}/sessions/{sid}/messages", body, status=400), 400, "VALIDATION_ERROR")
    assert client.get(f"{SDK}/sessions/{sid}/messages").json["data"] == []


def test_controls_choose_the_model_of_the_turn(api, client, upstream):
    provider = api.provider(base_url=upstream.url + "/v1", api_key=CANARY_KEY, default_model="test-model")
    agent = sdk_agent(client)
    client.patch_json(f"/v1/agents/{agent['id']}", {"provider_id": provider["id"]})
    sid = sdk_session(client, agent_id=agent["id"])["id"]
    upstream.sse([chunk({"content": "ok"}), chunk({}, "stop"), DONE])
    client.post_json(f"{SDK}/sessions/{sid}/messages", {**text("hi"), "controls": {"model_id": "chosen"}}, status=201)
    assert types_of(settle(client, sid))[-1] == "turn.completed"
    assert upstream.requests[0]["json"]["model"] == "chosen"


def client_tool_session(client):
    tool = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    sid = sdk_session(client, agent_id=sdk_agent(client, tools=[tool])["id"])["id"]
    client.post_json(f"{SDK}/sessions/{sid}/messages", text('get_weather {"city": "Paris"}'), status=201)
    wait_until(lambda: client.get(f"{SDK}/sessions/{sid}").json["status"] == "waitingfortoolresults")
    requested = client.get(f"{SDK}/sessions/{sid}/events?types=tool.call_requested").json["data"]
    return sid, requested[0]["data"]["tool_calls"][0]["id"]


def test_client_tool_results_in_a_batch(client):
    sid, call = client_tool_session(client)
    url, answer = f"{SDK}/sessions/{sid}/tool-results", {"tool_call_id": call, "result": {"celsius": 18}}
    for bad, status in [([], 400), ([answer, answer], 400), ([answer, {"tool_call_id": "call_nope"}], 404)]:
        error_of(client.post_json(url, {"tool_results": bad}, status=status), status,
                 "VALIDATION_ERROR" if status == 400 else "NOT_FOUND")  # fmt: skip
    assert client.get(f"{SDK}/sessions/{sid}").json["status"] == "waitingfortoolresults"  # nothing was taken
    assert client.get(f"{SDK}/sessions/{sid}/events?types=tool.completed").json["data"] == []
    assert client.post_json(url, {"tool_results": [answer]}).json == {"accepted": 1, "status": "active"}
    events = settle(client, sid)
    done = next(e for e in events if e["type"] == "tool.completed")["data"]
    assert done["success"] is True and done["result"] == [{"type": "text", "text": '{"celsius":18}'}]
    assert types_of(events)[-1] == "turn.completed"
    again = client.post_json(url, {"tool_results": [{"tool_call_id": call}]}, status=409)
    assert error_of(again, 409, "CONFLICT")["message"] == (
        "Session is not waiting for tool results (current status: idle)"
    )


def test_a_client_tool_error_is_a_failed_tool_completed(client):
    sid, call = client_tool_session(client)
    body = {"tool_results": [{"tool_call_id": call, "error": "the city is unknown"}]}
    client.post_json(f"{SDK}/sessions/{sid}/tool-results", body)
    done = next(e for e in settle(client, sid) if e["type"] == "tool.completed")["data"]
    assert done["success"] is False and done["status"] == "error" and done["error"] == "the city is unknown"


def test_cancel_says_whether_a_turn_was_running(client):
    sid, _ = client_tool_session(client)
    assert client.post(f"{SDK}/sessions/{sid}/cancel").json["status"] == "cancelled"
    assert types_of(settle(client, sid))[-1] == "turn.cancelled"
    assert client.post(f"{SDK}/sessions/{sid}/cancel").json == {"status": "no_op", "message": "No turn was running"}
    error_of(client.post(f"{SDK}/sessions/{everruns._uuid7()}/cancel", status=404), 404, "NOT_FOUND")


# ---- events ---------------------------------------------------------------------


def test_events_as_a_json_list_resume_and_filter(client):
    agent = sdk_agent(client, capabilities=[{"ref": "test_math"}])
    sid = sdk_session(client, agent_id=agent["id"])["id"]
    client.post_json(f"{SDK}/sessions/{sid}/messages", text('add {"a": 2, "b": 3}'), status=201)
    events = settle(client, sid)  # no Accept header: a JSON list, not a stream
    assert all(isinstance(e["id"], str) and e["session_id"] == sid for e in events)
    assert [e["sequence"] for e in events] == sorted(e["sequence"] for e in events)
    turn = events[1]["data"]["turn_id"]
    assert {e["context"]["turn_id"] for e in events[1:]} == {turn}
    assert events[1]["data"]["input_message_id"] == events[0]["data"]["message"]["id"]
    url = f"{SDK}/sessions/{sid}/events"
    assert client.get(f"{url}?since_id={events[2]['id']}").json["data"] == events[3:]
    assert client.get(f"{url}?after_sequence={events[2]['sequence']}").json["data"] == events[3:]
    assert client.get(f"{url}?since_id=unknown").json["data"] == events  # an id it never gave: from the start
    both = client.get(f"{url}?types=tool.started&types=tool.completed").json["data"]
    assert types_of(both) == ["tool.started", "tool.completed"]
    excluded = client.get(f"{url}?exclude=output.message.completed").json["data"]
    assert "output.message.completed" not in types_of(excluded) and len(excluded) == len(events) - 2
    assert client.get(f"{url}?limit=2").json["data"] == events[:2]
    error_of(client.get(f"{url}?after_sequence=-1", status=400), 400, "VALIDATION_ERROR")
    error_of(client.get(f"{SDK}/sessions/{everruns._uuid7()}/events", status=404), 404, "NOT_FOUND")


def test_the_stream_speaks_the_sdks_vocabulary_and_resumes_exactly(client, live):
    sid = sdk_session(client, agent_id=sdk_agent(client, capabilities=[{"ref": "test_math"}])["id"])["id"]
    stream = SSEStream(live.url, f"{SDK}/sessions/{sid}/sse")
    try:
        assert stream.response.getheader("Content-Type") == "text/event-stream"
        first = next(iter(stream))
        assert first["event"] == "connected" and first["data"] == {"status": "connected"}
        client.post_json(f"{SDK}/sessions/{sid}/messages", text('add {"a": 2, "b": 3}'), status=201)
        got = stream.until(lambda data: data.get("type") in ENDS)
    finally:
        stream.close()
    assert all(item["event"] == item["data"]["type"] and item["id"] == item["data"]["id"] for item in got)
    whole = [item["data"] for item in got if item["data"]["sequence"] is not None]
    assert whole == client.get(f"{SDK}/sessions/{sid}/events").json["data"]  # the stored ones, the same
    deltas = [item["data"] for item in got if item["event"] == "output.message.delta"]
    assert deltas and all(isinstance(d["id"], str) and d["sequence"] is None for d in deltas)
    assert deltas[-1]["data"]["accumulated"] == "".join(d["data"]["delta"] for d in deltas)
    for cursor in (f"since_id={whole[3]['id']}", f"after_sequence={whole[3]['sequence']}"):
        resumed = SSEStream(live.url, f"{SDK}/sessions/{sid}/sse?{cursor}")
        try:
            again = resumed.until(lambda data: data.get("type") in ENDS)
        finally:
            resumed.close()
        assert [i["data"] for i in again if i["event"] != "connected"] == whole[4:]
    since_delta = SSEStream(live.url, f"{SDK}/sessions/{sid}/sse?since_id={deltas[0]['id']}")
    try:  # resumed from a delta: what followed the event it came after
        again = since_delta.until(lambda data: data.get("type") in ENDS)
    finally:
        since_delta.close()
    before = next(i for i, item in enumerate(got) if item["event"] == "output.message.delta")
    followed = whole.index(got[before - 1]["data"])  # the stored event the delta came after (tool.completed)
    assert [i["data"] for i in again if i["data"].get("sequence")] == whole[followed + 1 :]


def test_a_stream_that_joins_mid_message_gets_the_whole_text_so_far(api, client, live, upstream):
    provider = api.provider(base_url=upstream.url + "/v1", api_key=CANARY_KEY, default_model="test-model")
    agent = sdk_agent(client)
    client.patch_json(f"/v1/agents/{agent['id']}", {"provider_id": provider["id"]})
    sid = sdk_session(client, agent_id=agent["id"])["id"]
    gate = gevent.event.Event()
    upstream.sse([chunk({"role": "assistant", "content": "Hello"}), chunk({"content": ", wor"}), gate,
                  chunk({"content": "ld"}), chunk({}, "stop"), DONE])  # fmt: skip
    client.post_json(f"{SDK}/sessions/{sid}/messages", text("hi"), status=201)
    wait_until(lambda: client.app.everruns.bus.texts(sid), what="the first deltas")
    stream = SSEStream(live.url, f"{SDK}/sessions/{sid}/sse?types=output.message.delta&types=turn.completed")
    try:
        assert next(iter(stream))["event"] == "connected"
        gate.set()
        got = [i["data"] for i in stream.until(lambda data: data["type"] == "turn.completed")]
    finally:
        stream.close()
    assert [(d["data"]["delta"], d["data"]["accumulated"]) for d in got[:-1]] == [("ld", "Hello, world")]


def test_the_server_says_disconnecting_before_it_closes_a_stream(start_server):
    server = start_server(None)
    agent = server.call("POST", f"{SDK}/agents", {"name": "a", "system_prompt": ""})[2]
    sid = server.call("POST", f"{SDK}/sessions", {"agent_id": agent["id"]})[2]["id"]
    stream = SSEStream(server.url, f"{SDK}/sessions/{sid}/sse")
    try:
        assert next(iter(stream))["event"] == "connected"
        server.stop()
        rest = [i for i in stream.rest() if "data" in i]
    finally:
        stream.close()
    assert rest == [{"id": None, "event": "disconnecting", "data": {"reason": "server_closing", "retry_ms": 1000}}]


def test_an_idle_stream_stays_open_with_comments_and_goes_on_after_a_turn(app, client, live):
    app.everruns.ping_s = 0.05
    sid = sdk_session(client)["id"]
    client.post_json(f"{SDK}/sessions/{sid}/messages", text("one"), status=201)
    settle(client, sid)
    stream = SSEStream(live.url, f"{SDK}/sessions/{sid}/sse?exclude=output.message.delta")
    try:
        items = iter(stream)
        replayed = [next(items)["event"] for _ in range(5)]
        assert replayed == ["connected", "input.message", "turn.started", "output.message.completed", "turn.completed"]
        assert [next(items), next(items)] == [{"comment": "ping"}, {"comment": "ping"}]  # idle, and still open
        client.post_json(f"{SDK}/sessions/{sid}/messages", text("two"), status=201)
        later = stream.until(lambda data: data["type"] == "turn.completed")
    finally:
        stream.close()
    assert [i["event"] for i in later] == replayed[1:]


# ---- channels (AgentClient) ---------------------------------------------------------


def test_a_channel_is_one_agent_behind_a_url(client, live):
    agent = sdk_agent(client, name="bot", display_name="The Bot", description="Answers.")
    channel = f"{SDK}/channels/{agent['id']}"
    assert client.get(channel).json == {"id": agent["id"], "name": "The Bot", "description": "Answers.",
                                        "accepted_input": ["text"], "credentials": [],
                                        "conversation_starters": []}  # fmt: skip
    session = client.post_json(f"{channel}/sessions", {"title": "Chat"}, status=201).json
    assert session["agent_id"] == agent["id"] and session["title"] == "Chat" and session["status"] == "idle"
    assert [s["id"] for s in client.get(f"{channel}/sessions").json["data"]] == [session["id"]]
    stream = SSEStream(live.url, f"{channel}/sessions/{session['id']}/sse?exclude=output.message.delta")
    try:
        message = client.post_json(f"{channel}/sessions/{session['id']}/messages", text("hello"), status=201).json
        got = stream.until(lambda data: data.get("type") in ENDS)
    finally:
        stream.close()
    assert message["role"] == "user"
    answer = next(i["data"] for i in got if i["event"] == "output.message.completed")
    assert answer["data"]["message"]["content"][0]["text"] == "You said: hello"
    listed = client.get(f"{channel}/sessions/{session['id']}/events").json["data"]
    assert types_of(listed) == ["input.message", "turn.started", "output.message.completed", "turn.completed"]
    assert client.post(f"{channel}/sessions/{session['id']}/cancel").json["status"] == "no_op"
    other = sdk_session(client)["id"]  # a session of another agent is not in this channel
    for path in ("", "/events", "/sse"):
        error_of(client.get(f"{channel}/sessions/{other}{path}", status=404), 404, "NOT_FOUND")
    error_of(client.post_json(f"{channel}/sessions/{other}/messages", text("x"), status=404), 404, "NOT_FOUND")
    error_of(client.get(f"{SDK}/channels/{everruns._uuid7()}", status=404), 404, "NOT_FOUND")


def test_a_channel_shows_and_settles_the_calls_that_wait_for_a_person(api, client):
    agent = api.agent(capabilities=["test_math"], require_approval=["add"])
    channel = f"{SDK}/channels/{agent['id']}"
    sid = client.post_json(f"{channel}/sessions", {}, status=201).json["id"]
    client.post_json(f"{channel}/sessions/{sid}/messages", text('add {"a": 2, "b": 3}'), status=201)
    # the call is asked for with its tool.call; the turn waits once its other calls have run (a commit later)
    wait_until(lambda: client.get(f"{channel}/sessions/{sid}").json["status"] == "waitingfortoolresults")
    session = client.get(f"{channel}/sessions/{sid}").json
    (pending,) = session["pending_approvals"]
    assert pending["name"] == "add"
    assert pending["arguments"] == {"a": 2, "b": 3} and session["pending_questions"] == []
    decided = client.post_json(f"{channel}/sessions/{sid}/tool-approvals",
                               {"decisions": [{"tool_call_id": pending["id"], "approved": True}]}).json  # fmt: skip
    assert decided["accepted"] == 1
    events = settle(client, sid)
    assert "tool.approval_requested" in types_of(events) and "tool.approval_resolved" in types_of(events)
    assert next(e for e in events if e["type"] == "tool.completed")["data"]["result"][0]["text"] == '{"result":5}'
    assert client.get(f"{channel}/sessions/{sid}").json["pending_approvals"] == []
    again = {"decisions": [{"tool_call_id": pending["id"], "approved": False}]}
    error_of(client.post_json(f"{channel}/sessions/{sid}/tool-approvals", again, status=409), 409, "CONFLICT")


# ---- what is not here ---------------------------------------------------------------


@pytest.mark.parametrize("method, path, feature", [
    ("GET", "/harnesses", "harnesses"),
    ("POST", "/harnesses", "harnesses"),
    ("GET", "/models", "model catalogue"),
    ("POST", "/budgets", "budgets"),
    ("GET", "/sessions/{sid}/budget-check", "budgets"),
    ("POST", "/workspaces", "workspaces"),
    ("GET", "/memories/m1", "memories"),
    ("GET", "/user/connections", "connections"),
    ("GET", "/agents/{aid}/versions", "agent versions"),
    ("POST", "/agents/{aid}/health-checks", "health checks"),
    ("POST", "/agents/import", "import"),
])  # fmt: skip
def test_what_is_not_here_is_501_naming_it(client, method, path, feature):
    aid = sdk_agent(client)["id"]
    path = path.format(sid=everruns._uuid7(), aid=aid)
    response = client.request(f"{SDK}{path}", method=method, body=b'{"name": "x"}', status="*",
                              headers={"Content-Type": "application/json"})  # fmt: skip
    assert feature in error_of(response, 501, "NOT_IMPLEMENTED")["message"]
    assert [a["id"] for a in client.get(f"{SDK}/agents").json["data"]] == [aid]


def test_an_unknown_path_is_404_and_the_seed_surface_is_unchanged(client):
    error_of(client.get(f"{SDK}/no-such-thing", status=404), 404, "NOT_FOUND")
    seed = client.post_json("/v1/agents", {"name": "a", "capabilities": ["current_time"]}, status=201).json
    assert seed["capabilities"] == ["current_time"] and "harness_id" not in seed
    error_of(client.post_json("/v1/agents", {"name": "a", "capabilities": [{"ref": "current_time"}]}, status=400),
             400, "VALIDATION_ERROR")  # fmt: skip
