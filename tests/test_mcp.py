"""Tools from MCP servers (SPEC 12), against a real server built with the official SDK
(tests/mcp_server.py), once over stdio and once over Streamable HTTP on 127.0.0.1."""

import json
import subprocess
import sys
import time

import pytest
import webtest
from conftest import ROOT, Api, finish, free_port, http

import everruns

SERVER = str(ROOT / "tests" / "mcp_server.py")


def serve_http(*answers):
    """The test server over Streamable HTTP; its endpoint's URL, and how to stop it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port), *answers], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 20
    while True:
        try:
            http("GET", url, timeout=1)
            return url, proc
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the MCP test server did not start"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def http_server():
    """Answering with event streams, for the module."""
    url, proc = serve_http()
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def json_http_server():
    """Answering with plain JSON bodies (a server may do either), for the module."""
    url, proc = serve_http("json")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(params=["stdio", "http", "http-json"])
def mcp(request, tmp_path, make_app):
    """An app with the test server as `mcp:t`, over one transport; (client, Api, transport)."""
    if request.param == "stdio":
        server = {"command": sys.executable, "args": [SERVER, "stdio"], "env": {"GREETING": "hi"}}
    else:
        server = {
            "url": request.getfixturevalue({"http": "http_server", "http-json": "json_http_server"}[request.param])
        }
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"t": server}}))
    client = webtest.TestApp(make_app(mcp_config=str(config)))
    return client, Api(client), request.param


def run(api, client, text):
    return run_on(api, client, "mcp:t", text)


def run_on(api, client, capability, text):
    session = api.session(api.agent(capabilities=[capability])["id"])["id"]
    api.message(session, text)
    events = finish(client, session)
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    return events, results


def test_its_tools_are_listed_as_a_capability(mcp):
    client, _, _ = mcp
    capability = client.get("/v1/capabilities/mcp:t").json
    names = [t["name"] for t in capability["tools"]]
    assert names == ["t__echo", "t__add", "t__fail", "t__sleep", "t__exit_server", "t__inject", "t__getenv",
                     "t__flood"]  # 4 pages  # fmt: skip
    assert capability["status"] == "available" and capability["category"] == "mcp"
    echo = capability["tools"][0]
    assert echo["description"] == "Say the text back." and echo["parameters"]["properties"]["text"]["type"] == "string"
    assert "mcp:t" in [c["id"] for c in client.get("/v1/capabilities").json["data"]]


def test_an_agent_calls_its_tools_through_the_simulator(mcp):
    client, api, _ = mcp
    events, results = run(api, client, 't__add {"a": 2, "b": 3}')
    assert results == [{**results[0], "name": "t__add", "result": {"sum": 5}, "is_error": False}]
    answer = [e for e in events if e["type"] == "message.created"][-1]["data"]["message"]["content"][0]["text"]
    assert answer == 'Tool results: t__add returned {"sum":5}.' and events[-1]["data"]["status"] == "completed"
    _, results = run(api, client, 't__echo {"text": "hello there"}')
    assert results[0]["result"] == "hello there"


def test_an_error_result(mcp):
    client, api, _ = mcp
    _, results = run(api, client, 't__fail {"message": "no such thing"}')
    assert results[0]["is_error"] is True and "no such thing" in results[0]["result"]["error"]


def test_a_server_that_hangs_times_out_and_the_turn_goes_on(mcp, monkeypatch):
    client, api, _ = mcp
    monkeypatch.setattr(everruns, "TOOL_TIMEOUT_S", 1.0)
    events, results = run(api, client, 't__sleep {"seconds": 30}')
    assert results[0]["is_error"] is True and "timed out" in results[0]["result"]["error"]
    assert events[-1]["data"]["status"] == "completed"
    _, results = run(api, client, 't__echo {"text": "still here"}')  # the server still answers
    assert results[0]["result"] == "still here"


@pytest.mark.parametrize("mcp", ["stdio"], indirect=True)  # an HTTP server's program is not ours to start
def test_a_stdio_server_that_crashes_mid_call_is_started_again(mcp):
    client, api, _ = mcp
    _, results = run(api, client, "t__exit_server")
    assert results[0]["is_error"] is True and "exited" in results[0]["result"]["error"]
    _, results = run(api, client, 't__echo {"text": "back again"}')
    assert results[0]["result"] == "back again" and results[0]["is_error"] is False


def test_nothing_in_an_answer_injects_events_or_escapes_the_cap(mcp):
    client, api, _ = mcp
    events, results = run(api, client, "t__inject")
    assert [e["type"] for e in events].count("session.completed") == 1
    assert "event: session.completed" in results[0]["result"]  # data, nothing more
    stream = client.get(f"/v1/sessions/{events[0]['session_id']}/events?until=completed").text
    assert stream.split("\n").count("event: session.completed") == 1  # a line of its own: the one event
    _, results = run(api, client, "t__flood")
    assert results[0]["result"]["truncated"] is True
    assert len(json.dumps(results[0]["result"])) < everruns.MAX_TOOL_OUTPUT + 1000


def test_a_server_started_from_mcp_config(tmp_path, start_server):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"t": {"command": sys.executable, "args": [SERVER, "stdio"]}}}))
    server = start_server(None, "--mcp-config", str(config))
    agent = server.call("POST", "/v1/agents", {"name": "a", "capabilities": ["mcp:t"]})[2]
    session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
    server.call("POST", f"/v1/sessions/{session}/messages", {"content": 't__add {"a": 40, "b": 2}'})
    status, _, raw = http("GET", f"{server.url}/v1/sessions/{session}/events?until=completed", timeout=30)
    assert status == 200 and b'"result":{"sum":42}' in raw and b'"status":"completed"' in raw
    assert server.stop() == 0  # its MCP server's program stopped with it


def test_a_config_that_is_not_one_is_refused_at_start(tmp_path):
    bad = tmp_path / "bad.json"
    for text, says in (("{", "cannot be read"), ('{"mcpServers": {"a b": {"command": "x"}}}', "a name is"),
                       ('{"mcpServers": {"a": {"url": "ftp://x"}}}', '"command" (stdio)')):  # fmt: skip
        bad.write_text(text)
        result = subprocess.run([sys.executable, str(ROOT / "everruns.py"), "--db", str(tmp_path / "x.db"),
                                 "--mcp-config", str(bad)], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_an_http_server_added_through_the_api(make_app, http_server, tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"local": {"command": sys.executable, "args": [SERVER, "stdio"]}}}))
    client = webtest.TestApp(make_app(mcp_config=str(config)))
    api = Api(client)
    body = {"name": "remote", "url": http_server, "headers": {"Authorization": "Bearer s3cret-header"}}
    created = client.post_json("/v1/mcp-servers", body, status=201).json
    assert {k: created[k] for k in ("name", "transport", "url", "status", "tools_count", "error")} == {
        "name": "remote", "transport": "http", "url": http_server, "status": "not_started", "tools_count": 0,
        "error": None}  # fmt: skip
    assert "headers" not in created
    assert len(client.get("/v1/capabilities/mcp:remote").json["tools"]) == 8  # listed on first use
    shown = client.get(f"/v1/mcp-servers/{created['id']}").json
    assert (shown["status"], shown["tools_count"]) == ("ready", 8)
    listed = client.get("/v1/mcp-servers").json["data"]
    assert [(s["name"], s["transport"]) for s in listed] == [("local", "stdio"), ("remote", "http")]
    assert "s3cret-header" not in json.dumps(listed)
    _, results = run_on(api, client, "mcp:remote", 'remote__add {"a": 1, "b": 1}')
    assert results[0]["result"] == {"sum": 2}

    client.post_json("/v1/mcp-servers", {**body, "name": "local"}, status=409)  # the file's name
    client.post_json("/v1/mcp-servers", {**body, "name": "Remote"}, status=400)
    client.post_json("/v1/mcp-servers", {"name": "prog", "command": "rm"}, status=400)  # the API starts no program
    stdio = next(s for s in listed if s["transport"] == "stdio")
    client.patch_json(f"/v1/mcp-servers/{stdio['id']}", {"url": http_server}, status=409)
    client.delete(f"/v1/mcp-servers/{stdio['id']}", status=409)

    dead = f"http://127.0.0.1:{free_port()}/mcp"
    client.patch_json(f"/v1/mcp-servers/{created['id']}", {"url": dead})
    assert client.get("/v1/capabilities/mcp:remote").json["status"] == "unavailable"
    broken = client.get(f"/v1/mcp-servers/{created['id']}").json
    assert broken["status"] == "unavailable" and "cannot be reached" in broken["error"]
    _, results = run_on(api, client, "mcp:remote", "remote__add")  # no tools: the model cannot call it
    assert results == []
    client.delete(f"/v1/mcp-servers/{created['id']}", status=204)
    client.get(f"/v1/mcp-servers/{created['id']}", status=404)
    client.get("/v1/capabilities/mcp:remote", status=404)
    client.post_json("/v1/agents", {"name": "a", "capabilities": ["mcp:remote"]}, status=400)


@pytest.mark.parametrize("mcp", ["stdio"], indirect=True)
def test_a_stdio_server_gets_its_env_and_none_of_our_keys(mcp, monkeypatch):
    client, api, _ = mcp
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-mcp-servers")
    monkeypatch.setenv("EVERRUNS_SECRET_KEY", "not-for-them-either")
    client.app.everruns.mcp[0].close()  # started again, with this environment
    _, results = run(api, client, 't__getenv {"name": "OPENAI_API_KEY"}')
    assert results[0]["result"] == ""
    _, results = run(api, client, 't__getenv {"name": "EVERRUNS_SECRET_KEY"}')
    assert results[0]["result"] == ""
    _, results = run(api, client, 't__getenv {"name": "GREETING"}')
    assert results[0]["result"] == "hi"
