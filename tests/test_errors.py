"""SPEC section 2: every error has the same envelope and a fitting status."""

import http.client

import pytest
import webtest
from conftest import error_of

import everruns

MiB = 1024 * 1024


def test_unknown_route_is_404_in_the_envelope(client):
    error_of(client.get("/v1/nothing-here", status="*"), 404, "NOT_FOUND")
    error_of(client.get("/nothing-here", status="*"), 404, "NOT_FOUND")


def test_unknown_resource_is_404(client):
    missing = everruns._uuid7()
    for path in (f"/v1/agents/{missing}", f"/v1/sessions/{missing}", f"/v1/llm-providers/{missing}"):
        assert missing in error_of(client.get(path, status="*"), 404, "NOT_FOUND")["message"]


def test_wrong_method_is_405_with_allow(client):
    response = client.put_json("/v1/agents", {}, status="*")
    error_of(response, 405, "METHOD_NOT_ALLOWED")
    assert set(response.headers["Allow"].split(",")) >= {"GET", "POST"}


def test_malformed_json_is_400_bad_request(client):
    response = client.post("/v1/agents", b'{"name": ', content_type="application/json", status="*")
    error_of(response, 400, "BAD_REQUEST")


def test_missing_required_body_is_400(client):
    error_of(client.post("/v1/agents", status="*"), 400, "BAD_REQUEST")


def test_validation_error_has_details_and_is_never_422(client):
    error = error_of(client.post_json("/v1/agents", {"max_iterations": 99}, status="*"), 400, "VALIDATION_ERROR")
    locs = {tuple(d["loc"]) for d in error["details"]}
    assert locs == {("name",), ("max_iterations",)}
    assert all(isinstance(d["msg"], str) for d in error["details"])


def test_json_that_is_not_an_object_is_a_validation_error(client):
    response = client.post("/v1/agents", b"[1, 2]", content_type="application/json", status="*")
    error_of(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_non_json_body_is_415(client, content_type):
    response = client.post("/v1/agents", b'{"name": "a"}', content_type=content_type, status="*")
    error_of(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert client.get("/v1/agents").json["data"] == []


def test_json_with_charset_is_accepted(client):
    response = client.post("/v1/agents", b'{"name": "a"}', content_type="application/json; charset=utf-8")
    assert response.status_int == 201


def test_conflict_is_409(api, client):
    default = api.default_provider()
    error_of(client.delete(f"/v1/llm-providers/{default['id']}", status="*"), 409, "CONFLICT")


def test_body_over_4_mib_is_413_and_at_4_mib_is_read(client):
    pad = 4 * MiB - len(b'{"name": ""}')
    at_limit = b'{"name": "' + b"x" * pad + b'"}'
    assert len(at_limit) == 4 * MiB
    error_of(client.post("/v1/agents", at_limit, content_type="application/json", status="*"), 400, "VALIDATION_ERROR")
    over = at_limit[:-2] + b'x"}'
    error_of(client.post("/v1/agents", over, content_type="application/json", status="*"), 413, "PAYLOAD_TOO_LARGE")
    assert client.get("/v1/agents").json["data"] == []


def test_413_is_decided_from_content_length_before_reading(start_server):
    server = start_server()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.putrequest("POST", "/v1/agents")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", "10000000000")
    conn.endheaders()  # and not one byte of the body
    response = conn.getresponse()
    assert response.status == 413
    assert b'"code":"PAYLOAD_TOO_LARGE"' in response.read()


def test_chunked_body_over_the_limit_is_413(start_server):
    server = start_server()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * MiB for _ in range(5))
    conn.request("POST", "/v1/agents", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413
    assert b"PAYLOAD_TOO_LARGE" in response.read()


def test_chunked_body_within_the_limit_works(start_server):
    server = start_server()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    chunks = iter([b'{"name": ', b'"chunky"}'])
    conn.request("POST", "/v1/agents", body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 201
    assert b'"chunky"' in response.read()


def test_uncaught_exception_is_500_without_detail(client, api, monkeypatch, caplog):
    agent = api.agent()

    def explode(row):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(everruns, "_agent_out", explode)
    response = client.get(f"/v1/agents/{agent['id']}", status="*")
    error = error_of(response, 500, "INTERNAL_ERROR")
    assert "secret" not in response.text and "Traceback" not in response.text
    assert error["message"] == "internal server error"
    assert "secret internal detail" in caplog.text  # the traceback goes to the log


def test_401_without_the_api_key(make_app):
    client = webtest.TestApp(make_app(api_key="k-123"))
    error_of(client.get("/v1/agents", status="*"), 401, "UNAUTHORIZED")
    error_of(client.get("/v1/no-such-route", status="*"), 401, "UNAUTHORIZED")
    assert client.get("/v1/agents", headers={"Authorization": "Bearer k-123"}).status_int == 200
    assert client.get("/health").status_int == 200


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "after=not-an-id"])
def test_bad_pagination_is_400(client, query):
    error_of(client.get(f"/v1/agents?{query}", status="*"), 400, "VALIDATION_ERROR")


def test_every_error_status_has_the_same_shape(client, make_app, api, tmp_path):
    """One envelope for 400, 401, 404, 405, 409, 413, 415 and 500 alike."""
    secured = webtest.TestApp(make_app(str(tmp_path / "secured.db"), api_key="k"))
    responses = [
        client.post("/v1/agents", b"{", content_type="application/json", status="*"),
        client.post_json("/v1/agents", {}, status="*"),
        secured.get("/v1/agents", status="*"),
        client.get("/v1/agents/" + everruns._uuid7(), status="*"),
        client.delete("/v1/capabilities", status="*"),
        client.delete(f"/v1/llm-providers/{api.default_provider()['id']}", status="*"),
        client.post("/v1/agents", b"x" * (4 * MiB + 1), content_type="application/json", status="*"),
        client.post("/v1/agents", b"x", content_type="text/plain", status="*"),
    ]
    assert [r.status_int for r in responses] == [400, 400, 401, 404, 405, 409, 413, 415]
    for r in responses:
        error = r.json["error"]
        assert r.content_type == "application/json"
        assert set(error) - {"details"} == {"message", "code"}
        assert error["code"] == error["code"].upper() and " " not in error["code"]


def test_one_exception_family():
    for error in (everruns.ProviderError, everruns.ToolFailed, everruns._SecretUnreadable, everruns.TurnFailed):
        assert issubclass(error, everruns.EverrunsError), error
    unreadable = everruns._SecretUnreadable("cannot decrypt")
    assert (unreadable.status, unreadable.code) == (502, "PROVIDER_KEY_UNREADABLE")


def test_the_nul_character_is_refused_everywhere_in_a_request(api, client):
    """PostgreSQL text cannot hold it, so no backend takes it: 400 (404 in a path), nothing stored."""
    error_of(client.post_json("/v1/agents", {"name": "a\u0000b"}, expect_errors=True), 400, "VALIDATION_ERROR")
    assert client.get("/v1/agents").json["data"] == []
    session = api.session()["id"]
    response = client.post_json(f"/v1/sessions/{session}/messages", {"content": "x\u0000"}, expect_errors=True)
    assert "NUL" in error_of(response, 400, "VALIDATION_ERROR")["message"]
    error_of(client.get("/v1/agents?after=a%00", expect_errors=True), 400, "VALIDATION_ERROR")
    headers = {"Idempotency-Key": "k\x00"}
    response = client.post_json(
        f"/v1/sessions/{session}/messages", {"content": "x"}, headers=headers, expect_errors=True
    )
    error_of(response, 400, "VALIDATION_ERROR")
    error_of(client.get(f"/v1/sessions/{session}%00", expect_errors=True), 404, "NOT_FOUND")
    assert client.get(f"/v1/sessions/{session}/messages").json["data"] == []
    # a backslash before u0000 is text, not the character
    assert client.post_json("/v1/agents", {"name": "a\\u0000b"}, status=201).json["name"] == "a\\u0000b"
