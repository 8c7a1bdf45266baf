"""Provider fallback (SPEC 18): a model call that fails before it answered goes to the
next provider of the session's (else the agent's) fallback_provider_ids, with that
provider's default model; provider.fallback says so, the answer records who gave it."""

import pytest
import test_openai as openai
from conftest import CANARY_KEY, Upstream, error_of, finish, free_port

SERVER_ERROR = {"error": {"message": "The server is overloaded", "type": "server_error"}}


@pytest.fixture
def backup():
    """A second OpenAI-compatible stand-in: the provider a failed call falls back to."""
    server = Upstream()
    yield server
    server.close()


def openai_provider(api, base_url, model, **settings):
    return api.provider(provider_type="openai", base_url=base_url, api_key=CANARY_KEY, default_model=model,
                        settings=settings)  # fmt: skip


def failing_primary(api, upstream, how):
    """The primary provider, scripted to fail the way `how` says (refused: nothing listens)."""
    if how == "refused":
        return openai_provider(api, f"http://127.0.0.1:{free_port()}/v1", "primary-model")
    if how == "503":
        for _ in range(3):  # every attempt of the call (it retries 5xx twice)
            upstream.json(503, SERVER_ERROR, {"Retry-After": "0"})
    if how == "timeout":
        upstream.sse(openai.text_answer("late"), hang=5)
        return openai_provider(api, upstream.url + "/v1", "primary-model", timeout_s=0.3)
    return openai_provider(api, upstream.url + "/v1", "primary-model")


def turn(api, client, agent_fields, text="hi", session_fields=None):
    agent = api.agent(**agent_fields)
    session = api.session(agent["id"], **(session_fields or {}))
    api.message(session["id"], text, status=201)
    return session, finish(client, session["id"])


@pytest.mark.parametrize("how", ["refused", "503", "timeout"])
def test_a_call_that_fails_before_it_answered_falls_back(api, client, upstream, backup, how):
    primary = failing_primary(api, upstream, how)
    second = openai_provider(api, backup.url + "/v1", "second-model")
    backup.sse(openai.text_answer("From ", "the second.", prompt=11, completion=4))
    session, events = turn(api, client, {"provider_id": primary["id"], "fallback_provider_ids": [second["id"]]})
    types = [e["type"] for e in events if e["type"] != "message.delta"]
    assert types == ["message.created", "session.started", "provider.fallback", "message.created",
                     "session.completed"]  # fmt: skip
    fallback = next(e["data"] for e in events if e["type"] == "provider.fallback")
    assert (fallback["from_provider_id"], fallback["to_provider_id"]) == (primary["id"], second["id"])
    code = {"refused": "PROVIDER_UNAVAILABLE", "503": "PROVIDER_ERROR", "timeout": "PROVIDER_TIMEOUT"}[how]
    assert fallback["reason"] == code and fallback["message"] and CANARY_KEY not in fallback["message"]
    answer = api.client.get(f"/v1/sessions/{session['id']}/messages").json["data"][-1]
    assert answer["content"] == [{"type": "text", "text": "From the second."}]
    assert (answer["provider_id"], answer["model"]) == (second["id"], "second-model")
    assert answer["usage"] == {"input_tokens": 11, "output_tokens": 4}
    done = events[-1]["data"]
    assert done["status"] == "completed" and done["usage"] == {"input_tokens": 11, "output_tokens": 4}
    assert backup.requests[0]["json"]["model"] == "second-model"
    assert backup.requests[0]["json"]["messages"][-1] == {"role": "user", "content": "hi"}


def test_a_failure_after_text_streamed_ends_the_turn_as_before(api, client, upstream, backup):
    primary = openai_provider(api, upstream.url + "/v1", "primary-model")
    second = openai_provider(api, backup.url + "/v1", "second-model")
    upstream.sse([openai.chunk({"role": "assistant", "content": ""}), openai.chunk({"content": "Hal"})], drop=True)
    _, events = turn(api, client, {"provider_id": primary["id"], "fallback_provider_ids": [second["id"]]})
    assert "provider.fallback" not in [e["type"] for e in events]
    assert (events[-1]["data"]["status"], events[-1]["data"]["error"]["code"]) == ("failed", "PROVIDER_STREAM_ERROR")
    assert backup.requests == []


def test_an_error_that_is_not_the_network_does_not_fall_back(api, client, upstream, backup):
    primary = openai_provider(api, upstream.url + "/v1", "primary-model")
    second = openai_provider(api, backup.url + "/v1", "second-model")
    upstream.json(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
    _, events = turn(api, client, {"provider_id": primary["id"], "fallback_provider_ids": [second["id"]]})
    assert events[-1]["data"]["error"]["code"] == "PROVIDER_AUTH" and backup.requests == []


def test_a_chain_of_three_ends_in_the_simulator(api, client, upstream, backup):
    first = openai_provider(api, f"http://127.0.0.1:{free_port()}/v1", "first-model")
    for _ in range(3):
        backup.json(502, SERVER_ERROR, {"Retry-After": "0"})
    second = openai_provider(api, backup.url + "/v1", "second-model")
    sim = api.provider(name="offline", provider_type="llmsim")
    chain = {"provider_id": first["id"], "fallback_provider_ids": [second["id"], sim["id"]]}
    _, events = turn(api, client, chain, "Say hello")
    hops = [(e["data"]["from_provider_id"], e["data"]["to_provider_id"], e["data"]["reason"])
            for e in events if e["type"] == "provider.fallback"]  # fmt: skip
    assert hops == [(first["id"], second["id"], "PROVIDER_UNAVAILABLE"), (second["id"], sim["id"], "PROVIDER_ERROR")]
    answer = events[-2]["data"]["message"]
    assert (answer["provider_id"], answer["model"]) == (sim["id"], "llmsim") and answer["content"][0]["text"]
    assert events[-1]["data"]["status"] == "completed"


def test_every_step_of_a_tool_turn_tries_the_turn_s_provider_first(api, client, upstream, backup):
    primary = openai_provider(api, upstream.url + "/v1", "primary-model")
    second = openai_provider(api, backup.url + "/v1", "second-model")
    call = openai.tool_fragment(0, "call_1", "add", '{"a": 2, "b": 3}')
    backup.sse(
        [openai.chunk({"role": "assistant", "content": None}), call, openai.chunk({}, "tool_calls"), openai.DONE]
    )
    for _ in range(3):  # the first step: every attempt fails
        upstream.json(500, SERVER_ERROR, {"Retry-After": "0"})
    upstream.sse(openai.text_answer("Five."))  # the second step: the primary answers again
    chain = {"provider_id": primary["id"], "fallback_provider_ids": [second["id"]], "capabilities": ["test_math"]}
    session, events = turn(api, client, chain, "add 2 and 3")
    assert [e["type"] for e in events].count("provider.fallback") == 1
    answers = [m for m in api.client.get(f"/v1/sessions/{session['id']}/messages").json["data"]
               if m["role"] == "assistant"]  # fmt: skip
    assert [a["provider_id"] for a in answers] == [second["id"], primary["id"]]
    assert answers[-1]["content"] == [{"type": "text", "text": "Five."}]


def test_a_session_s_list_overrides_its_agent_s(api, client, upstream, backup):
    primary = openai_provider(api, f"http://127.0.0.1:{free_port()}/v1", "primary-model")
    second = openai_provider(api, backup.url + "/v1", "second-model")
    sim = api.provider(name="offline", provider_type="llmsim")
    agent = api.agent(provider_id=primary["id"], fallback_provider_ids=[second["id"]])
    session = api.session(agent["id"], fallback_provider_ids=[sim["id"]])
    assert session["fallback_provider_ids"] == [sim["id"]]
    api.message(session["id"], "hi", status=201)
    events = finish(client, session["id"])
    assert next(e["data"]["to_provider_id"] for e in events if e["type"] == "provider.fallback") == sim["id"]
    assert backup.requests == []
    plain = api.session(agent["id"])  # none of its own: its agent's
    assert plain["fallback_provider_ids"] is None
    cleared = client.patch_json(f"/v1/sessions/{session['id']}", {"fallback_provider_ids": []}).json
    assert cleared["fallback_provider_ids"] == []  # an empty list of its own: no fallback at all
    api.message(session["id"], "again", status=201)
    done = finish(client, session["id"], after=events[-1]["seq"])[-1]["data"]
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_UNAVAILABLE")


def test_unknown_or_repeated_ids_are_400_and_change_nothing(api, client):
    sim = api.default_provider()
    unknown = "0190a000-0000-7000-8000-000000000000"
    agent = api.agent()
    for body, where in (({"name": "a", "fallback_provider_ids": [sim["id"], unknown]}, "/v1/agents"),
                        ({"fallback_provider_ids": [unknown]}, f"/v1/agents/{agent['id']}/sessions"),
                        ({"fallback_provider_ids": [sim["id"], sim["id"]]}, f"/v1/agents/{agent['id']}/sessions"),
                        ({"fallback_provider_ids": ["not-an-id"]}, "/v1/agents")):  # fmt: skip
        before = client.get("/v1/agents").json["data"], client.get(f"/v1/agents/{agent['id']}/sessions").json["data"]
        body = {"name": "a", **body} if where == "/v1/agents" else body
        error = error_of(client.post_json(where, body, expect_errors=True), 400, "VALIDATION_ERROR")
        assert "fallback_provider_ids" in str(error)
        after = client.get("/v1/agents").json["data"], client.get(f"/v1/agents/{agent['id']}/sessions").json["data"]
        assert after == before
    patched = client.patch_json(f"/v1/agents/{agent['id']}", {"fallback_provider_ids": [unknown]}, expect_errors=True)
    error_of(patched, 400, "VALIDATION_ERROR")
    assert client.get(f"/v1/agents/{agent['id']}").json["fallback_provider_ids"] == []


def test_a_provider_a_list_names_cannot_be_deleted(api, client):
    named_by_agent, named_by_session = api.provider(name="one"), api.provider(name="two")
    agent = api.agent(fallback_provider_ids=[named_by_agent["id"]])
    session = api.session(agent["id"], fallback_provider_ids=[named_by_session["id"]])
    for provider in (named_by_agent, named_by_session):
        error = error_of(client.delete(f"/v1/llm-providers/{provider['id']}", expect_errors=True), 409, "CONFLICT")
        assert "fallback" in error["message"]
        assert client.get(f"/v1/llm-providers/{provider['id']}").status_int == 200
    client.patch_json(f"/v1/sessions/{session['id']}", {"fallback_provider_ids": None})
    client.delete(f"/v1/llm-providers/{named_by_session['id']}", status=204)
    client.patch_json(f"/v1/agents/{agent['id']}", {"fallback_provider_ids": []})
    client.delete(f"/v1/llm-providers/{named_by_agent['id']}", status=204)


def test_an_imported_session_keeps_the_fallbacks_that_exist_here(api, client):
    kept, gone = api.provider(name="kept"), api.provider(name="gone")
    agent = api.agent()
    session = api.session(agent["id"], fallback_provider_ids=[gone["id"], kept["id"]])
    export = client.get(f"/v1/sessions/{session['id']}/export").body
    client.patch_json(f"/v1/sessions/{session['id']}", {"fallback_provider_ids": None})
    client.delete(f"/v1/llm-providers/{gone['id']}", status=204)
    jsonl = {"Content-Type": "application/x-ndjson"}
    imported = client.post(f"/v1/agents/{agent['id']}/sessions/import", export, headers=jsonl, status=201).json
    assert imported["fallback_provider_ids"] == [kept["id"]]
    plain = client.get(f"/v1/sessions/{api.session(agent['id'])['id']}/export").body
    again = client.post(f"/v1/agents/{agent['id']}/sessions/import", plain, headers=jsonl, status=201).json
    assert again["fallback_provider_ids"] is None  # its agent's, as before


def test_a_failure_once_a_tool_call_began_does_not_fall_back(api, client, upstream, backup):
    primary = openai_provider(api, upstream.url + "/v1", "primary-model")
    second = openai_provider(api, backup.url + "/v1", "second-model")
    begun = [openai.chunk({"role": "assistant", "content": None}), openai.tool_fragment(0, "call_1", "add", '{"a"')]
    upstream.sse(begun, drop=True)
    _, events = turn(api, client, {"provider_id": primary["id"], "fallback_provider_ids": [second["id"]],
                                   "capabilities": ["test_math"]})  # fmt: skip
    assert events[-1]["data"]["error"]["code"] == "PROVIDER_STREAM_ERROR" and backup.requests == []


def test_an_anthropic_overloaded_event_before_any_text_falls_back(api, client, upstream):
    import test_anthropic as anthropic

    primary = api.provider(provider_type="anthropic", base_url=upstream.url, api_key=CANARY_KEY)
    sim = api.provider(name="offline", provider_type="llmsim")
    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
    upstream.sse([anthropic.message_start(), anthropic.event("error", error=overloaded)])
    _, events = turn(api, client, {"provider_id": primary["id"], "fallback_provider_ids": [sim["id"]]})
    hop = next(e["data"] for e in events if e["type"] == "provider.fallback")
    assert (hop["reason"], "Overloaded" in hop["message"]) == ("PROVIDER_ERROR", True)
    assert events[-1]["data"]["status"] == "completed"


def test_a_cancel_while_a_call_fails_is_not_a_fallback(api, client, upstream, backup):
    import gevent

    primary = openai_provider(api, upstream.url + "/v1", "primary-model", timeout_s=30)
    second = openai_provider(api, backup.url + "/v1", "second-model")
    gate = gevent.event.Event()
    upstream.sse([gate], drop=True)  # headers, then nothing until the gate: the cancel comes meanwhile
    agent = api.agent(provider_id=primary["id"], fallback_provider_ids=[second["id"]])
    session = api.session(agent["id"])
    api.message(session["id"], "hi", status=201)
    from conftest import wait_until

    wait_until(lambda: upstream.requests, what="the call")
    client.post(f"/v1/sessions/{session['id']}/cancel")
    gate.set()
    events = finish(client, session["id"])
    assert "provider.fallback" not in [e["type"] for e in events] and backup.requests == []
    assert events[-1]["data"]["status"] == "cancelled"
