"""Safe defaults, secrets at rest and in logs, and request limits (SPEC section 8)."""

import http.client
import logging
import os
import socket
import stat
import sys

import pytest
import webtest
from conftest import CANARY_KEY, SSEStream, error_of, finish, remote_session

import everruns


def test_a_keyless_server_answers_only_its_own_host_names(make_app):
    client = webtest.TestApp(make_app(allowed_hosts="agents.internal"))
    for host in ("localhost", "127.0.0.1", "127.0.0.1:9000", "[::1]:9000", "LOCALHOST:80", "agents.internal:9000"):
        assert client.get("/v1/agents", headers={"Host": host}).status_int == 200, host
    for host in ("evil.example", "evil.example:9000", "127.0.0.1.evil.example", "", "localhost.evil"):
        response = client.get("/v1/agents", headers={"Host": host}, status="*")
        error_of(response, 403, "FORBIDDEN")


def test_with_an_api_key_any_host_is_answered(make_app):
    client = webtest.TestApp(make_app(api_key="k-1"))
    assert (
        client.get("/v1/agents", headers={"Host": "api.example.com", "Authorization": "Bearer k-1"}).status_int == 200
    )


def test_a_non_loopback_bind_is_refused_without_a_key(db_path):
    result = everruns.main(["--host", "0.0.0.0", "--port", "0", "--db", db_path])
    assert result == 2
    with pytest.raises(RuntimeError, match="without an API key"):
        everruns._check_bind("192.168.1.20", None, False)
    everruns._check_bind("0.0.0.0", "a-key", False)
    everruns._check_bind("0.0.0.0", None, True)
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.5"):
        everruns._check_bind(loopback, None, False)


def test_the_refusal_from_the_command_line(tmp_path):
    import subprocess

    from conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERRUNS_")}
    cmd = [sys.executable, str(ROOT / "everruns.py"), "--host", "0.0.0.0", "--db", str(tmp_path / "x.db")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2 and "--api-key" in result.stderr


def test_cors_is_off_by_default(client):
    response = client.get("/v1/agents", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = client.options("/v1/agents", headers={"Origin": "https://app.example",
                                                      "Access-Control-Request-Method": "POST"}, status="*")  # fmt: skip
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_cors_for_allowed_origins_only(make_app):
    client = webtest.TestApp(make_app(api_key="k", cors_origins="https://app.example, http://localhost:5173"))
    auth = {"Authorization": "Bearer k"}
    allowed = client.get("/v1/agents", headers={**auth, "Origin": "https://app.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert allowed.headers["Vary"] == "Origin" and "Access-Control-Allow-Credentials" not in allowed.headers
    other = client.get("/v1/agents", headers={**auth, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = client.options("/v1/agents", headers={"Origin": "http://localhost:5173",
                                                      "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "authorization"})  # fmt: skip
    assert preflight.status_int == 204 and "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    denied = client.options("/v1/agents", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "POST"}, status="*")  # fmt: skip
    assert denied.status_int == 401 and "Access-Control-Allow-Origin" not in denied.headers


def test_a_wildcard_origin_never_comes_with_credentials(make_app):
    client = webtest.TestApp(make_app(cors_origins="*"))
    response = client.get("/v1/agents", headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_the_database_file_is_owner_only(app, db_path):
    assert stat.S_IMODE(os.stat(db_path).st_mode) & 0o077 == 0


def raw_database(path):
    return b"".join(open(p, "rb").read() for p in (path, path + "-wal") if os.path.exists(p))


def test_a_canary_key_is_nowhere_with_encryption_on(make_app, db_path, upstream, caplog):
    pytest.importorskip("cryptography")
    caplog.set_level(logging.DEBUG)
    app = make_app(secret_key="a long random secret for the tests")
    client = webtest.TestApp(app)
    from conftest import Api

    api = Api(client)
    session = remote_session(api, upstream, "openai")
    upstream.json(401, {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}"}})
    api.message(session["id"], "hi", status=201)
    events = finish(client, session["id"])
    assert upstream.requests[0]["headers"]["authorization"] == f"Bearer {CANARY_KEY}"  # decrypted to be used
    everruns._log.warning("a log line with the key %s and a token Bearer %s", CANARY_KEY, "abc.def")
    seen = [str(events), caplog.text, client.get("/v1/llm-providers").text,
            client.get(f"/v1/sessions/{session['id']}/events?format=json").text]  # fmt: skip
    assert not [s for s in seen if CANARY_KEY in s] and "abc.def" not in caplog.text
    assert CANARY_KEY.encode() not in raw_database(db_path)


def test_without_encryption_the_key_is_stored_plain(api, db_path, client):
    api.provider(api_key=CANARY_KEY)
    assert CANARY_KEY.encode() in raw_database(db_path)  # as the README says


def test_keys_are_encrypted_when_a_secret_key_is_set_later(make_app, db_path):
    pytest.importorskip("cryptography")
    first = make_app()
    webtest.TestApp(first).post_json(
        "/v1/llm-providers", {"name": "p", "provider_type": "openai", "api_key": CANARY_KEY}
    )
    first.close()
    make_app(secret_key="now with a secret").close()
    assert CANARY_KEY.encode() not in raw_database(db_path)


def test_a_changed_secret_key_fails_the_turn_clearly(make_app, db_path, upstream):
    pytest.importorskip("cryptography")
    first = make_app(secret_key="one")
    from conftest import Api

    session = remote_session(Api(webtest.TestApp(first)), upstream, "openai")
    first.close()
    client = webtest.TestApp(make_app(secret_key="two"))
    client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "hi"})
    done = finish(client, session["id"])[-1]["data"]
    assert done["error"]["code"] == "PROVIDER_KEY_UNREADABLE" and "EVERRUNS_SECRET_KEY" in done["error"]["message"]
    assert upstream.requests == []


def test_a_secret_key_without_cryptography_is_a_clear_error(db_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with pytest.raises(RuntimeError, match="cryptography"):
        everruns.create_app(db_path, env={}, secret_key="s")


def test_log_lines_are_redacted(make_app, caplog):
    make_app(api_key="the-server-key-42")
    everruns._log.error("keys: %s sk-proj-abcdefghijklmnop Bearer xyz.123 %s", "the-server-key-42", "fine")
    assert "the-server-key-42" not in caplog.text and "sk-proj-abcdefghijklmnop" not in caplog.text
    assert "xyz.123" not in caplog.text and "fine" in caplog.text and "[redacted]" in caplog.text


def test_request_line_and_header_limits(client):
    error_of(client.get("/v1/agents?after=" + "x" * 9000, status="*"), 414, "URI_TOO_LONG")
    error_of(client.get("/v1/agents", headers={"X-Big": "y" * 40000}, status="*"), 431, "HEADERS_TOO_LARGE")


def test_tool_output_is_capped(api, client):
    session = api.session(api.agent(capabilities=["session_file_system"])["id"])
    client.put_json(f"/v1/sessions/{session['id']}/fs/big.txt", {"content": "z" * (1024 * 1024)}, status=201)
    api.message(session["id"], 'read_file {"path": "/big.txt"}', status=201)
    result = next(e["data"]["result"] for e in finish(client, session["id"]) if e["type"] == "tool.result")
    assert result["truncated"] is True and len(result["preview"].encode()) <= everruns.MAX_TOOL_OUTPUT


def test_a_huge_model_answer_is_capped(api, client, upstream):
    import test_openai as openai

    session = remote_session(api, upstream, "openai")
    upstream.sse(openai.text_answer("w" * (everruns.MAX_MESSAGE_TEXT + 10)))
    api.message(session["id"], "talk a lot", status=201)
    answer = finish(client, session["id"])[-2]["data"]["message"]["content"][0]["text"]
    assert len(answer) == everruns.MAX_MESSAGE_TEXT


def test_a_silent_connection_is_closed_after_the_idle_timeout(start_server):
    server = start_server(None, "--idle-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert sock.recv(1024) == b""  # the server hung up (recv would time out after 10 s otherwise)


def test_at_the_cap_an_idle_connection_makes_room(start_server):
    server = start_server(None, "--max-connections", "1")
    first = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    first.request("GET", "/health")
    first.getresponse().read()  # the one slot is held by this idle keep-alive connection
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as second:
        second.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert second.recv(1024).startswith(b"HTTP/1.1 200")  # served at once
    assert first.sock.recv(1024) == b""  # the idle one was let go to make room


def test_at_the_cap_with_every_connection_busy_the_answer_is_503(start_server, tmp_path):
    server = start_server(None, "--max-connections", "1")
    agent = server.call("POST", "/v1/agents", {"name": "a"})[2]
    session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]
    stream = SSEStream(server.url, f"/v1/sessions/{session['id']}/events")  # busy: a live stream
    next(iter(stream))  # the stream has started
    status, headers, body = server.call("GET", "/health")
    assert status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE" and headers["Retry-After"] == "1"
    stream.close()
