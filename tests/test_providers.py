"""LLM providers: CRUD, settings per type, the one-default rule, keys never returned."""

import webtest
from conftest import error_of, finish

import everruns

CANARY = "sk-canary-0123456789abcdef"


def test_fresh_database_has_the_simulator_as_default(api, client):
    providers = client.get("/v1/llm-providers").json["data"]
    assert [(p["name"], p["provider_type"], p["is_default"]) for p in providers] == [
        ("Built-in simulator", "llmsim", True)
    ]
    assert providers[0]["settings"] == {"token_delay_ms": 0, "reply": None, "context_window": None,
                                        "echo_context": False}  # fmt: skip


def test_create_get_patch_delete(api, client):
    created = api.provider(name="Local Ollama", base_url="http://127.0.0.1:11434/v1", default_model="llama3")
    assert created["api_key_set"] is False and created["is_default"] is False
    assert created["settings"] == {"timeout_s": 60, "max_call_s": 1800, "max_tokens": 4096, "extra_headers": {},
                                   "context_window": None, "record": False}  # fmt: skip
    assert client.get(f"/v1/llm-providers/{created['id']}").json == created
    patched = client.patch_json(f"/v1/llm-providers/{created['id']}", {"default_model": "qwen3"}).json
    assert patched["default_model"] == "qwen3" and patched["name"] == "Local Ollama"
    assert patched["updated_at"] >= created["updated_at"]
    client.delete(f"/v1/llm-providers/{created['id']}", status=204)
    client.get(f"/v1/llm-providers/{created['id']}", status=404)


def test_type_defaults_for_base_url_and_model(api):
    assert api.provider(provider_type="anthropic")["base_url"] == "https://api.anthropic.com"
    openai = api.provider(provider_type="openai")
    assert (openai["base_url"], openai["default_model"]) == ("https://api.openai.com/v1", "gpt-4o-mini")


def test_api_key_is_never_returned(api, client):
    created = api.provider(api_key=CANARY)
    pid = created["id"]
    bodies = [
        created,
        client.get(f"/v1/llm-providers/{pid}").json,
        client.get("/v1/llm-providers").json,
        client.patch_json(f"/v1/llm-providers/{pid}", {"name": "renamed", "api_key": CANARY + "2"}).json,
    ]
    assert all(CANARY not in str(b) and 'api_key"' not in str(b) for b in bodies)
    assert bodies[0]["api_key_set"] is True
    assert client.patch_json(f"/v1/llm-providers/{pid}", {"api_key": None}).json["api_key_set"] is False


def test_settings_are_validated_per_type(api, client):
    sim = {"name": "s", "provider_type": "llmsim"}
    error_of(
        client.post_json("/v1/llm-providers", {**sim, "settings": {"timeout_s": 5}}, status="*"),
        400,
        "VALIDATION_ERROR",
    )
    error_of(
        client.post_json("/v1/llm-providers", {**sim, "settings": {"token_delay_ms": 10001}}, status="*"),
        400,
        "VALIDATION_ERROR",
    )
    created = client.post_json("/v1/llm-providers", {**sim, "settings": {"token_delay_ms": 25, "reply": "hi"}}).json
    assert created["settings"] == {"token_delay_ms": 25, "reply": "hi", "context_window": None, "echo_context": False}
    response = client.patch_json(f"/v1/llm-providers/{created['id']}", {"settings": {"max_tokens": 5}}, status="*")
    error_of(response, 400, "VALIDATION_ERROR")
    error_of(
        client.post_json("/v1/llm-providers", {"name": "x", "provider_type": "nope"}, status="*"),
        400,
        "VALIDATION_ERROR",
    )


def test_credential_like_extra_headers_are_not_echoed(api):
    headers = {"X-Api-Key": CANARY, "Authorization": "Bearer " + CANARY, "X-Team": "blue"}
    created = api.provider(settings={"extra_headers": headers})
    assert CANARY not in str(created)
    assert created["settings"]["extra_headers"]["X-Team"] == "blue"


def test_one_default_rule(api, client):
    simulator = api.default_provider()
    second = api.provider(is_default=True)
    assert second["is_default"] is True
    assert api.default_provider()["id"] == second["id"]
    assert client.get(f"/v1/llm-providers/{simulator['id']}").json["is_default"] is False
    client.patch_json(f"/v1/llm-providers/{simulator['id']}", {"is_default": True})
    defaults = [p["id"] for p in client.get("/v1/llm-providers").json["data"] if p["is_default"]]
    assert defaults == [simulator["id"]]


def test_the_default_cannot_be_unset_or_deleted(api, client):
    default = api.default_provider()
    error_of(
        client.patch_json(f"/v1/llm-providers/{default['id']}", {"is_default": False}, status="*"), 409, "CONFLICT"
    )
    error_of(client.delete(f"/v1/llm-providers/{default['id']}", status="*"), 409, "CONFLICT")
    assert api.default_provider()["id"] == default["id"]


def test_a_provider_in_use_cannot_be_deleted(api, client):
    by_agent, by_session = api.provider(), api.provider()
    api.agent(provider_id=by_agent["id"])
    api.session(provider_id=by_session["id"])
    for provider in (by_agent, by_session):
        error_of(client.delete(f"/v1/llm-providers/{provider['id']}", status="*"), 409, "CONFLICT")
        client.get(f"/v1/llm-providers/{provider['id']}", status=200)


def test_providers_from_environment_keys_are_created_once(make_app, db_path):
    env = {"OPENAI_API_KEY": CANARY, "ANTHROPIC_API_KEY": CANARY + "-a"}
    app = make_app(env=env)
    first = webtest.TestApp(app).get("/v1/llm-providers").json["data"]
    assert [(p["provider_type"], p["api_key_set"], p["is_default"]) for p in first] == [
        ("llmsim", False, True),
        ("openai", True, False),
        ("anthropic", True, False),
    ]
    assert CANARY not in str(first)
    app.close()  # a restart
    again = webtest.TestApp(make_app(env=env)).get("/v1/llm-providers").json["data"]
    assert [p["id"] for p in again] == [p["id"] for p in first]


def test_default_provider_named_at_start_up(make_app):
    env = {"OPENAI_API_KEY": CANARY, "EVERRUNS_DEFAULT_PROVIDER": "openai"}
    providers = webtest.TestApp(make_app(env=env)).get("/v1/llm-providers").json["data"]
    assert [p["provider_type"] for p in providers if p["is_default"]] == ["openai"]


def test_providers_are_listed_oldest_first_with_pages(api, client):
    made = [api.provider(name=f"p{i}")["id"] for i in range(3)]
    first = client.get("/v1/llm-providers?limit=2").json
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = client.get(f"/v1/llm-providers?limit=2&after={first['next_after']}").json
    assert rest["has_more"] is False and rest["next_after"] is None
    ids = [p["id"] for p in first["data"] + rest["data"]]
    assert ids[1:] == made and ids == sorted(ids)


def test_unknown_provider_is_404(client):
    client.patch_json(f"/v1/llm-providers/{everruns._uuid7()}", {"name": "x"}, status=404)
    client.delete(f"/v1/llm-providers/{everruns._uuid7()}", status=404)


def test_a_provider_named_without_a_model_uses_its_own_default_model(api, client):
    other = api.provider(provider_type="llmsim", name="b", default_model="sim-b")
    agent = api.agent(model="agent-model")
    session = api.session(agent["id"])
    api.message(session["id"], "hi", status=201)
    assert finish(client, session["id"])[-1]["data"]["model"] == "agent-model"
    body = {"content": "again", "controls": {"provider_id": other["id"]}}
    client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201)
    assert finish(client, session["id"], after=4)[-1]["data"]["model"] == "sim-b"
    by_session = api.session(agent["id"], provider_id=other["id"])
    api.message(by_session["id"], "hi", status=201)
    assert finish(client, by_session["id"])[-1]["data"]["model"] == "sim-b"
