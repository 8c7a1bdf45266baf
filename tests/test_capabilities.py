"""Capabilities: the seven built-ins with their tools' JSON-schema parameters."""

from conftest import error_of

SEVEN = ["current_time", "test_math", "test_weather", "session_file_system", "web_fetch", "stateless_todo_list", "noop"]


def test_lists_the_seven_builtins(client):
    page = client.get("/v1/capabilities").json
    assert [c["id"] for c in page["data"]] == SEVEN
    assert page["has_more"] is False


def test_tools_have_names_descriptions_and_json_schemas(client):
    caps = {c["id"]: c for c in client.get("/v1/capabilities").json["data"]}
    tools = {c: [t["name"] for t in caps[c]["tools"]] for c in caps}
    assert tools["test_math"] == ["add", "subtract", "multiply", "divide"]
    assert tools["session_file_system"] == [
        "read_file",
        "write_file",
        "list_directory",
        "grep_files",
        "delete_file",
        "stat_file",
    ]
    assert tools["noop"] == [] and tools["web_fetch"] == ["web_fetch"]
    add = caps["test_math"]["tools"][0]
    assert add["parameters"]["type"] == "object" and add["parameters"]["required"] == ["a", "b"]
    forecast = caps["test_weather"]["tools"][1]["parameters"]
    assert forecast["required"] == ["city"] and forecast["properties"]["days"]["type"] == "integer"
    todos = caps["stateless_todo_list"]["tools"][0]["parameters"]
    assert "$defs" in todos or "items" in todos["properties"]["todos"]
    assert all(c["status"] == "available" and c["description"] for c in caps.values())


def test_get_one_and_unknown(client):
    assert client.get("/v1/capabilities/current_time").json["tools"][0]["name"] == "get_current_time"
    error_of(client.get("/v1/capabilities/nope", status="*"), 404, "NOT_FOUND")


def test_pages(client):
    page = client.get("/v1/capabilities?limit=3").json
    assert [c["id"] for c in page["data"]] == SEVEN[:3] and page["next_after"] == "test_weather"
    rest = client.get("/v1/capabilities?after=test_weather").json
    assert [c["id"] for c in rest["data"]] == SEVEN[3:]


def run(name, **arguments):
    """Run a built-in tool directly: (result, is_error)."""
    import everruns

    tool = next(t for c in everruns.CAPABILITIES.values() for t in c.tools if t.name == name)
    return everruns._run_tool(tool, arguments, everruns._ToolContext("s", None, {}))


def test_weather_is_deterministic_per_city():
    oslo, is_error = run("get_weather", city="Oslo")
    assert not is_error and run("get_weather", city="oslo")[0]["temperature_c"] == oslo["temperature_c"]
    assert {k for k in oslo} == {"city", "temperature_c", "conditions", "humidity_pct", "wind_kph"}
    others = {run("get_weather", city=c)[0]["temperature_c"] for c in ("Lima", "Cairo", "Perth", "Quito", "Nuuk")}
    assert len(others) > 1
    forecast = run("get_forecast", city="Oslo", days=5)[0]
    assert [d["day"] for d in forecast["days"]] == [1, 2, 3, 4, 5] and forecast == run(
        "get_forecast", city="Oslo", days=5
    )[0]
    assert run("get_forecast", city="Oslo", days=15)[1] is True
    assert run("get_weather")[1] is True


def test_current_time_zones_and_formats():
    unix, _ = run("get_current_time", format="unix")
    assert isinstance(unix["time"], int) and unix["timezone"] == "UTC"
    human, _ = run("get_current_time", timezone="Europe/Paris", format="human")
    assert "CET" in human["time"] or "CEST" in human["time"]
    bad, is_error = run("get_current_time", timezone="Mars/Olympus")
    assert is_error and "unknown time zone" in bad["error"]
    assert run("get_current_time", format="roman")[1] is True


def test_todos_are_validated_and_returned():
    todos = [{"content": "plan", "status": "completed"}, {"content": "build", "status": "in_progress"}]
    result, is_error = run("write_todos", todos=todos)
    assert not is_error and result["todos"] == todos
    assert result["counts"] == {"pending": 0, "in_progress": 1, "completed": 1}
    assert run("write_todos", todos=[{"content": "x", "status": "someday"}])[1] is True
    assert run("write_todos", todos=[{"content": "", "status": "pending"}])[1] is True


def test_math_tools():
    assert run("add", a=2, b=3) == ({"result": 5}, False)
    assert run("subtract", a=2.5, b=1) == ({"result": 1.5}, False)
    assert run("multiply", a="6", b=7) == ({"result": 42}, False)  # models often send numbers as strings
    assert run("divide", a=1, b=0)[1] is True
    assert run("add", a=1)[1] is True


def test_prompt_additions_only_for_enabled_capabilities(api, client, monkeypatch):
    import everruns

    seen = []
    original = everruns._Llmsim.stream
    monkeypatch.setattr(
        everruns._Llmsim, "stream", lambda self, req, on_text: seen.append(req) or original(self, req, on_text)
    )
    from conftest import finish

    for capabilities in (["session_file_system"], []):
        session = api.session(api.agent(system_prompt="Base.", capabilities=capabilities)["id"])
        api.message(session["id"], "hi", status=201)
        finish(client, session["id"])
    with_fs, without = seen[-2], seen[-1]
    fs_prompt = everruns.CAPABILITIES["session_file_system"].system_prompt
    assert with_fs.system == f"Base.\n\n{fs_prompt}" and without.system == "Base."
    assert [t.name for t in with_fs.tools][:2] == ["read_file", "write_file"] and without.tools == []


def test_a_tool_the_agent_does_not_have_is_an_error_result(api, client, upstream):
    import test_openai as openai
    from conftest import finish, remote_session

    session = remote_session(api, upstream, "openai", capabilities=["test_math"])
    upstream.sse([openai.tool_fragment(0, "call_X", "web_fetch", '{"url": "http://example.com"}'),
                  openai.chunk({}, "tool_calls"), openai.DONE])  # fmt: skip
    upstream.sse(openai.text_answer("I cannot fetch."))
    api.message(session["id"], "fetch it", status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and "no tool named 'web_fetch'" in result["result"]["error"]
    assert events[-1]["data"]["status"] == "completed"


def test_write_todos_through_a_turn(api, client):
    import json

    from conftest import finish

    session = api.session(api.agent(capabilities=["stateless_todo_list"])["id"])
    todos = [{"content": "draft", "status": "completed"}, {"content": "review", "status": "pending"}]
    api.message(session["id"], f"write_todos {json.dumps({'todos': todos})}", status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is False and result["result"]["todos"] == todos
    assert "draft" in events[-2]["data"]["message"]["content"][0]["text"]
