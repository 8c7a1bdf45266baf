"""Observability (SPEC 15): GET /metrics in the Prometheus text format, OpenTelemetry
traces sent with OTLP/HTTP to a receiver on 127.0.0.1, request ids and JSON log lines."""

import json
import socket
import subprocess
import sys
import time

import gevent
import gevent.event
import pytest
import webtest
from conftest import CANARY_KEY, DONE, ROOT, Api, chunk, error_of, finish, free_port, remote_session, wait_until
from prometheus_client.parser import text_string_to_metric_families

import everruns


def usage(prompt, completion):
    return chunk(usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})


def text_answer(text, prompt, completion):
    return [chunk({"role": "assistant", "content": ""}), chunk({"content": text}), chunk({}, "stop"),
            usage(prompt, completion), DONE]  # fmt: skip


def tool_answer(call_id, name, arguments, prompt, completion):
    call = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return [chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [call]}), chunk({}, "tool_calls"),
            usage(prompt, completion), DONE]  # fmt: skip


def scrape(client, **kwargs):
    """GET /metrics parsed by prometheus-client's own parser: {(sample name, labels): value}
    (without the `instance` label, which every series has on PostgreSQL and none on SQLite)."""
    response = client.get("/metrics", **kwargs)
    assert response.content_type == "text/plain" and "version=0.0.4" in response.headers["Content-Type"]
    postgres = client.get("/health").json["backend"] == "postgresql"
    instance = client.get("/health").json["instance"] if postgres else None
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("instance", None) == instance
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0)


# ---- metrics -----------------------------------------------------------------


def test_metrics_count_a_known_workload_exactly(api, client, upstream):
    session = remote_session(api, upstream, "openai", capabilities=["test_math"])["id"]
    messages = f"/v1/sessions/{session}/messages"
    upstream.sse(tool_answer("call_1", "add", '{"a": 2, "b": 3}', 50, 20))  # a tool that works
    upstream.sse(text_answer("5.", 80, 4))
    api.message(session, "What is 2 + 3?", status=201)
    finish(client, session)
    upstream.sse(tool_answer("call_2", "add", '{"a": "two"}', 30, 10))  # a tool that fails: bad arguments
    upstream.sse(text_answer("Sorry.", 40, 2))
    api.message(session, "Add two", status=201)
    finish(client, session)
    upstream.json(400, {"error": {"message": "bad request", "type": "invalid_request_error"}})  # a failed call
    api.message(session, "Fail", status=201)
    assert finish(client, session)[-1]["data"]["status"] == "failed"
    gate = gevent.event.Event()
    upstream.sse([chunk({"role": "assistant", "content": ""}), chunk({"content": "Wait"}), gate, DONE])
    api.message(session, "Take your time", status=201)
    wait_until(lambda: len(upstream.requests) == 6, what="the fourth turn's call")
    client.post(f"/v1/sessions/{session}/cancel")
    gate.set()
    assert finish(client, session)[-1]["data"]["status"] == "cancelled"

    samples = scrape(client)
    counts = {status: value(samples, "everruns_turns_total", status=status) for status in ("completed", "failed",
                                                                                           "cancelled")}  # fmt: skip
    assert counts == {"completed": 2, "failed": 1, "cancelled": 1}
    assert value(samples, "everruns_turn_duration_seconds_count") == 4
    calls = {o: value(samples, "everruns_model_calls_total", provider_type="openai", outcome=o) for o in
             ("ok", "error", "cancelled")}  # fmt: skip
    assert calls == {"ok": 4, "error": 1, "cancelled": 1}
    tokens = {d: value(samples, "everruns_tokens_total", provider_type="openai", direction=d) for d in
              ("input", "output")}  # fmt: skip
    assert tokens == {"input": 50 + 80 + 30 + 40, "output": 20 + 4 + 10 + 2}
    tools = {o: value(samples, "everruns_tool_calls_total", capability="test_math", outcome=o) for o in ("ok", "error")}
    assert tools == {"ok": 1, "error": 1}
    assert value(samples, "everruns_tool_duration_seconds_count", capability="test_math") == 2
    assert value(samples, "everruns_time_to_first_token_seconds_count") == 3  # the calls that streamed text
    route = "/v1/sessions/{session_id}/messages"
    assert value(samples, "everruns_http_requests_total", route=route, status="201") == 4
    assert value(samples, "everruns_http_requests_total", route="/v1/sessions/{session_id}/cancel", status="200") == 1
    assert value(samples, "everruns_db_write_seconds_count") > 10
    gauges = [value(samples, name) for name in ("everruns_streams_open", "everruns_turns_running",
                                                 "everruns_turns_waiting", "everruns_messages_queued")]  # fmt: skip
    assert gauges == [0, 0, 0, 0]
    assert messages not in client.get("/metrics").text  # paths are never labels, templates are


def test_the_gauges_follow_streams_waiting_turns_and_queued_messages(api, client, app, live):
    agent = api.agent(client_tools=[{"name": "get_location", "description": "Where the user is.",
                                     "parameters": {"type": "object", "properties": {}}}])  # fmt: skip
    waiting = api.session(agent["id"])["id"]
    api.message(waiting, "get_location {}", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{waiting}").json["status"] == "waiting", what="a waiting turn")
    api.message(waiting, "and then?", status=201)  # queued behind the waiting turn
    stream = socket.create_connection(("127.0.0.1", live.server_port))
    stream.sendall(f"GET /v1/sessions/{waiting}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert stream.recv(4096).startswith(b"HTTP/1.1 200")
    samples = scrape(client)
    assert value(samples, "everruns_turns_waiting") == 1 and value(samples, "everruns_messages_queued") == 1
    assert value(samples, "everruns_streams_open") == 1
    stream.close()
    wait_until(lambda: value(scrape(client), "everruns_streams_open") == 0, what="the stream to close")


@pytest.mark.slow  # (run once, not on every interpreter)
def test_the_series_do_not_grow_with_what_clients_send(api, client):
    """Model names in controls and client tool names are never label values."""

    def run(i):
        tool = {"name": f"client_tool_{i}", "description": "A tool the client runs.",
                "parameters": {"type": "object", "properties": {}}}  # fmt: skip
        session = api.session(api.agent(client_tools=[tool])["id"])["id"]
        body = {"content": f"client_tool_{i} {{}}", "controls": {"model": f"made-up-model-{i}"}}
        client.post_json(f"/v1/sessions/{session}/messages", body, status=201)
        wait_until(lambda: client.get(f"/v1/sessions/{session}").json["status"] == "waiting", what="the call")
        call = client.get(f"/v1/sessions/{session}/events?format=json&types=tool.call").json["data"][0]
        result = {"tool_call_id": call["data"]["tool_call"]["id"], "result": {"ok": i}}
        client.post_json(f"/v1/sessions/{session}/tool-results", result)
        finish(client, session)

    def plain(i):
        session = api.session(api.agent()["id"])["id"]
        body = {"content": "hello", "controls": {"model": f"another-model-{i}"}}
        client.post_json(f"/v1/sessions/{session}/messages", body, status=201)
        return session

    run(0)
    finish(client, plain(0))
    scrape(client)  # (a scrape counts itself: the second one has every series)
    before = set(scrape(client))
    for i in range(1, 100):
        run(i)
    sessions = [plain(i) for i in range(1, 1000)]
    for session in sessions:
        finish(client, session)
    samples = scrape(client)
    assert set(samples) == before
    assert value(samples, "everruns_tool_calls_total", capability="client", outcome="ok") == 100
    assert value(samples, "everruns_turns_total", status="completed") == 1100
    assert not [key for key in samples if any("made-up" in v or "client_tool_" in v for _, v in key[1])]


def test_metrics_are_open_by_default_and_behind_the_key_when_asked(make_app):
    open_ = webtest.TestApp(make_app(api_key="k-123"))
    open_.get("/metrics", status=200)
    error_of(open_.get("/v1/agents", status=401), 401, "UNAUTHORIZED")
    guarded = webtest.TestApp(make_app(db=":memory:", api_key="k-123", metrics_auth=True))
    error_of(guarded.get("/metrics", status=401), 401, "UNAUTHORIZED")
    samples = scrape(guarded, headers={"Authorization": "Bearer k-123"})
    assert value(samples, "everruns_http_requests_total", route="/metrics", status="401") == 1
    with pytest.raises(everruns.StartupError, match="--metrics-auth needs --api-key"):
        make_app(db=":memory:", metrics_auth=True)


# ---- request ids -------------------------------------------------------------


def test_every_response_carries_a_request_id(client, api, live):
    given = "req-42.abc_DEF"
    assert client.get("/health", headers={"X-Request-Id": given}).headers["X-Request-Id"] == given
    for bad in ("", "x" * 129, "has space", "naïve", "semi;colon"):
        made = client.get("/v1/agents", headers={"X-Request-Id": bad}).headers["X-Request-Id"]
        assert made != bad and len(made) == 32 and int(made, 16) >= 0
    first, second = (client.get("/v1/agents").headers["X-Request-Id"] for _ in range(2))
    assert first != second
    assert client.get("/nowhere", status=404, headers={"X-Request-Id": given}).headers["X-Request-Id"] == given
    refused = client.get("/v1/agents", headers={"Host": "evil.example", "X-Request-Id": given}, status=403)
    assert refused.headers["X-Request-Id"] == given
    session = api.session()["id"]
    with socket.create_connection(("127.0.0.1", live.server_port)) as s:  # a stream's headers have it too
        s.sendall(f"GET /v1/sessions/{session}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: {given}\r\n\r\n"
                  .encode())  # fmt: skip
        assert f"X-Request-Id: {given}\r\n".encode() in s.recv(4096)
    with socket.create_connection(("127.0.0.1", live.server_port)) as s:  # one the HTTP server refuses itself
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400") and b"\r\nX-Request-Id: " in answer


# ---- traces ------------------------------------------------------------------


ERROR = 2  # Status.STATUS_CODE_ERROR


def traced_tool_turn(make_app, upstream, collector, **options):
    """A tool turn against the OpenAI stand-in with tracing on; (spans, its events, the session)."""
    app = make_app(otlp_endpoint=collector.url, **options)
    client = webtest.TestApp(app)
    api = Api(client)
    session = remote_session(api, upstream, "openai", capabilities=["test_math"])["id"]
    upstream.sse(tool_answer("call_Qx1", "add", '{"a": 2, "b": 3}', 50, 20))
    upstream.sse(text_answer("It is 5.", 80, 4))
    api.message(session, "What is two plus three?", status=201)
    events = finish(client, session)
    got = client.get(f"/v1/sessions/{session}").json
    app.close()  # sends what is queued
    return collector.spans(), events, got


def test_a_tool_turn_is_a_turn_span_with_model_and_tool_spans(make_app, upstream, collector):
    spans, events, session = traced_tool_turn(make_app, upstream, collector)
    assert set(collector.paths) == {"/v1/traces"}
    turn = next(s for s in spans if s["name"] == "invoke_agent")
    assert [s["name"] for s in spans if s["parent"] == turn["span_id"]] == ["chat test-model", "execute_tool add",
                                                                             "chat test-model"]  # fmt: skip
    assert len(spans) == 4 and turn["parent"] == "" and {s["trace_id"] for s in spans} == {turn["trace_id"]}
    completed = events[-1]["data"]
    assert completed["trace_id"] == turn["trace_id"] == session["last_turn"]["trace_id"]
    assert turn["attributes"] == {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": session["id"],
        "gen_ai.provider.name": "openai", "gen_ai.request.model": "test-model",
        "everruns.turn.id": completed["turn_id"], "everruns.turn.status": "completed",
        "gen_ai.usage.input_tokens": 130, "gen_ai.usage.output_tokens": 24,
    }  # fmt: skip
    calls = [s for s in spans if s["name"] == "chat test-model"]
    assert [c["attributes"]["gen_ai.usage.input_tokens"] for c in calls] == [50, 80]
    assert calls[0]["attributes"] == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "test-model",
        "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 20,
        "gen_ai.response.finish_reasons": ["tool_calls"],
    }  # fmt: skip
    assert {c["kind"] for c in calls} == {3}  # SPAN_KIND_CLIENT
    tool = next(s for s in spans if s["name"] == "execute_tool add")
    assert tool["attributes"] == {
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "add", "gen_ai.tool.call.id": "call_Qx1",
        "gen_ai.tool.type": "function", "everruns.capability": "test_math",
    }  # fmt: skip
    assert {s["status"] for s in spans} == {0} and {s["service"] for s in spans} == {"everruns"}
    raw = b"".join(collector.bodies)
    for text in (b"two plus three", b"It is 5.", b"Be brief.", b'"a"'):  # no conversation in spans by default
        assert text not in raw


def test_spans_carry_the_conversation_when_asked(make_app, upstream, collector):
    spans, _, _ = traced_tool_turn(make_app, upstream, collector, otel_capture_content=True)
    first, second = (s["attributes"] for s in spans if s["name"] == "chat test-model")
    assert first["gen_ai.system_instructions"].startswith("Be brief.")
    assert json.loads(first["gen_ai.input.messages"])[-1]["text"] == "What is two plus three?"
    assert json.loads(second["gen_ai.output.messages"])[0]["text"] == "It is 5."
    tool = next(s for s in spans if s["name"] == "execute_tool add")["attributes"]
    assert json.loads(tool["gen_ai.tool.call.arguments"]) == {"a": 2, "b": 3}
    assert json.loads(tool["gen_ai.tool.call.result"]) == {"result": 5}


def test_a_failed_provider_call_marks_its_span_and_the_turn_as_errors(make_app, upstream, collector):
    app = make_app(otlp_endpoint=collector.url)
    client = webtest.TestApp(app)
    api = Api(client)
    session = remote_session(api, upstream, "openai")["id"]
    upstream.json(401, {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}", "type": "invalid_request"}})
    api.message(session, "hello", status=201)
    completed = finish(client, session)[-1]["data"]
    app.close()
    spans = collector.spans()
    call = next(s for s in spans if s["name"] == "chat test-model")
    turn = next(s for s in spans if s["name"] == "invoke_agent")
    assert call["status"] == turn["status"] == ERROR and call["parent"] == turn["span_id"]
    assert call["attributes"]["error.type"] == turn["attributes"]["error.type"] == completed["error"]["code"]
    assert turn["trace_id"] == completed["trace_id"]
    assert CANARY_KEY.encode() not in b"".join(collector.bodies)


def test_a_turn_that_waits_for_a_person_stays_one_trace(make_app, collector):
    app = make_app(otlp_endpoint=collector.url)
    client = webtest.TestApp(app)
    api = Api(client)
    session = api.session(api.agent(capabilities=["test_math"], require_approval=["add"])["id"])["id"]
    api.message(session, 'add {"a": 1, "b": 2}')
    wait_until(lambda: client.get(f"/v1/sessions/{session}").json["status"] == "waiting", what="the approval")
    waiting = client.get(f"/v1/sessions/{session}").json["last_turn"]
    call = client.get(f"/v1/sessions/{session}/events?format=json&types=tool.call").json["data"][0]["data"]
    client.post_json(f"/v1/sessions/{session}/tool-calls/{call['tool_call']['id']}/approval", {"approved": True})
    completed = finish(client, session)[-1]["data"]
    app.close()
    first, then = sorted((s for s in collector.spans() if s["name"] == "invoke_agent"),
                         key=lambda s: "everruns.turn.resumed" in s["attributes"])  # fmt: skip
    assert first["attributes"]["everruns.turn.status"] == "waiting" and first["parent"] == ""
    assert then["attributes"]["everruns.turn.status"] == "completed" and then["parent"] == first["span_id"]
    assert waiting["trace_id"] == completed["trace_id"] == first["trace_id"] == then["trace_id"]
    tool = next(s for s in collector.spans() if s["name"] == "execute_tool add")
    assert tool["parent"] == then["span_id"]  # it ran once approved


def test_a_collector_that_is_down_holds_up_neither_turns_nor_a_stop(make_app, monkeypatch):
    monkeypatch.setattr(everruns, "TRACE_FLUSH_S", 0.2)
    app = make_app(otlp_endpoint=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    client = webtest.TestApp(app)
    api = Api(client)
    session = api.session()["id"]
    for text in ("one", "two"):
        api.message(session, text, status=201)
        assert finish(client, session)[-1]["data"]["status"] == "completed"
    started = time.monotonic()
    app.close()  # its sends retry for 10 s: the spans are dropped instead
    assert time.monotonic() - started < 3
    for bad in ("127.0.0.1:4318", "ftp://collector", "http://", "http://user:secret@collector:4318"):
        with pytest.raises(everruns.StartupError, match="--otlp-endpoint must be an http"):
            make_app(db=":memory:", otlp_endpoint=bad)


def test_without_the_extra_nothing_is_imported_and_the_flag_says_what_to_install(tmp_path):
    probe = (
        "from gevent import monkey; monkey.patch_all()\n"
        "import sys, everruns\n"
        "app = everruns.create_app(':memory:', env={})\n"
        "agent = app.client.agents.create(name='a')\n"
        "assert app.client.sessions.create(agent.id).ask('hello')\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    missing = "from gevent import monkey; monkey.patch_all()\nimport sys, everruns\n"
    missing += "sys.modules['opentelemetry'] = None\n"  # as if it were not installed
    refused = subprocess.run([sys.executable, "-c", missing + "sys.exit(everruns.main(sys.argv[1:]))",
                              "--db", str(tmp_path / "x.db"), "--port", str(free_port()),
                              "--otlp-endpoint", "http://127.0.0.1:4318"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "everruns: --otlp-endpoint needs OpenTelemetry: pip install 'everruns[otel]'"
    ]  # fmt: skip
    env_only = missing + "app = everruns.create_app(':memory:', env={'OTEL_EXPORTER_OTLP_ENDPOINT': 'http://x'})\n"
    warned = subprocess.run([sys.executable, "-c", env_only + "print('served')"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)  # fmt: skip
    assert warned.stdout.strip() == "served" and "OpenTelemetry is not installed" in warned.stderr


# ---- logs --------------------------------------------------------------------


def test_json_logs_carry_the_ids_and_never_a_key(start_server, upstream):
    server = start_server(None, "--log-format", "json", "--access-log")
    headers = {"X-Request-Id": "ops-4711"}
    provider = {"name": "up", "provider_type": "openai", "base_url": upstream.url + "/v1", "api_key": CANARY_KEY}
    status, _, created = server.call("POST", "/v1/llm-providers", provider, headers)
    assert status == 201
    status, _, agent = server.call("POST", "/v1/agents", {"name": "a", "provider_id": created["id"]}, headers)
    status, _, session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {}, headers)
    upstream.json(401, {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}", "type": "invalid_request"}})
    server.call("POST", f"/v1/sessions/{session['id']}/messages", {"content": "hello"}, headers)
    turn = f"/v1/sessions/{session['id']}"
    wait_until(lambda: server.call("GET", turn, headers=headers)[2]["status"] == "idle", what="the turn")
    server.call("GET", "/nowhere", headers=headers)
    assert server.stop() == 0
    output = server.output()
    assert CANARY_KEY not in output and CANARY_KEY[:-6] not in output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is one object
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert lines[0]["message"].startswith("Everruns ") and f"127.0.0.1:{server.port}" in lines[0]["message"]
    access = [line for line in lines if line["logger"] == "everruns.access"]
    assert {line["request_id"] for line in access if "/health" not in line["message"]} == {"ops-4711"}
    assert any(line["message"].startswith("GET /nowhere 404 ") for line in access)
    failed = next(line for line in lines if "failed: PROVIDER" in line["message"])
    assert failed["level"] == "warning" and failed["session_id"] == session["id"] and failed["turn_id"]
    assert failed["time"].endswith("Z")
