"""API key auth (SPEC section 8): every request of both surfaces (/v1, /api/v1) needs the key, in any
form the SDKs send it, compared in constant time."""

import pytest
import webtest
from conftest import error_of, parse_sse

import everruns

KEY = "server-key-0123456789"
WRONG = {"no key": {}, "wrong key": {"Authorization": "Bearer server-key-0123456780"},
         "shorter key": {"Authorization": "Bearer server"}, "longer key": {"Authorization": f"Bearer {KEY}x"},
         "wrong scheme": {"Authorization": f"Basic {KEY}"}, "empty bearer": {"Authorization": "Bearer "}}  # fmt: skip


@pytest.fixture
def secured(make_app):
    return webtest.TestApp(make_app(api_key=KEY))


def concrete(path):
    return (path.replace("{capability_id}", "noop").replace("{path}", "a.txt")
            .replace("{provider_id}", everruns._uuid7()).replace("{agent_id}", everruns._uuid7())
            .replace("{agent}", "a")
            .replace("{session_id}", everruns._uuid7()))  # fmt: skip


def every_operation(client):
    doc = client.get("/api-doc/openapi.json").json
    return [(method.upper(), concrete(path)) for path, ops in doc["paths"].items() for method in ops]


@pytest.mark.parametrize("label", sorted(WRONG))
def test_every_route_of_both_surfaces_and_an_unknown_one_needs_the_key(secured, label):
    operations = [op for op in every_operation(secured) if op[1].startswith(("/v1/", "/api/v1/"))]
    assert sum(path.startswith("/v1/") for _, path in operations) >= 25
    assert sum(path.startswith("/api/v1/") for _, path in operations) >= 25
    unknown = [("GET", "/v1/no-such-route"), ("DELETE", "/v1/agents"), ("GET", "/v1"), ("GET", "/api/v1/nothing"),
               ("GET", "/api/v1/harnesses"), ("POST", "/api/v1/budgets")]  # fmt: skip
    for method, path in [*operations, *unknown]:
        response = secured.request(path, method=method, headers=WRONG[label], status="*")
        error = error_of(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert KEY not in response.text and "server-key" not in error["message"]


def test_the_right_key_opens_every_route(secured):
    for method, path in every_operation(secured):
        status = secured.request(path, method=method, headers={"Authorization": f"Bearer {KEY}"}, status="*").status_int
        assert status != 401, (method, path)


@pytest.mark.parametrize("form", ["Bearer {}", "bearer {}", "ApiKey {}", "{}"], ids=["bearer", "low", "apikey", "bare"])
def test_the_key_in_each_form_the_sdks_send_opens_both_surfaces(secured, form):
    auth = {"Authorization": form.format(KEY)}
    assert secured.get("/v1/agents", headers=auth).json["data"] == []
    agent = secured.post_json("/api/v1/agents", {"name": "a", "system_prompt": ""}, headers=auth, status=201).json
    assert secured.get(f"/api/v1/channels/{agent['id']}", headers=auth).json["id"] == agent["id"]
    wrong = {"Authorization": form.format("server-key-0123456780")}
    for path in ("/v1/agents", "/api/v1/agents"):
        error_of(secured.get(path, headers=wrong, status=401), 401, "UNAUTHORIZED")


def test_health_and_docs_stay_open(secured):
    assert secured.get("/health").json["status"] == "ok"
    assert secured.get("/api-doc/openapi.json").json["openapi"].startswith("3.1")
    assert secured.get("/swagger-ui/").status_int == 200


def test_the_key_is_never_taken_from_the_url(secured):
    for query in (f"api_key={KEY}", f"key={KEY}", f"token={KEY}", f"access_token={KEY}"):
        error_of(secured.get(f"/v1/agents?{query}", status="*"), 401, "UNAUTHORIZED")


def test_the_event_stream_with_the_key(secured):
    auth = {"Authorization": f"Bearer {KEY}"}
    agent = secured.post_json("/v1/agents", {"name": "a"}, headers=auth).json
    session = secured.post_json(f"/v1/agents/{agent['id']}/sessions", {}, headers=auth).json
    secured.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "hi"}, headers=auth)
    url = f"/v1/sessions/{session['id']}/events?until=completed"
    error_of(secured.get(url, status="*"), 401, "UNAUTHORIZED")
    events = [i["data"] for i in parse_sse(secured.get(url, headers=auth).text) if "data" in i]
    assert events[-1]["type"] == "session.completed"
