"""OpenAPI: every route documented, and real responses valid against their schemas."""

import json
import re
import subprocess
import sys
import time

import gevent
import jsonschema
import pytest
import webtest
from conftest import finish

import everruns

DOCS = {"/api-doc/openapi.json", "/swagger-ui/", "/swagger-ui/<name>", "/", "/console.css", "/console.js"}


@pytest.fixture
def doc(client):
    return client.get("/api-doc/openapi.json").json


def template_of(rule):
    return re.sub(r"<(\w+)(?::\w+)?>", r"{\1}", rule)


def check(doc, method, template, response):
    """Assert the response's status is documented and its body fits its schema."""
    operation = doc["paths"][template][method.lower()]
    documented = operation["responses"].get(str(response.status_int))
    assert documented, f"{method} {template} answered undocumented {response.status_int}"
    if "content" not in documented:
        assert response.body == b""
        return
    assert response.content_type in documented["content"]
    if response.content_type != "application/json":
        return
    schema = {**documented["content"]["application/json"]["schema"], "components": doc["components"]}
    jsonschema.Draft202012Validator(schema).validate(response.json)


# What the SDK surface answers 501 for (a feature this server does not have): not documented.
MISSING = {everruns.SDK + path for paths in everruns.SDK_MISSING.values() for path in paths}


def test_document_is_openapi_3_1_and_lists_every_route(app, doc):
    assert doc["openapi"].startswith("3.1")
    routes = {(r.method, template_of(r.rule)) for r in app.routes if r.rule not in DOCS | MISSING}
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == documented
    assert "/health" in doc["paths"]


def test_schemas_come_from_the_models(doc):
    schemas = doc["components"]["schemas"]
    assert schemas["AgentCreate"]["additionalProperties"] is False
    assert schemas["AgentCreate"]["properties"]["name"]["maxLength"] == 256
    assert set(schemas["Agent"]["required"]) >= {"id", "name", "capabilities", "created_at"}
    assert "ErrorBody" in schemas


def test_real_responses_match_their_documented_schemas(client, api, doc):
    seen = set()

    def call(method, template, path, **kwargs):
        kwargs.setdefault("status", "*")
        response = getattr(client, method.lower() + ("_json" if "params" in kwargs else ""))(path, **kwargs)
        check(doc, method, template, response)
        seen.add((method, template))
        return response

    call("GET", "/health", "/health")
    call("GET", "/metrics", "/metrics")
    provider = call(
        "POST", "/v1/llm-providers", "/v1/llm-providers", params={"name": "p", "provider_type": "anthropic"}
    ).json
    pid = provider["id"]
    call("GET", "/v1/llm-providers", "/v1/llm-providers")
    call("GET", "/v1/llm-providers/{provider_id}", f"/v1/llm-providers/{pid}")
    call("PATCH", "/v1/llm-providers/{provider_id}", f"/v1/llm-providers/{pid}", params={"name": "q"})
    simulator = api.default_provider()["id"]
    call("GET", "/v1/llm-providers/{provider_id}/models", f"/v1/llm-providers/{simulator}/models")
    call("GET", "/v1/llm-providers/{provider_id}/cassettes", f"/v1/llm-providers/{pid}/cassettes")
    call("DELETE", "/v1/llm-providers/{provider_id}/cassettes", f"/v1/llm-providers/{pid}/cassettes")
    agent = call("POST", "/v1/agents", "/v1/agents", params={"name": "a", "capabilities": ["test_math"]}).json
    aid = agent["id"]
    call("POST", "/v1/agents", "/v1/agents", params={"name": ""})
    call("GET", "/v1/agents", "/v1/agents")
    call("GET", "/v1/agents/{agent_id}", f"/v1/agents/{aid}")
    call("PATCH", "/v1/agents/{agent_id}", f"/v1/agents/{aid}", params={"tags": ["x"]})
    session = call("POST", "/v1/agents/{agent_id}/sessions", f"/v1/agents/{aid}/sessions", params={}).json
    sid = session["id"]
    call("GET", "/v1/agents/{agent_id}/sessions", f"/v1/agents/{aid}/sessions")
    call("GET", "/v1/sessions/{session_id}", f"/v1/sessions/{sid}")
    call("GET", "/v1/sessions/{session_id}/context", f"/v1/sessions/{sid}/context")
    call("PATCH", "/v1/sessions/{session_id}", f"/v1/sessions/{sid}", params={"title": "t"})
    messages = "/v1/sessions/{session_id}/messages"
    call("POST", messages, f"/v1/sessions/{sid}/messages", params={"content": "hi"}, headers={"Idempotency-Key": "a"})
    call("POST", messages, f"/v1/sessions/{sid}/messages", params={"content": "hi"}, headers={"Idempotency-Key": "a"})
    call("POST", messages, f"/v1/sessions/{sid}/messages", params={"content": "ho"}, headers={"Idempotency-Key": "a"})
    call("GET", messages, f"/v1/sessions/{sid}/messages")
    events = "/v1/sessions/{session_id}/events"
    call("GET", events, f"/v1/sessions/{sid}/events?format=json")
    call("GET", events, f"/v1/sessions/{sid}/events?until=completed")
    call("POST", "/v1/sessions/{session_id}/cancel", f"/v1/sessions/{sid}/cancel")
    export = call("GET", "/v1/sessions/{session_id}/export", f"/v1/sessions/{sid}/export").body
    call("GET", "/v1/sessions/{session_id}/export", f"/v1/sessions/{everruns._uuid7()}/export")
    for body in (export, b"not an export"):  # (a body of JSON Lines: not through call's JSON)
        jsonl = {"Content-Type": "application/x-ndjson"}
        check(doc, "POST", "/v1/agents/{agent_id}/sessions/import",
              client.post(f"/v1/agents/{aid}/sessions/import", body, headers=jsonl, status="*"))  # fmt: skip
    seen.add(("POST", "/v1/agents/{agent_id}/sessions/import"))
    careful = call("POST", "/v1/agents", "/v1/agents", params={"name": "c", "capabilities": ["test_math"],
                   "require_approval": ["add"], "client_tools": [{"name": "ping"}]}).json  # fmt: skip
    wid = call("POST", "/v1/agents/{agent_id}/sessions", f"/v1/agents/{careful['id']}/sessions", params={}).json["id"]
    call("POST", messages, f"/v1/sessions/{wid}/messages", params={"content": 'add and ping {"a": 1, "b": 2}'})
    deadline = time.monotonic() + 10
    while client.get(f"/v1/sessions/{wid}").json["status"] != "waiting":
        assert time.monotonic() < deadline
        gevent.sleep(0.02)
    calls = {
        e["data"]["tool_call"]["name"]: e["data"]["tool_call"]["id"]
        for e in client.get(f"/v1/sessions/{wid}/events?format=json").json["data"]
        if e["type"] == "tool.call"
    }

    def decide(call_id):  # unknown, waiting, decided already
        template = "/v1/sessions/{session_id}/tool-calls/{tool_call_id}/approval"
        call("POST", template, f"/v1/sessions/{wid}/tool-calls/{call_id}/approval", params={"approved": True})

    def post_result(call_id, result):  # unknown, too large, waiting, answered already
        template = "/v1/sessions/{session_id}/tool-results"
        call("POST", template, f"/v1/sessions/{wid}/tool-results", params={"tool_call_id": call_id, "result": result})

    for call_id in ("nope", calls["add"], calls["add"]):
        decide(call_id)
    for call_id, result in (("nope", 1), (calls["ping"], "x" * 300_000), (calls["ping"], "pong"), (calls["ping"], 2)):
        post_result(call_id, result)
    fs, base = "/v1/sessions/{session_id}/fs/{path}", f"/v1/sessions/{sid}/fs"
    call("PUT", fs, f"{base}/notes/a.txt", params={"content": "hi"})
    call("PUT", fs, f"{base}/notes/a.txt", params={"content": "aGk=", "encoding": "base64"})
    call("PUT", fs, f"{base}/empty", params={"type": "directory"})
    call("PUT", fs, f"{base}/notes/a.txt/b", params={"content": "under a file"})
    call("GET", "/v1/sessions/{session_id}/fs", base)
    call("GET", fs, f"{base}/notes")
    call("GET", fs, f"{base}/notes/a.txt")
    call("GET", fs, f"{base}/nothing")
    call("DELETE", fs, f"{base}/notes")
    call("DELETE", fs, f"{base}/notes?recursive=true")
    mcp, one = "/v1/mcp-servers", "/v1/mcp-servers/{server_id}"
    dead = {"name": "dead", "url": "https://mcp.example.invalid/mcp"}  # deleted before any listing could start it
    server = call("POST", mcp, mcp, params=dead).json
    call("POST", mcp, mcp, params=dead)
    call("GET", mcp, mcp)
    call("GET", one, f"{mcp}/{server['id']}")
    call("PATCH", one, f"{mcp}/{server['id']}", params={"name": "gone"})
    call("DELETE", one, f"{mcp}/{server['id']}")
    call("DELETE", one, f"{mcp}/{server['id']}")
    call("GET", "/v1/capabilities", "/v1/capabilities")
    call("GET", "/v1/capabilities/{capability_id}", "/v1/capabilities/test_math")
    call("GET", "/v1/capabilities/{capability_id}", "/v1/capabilities/none")
    call("DELETE", "/v1/sessions/{session_id}", f"/v1/sessions/{sid}")
    call("DELETE", "/v1/agents/{agent_id}", f"/v1/agents/{aid}")
    call("DELETE", "/v1/llm-providers/{provider_id}", f"/v1/llm-providers/{pid}")
    call("DELETE", "/v1/llm-providers/{provider_id}", f"/v1/llm-providers/{pid}")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if not p.startswith("/api/")}
    assert seen == documented


def test_the_sdk_surface_answers_as_documented(client, doc):
    """Every /api/v1 route, called as the official SDKs call it, answers what the document says."""
    seen = set()

    def call(method, template, path=None, **kwargs):
        kwargs.setdefault("status", "*")
        path = path or template
        response = getattr(client, method.lower() + ("_json" if "params" in kwargs else ""))(path, **kwargs)
        check(doc, method, template, response)
        seen.add((method, template))
        return response

    sdk = "/api/v1"
    agent = call(
        "POST",
        f"{sdk}/agents",
        params={
            "name": "helper",
            "system_prompt": "Be brief.",
            "tags": [],
            "capabilities": [{"ref": "test_math"}],
            "tools": [],
            "initial_files": [{"path": "/workspace/a.md", "content": "A"}],
        },
    )
    aid = agent.json["id"]
    call("POST", f"{sdk}/agents", params={"name": "helper", "system_prompt": "Be briefer."})  # updated: 200
    call("POST", f"{sdk}/agents", params={"name": "x", "system_prompt": "", "harness_id": "other"})  # 501
    call("GET", f"{sdk}/agents")
    call("GET", f"{sdk}/agents/{{agent}}", f"{sdk}/agents/helper")
    call("POST", f"{sdk}/agents/{{agent}}/copy", f"{sdk}/agents/{aid}/copy", params={})
    session = call("POST", f"{sdk}/sessions", params={"agent_id": aid, "capabilities": [], "tags": [], "tools": []})
    sid = session.json["id"]
    call("POST", f"{sdk}/sessions", params={"agent_name": "nobody"})  # 404
    call("GET", f"{sdk}/sessions")
    call("GET", f"{sdk}/sessions/{{session_id}}", f"{sdk}/sessions/{sid}")
    message = {"message": {"role": "user", "content": [{"type": "text", "text": 'add {"a": 1, "b": 2}'}]}}
    call("POST", f"{sdk}/sessions/{{session_id}}/messages", f"{sdk}/sessions/{sid}/messages", params=message)
    finish(client, sid)
    call("GET", f"{sdk}/sessions/{{session_id}}/messages", f"{sdk}/sessions/{sid}/messages")
    call("GET", f"{sdk}/sessions/{{session_id}}/events", f"{sdk}/sessions/{sid}/events?types=turn.completed")
    call("POST", f"{sdk}/sessions/{{session_id}}/tool-results", f"{sdk}/sessions/{sid}/tool-results",
         params={"tool_results": [{"tool_call_id": "nope", "result": 1}]})  # fmt: skip
    call("POST", f"{sdk}/sessions/{{session_id}}/cancel", f"{sdk}/sessions/{sid}/cancel", params={})
    call("GET", f"{sdk}/capabilities")
    call("GET", f"{sdk}/capabilities/{{capability_id}}", f"{sdk}/capabilities/test_math")
    channel = f"{sdk}/channels/{{agent_id}}"
    call("GET", channel, f"{sdk}/channels/{aid}")
    csid = call("POST", f"{channel}/sessions", f"{sdk}/channels/{aid}/sessions", params={"title": "c"}).json["id"]
    call("GET", f"{channel}/sessions", f"{sdk}/channels/{aid}/sessions")
    call("GET", f"{channel}/sessions/{{session_id}}", f"{sdk}/channels/{aid}/sessions/{csid}")
    call("POST", f"{channel}/sessions/{{session_id}}/messages", f"{sdk}/channels/{aid}/sessions/{csid}/messages",
         params=message)  # fmt: skip
    finish(client, csid)
    call("GET", f"{channel}/sessions/{{session_id}}/events", f"{sdk}/channels/{aid}/sessions/{csid}/events")
    call("POST", f"{channel}/sessions/{{session_id}}/cancel", f"{sdk}/channels/{aid}/sessions/{csid}/cancel")
    call("POST", f"{channel}/sessions/{{session_id}}/tool-approvals",
         f"{sdk}/channels/{aid}/sessions/{csid}/tool-approvals",
         params={"decisions": [{"tool_call_id": "nope", "approved": True}]})  # fmt: skip
    call("DELETE", f"{sdk}/sessions/{{session_id}}", f"{sdk}/sessions/{sid}")
    call("GET", f"{sdk}/sessions/{{session_id}}/sse", f"{sdk}/sessions/{sid}/sse")  # gone: 404 (a stream never ends)
    call("GET", f"{channel}/sessions/{{session_id}}/sse", f"{sdk}/channels/{aid}/sessions/{sid}/sse")
    call("DELETE", f"{sdk}/agents/{{agent}}", f"{sdk}/agents/{aid}")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if p.startswith("/api/")}
    assert seen == documented


def test_401_is_documented_when_a_key_is_set(make_app):
    import webtest

    doc = webtest.TestApp(make_app(api_key="k")).get("/api-doc/openapi.json").json
    assert "bearer" in doc["components"]["securitySchemes"]
    assert "401" in doc["paths"]["/v1/agents"]["get"]["responses"]
    assert "401" not in doc["paths"]["/health"]["get"]["responses"]


def test_swagger_ui_works_offline(client):
    page = client.get("/swagger-ui/")
    assert page.content_type == "text/html"
    assert "http" not in page.text  # nothing from another origin: every file comes from this server
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert "http" not in page.headers["Content-Security-Policy"]
    init = client.get("/swagger-ui/init.js").text
    assert 'url: "/api-doc/openapi.json"' in init
    bundle = client.get("/swagger-ui/swagger-ui-bundle.js")
    assert bundle.content_type == "text/javascript" and b"SwaggerUIBundle" in bundle.body and len(bundle.body) > 100_000
    assert client.get("/swagger-ui/swagger-ui.css").content_type == "text/css"
    client.get("/swagger-ui/../everruns.db", status=404)
    client.get("/swagger-ui/index.html", status=404)


def test_the_document_validates_as_openapi_3_1(make_app):
    from openapi_spec_validator import validate

    for options in ({}, {"api_key": "k"}):
        app = make_app(**options)
        doc = webtest.TestApp(app).get("/api-doc/openapi.json").json
        app.close()
        validate(doc)
        text = json.dumps(doc)
        assert '"ge"' not in text and '"le"' not in text


def test_every_answer_the_server_can_give_is_documented(client):
    doc = client.get("/api-doc/openapi.json").json
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert {"400", "405", "408", "414", "431", "500", "503"} <= set(op["responses"]), (method, path)


def test_a_generated_client_round_trips_a_remote_provider_and_lists_events(tmp_path, start_server):
    server = start_server()
    (tmp_path / "openapi.json").write_text(json.dumps(server.call("GET", "/api-doc/openapi.json")[2]))
    out = str(tmp_path / "everruns_client")
    generate = [sys.executable, "-m", "openapi_python_client", "generate", "--meta", "none",
                "--path", str(tmp_path / "openapi.json"), "--output-path", out]  # fmt: skip
    subprocess.run(generate, check=True, capture_output=True, timeout=120)
    sys.path.insert(0, str(tmp_path))
    try:
        from everruns_client import Client
        from everruns_client.api.events import events
        from everruns_client.api.llm_providers import create_provider, get_provider
        from everruns_client.models import EventsFormat, OpenAIProvider, OpenAIProviderCreate

        client = Client(base_url=server.url, raise_on_unexpected_status=True, timeout=10)
        body = OpenAIProviderCreate.from_dict({"name": "gw", "provider_type": "openai", "settings": {
            "timeout_s": 30, "max_tokens": 100, "extra_headers": {"X-Team": "blue"}}})  # fmt: skip
        created = create_provider.sync(client=client, body=body)
        again = get_provider.sync(client=client, provider_id=created.id)
        assert isinstance(again, OpenAIProvider)
        assert again.settings.to_dict() == {"timeout_s": 30, "max_call_s": 1800, "max_tokens": 100,
                                            "extra_headers": {"X-Team": "blue"}, "context_window": None,
                                            "record": False}  # fmt: skip
        agent = server.call("POST", "/v1/agents", {"name": "a"})[2]
        sid = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
        server.call("POST", f"/v1/sessions/{sid}/messages", {"content": "hi"})
        page = events.sync(client=client, session_id=sid, format_=EventsFormat.JSON)
        assert page.data[0].type_ == "message.created" and page.data[0].seq == 1
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("everruns_client")]:
            del sys.modules[name]


def test_the_document_says_what_the_server_enforces(client):
    doc = client.get("/api-doc/openapi.json").json
    cancel = doc["paths"]["/v1/sessions/{session_id}/cancel"]["post"]["responses"]
    assert {"415", "507"} <= set(cancel)  # a form's content type; a full disk
    schemas = doc["components"]["schemas"]
    headers = schemas["McpServerCreate"]["properties"]["headers"]
    assert headers["propertyNames"]["pattern"] == "^[A-Za-z0-9-]{1,128}$"
    assert schemas["AgentCreate"]["properties"]["name"]["pattern"] == everruns.NO_NUL  # no NUL in any text
    assert schemas["McpServerCreate"]["properties"]["url"]["pattern"] == everruns.URL_PATTERN
    health = doc["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"}
