"""Tools from MCP servers (SPEC 12), against a real server built with the official SDK
(tests/mcp_server.py), once over stdio and once over Streamable HTTP on 127.0.0.1."""

import json
import subprocess
import sys
import time

import gevent
import pytest
import webtest
from conftest import ROOT, Api, error_of, finish, free_port, http

import everruns

SERVER = str(ROOT / "tests" / "mcp_server.py")


def serve_http(*answers, transport="http", path="/mcp"):
    """The test server over Streamable HTTP (or HTTP+SSE); its endpoint's URL, and the process."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, SERVER, transport, str(port), *answers], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{path}"
    deadline = time.monotonic() + 20
    while True:
        try:
            http("GET", url.replace("/sse", "/nothing"), timeout=1)
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


@pytest.fixture(scope="module")
def sse_server():
    """The older HTTP+SSE transport, for the module."""
    url, proc = serve_http(transport="sse", path="/sse")
    yield url
    proc.kill()
    proc.wait()


@pytest.fixture(params=["stdio", "http", "http-json", "sse"])
def mcp(request, tmp_path, make_app):
    """An app with the test server as `mcp:t`, over one transport; (client, Api, transport)."""
    if request.param == "stdio":
        server = {"command": sys.executable, "args": [SERVER, "stdio"], "env": {"GREETING": "hi"}}
    elif request.param == "sse":
        server = {"type": "sse", "url": request.getfixturevalue("sse_server")}
    else:
        server = {
            "url": request.getfixturevalue({"http": "http_server", "http-json": "json_http_server"}[request.param])
        }
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"t": server}}))
    client = webtest.TestApp(make_app(mcp_config=str(config)))
    return client, Api(client), request.param


def settled(client, capability_id, timeout=20.0):
    """The capability once its MCP server is no longer starting (listing never waits for it)."""
    deadline = time.monotonic() + timeout
    while (capability := client.get(f"/v1/capabilities/{capability_id}").json)["status"] == "starting":
        assert time.monotonic() < deadline, "the MCP server is still starting"
        gevent.sleep(0.02)
    return capability


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
    assert client.get("/v1/capabilities/mcp:t").json["status"] == "starting"  # never waited for
    capability = settled(client, "mcp:t")
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
    for text, says in (("{", "cannot be read"), ("[]", '"mcpServers" object'),
                       ('{"mcpServers": {"' + "x" * 40 + '": {"command": "x"}}}', "a name is"),
                       ('{"mcpServers": {"GitHub": {"command": "x"}, "github": {"command": "y"}}}', "mcp:github"),
                       ('{"mcpServers": {"a": {"url": "ftp://x"}}}', "http"),
                       ('{"mcpServers": {"a": {"url": "http://[::1/mcp"}}}', "not a valid URL"),
                       ('{"mcpServers": {"a": {"type": "websocket", "url": "http://x"}}}', '"type"')):  # fmt: skip
        bad.write_text(text)
        result = subprocess.run([sys.executable, str(ROOT / "everruns.py"), "--db", str(tmp_path / "x.db"),
                                 "--mcp-config", str(bad)], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_config_written_for_another_host_works_unchanged(tmp_path, make_app, sse_server):
    config = tmp_path / "mcp.json"
    servers = {"GitHub": {"command": sys.executable, "args": [SERVER, "stdio"]},  # named as other hosts name them
               "Old Style": {"type": "sse", "url": sse_server},
               "missing": {"command": "no-such-program-for-mcp"}}  # fmt: skip
    config.write_text(json.dumps({"mcpServers": servers}))
    client = webtest.TestApp(make_app(mcp_config=str(config)))
    assert len(settled(client, "mcp:github")["tools"]) == len(settled(client, "mcp:old-style")["tools"]) == 8
    missing = settled(client, "mcp:missing")
    assert missing["status"] == "unavailable"
    error = next(s for s in client.get("/v1/mcp-servers").json["data"] if s["name"] == "missing")["error"]
    assert "no-such-program-for-mcp" in error  # what could not be started is named


def test_an_http_server_added_through_the_api(make_app, http_server, tmp_path):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"local": {"command": sys.executable, "args": [SERVER, "stdio"]}}}))
    client = webtest.TestApp(make_app(mcp_config=str(config), allow_private_mcp=True))
    api = Api(client)
    body = {"name": "remote", "url": http_server, "headers": {"Authorization": "Bearer s3cret-header"}}
    created = client.post_json("/v1/mcp-servers", {**body, "transport": "http"}, status=201).json
    assert {k: created[k] for k in ("name", "transport", "url", "status", "tools_count", "error")} == {
        "name": "remote", "transport": "http", "url": http_server, "status": "not_started", "tools_count": 0,
        "error": None}  # fmt: skip
    assert "headers" not in created
    assert len(settled(client, "mcp:remote")["tools"]) == 8  # listed on first use
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
    refused = client.post_json("/v1/mcp-servers", {**body, "name": "prog", "transport": "stdio"}, status=400).json
    assert "--mcp-config" in refused["error"]["message"]
    stdio = next(s for s in listed if s["transport"] == "stdio")
    client.patch_json(f"/v1/mcp-servers/{stdio['id']}", {"url": http_server}, status=409)
    client.delete(f"/v1/mcp-servers/{stdio['id']}", status=409)

    dead = f"http://127.0.0.1:{free_port()}/mcp"
    client.patch_json(f"/v1/mcp-servers/{created['id']}", {"url": dead})
    assert settled(client, "mcp:remote")["status"] == "unavailable"
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


# ---- hardening: odd servers, hostile servers, servers that do not start -----------


def scripted(upstream, *calls, tools=({"name": "echo", "inputSchema": {"type": "object"}},), start=None):
    """Script an MCP server on the stand-in (see conftest.Upstream): its start (initialize,
    the initialized notification, one page of tools), then the given tools/call answers."""
    hello = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}}}
    upstream.json(200, start or {"jsonrpc": "2.0", "id": 1, "result": hello})
    if start is None:
        upstream.reply(202)
        upstream.json(200, {"jsonrpc": "2.0", "id": 2, "result": {"tools": list(tools)}})
    for i, answer in enumerate(calls):
        upstream.json(200, {"jsonrpc": "2.0", "id": 3 + i, **answer})


def from_config(tmp_path, make_app, url, **options):
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"s": {"url": url}}}))
    return webtest.TestApp(make_app(mcp_config=str(config), **options))


def test_a_result_that_breaks_the_mcp_schema_is_an_error_result(tmp_path, make_app, upstream):
    scripted(upstream, {"result": {"content": "not a list"}}, {"result": {"content": [1, 2]}}, {"result": {}})
    client = from_config(tmp_path, make_app, upstream.url + "/mcp")
    assert settled(client, "mcp:s")["status"] == "available"
    for _ in range(3):
        _, results = run_on(Api(client), client, "mcp:s", "s__echo")
        assert results[0]["is_error"] is True and "breaks the MCP schema" in results[0]["result"]["error"]


def test_listing_never_waits_on_a_server_that_does_not_start_and_retries_later(tmp_path, make_app, monkeypatch):
    monkeypatch.setattr(everruns, "MCP_START_S", 0.5)
    starts = tmp_path / "starts"
    mute = f"open({str(starts)!r}, 'a').write('x'); import time; time.sleep(60)"  # starts, never answers
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"mute": {"command": sys.executable, "args": ["-c", mute]}}}))
    client = webtest.TestApp(make_app(mcp_config=str(config)))
    began = time.monotonic()
    listed = {c["id"]: c for c in client.get("/v1/capabilities").json["data"]}
    assert time.monotonic() - began < 0.5 and listed["mcp:mute"]["status"] == "starting"
    assert listed["current_time"]["status"] == "available"  # the others are listed meanwhile
    capability = settled(client, "mcp:mute")
    assert capability["status"] == "unavailable" and capability["tools"] == []
    server = client.get("/v1/mcp-servers").json["data"][0]
    assert server["status"] == "unavailable" and "did not start within" in server["error"]
    for _ in range(10):  # looked at again and again within the back-off: not started again
        assert client.get("/v1/capabilities/mcp:mute").json["status"] == "unavailable"
    assert starts.read_text() == "x"
    deadline = time.monotonic() + 10
    while starts.read_text() != "xx":  # after a second, a look starts it again
        assert time.monotonic() < deadline, "not tried again"
        client.get("/v1/capabilities/mcp:mute")
        gevent.sleep(0.1)
    assert settled(client, "mcp:mute")["status"] == "unavailable"
    assert client.app.everruns.mcp[0].backoff == 2.0  # 1 s, doubling (up to 5 min)


def test_mcp_header_values_never_leak_through_what_the_server_says(tmp_path, make_app, upstream, db_path):
    pytest.importorskip("cryptography")
    app = make_app(allow_private_mcp=True, secret_key="s3cret")
    client = webtest.TestApp(app)
    secret, short = "Bearer mcp-header-canary-5e1d", "SHRT123"
    echo = f"you sent authorization: {secret.upper()} and x-key: {short.lower()} (and {secret[:-1]}...)"
    upstream.json(200, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000, "message": echo}})
    body = {"name": "echoer", "url": upstream.url + "/mcp", "headers": {"Authorization": secret, "X-Key": short}}
    created = client.post_json("/v1/mcp-servers", body, status=201).json
    assert settled(client, "mcp:echoer")["status"] == "unavailable"
    server = next(s for s in app.everruns.mcp_api.values() if s.name == "echoer")
    while time.monotonic() < server.retry_at:  # its back-off
        gevent.sleep(0.05)
    scripted(upstream, {"result": {"content": [{"type": "text", "text": echo}], "isError": True}},
             {"result": {"content": [{"type": "text", "text": echo}]}})  # fmt: skip
    assert settled(client, "mcp:echoer")["status"] == "available"
    events = [e for _ in range(2) for e in run_on(Api(client), client, "mcp:echoer", "echoer__echo")[0]]
    said = json.dumps([client.get(f"/v1/mcp-servers/{created['id']}").json, events, body["url"]])
    assert "you sent" in said and "[redacted]" in said
    for leaked in (secret, short, secret[:-1], "mcp-header-canary"):
        assert leaked.lower() not in said.lower()
    assert upstream.requests[0]["headers"]["authorization"] == secret  # sent as it is
    if not db_path.startswith("postgresql"):
        app.everruns.store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    import test_security

    stored = test_security.raw_database(db_path)
    assert b"mcp-header-canary" not in stored and short.encode() not in stored.upper()


PRIVATE = ["http://127.0.0.1:8000/mcp", "http://[::1]:8000/mcp", "http://2130706433/mcp", "http://0x7f000001/mcp",
           "http://10.0.0.8/mcp", "http://169.254.169.254/mcp"]  # fmt: skip


@pytest.mark.parametrize("url", PRIVATE)
def test_mcp_servers_of_the_api_may_not_reach_private_addresses(client, url):
    response = client.post_json("/v1/mcp-servers", {"name": "x", "url": url}, status="*")
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert "refused" in error["message"]
    good = client.post_json("/v1/mcp-servers", {"name": "y", "url": "https://mcp.example.invalid/mcp"}).json
    error_of(client.patch_json(f"/v1/mcp-servers/{good['id']}", {"url": url}, status="*"), 400, "VALIDATION_ERROR")


def test_metadata_addresses_are_refused_even_when_private_ones_are_allowed(make_app):
    client = webtest.TestApp(make_app(allow_private_mcp=True))
    for url in ("http://169.254.169.254/latest", "http://[fe80::1]/mcp", "http://100.100.100.200/mcp"):
        error_of(client.post_json("/v1/mcp-servers", {"name": "m", "url": url}, status="*"), 400, "VALIDATION_ERROR")
    client.post_json("/v1/mcp-servers", {"name": "m", "url": "http://127.0.0.1:8000/mcp"}, status=201)


@pytest.mark.parametrize("url", ["http://[::1/mcp", "http://0:99999/", "http://x.example/é", "http://a b/", "ftp://x/"])
def test_urls_no_server_can_have_are_refused(client, url):
    error_of(client.post_json("/v1/mcp-servers", {"name": "x", "url": url}, status="*"), 400, "VALIDATION_ERROR")
    provider = {"name": "p", "provider_type": "openai", "base_url": url}
    error_of(client.post_json("/v1/llm-providers", provider, status="*"), 400, "VALIDATION_ERROR")


def test_a_name_that_resolves_to_a_private_address_is_refused_when_reached(client, upstream):
    created = client.post_json("/v1/mcp-servers", {"name": "local", "url": f"http://localhost:{upstream.url[17:]}"})
    assert settled(client, "mcp:local")["status"] == "unavailable"
    error = client.get(f"/v1/mcp-servers/{created.json['id']}").json["error"]
    assert "private" in error and "--allow-private-mcp" in error
    assert upstream.requests == []  # nothing was sent there


def test_what_the_api_sees_does_not_tell_a_closed_port_from_an_unreachable_host(make_app, monkeypatch):
    import errno

    failures = {"closed": ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "slow": TimeoutError("timed out"),
                "unreachable": OSError(errno.EHOSTUNREACH, "no route to host")}  # fmt: skip
    monkeypatch.setattr(everruns, "_resolve", lambda host, port: ["93.184.216.34"])  # public: allowed

    def connect(address, port, timeout):
        raise failures[failing.pop()]

    failing = []
    monkeypatch.setattr(everruns, "_connect", connect)
    client = webtest.TestApp(make_app())
    errors = set()
    for name in failures:
        failing.append(name)
        client.post_json("/v1/mcp-servers", {"name": name, "url": f"https://{name}.example.com/mcp"})
        assert settled(client, f"mcp:{name}")["status"] == "unavailable"
        error = next(s for s in client.get("/v1/mcp-servers").json["data"] if s["name"] == name)["error"]
        errors.add(error.replace(name, "NAME"))
    assert errors == {"MCP server NAME cannot be reached"}


def test_the_address_that_was_checked_is_the_one_connected_to(make_app, monkeypatch, http_server):
    port = int(http_server.split(":")[2].split("/")[0])
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])  # a rebinding name: public first, then private
    monkeypatch.setattr(everruns, "_resolve", lambda host, p: next(answers, ["127.0.0.1"]))
    connected = []

    def connect(address, p, timeout):  # the "internet" is the test server on 127.0.0.1
        connected.append(address)
        import socket

        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    monkeypatch.setattr(everruns, "_connect", connect)
    client = webtest.TestApp(make_app())
    client.post_json("/v1/mcp-servers", {"name": "pinned", "url": "http://tools.example.com/mcp"})
    settled(client, "mcp:pinned")
    assert connected[0] == "93.184.216.34"  # the address the check allowed, never a second look-up's


def test_a_stored_server_whose_url_is_unusable_is_listed_unavailable(make_app, db_path):
    app = make_app()
    store = app.everruns.store
    with store.write():  # stored by an older version, which let it in
        ts = "2026-01-01T00:00:00.000Z"
        store.m.McpServer.create(id=everruns._uuid7(), name="old", url="http://[::1/mcp", headers={}, created_at=ts,
                                 updated_at=ts)  # fmt: skip
    app.close()
    client = webtest.TestApp(make_app(db_path))
    assert client.get("/v1/capabilities").status_int == 200
    assert settled(client, "mcp:old")["status"] == "unavailable"
    old = client.get("/v1/mcp-servers").json["data"][0]
    assert old["status"] == "unavailable" and "not a valid URL" in old["error"]


def test_two_apps_in_one_process_never_see_each_others_mcp_servers(make_app, tmp_path, http_server):
    def app_with(name):
        config = tmp_path / f"{name}.json"
        config.write_text(json.dumps({"mcpServers": {name: {"command": sys.executable, "args": [SERVER, "stdio"]}}}))
        return webtest.TestApp(make_app(str(tmp_path / f"{name}.db"), mcp_config=str(config), allow_private_mcp=True))

    one, two = app_with("alpha"), app_with("beta")
    one.post_json("/v1/mcp-servers", {"name": "gamma", "url": http_server}, status=201)  # one's, through the API
    listed = [{c["id"] for c in app.get("/v1/capabilities?limit=100").json["data"]} for app in (one, two)]
    assert {"mcp:alpha", "mcp:gamma"} <= listed[0] and not listed[0] & {"mcp:beta"}
    assert "mcp:beta" in listed[1] and not listed[1] & {"mcp:alpha", "mcp:gamma"}
    two.post_json("/v1/agents", {"name": "a", "capabilities": ["mcp:alpha"]}, status=400)
    one.post_json("/v1/agents", {"name": "a", "capabilities": ["mcp:alpha", "mcp:gamma"]}, status=201)
    assert not {c for c in everruns.CAPABILITIES if c.startswith("mcp:")}  # the built-ins only


def test_an_mcp_request_is_a_span_under_its_tool_span(make_app, tmp_path, collector):
    """With tracing on (SPEC 15): a tools/call is a span under the tool's."""
    config = tmp_path / "mcp.json"
    server = {"command": sys.executable, "args": [SERVER, "stdio"]}
    config.write_text(json.dumps({"mcpServers": {"t": server}}))
    app = make_app(otlp_endpoint=collector.url, mcp_config=str(config))
    client = webtest.TestApp(app)
    api = Api(client)
    session = api.session(api.agent(capabilities=["mcp:t"])["id"])["id"]
    api.message(session, 't__add {"a": 2, "b": 3}')
    assert finish(client, session)[-1]["data"]["status"] == "completed"
    app.close()
    spans = {s["name"]: s for s in collector.spans()}
    tool, request = spans["execute_tool t__add"], spans["tools/call add"]
    assert request["parent"] == tool["span_id"] and tool["parent"] == spans["invoke_agent"]["span_id"]
    assert request["attributes"] == {"mcp.method.name": "tools/call", "gen_ai.tool.name": "add",
                                     "everruns.mcp.server": "t", "network.transport": "pipe"}  # fmt: skip
    assert tool["attributes"]["everruns.capability"] == "mcp:t"
