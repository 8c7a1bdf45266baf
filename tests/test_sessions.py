"""Sessions: create and list under an agent, get, patch, delete."""

from conftest import error_of

import everruns


def test_create_and_get(api, client):
    agent = api.agent()
    session = api.session(agent["id"], title="First chat", tags=["t1"])
    assert session["agent_id"] == agent["id"] and session["title"] == "First chat"
    assert session["status"] == "idle" and session["last_turn"] is None
    assert session["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert client.get(f"/v1/sessions/{session['id']}").json == session


def test_create_without_a_body(api, client):
    agent = api.agent()
    session = client.post(f"/v1/agents/{agent['id']}/sessions", status=201).json
    assert session["title"] is None and session["tags"] == []


def test_create_under_a_missing_agent_is_404(client):
    error_of(client.post_json(f"/v1/agents/{everruns._uuid7()}/sessions", {}, status="*"), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/agents/{everruns._uuid7()}/sessions", status="*"), 404, "NOT_FOUND")


def test_provider_and_model_overrides(api, client):
    provider = api.provider()
    session = api.session(provider_id=provider["id"], model="gpt-4.1")
    assert (session["provider_id"], session["model"]) == (provider["id"], "gpt-4.1")
    body = {"provider_id": everruns._uuid7()}
    error_of(client.post_json(f"/v1/agents/{session['agent_id']}/sessions", body, status="*"), 400, "VALIDATION_ERROR")


def test_patch_changes_only_given_fields(api, client):
    session = api.session(title="old", tags=["a"])
    patched = client.patch_json(f"/v1/sessions/{session['id']}", {"title": "new"}).json
    assert patched["title"] == "new" and patched["tags"] == ["a"]
    patched = client.patch_json(f"/v1/sessions/{session['id']}", {"model": "m2", "tags": []}).json
    assert (patched["title"], patched["model"], patched["tags"]) == ("new", "m2", [])
    error_of(
        client.patch_json(f"/v1/sessions/{session['id']}", {"status": "running"}, status="*"), 400, "VALIDATION_ERROR"
    )


def test_list_newest_first_only_that_agents(api, client):
    agent, other = api.agent(), api.agent()
    made = [api.session(agent["id"])["id"] for _ in range(3)]
    api.session(other["id"])
    page = client.get(f"/v1/agents/{agent['id']}/sessions?limit=2").json
    assert [s["id"] for s in page["data"]] == made[::-1][:2] and page["has_more"] is True
    rest = client.get(f"/v1/agents/{agent['id']}/sessions?after={page['next_after']}").json
    assert [s["id"] for s in rest["data"]] == made[:1] and rest["has_more"] is False


def test_delete_removes_messages(api, client):
    session = api.session()
    api.message(session["id"], status=201)
    client.delete(f"/v1/sessions/{session['id']}", status=204)
    client.get(f"/v1/sessions/{session['id']}", status=404)
    client.get(f"/v1/sessions/{session['id']}/messages", status=404)
    client.delete(f"/v1/sessions/{session['id']}", status=404)
