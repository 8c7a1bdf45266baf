"""Safe defaults, secrets at rest and in logs, and request limits (SPEC section 8)."""

import http.client
import logging
import os
import socket
import stat
import sys

import pytest
import webtest
from conftest import CANARY_KEY, another_connection, error_of, finish, remote_session

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


@pytest.mark.sqlite
def test_the_database_file_is_owner_only(app, db_path):
    assert stat.S_IMODE(os.stat(db_path).st_mode) & 0o077 == 0


def raw_database(path):
    """Everything stored, as bytes: the SQLite file and its WAL, or every PostgreSQL row as text."""
    if path.startswith("postgresql://"):
        with another_connection(path) as conn:
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            rows = [r[0] for t in tables for r in conn.execute(f"SELECT CAST(t AS TEXT) FROM {t} t")]
        return "\n".join(rows).encode()
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


def test_a_changed_secret_key_fails_the_turn_clearly(make_app, db_path, upstream, caplog):
    pytest.importorskip("cryptography")
    first = make_app(secret_key="one")
    from conftest import Api

    session = remote_session(Api(webtest.TestApp(first)), upstream, "openai")
    first.close()
    with caplog.at_level(logging.WARNING, logger="everruns"):
        client = webtest.TestApp(make_app(secret_key="two"))
    assert any("cannot be decrypted" in r.getMessage() and "'p'" in r.getMessage() for r in caplog.records)
    client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "hi"})
    done = finish(client, session["id"])[-1]["data"]
    assert done["error"]["code"] == "PROVIDER_KEY_UNREADABLE" and "EVERRUNS_SECRET_KEY" in done["error"]["message"]
    assert upstream.requests == []


def test_a_secret_key_without_cryptography_is_a_clear_error(db_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with pytest.raises(everruns.StartupError, match="cryptography"):
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


HEADER_CANARY = "hdr-canary-7f3a9c2e5b"
HEADERS = {"X-Api-Key": HEADER_CANARY, "X-Team": "blue"}


def checkpointed(app, db_path):
    """The raw database bytes once the WAL is folded into the file."""
    if not app.everruns.store.postgres:
        app.everruns.store.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return raw_database(db_path)


def turn_headers(client, upstream, session_id):
    """The headers the provider got for one more turn of the session."""
    import test_openai as openai

    upstream.sse(openai.text_answer("fine"))
    client.post_json(f"/v1/sessions/{session_id}/messages", {"content": "hi"}, status=201)
    assert finish(client, session_id)[-1]["data"]["status"] == "completed"
    return upstream.requests[-1]["headers"]


def test_a_credential_header_is_stored_encrypted_and_sent_as_it_is(make_app, db_path, upstream):
    pytest.importorskip("cryptography")
    from conftest import Api

    app = make_app(secret_key="s3cret")
    client = webtest.TestApp(app)
    session = remote_session(Api(client), upstream, "openai", extra_headers=HEADERS)
    assert HEADER_CANARY.encode() not in checkpointed(app, db_path) and b"blue" in checkpointed(app, db_path)
    assert turn_headers(client, upstream, session["id"])["x-api-key"] == HEADER_CANARY


def test_a_plain_credential_header_is_encrypted_when_a_secret_key_is_set_later(make_app, db_path, upstream):
    pytest.importorskip("cryptography")
    from conftest import Api

    first = make_app()
    session = remote_session(Api(webtest.TestApp(first)), upstream, "openai", extra_headers=HEADERS)
    first.close()
    assert HEADER_CANARY.encode() in raw_database(db_path)  # stored plain without a secret key
    app = make_app(db_path, secret_key="s3cret")
    assert HEADER_CANARY.encode() not in checkpointed(app, db_path)
    assert turn_headers(webtest.TestApp(app), upstream, session["id"])["x-api-key"] == HEADER_CANARY


@pytest.mark.parametrize("headers", [{"X-Team": "café☃"}, {"X-Team": "a\x01b"}, {"X-Team": "line\nbreak"},
                                     {"café☃": "blue"}])  # fmt: skip
def test_extra_headers_http_cannot_carry_are_refused(api, client, headers):
    body = {"name": "p", "provider_type": "openai", "settings": {"extra_headers": headers}}
    error_of(client.post_json("/v1/llm-providers", body, status="*"), 400, "VALIDATION_ERROR")
    provider = api.provider(settings={"extra_headers": {"X-Team": "blue", "X-Tab": "a\tb"}})
    patch = client.patch_json(f"/v1/llm-providers/{provider['id']}", {"settings": body["settings"]}, status="*")
    error_of(patch, 400, "VALIDATION_ERROR")
    shown = client.get(f"/v1/llm-providers/{provider['id']}").json["settings"]["extra_headers"]
    assert shown == {"X-Team": "blue", "X-Tab": "a\tb"}
    assert [p["id"] for p in client.get("/v1/llm-providers").json["data"] if p["name"] == "p"] == [provider["id"]]


@pytest.mark.parametrize(
    "ctype", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x"]
)
def test_a_form_post_without_a_body_is_refused(api, client, ctype):
    agent = api.agent()
    response = client.post(f"/v1/agents/{agent['id']}/sessions", headers={"Content-Type": ctype}, status="*")
    error_of(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert client.get(f"/v1/agents/{agent['id']}/sessions").json["data"] == []
    session = api.session(agent["id"])
    response = client.post(f"/v1/sessions/{session['id']}/cancel", headers={"Content-Type": ctype}, status="*")
    error_of(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_a_keyless_server_refuses_cross_site_writes(make_app):
    client = webtest.TestApp(make_app(cors_origins="https://app.example"))
    for foreign in ({"Sec-Fetch-Site": "cross-site"}, {"Origin": "https://evil.example"}):
        error_of(client.post_json("/v1/agents", {"name": "a"}, headers=foreign, status="*"), 403, "FORBIDDEN")
    assert client.get("/v1/agents").json["data"] == []
    for own in ({"Origin": "http://localhost", "Host": "localhost"}, {"Origin": "https://app.example"},
                {"Sec-Fetch-Site": "same-origin"}):  # fmt: skip
        assert client.post_json("/v1/agents", {"name": "a"}, headers=own).status_int == 201, own
    assert client.get("/v1/agents", headers={"Origin": "https://evil.example"}).status_int == 200


def test_with_an_api_key_the_origin_is_not_checked(make_app):
    client = webtest.TestApp(make_app(api_key="k-1"))
    headers = {"Authorization": "Bearer k-1", "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert client.post_json("/v1/agents", {"name": "a"}, headers=headers).status_int == 201


def test_web_fetch_refuses_ipv4_translated_addresses():
    assert not everruns._address_allowed("::ffff:0:7f00:1")  # 127.0.0.1, translated
    assert not everruns._address_allowed("::ffff:0:808:808")
    assert everruns._address_allowed("8.8.8.8") and everruns._address_allowed("2606:4700:4700::1111")


@pytest.mark.parametrize("name", ["api_key", "secret_key"])
def test_keys_can_come_from_files(tmp_path, name):
    flag, path = f"--{name.replace('_', '-')}-file", tmp_path / "key.txt"
    path.write_text("  file-key-31415  \n")
    assert everruns._settings({f"{name}_file": str(path)})[name] == "file-key-31415"
    with pytest.raises(ValueError, match="not both") as both:
        everruns._settings({name: "given-key-27182", f"{name}_file": str(path)})
    assert "given-key-27182" not in str(both.value) and "file-key-31415" not in str(both.value)
    for content in ("", " \n"):
        path.write_text(content)
        with pytest.raises(ValueError, match=flag):
            everruns._settings({f"{name}_file": str(path)})
    with pytest.raises(ValueError, match=flag):
        everruns._settings({f"{name}_file": str(tmp_path / "missing.txt")})


def test_the_api_key_from_a_file_is_required(make_app, tmp_path):
    path = tmp_path / "key.txt"
    path.write_text("file-key-31415\n")
    client = webtest.TestApp(make_app(api_key_file=str(path)))
    error_of(client.get("/v1/agents", status="*"), 401, "UNAUTHORIZED")
    assert client.get("/v1/agents", headers={"Authorization": "Bearer file-key-31415"}).status_int == 200


def test_a_short_credential_header_is_still_never_shown(api, client):
    provider = api.provider(settings={"extra_headers": {"X-Api-Key": "s3cr3t7", "X-Auth-Version": "2"}})
    shown = client.get(f"/v1/llm-providers/{provider['id']}").json["settings"]["extra_headers"]
    assert shown == {"X-Api-Key": "[redacted]", "X-Auth-Version": "[redacted]"}
    assert "s3cr3t7" not in str(provider)


def test_echoes_of_keys_and_short_credential_headers_are_redacted(api, client, upstream):
    key, short = "canary-key-Zz9-plural-Z-alpha-0042", "SHRT123"
    session = remote_session(api, upstream, "openai", extra_headers={"X-Key": short})
    provider_id = provider_of(client, session)
    client.patch_json(f"/v1/llm-providers/{provider_id}", {"api_key": key})
    echo = f"bad key {key.upper()}, or was it {key[:-1]}... and x-key: {short.lower()}; keep THIS"
    upstream.json(401, {"error": {"message": echo}})
    client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "hi"}, status=201)
    error = finish(client, session["id"])[-1]["data"]["error"]
    assert error["code"] == "PROVIDER_AUTH" and "keep THIS" in error["message"]
    stored = client.get(f"/v1/sessions/{session['id']}/events?format=json").text + str(
        client.get(f"/v1/sessions/{session['id']}").json
    )
    for leaked in (key, key[:-1], short):
        assert leaked.lower() not in error["message"].lower() and leaked.lower() not in stored.lower()


def provider_of(client, session):
    agent = client.get(f"/v1/agents/{session['agent_id']}").json
    return agent["provider_id"]
