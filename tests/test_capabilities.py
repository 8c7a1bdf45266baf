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
