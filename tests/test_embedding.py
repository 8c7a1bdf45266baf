"""Embedding (SPEC 14): Python functions as tools, the in-process client, hooks."""

import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Annotated, Literal

import gevent
import gevent.event
import pytest
import webtest
from conftest import ROOT, error_of, finish, health_latencies, wait_until
from pydantic import BaseModel, Field

import everruns

EMBEDDED = ROOT / "tests" / "embedded.py"


class Place(BaseModel):
    building: str
    floor: int = 0


def read_temperature(room: str, unit: Literal["C", "F"] = "C",
                     samples: Annotated[int, Field(ge=1, le=10, description="How many readings to average.")] = 1,
                     place: Place | None = None) -> dict:  # fmt: skip
    """Read the temperature of a room."""
    return {"room": room, "unit": unit, "samples": samples, "building": place.building if place else None}


def tool_events(events):
    return [e for e in events if e["type"] in ("tool.call", "tool.result")]


def result_of(events):
    return next(e["data"] for e in events if e["type"] == "tool.result")


def ask_for(api, client, session_id, text):
    api.message(session_id, text, status=201)
    return finish(client, session_id)


@pytest.fixture
def sensors(make_app):
    """An app with read_temperature in the capability `sensors`, its client, a session."""
    app = make_app()
    app.tool(capability="sensors")(read_temperature)
    client = webtest.TestApp(app)
    agent = client.post_json("/v1/agents", {"name": "d", "capabilities": ["sensors"]}, status=201).json
    session = client.post_json(f"/v1/agents/{agent['id']}/sessions", {}, status=201).json
    return app, client, session["id"]


# ---- Python tools -------------------------------------------------------------


def test_a_function_is_listed_with_the_schema_its_hints_say(sensors):
    _, client, _ = sensors
    capability = client.get("/v1/capabilities/sensors").json
    assert capability["status"] == "available" and capability["category"] == "python"
    (spec,) = capability["tools"]
    assert spec["name"] == "read_temperature" and spec["description"] == "Read the temperature of a room."
    assert spec["parameters"] == {
        "$defs": {
            "Place": {
                "properties": {"building": {"title": "Building", "type": "string"},
                               "floor": {"default": 0, "title": "Floor", "type": "integer"}},
                "required": ["building"], "title": "Place", "type": "object",
            }
        },
        "additionalProperties": False,
        "properties": {
            "room": {"title": "Room", "type": "string"},
            "unit": {"default": "C", "enum": ["C", "F"], "title": "Unit", "type": "string"},
            "samples": {"default": 1, "description": "How many readings to average.", "maximum": 10, "minimum": 1,
                        "title": "Samples", "type": "integer"},
            "place": {"anyOf": [{"$ref": "#/$defs/Place"}, {"type": "null"}], "default": None},
        },
        "required": ["room"],
        "type": "object",
    }  # fmt: skip
    listed = [c["id"] for c in client.get("/v1/capabilities?limit=100").json["data"]]
    assert "sensors" in listed and "current_time" in listed


def test_the_model_calls_it_with_its_arguments_and_its_value_is_the_result(sensors):
    _, client, session_id = sensors
    text = 'read_temperature {"room": "kitchen", "samples": 3, "place": {"building": "B"}}'
    client.post_json(f"/v1/sessions/{session_id}/messages", {"content": text}, status=201)
    events = finish(client, session_id)
    call, result = tool_events(events)
    assert call["data"]["tool_call"]["arguments"] == {"room": "kitchen", "samples": 3, "place": {"building": "B"}}
    assert result["data"]["result"] == {"room": "kitchen", "unit": "C", "samples": 3, "building": "B"}
    assert result["data"]["is_error"] is False and events[-1]["data"]["status"] == "completed"


@pytest.mark.parametrize(
    "arguments, error",
    [('{"unit": "K", "room": "x"}', "unit: Input should be 'C' or 'F'"),
     ('{"unit": "C"}', "room: Field required"),
     ('{"room": "x", "samples": 11}', "samples: Input should be less than or equal to 10"),
     ('{"room": "x", "colour": "red"}', "colour: Extra inputs are not permitted")],
)  # fmt: skip
def test_a_bad_argument_is_an_error_result_and_the_function_is_not_called(make_app, arguments, error):
    calls = []
    app = make_app()

    @app.tool(capability="sensors")
    def read_temperature(room: str, unit: Literal["C", "F"] = "C", samples: Annotated[int, Field(le=10)] = 1):
        calls.append(room)

    client = webtest.TestApp(app)
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["sensors"]).id)
    session.send(f"read_temperature {arguments}")
    result = result_of(finish(client, session.id))
    assert result["is_error"] is True and error in result["result"]["error"] and calls == []


def test_what_a_function_raises_is_an_error_result_with_its_message_and_the_traceback_is_logged(make_app, caplog):
    app = make_app()

    @app.tool(capability="sensors")
    def relay(on: bool) -> str:
        """Switch the relay."""
        if on:
            raise RuntimeError("the relay is stuck")
        raise everruns.ToolFailed("the relay is off already")

    for on, error in ((True, "RuntimeError: the relay is stuck"), (False, "the relay is off already")):
        session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["sensors"]).id)
        with caplog.at_level(logging.ERROR, logger="everruns"):
            session.send(f'relay {{"on": {str(on).lower()}}}')
            result = result_of(finish(webtest.TestApp(app), session.id))
        assert result == {**result, "is_error": True, "result": {"error": error}}
    logged = [r for r in caplog.records if r.getMessage() == "tool relay raised"]
    assert len(logged) == 1 and "the relay is stuck" in str(logged[0].exc_info[1])


def test_a_function_that_hangs_times_out_with_its_own_limit(make_app):
    app = make_app()
    app.tool(capability="slow", name="hang", timeout_s=0.3)(lambda: gevent.sleep(60))
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["slow"]).id)
    started = time.monotonic()
    session.send("hang {}")
    result = result_of(finish(webtest.TestApp(app), session.id))
    assert result["result"] == {"error": "hang timed out after 0.3 s"} and result["is_error"] is True
    assert time.monotonic() - started < 10


def newest(app, session_id):
    """The seq of a session's newest event: a turn started after this reads its events from there."""
    after, client = 0, webtest.TestApp(app)
    while True:
        page = client.get(f"/v1/sessions/{session_id}/events?format=json&limit=100&after={after}").json
        after = page["data"][-1]["seq"] if page["data"] else after
        if not page["has_more"]:
            return after


def test_values_a_function_returns_are_json(make_app):
    @dataclasses.dataclass
    class Reading:
        celsius: float
        note: str | None = None

    app = make_app()
    app.tool(capability="values", name="model")(lambda: Place(building="A"))
    app.tool(capability="values", name="dataclass")(lambda: Reading(21.5))
    app.tool(capability="values", name="large")(lambda: "x" * 300_000)
    app.tool(capability="values", name="not_json")(lambda: object())
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["values"]).id)
    results = {}
    for name in ("model", "dataclass", "large", "not_json"):
        after = newest(app, session.id)
        session.send(f"{name} {{}}")
        results[name] = result_of(finish(webtest.TestApp(app), session.id, after=after))
    assert results["model"]["result"] == {"building": "A", "floor": 0}
    assert results["dataclass"]["result"] == {"celsius": 21.5, "note": None}
    assert results["large"]["result"]["truncated"] is True and len(results["large"]["result"]["preview"]) < 270_000
    error = "not_json returned a object, which JSON cannot carry"
    assert results["not_json"] == {**results["not_json"], "is_error": True, "result": {"error": error}}


def test_a_call_waits_for_approval_then_runs_once(make_app):
    ran = []
    app = make_app()
    app.tool(capability="relay", name="switch")(lambda on: ran.append(on) or {"relay": on})
    agent = app.client.agents.create(name="d", capabilities=["relay"], require_approval=["switch"])
    session = app.client.sessions.create(agent.id)
    session.send('switch {"on": true}')
    wait_until(lambda: session.get().status == "waiting", what="the call to wait for approval")
    assert ran == []
    call = next(e for e in session.stream() if e.type == "tool.approval_requested").data.tool_call
    session.approve(call.id)
    events = finish(webtest.TestApp(app), session.id)
    assert ran == [True] and result_of(events)["result"] == {"relay": True}


def test_cancel_stops_a_running_function_at_its_next_wait(make_app):
    started, finished = gevent.event.Event(), []
    app = make_app()

    @app.tool(capability="slow")
    def crawl() -> str:
        started.set()
        gevent.sleep(30)
        finished.append(True)
        return "done"

    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["slow"]).id)
    session.send("crawl {}")
    assert started.wait(10)
    session.cancel()
    events = finish(webtest.TestApp(app), session.id)
    assert events[-1]["data"]["status"] == "cancelled" and finished == []
    assert result_of(events)["result"] == {"error": "cancelled before the tool ran"}


def test_a_threaded_function_blocking_in_c_leaves_the_server_answering(start_server, tmp_path):
    server = start_server(str(tmp_path / "e.db"), script=EMBEDDED)
    agent = server.call("POST", "/v1/agents", {"name": "d", "capabilities": ["device"]})[2]
    session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]
    server.call("POST", f"/v1/sessions/{session['id']}/messages", {"content": 'block_in_c {"seconds": 3}'})

    def settled():
        return server.call("GET", f"/v1/sessions/{session['id']}")[2]["status"] == "idle"

    latencies = health_latencies(server, settled)
    assert len(latencies) > 5 and max(latencies) < 1.0, latencies
    page = server.call("GET", f"/v1/sessions/{session['id']}/events?format=json&limit=100")[2]
    result = next(e["data"] for e in page["data"] if e["type"] == "tool.result")
    assert result["is_error"] is False and result["result"]["slept"] == 3 and result["duration_ms"] >= 2900


def test_a_function_interrupted_by_kill_9_is_not_run_again(start_server, tmp_path):
    db, marker = str(tmp_path / "e.db"), tmp_path / "marker"
    server = start_server(db, "--marker", str(marker), script=EMBEDDED)
    agent = server.call("POST", "/v1/agents", {"name": "d", "capabilities": ["device"]})[2]
    session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]
    server.call("POST", f"/v1/sessions/{session['id']}/messages", {"content": 'record {"note": "once"}'})
    wait_until(lambda: marker.exists() and marker.read_text() == "once\n", what="the tool to start")
    server.stop(signal.SIGKILL)
    again = start_server(db, "--marker", str(marker), script=EMBEDDED)
    events = list(again.call("GET", f"/v1/sessions/{session['id']}/events?format=json&limit=100")[2]["data"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and events[-1]["data"]["error"]["code"] == "INTERRUPTED"
    assert marker.read_text() == "once\n"
    hooked = f"hook: {events[-1]['turn_id']} failed"  # a hook given to create_app sees what the start stored
    wait_until(lambda: hooked in again.output(), what="the hook of the interrupted turn")


# ---- registration ----------------------------------------------------------------


def test_callables_of_every_kind_are_tools(make_app):
    import functools

    class Counter:
        def __call__(self, step: int = 1) -> int:
            """Count."""
            return step

    def scale(factor: float, value: float) -> float:
        return factor * value

    app = make_app()
    app.tool(capability="kinds", name="double")(functools.partial(scale, 2.0))
    app.tool(capability="kinds", name="count")(Counter())
    tools = {t["name"]: t for t in webtest.TestApp(app).get("/v1/capabilities/kinds").json["tools"]}
    assert list(tools["double"]["parameters"]["properties"]) == ["value"]
    assert tools["count"]["parameters"]["properties"]["step"]["type"] == "integer"
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["kinds"]).id)
    assert session.ask('double {"value": 4}') == "Tool results: double returned 8.0."
    with pytest.raises(TypeError, match="tool call_back: its parameters have no JSON Schema"):
        app.tool(capability="kinds", name="call_back")(_takes_a_callable)


def _takes_a_callable(done: Callable[[], None]) -> None:
    done()


def test_what_cannot_be_a_tool_is_refused_at_registration(make_app):
    app = make_app()

    async def fetch(url: str) -> str:
        return url

    refusals = [
        ("is an async def function", lambda: app.tool(capability="x")(fetch)),
        ("is an async def function", lambda: everruns.tool(fetch)),
        ("no *args", lambda: app.tool(capability="x", name="n")(lambda *values: 0)),
        ("tool name 'bad name'", lambda: app.tool(capability="x", name="bad name")(read_temperature)),
        ("tool name '<lambda>'", lambda: app.tool(capability="x")(lambda: 0)),
        ("is built in", lambda: app.tool(capability="test_math")(read_temperature)),
        ("capability id 'Bad Id'", lambda: app.tool(capability="Bad Id")(read_temperature)),
        ("timeout_s must be above 0", lambda: app.tool(capability="x", timeout_s=0)(read_temperature)),
        ("'add' is taken (capability test_math)", lambda: app.tool(capability="x", name="add")(read_temperature)),
    ]  # fmt: skip
    for expected, register in refusals:
        with pytest.raises((TypeError, ValueError), match=re.escape(expected)):
            register()
    app.tool(capability="x")(read_temperature)
    with pytest.raises(ValueError, match="'read_temperature' is taken"):
        app.tool(capability="y")(read_temperature)
    assert [t["name"] for t in webtest.TestApp(app).get("/v1/capabilities/x").json["tools"]] == ["read_temperature"]
    assert [c["id"] for c in webtest.TestApp(app).get("/v1/capabilities?limit=100").json["data"]][-1] == "x"


def test_create_app_takes_functions_plain_or_marked(make_app):
    @everruns.tool(capability="lights", name="switch", description="Switch the lights.", timeout_s=5)
    def lights(on: bool) -> bool:
        return on

    app = make_app(tools=[read_temperature, lights])
    client = webtest.TestApp(app)
    assert [t["name"] for t in client.get("/v1/capabilities/python").json["tools"]] == ["read_temperature"]
    assert client.get("/v1/capabilities/lights").json["tools"][0]["description"] == "Switch the lights."
    assert lights(True) is True  # marking leaves it a plain function
    with pytest.raises(ValueError, match="is built in"):
        make_app(tools=[everruns.tool(capability="noop", name="nothing")(lambda: None)])


def test_two_apps_in_one_process_never_see_each_others_tools(make_app, tmp_path):
    first, second = make_app(str(tmp_path / "1.db")), make_app(str(tmp_path / "2.db"))
    first.tool(capability="sensors")(read_temperature)
    second.tool(capability="lights", name="switch")(lambda on: on)
    assert "sensors" not in everruns.CAPABILITIES and "lights" not in everruns.CAPABILITIES
    for app, mine, theirs in ((first, "sensors", "lights"), (second, "lights", "sensors")):
        client = webtest.TestApp(app)
        ids = [c["id"] for c in client.get("/v1/capabilities?limit=100").json["data"]]
        assert mine in ids and theirs not in ids
        error_of(client.post_json("/v1/agents", {"name": "a", "capabilities": [theirs]}, status=400), 400,
                 "VALIDATION_ERROR")  # fmt: skip


def test_a_capability_adds_its_system_prompt(make_app, upstream):
    from conftest import DONE, chunk

    app = make_app()
    app.tool(capability="sensors")(read_temperature)
    about = app.capability("sensors", name="Sensors", system_prompt="Temperatures are in Celsius.")
    assert about.name == "Sensors" and about.tools[0].name == "read_temperature"
    provider = app.client.providers.create(name="up", provider_type="openai", base_url=upstream.url + "/v1",
                                           api_key="sk-test", default_model="m")  # fmt: skip
    agent = app.client.agents.create(name="d", provider_id=provider.id, capabilities=["sensors"], system_prompt="Hi.")
    upstream.sse([chunk({"content": "ok"}), chunk({}, "stop"), DONE])
    assert app.client.sessions.create(agent.id).ask("hello", timeout=20) == "ok"
    system = upstream.requests[0]["json"]["messages"][0]
    assert system == {"role": "system", "content": "Hi.\n\nTemperatures are in Celsius."}
    assert [t["function"]["name"] for t in upstream.requests[0]["json"]["tools"]] == ["read_temperature"]


# ---- the in-process client ---------------------------------------------------------


def test_ask_returns_the_answer(make_app):
    app = make_app()
    agent = app.client.agents.create(name="d", capabilities=["test_math"])
    session = app.client.sessions.create(agent.id, title="asked")
    assert session.ask("hello there") == "You said: hello there"
    assert session.ask('add {"a": 2, "b": 3}') == 'Tool results: add returned {"result":5}.'
    assert [m.role for m in session.messages()] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert session.get().title == "asked" and session.get().status == "idle"


def test_ask_raises_turn_failed_with_the_code(make_app):
    app = make_app()
    agent = app.client.agents.create(name="d", capabilities=["test_math"], max_iterations=1)
    session = app.client.sessions.create(agent.id)
    with pytest.raises(everruns.TurnFailed) as failed:
        session.ask('add {"a": 1, "b": 1}')
    assert failed.value.code == "MAX_ITERATIONS" and failed.value.turn_status == "failed"
    assert failed.value.turn_id == session.get().last_turn.id

    slow = app.client.providers.create(name="slow", provider_type="llmsim", settings={"token_delay_ms": 50})
    session = app.client.sessions.create(app.client.agents.create(name="s", provider_id=slow.id).id)

    def cancel_once_running():
        wait_until(lambda: session.get().status == "running", what="the turn to run")
        session.cancel()

    gevent.spawn(cancel_once_running)
    with pytest.raises(everruns.TurnFailed) as cancelled:
        session.ask("word " * 200, timeout=30)
    assert (cancelled.value.code, cancelled.value.turn_status) == ("CANCELLED", "cancelled")
    with pytest.raises(TimeoutError, match=r"no answer within 0\.2 s"):
        session.ask("word " * 200, timeout=0.2)
    assert session.get().status == "running"  # the turn goes on


def test_a_client_tool_is_answered_through_the_client(make_app):
    app = make_app()
    location = {"name": "get_location", "description": "Where the user is.",
                "parameters": {"type": "object", "properties": {}}}  # fmt: skip
    session = app.client.sessions.create(app.client.agents.create(name="d", client_tools=[location]).id)
    answer = gevent.spawn(session.ask, "get_location {}", timeout=30)
    call = next(e for e in session.stream() if e.type == "tool.call").data.tool_call
    assert call.executor == "client"
    wait_until(lambda: session.get().status == "waiting", what="the turn to wait for the client")
    session.tool_result(call.id, {"city": "Lisbon"})
    assert answer.get(timeout=30) == 'Tool results: get_location returned {"city":"Lisbon"}.'


def test_the_client_validates_and_stores_as_the_routes_do(make_app):
    app = make_app()
    client = app.client
    with pytest.raises(everruns.EverrunsError) as bad:
        client.agents.create(name="a", capabilities=["nope"])
    assert (bad.value.status, bad.value.code) == (400, "VALIDATION_ERROR") and "unknown capability" in bad.value.message
    with pytest.raises(everruns.EverrunsError) as missing:
        client.sessions.get("01900000-0000-7000-8000-000000000000")
    assert (missing.value.status, missing.value.code) == (404, "NOT_FOUND")
    agents = [client.agents.create(name=f"a{i}") for i in range(105)]  # more than a page
    assert {a.id for a in client.agents.list()} == {a.id for a in agents}
    over_http = webtest.TestApp(app).get(f"/v1/agents/{agents[0].id}").json
    assert client.agents.get(agents[0].id).model_dump(mode="json") == over_http
    assert client.agents.update(agents[0].id, description="first").description == "first"
    client.agents.delete(agents[1].id)
    assert len(client.agents.list()) == 104
    assert client.capabilities.get("current_time").tools[0].name == "get_current_time"
    provider = client.providers.get(client.providers.list()[0].id)
    assert provider.provider_type == "llmsim"


def test_session_files_through_the_client(make_app):
    app = make_app()
    session = app.client.sessions.create(app.client.agents.create(name="d").id)
    assert session.files.write("/notes/todo.md", "milk").content == "milk"
    assert [e.path for e in session.files.list("/")] == ["/notes"]
    assert session.files.read("/notes/todo.md").content == "milk"
    session.files.mkdir("/empty")
    session.files.delete("/notes", recursive=True)
    assert [e.path for e in session.files.list()] == ["/empty"]
    with pytest.raises(everruns.EverrunsError) as missing:
        session.files.read("/notes/todo.md")
    assert missing.value.status == 404


def test_stream_yields_the_events_as_the_sse_stream_carries_them(make_app):
    app = make_app()
    session = app.client.sessions.create(app.client.agents.create(name="d").id)
    session.send("one two three")
    events = [e for e in session.stream(until="completed") if e.seq is not None]  # stored ones: no delta
    assert [e.seq for e in events] == [1, 2, 3, 4] and events[-1].type == "session.completed"
    over_http = finish(webtest.TestApp(app), session.id)
    assert [e.model_dump(mode="json") for e in events] == over_http
    assert [e.type for e in session.stream(after=2, until="completed")] == ["message.created", "session.completed"]
    live = []
    for event in session.stream():  # stored, then live: the next turn's text streams as it is written
        live.append(event)
        if event.seq == 4:
            session.send("four five")
        if event.type == "session.completed" and event.seq > 4:
            break
    deltas = [e.data.delta for e in live if e.type == "message.delta"]
    assert "".join(deltas) == "You said: four five" and all(e.seq is None for e in live if e.type == "message.delta")
    assert [e.seq for e in live if e.seq is not None] == list(range(1, 9))


def test_a_reader_that_falls_behind_resumes_where_it_was(make_app):
    app = make_app()
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["test_math"]).id)
    seqs, turns_done = [], gevent.event.Event()

    def read_slowly():
        for event in session.stream():
            if event.seq is not None:
                seqs.append(event.seq)
            if len(seqs) == 1:
                turns_done.wait(60)  # stalls after its first event while the turns run

    reader = gevent.spawn(read_slowly)
    gevent.sleep(0)  # the reader subscribes (and waits for a first event, live: there is none stored yet)
    for _ in range(300):  # about 2,400 events: more than a reader's queue holds
        session.send('add {"a": 1, "b": 1}')
    finish(webtest.TestApp(app), session.id)
    turns_done.set()
    stored = newest(app, session.id)
    wait_until(lambda: len(seqs) >= stored, 60, "the slow reader to catch up")
    reader.kill()
    assert stored > 2000 and seqs == list(range(1, stored + 1))


def test_the_client_takes_back_what_it_returned_and_says_what_it_refuses(make_app):
    app = make_app()
    tool = {"name": "locate", "description": "Where.", "parameters": {"type": "object", "properties": {}}}
    agent = app.client.agents.create(name="d", client_tools=[tool])
    assert app.client.agents.update(agent.id, client_tools=agent.client_tools).client_tools == agent.client_tools
    session = app.client.sessions.create(agent.id)
    for refused in (lambda: session.files.write("/", "x"), lambda: session.files.delete("/")):
        with pytest.raises(everruns.EverrunsError, match="the root directory cannot be written or deleted"):
            refused()
    assert session.ask("no limit", timeout=None) == "You said: no limit"


def test_the_client_refuses_another_thread(make_app):
    app = make_app()
    app.tool(capability="t", name="peek", threaded=True)(lambda: app.client.agents.list())
    session = app.client.sessions.create(app.client.agents.create(name="d", capabilities=["t"]).id)
    session.send("peek {}")
    result = result_of(finish(webtest.TestApp(app), session.id))
    assert result["is_error"] and "used from the thread that created the app" in result["result"]["error"]


# ---- hooks -----------------------------------------------------------------------


def test_hooks_see_every_stored_event_once_and_in_order(make_app):
    app = make_app()
    seen, completed = [], []
    app.on("*")(lambda event: seen.append((event.session_id, event.seq, event.type)))
    app.on("session.completed")(lambda event: completed.append(event.data.status))
    sessions = [app.client.sessions.create(app.client.agents.create(name="d", capabilities=["test_math"]).id)
                for _ in range(2)]  # fmt: skip
    for session in sessions:
        session.send('add {"a": 1, "b": 2}')
    for session in sessions:
        session.send("and again")
    for session in sessions:
        finish(webtest.TestApp(app), session.id)
    wait_until(lambda: len(completed) == 4, what="the hooks of four turns")
    for session in sessions:
        stored = webtest.TestApp(app).get(f"/v1/sessions/{session.id}/events?format=json&limit=100").json["data"]
        assert [(s, q, t) for s, q, t in seen if s == session.id] == [(session.id, e["seq"], e["type"]) for e in stored]
    assert completed == ["completed"] * 4


def test_a_raising_or_slow_hook_delays_nothing(make_app, caplog):
    app = make_app()
    release, calls = gevent.event.Event(), []

    @app.on("session.completed")
    def slow(event):
        calls.append(event.seq)
        release.wait(30)

    @app.on("*")
    def broken(event):
        raise ValueError("a broken hook")

    client = webtest.TestApp(app)
    session = app.client.sessions.create(app.client.agents.create(name="d").id)
    with caplog.at_level(logging.ERROR, logger="everruns"):
        for text in ("first", "second"):
            started, after = time.monotonic(), newest(app, session.id)
            session.send(text)
            events = finish(client, session.id, after=after)
            assert events[-1]["type"] == "session.completed" and time.monotonic() - started < 5
    assert len(calls) == 1  # the slow hook still holds the first turn's event; the second waits behind it
    release.set()
    wait_until(lambda: len(calls) == 2, what="the slow hook to see the second turn")
    assert any("hook" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)


@pytest.mark.postgresql
def test_with_several_processes_each_event_has_its_hooks_run_once_where_it_was_stored(make_app):
    apps, seen = [make_app(), make_app()], [[], []]  # two processes' apps on one PostgreSQL database
    for app, out in zip(apps, seen, strict=True):
        app.on("*")(lambda event, out=out: out.append((event.session_id, event.seq)))
    agent = apps[0].client.agents.create(name="d", capabilities=["test_math"])
    sessions = [apps[i % 2].client.sessions.create(agent.id) for i in range(4)]
    for i, session in enumerate(sessions):
        session.send('add {"a": 1, "b": 2}')
        apps[(i + 1) % 2].client.sessions.get(session.id).send("and you?")
    stored = []
    for session in sessions:
        stored += [(session.id, e["seq"]) for e in finish(webtest.TestApp(apps[0]), session.id) if e["seq"]]
    wait_until(lambda: len(seen[0]) + len(seen[1]) >= len(stored), what="the hooks of every stored event")
    assert sorted(seen[0] + seen[1]) == sorted(stored)


def test_a_hook_for_an_event_type_that_is_not_stored_is_refused(make_app):
    app = make_app()
    with pytest.raises(ValueError, match="never stored"):
        app.on("message.delta")(print)
    with pytest.raises(ValueError, match="unknown event type"):
        app.on("turn.completed")(print)


def test_an_unpatched_process_is_told_what_to_do(tmp_path):
    import subprocess
    import sys

    program = (f"import everruns\napp = everruns.create_app({str(tmp_path / 'u.db')!r})\n"
               "try:\n    app.client.agents.list()\nexcept RuntimeError as e:\n    print(e)\n"
               "app.close()\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert "needs a gevent-patched process" in out.stdout, out.stderr


# ---- the README's programs ------------------------------------------------------


def readme_programs():
    """The python blocks of the README's section "Embedding": each a whole program."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Embedding\n") : text.index("## PostgreSQL\n")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", range(len(readme_programs())))
def test_the_readme_embedding_programs_run_as_written(index, tmp_path):
    import subprocess
    import sys

    from conftest import free_port, http

    program = readme_programs()[index]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("EVERRUNS_")}
    env["PYTHONPATH"] = str(ROOT)
    if "everruns.serve(" in program:  # a server: it answers, and stops on SIGTERM
        port = free_port()
        server = subprocess.Popen([sys.executable, "-c", program.replace("9000", str(port))], cwd=tmp_path, env=env)
        try:
            wait_until(lambda: _answers(http, port), 20, "the README's server to answer")
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(15) == 0
        return
    done = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for line in program.splitlines():
        if line.startswith("# prints: "):
            assert line.removeprefix("# prints: ") in done.stdout, done.stdout


def _answers(http, port):
    try:
        return http("GET", f"http://127.0.0.1:{port}/health", timeout=1)[0] == 200
    except OSError:
        return False
