"""Agents: CRUD, validation, limits at their boundaries, pagination, cascades."""

import pytest
from conftest import error_of

import everruns

MiB = 1024 * 1024


def test_create_with_defaults(api):
    agent = api.agent(name="Helper")
    assert agent["name"] == "Helper"
    assert (agent["description"], agent["system_prompt"], agent["capabilities"], agent["tags"]) == ("", "", [], [])
    assert (agent["provider_id"], agent["model"], agent["max_iterations"]) == (None, None, 10)
    assert agent["created_at"].endswith("Z") and len(agent["created_at"]) == len("2026-01-01T00:00:00.000Z")


def test_get_patch_delete(api, client):
    agent = api.agent(capabilities=["test_math"], tags=["demo"])
    assert client.get(f"/v1/agents/{agent['id']}").json == agent
    patched = client.patch_json(f"/v1/agents/{agent['id']}", {"system_prompt": "Be brief.", "model": "m1"}).json
    assert patched["system_prompt"] == "Be brief." and patched["model"] == "m1"
    assert patched["capabilities"] == ["test_math"] and patched["tags"] == ["demo"]
    client.delete(f"/v1/agents/{agent['id']}", status=204)
    client.get(f"/v1/agents/{agent['id']}", status=404)


def test_patch_null_on_a_required_field_is_rejected(api, client):
    agent = api.agent()
    error_of(client.patch_json(f"/v1/agents/{agent['id']}", {"name": None}, status="*"), 400, "VALIDATION_ERROR")
    assert client.get(f"/v1/agents/{agent['id']}").json["name"] == agent["name"]


def test_unknown_capability_is_400(client):
    error = error_of(
        client.post_json("/v1/agents", {"name": "a", "capabilities": ["telepathy"]}, status="*"),
        400,
        "VALIDATION_ERROR",
    )
    assert error["details"][0]["loc"] == ["capabilities", 0]


def test_unknown_provider_is_400(api, client):
    body = {"name": "a", "provider_id": everruns._uuid7()}
    error = error_of(client.post_json("/v1/agents", body, status="*"), 400, "VALIDATION_ERROR")
    assert error["details"][0]["loc"] == ["provider_id"]
    agent = api.agent()
    response = client.patch_json(f"/v1/agents/{agent['id']}", {"provider_id": everruns._uuid7()}, status="*")
    error_of(response, 400, "VALIDATION_ERROR")


def test_known_provider_is_accepted(api):
    provider = api.provider()
    assert api.agent(provider_id=provider["id"], model="gpt-x")["provider_id"] == provider["id"]


@pytest.mark.parametrize(
    "field, ok, too_big",
    [
        ("name", "n" * 256, "n" * 257),
        ("description", "d" * 10240, "d" * 10241),
        ("system_prompt", "s" * MiB, "s" * (MiB + 1)),
        ("tags", ["t"] * 32, ["t"] * 33),
        ("tags", ["t" * 64], ["t" * 65]),
        ("capabilities", ["noop"] * 64, ["noop"] * 65),
        ("max_iterations", 50, 51),
        ("max_iterations", 1, 0),
    ],
)
def test_limits_at_their_boundaries(client, field, ok, too_big):
    assert client.post_json("/v1/agents", {"name": "a", field: ok}).status_int == 201
    error = error_of(client.post_json("/v1/agents", {"name": "a", field: too_big}, status="*"), 400, "VALIDATION_ERROR")
    assert error["details"][0]["loc"][0] == field


def test_empty_name_is_rejected(client):
    error_of(client.post_json("/v1/agents", {"name": ""}, status="*"), 400, "VALIDATION_ERROR")


def test_duplicate_capabilities_are_kept_once(api):
    assert api.agent(capabilities=["noop", "test_math", "noop"])["capabilities"] == ["noop", "test_math"]


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/agents", {"name": "a", "sytem_prompt": "typo"}),
        ("/v1/llm-providers", {"name": "p", "provider_type": "llmsim", "colour": "red"}),
        ("/v1/llm-providers", {"name": "p", "provider_type": "llmsim", "settings": {"speed": 1}}),
    ],
)
def test_unknown_fields_are_rejected(client, path, body):
    error = error_of(client.post_json(path, body, status="*"), 400, "VALIDATION_ERROR")
    assert "Extra inputs" in error["details"][0]["msg"]


def test_unknown_fields_on_patch_are_rejected(api, client):
    agent = api.agent()
    error_of(client.patch_json(f"/v1/agents/{agent['id']}", {"nmae": "x"}, status="*"), 400, "VALIDATION_ERROR")


def test_list_newest_first_with_pages(api, client):
    made = [api.agent(name=f"a{i}")["id"] for i in range(5)]
    page1 = client.get("/v1/agents?limit=2").json
    assert [a["id"] for a in page1["data"]] == made[::-1][:2]
    assert page1["has_more"] is True and page1["next_after"] == made[3]
    page2 = client.get(f"/v1/agents?limit=2&after={page1['next_after']}").json
    page3 = client.get(f"/v1/agents?limit=2&after={page2['next_after']}").json
    assert [a["id"] for a in page2["data"] + page3["data"]] == made[::-1][2:]
    assert page3["has_more"] is False and page3["next_after"] is None


def test_default_page_size_is_20(api, client):
    for i in range(21):
        api.agent(name=f"a{i}")
    page = client.get("/v1/agents").json
    assert len(page["data"]) == 20 and page["has_more"] is True
    assert len(client.get("/v1/agents?limit=100").json["data"]) == 21


def test_delete_cascades_to_sessions_and_messages(api, client):
    agent = api.agent()
    session = api.session(agent["id"])
    api.message(session["id"], "hi", status=201)
    client.delete(f"/v1/agents/{agent['id']}", status=204)
    client.get(f"/v1/sessions/{session['id']}", status=404)
    client.get(f"/v1/sessions/{session['id']}/messages", status=404)
