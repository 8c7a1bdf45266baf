"""Record and replay (SPEC 18): a provider with `record: true` stores each call it serves
as a cassette; a `replay` provider answers from them with the upstream gone, the same
text, tool calls and events in the same order, at the recorded pace times `speed`."""

import pytest
import test_openai as openai
import webtest
from conftest import CANARY_KEY, error_of, finish

CREDENTIAL = "Bearer canary-header-QQ7-0042"


def recording(api, upstream, **settings):
    """An OpenAI-compatible provider on the stand-in that records, with the canary key and a credential header."""
    settings = {"record": True, "extra_headers": {"X-Team-Token": CREDENTIAL}, **settings}
    return api.provider(provider_type="openai", base_url=upstream.url + "/v1", api_key=CANARY_KEY,
                        default_model="test-model", settings=settings)  # fmt: skip


def replaying(api, source, speed=0.0):
    return api.provider(name="offline", provider_type="replay",
                        settings={"source_provider_id": source["id"], "speed": speed})  # fmt: skip


def conversation(api, client, agent, provider_id, text):
    """A new session of the agent on that provider, one message, its turn's events."""
    session = api.session(agent["id"], provider_id=provider_id)
    api.message(session["id"], text, status=201)
    return session, finish(client, session["id"])


def script_tool_turn(upstream):
    call = [openai.tool_fragment(0, "call_Qx1", "add"), openai.tool_fragment(0, arguments='{"a": 2, '),
            openai.tool_fragment(0, arguments='"b": 3}')]  # fmt: skip
    upstream.sse([openai.chunk({"role": "assistant", "content": None}), *call, openai.chunk({}, "tool_calls"),
                  openai.usage(20, 5), openai.DONE])  # fmt: skip
    upstream.sse(openai.text_answer("The sum ", "is 5.", prompt=31, completion=4))


def shape(events):
    """What a client sees of a turn, ids aside: each event's type, and its text, call or result."""
    seen = []
    for e in events:
        data = e["data"]
        if e["type"] == "message.delta":
            seen.append(("delta", data["delta"]))
        elif e["type"] == "message.created":
            seen.append((data["message"]["role"], data["message"]["content"]))
        elif e["type"] == "tool.call":
            seen.append(("call", data["tool_call"]))
        elif e["type"] == "tool.result":
            seen.append(("result", data["tool_call_id"], data["result"], data["is_error"]))
        else:
            seen.append((e["type"], data.get("status")))
    return seen


def test_a_tool_turn_replays_with_the_upstream_gone(api, client, upstream):
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"], capabilities=["test_math"])
    script_tool_turn(upstream)
    _, recorded = conversation(api, client, agent, source["id"], "add 2 and 3")
    assert recorded[-1]["data"]["status"] == "completed" and len(upstream.requests) == 2
    upstream.close()  # the network is gone
    replay = replaying(api, source)
    session, replayed = conversation(api, client, agent, replay["id"], "add 2 and 3")
    assert shape(replayed) == shape(recorded)
    assert ("call", {"id": "call_Qx1", "name": "add", "arguments": {"a": 2, "b": 3}}) in shape(replayed)
    assert ("assistant", [{"type": "text", "text": "The sum is 5."}]) in shape(replayed)
    messages = client.get(f"/v1/sessions/{session['id']}/messages").json["data"]
    assert [m["usage"] for m in messages if m["role"] == "assistant"] == [
        {"input_tokens": 20, "output_tokens": 5},
        {"input_tokens": 31, "output_tokens": 4},
    ]
    assert {m["provider_id"] for m in messages if m["role"] == "assistant"} == {replay["id"]}
    assert replayed[-1]["data"]["usage"] == {"input_tokens": 51, "output_tokens": 9}


def test_speed_scales_the_recorded_timing(api, client, upstream):
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"])
    upstream.sse(openai.text_answer("slow ", "answer"), hang=0.6)
    session, _ = conversation(api, client, agent, source["id"], "take your time")
    recorded = client.get(f"/v1/sessions/{session['id']}/messages").json["data"][-1]["latency_ms"]
    assert recorded["first_token"] >= 550
    for speed, low, high in ((1.0, 0.8, 3.0), (0.0, 0.0, 0.5)):
        session, events = conversation(api, client, agent, replaying(api, source, speed)["id"], "take your time")
        assert events[-2]["data"]["message"]["content"] == [{"type": "text", "text": "slow answer"}]
        took = client.get(f"/v1/sessions/{session['id']}/messages").json["data"][-1]["latency_ms"]
        assert low * recorded["first_token"] <= took["first_token"] <= high * recorded["total"] + 100, (speed, took)


def test_a_call_without_a_cassette_fails_no_cassette_or_falls_back(api, client, upstream):
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"])
    upstream.sse(openai.text_answer("recorded"))
    conversation(api, client, agent, source["id"], "the recorded question")
    replay = replaying(api, source)
    _, events = conversation(api, client, agent, replay["id"], "a question never asked")
    done = events[-1]["data"]
    assert (done["status"], done["error"]["code"]) == ("failed", "NO_CASSETTE")
    sim = api.provider(name="sim", provider_type="llmsim")
    fallback = api.agent(provider_id=replay["id"], fallback_provider_ids=[sim["id"]])
    session = api.session(fallback["id"])
    api.message(session["id"], "a question never asked", status=201)
    events = finish(client, session["id"])
    hop = next(e["data"] for e in events if e["type"] == "provider.fallback")
    assert (hop["from_provider_id"], hop["to_provider_id"], hop["reason"]) == (replay["id"], sim["id"], "NO_CASSETTE")
    assert events[-1]["data"]["status"] == "completed"


@pytest.mark.parametrize("secret_key", [None, "a long random secret for the replay tests"])
def test_no_key_or_credential_header_is_in_any_cassette(make_app, upstream, secret_key):
    app = make_app(**({"secret_key": secret_key} if secret_key else {}))
    client = webtest.TestApp(app)
    from conftest import Api

    api = Api(client)
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"], system_prompt="Be brief.")
    upstream.sse(openai.text_answer("Your key is ", CANARY_KEY))  # an upstream that says the key back
    conversation(api, client, agent, source["id"], "what is my key?")
    assert upstream.requests[0]["headers"]["x-team-token"] == CREDENTIAL  # it was sent
    listing = client.get(f"/v1/llm-providers/{source['id']}/cassettes")
    assert len(listing.json["data"]) == 1
    m = app.everruns.store.m
    stored = [str(row) for row in m.db.execute_sql("SELECT * FROM cassette").fetchall()]
    for text in (listing.text, *stored):
        assert CANARY_KEY not in text and "canary-header" not in text
    cassette = listing.json["data"][0]
    assert set(cassette["request"]) == {"system", "summary", "messages", "tools", "temperature"}
    assert cassette["request"]["messages"] == [{"role": "user", "text": "what is my key?"}]
    assert cassette["answer"]["text"] == "Your key is [redacted]" and cassette["model"] == "test-model"


def test_listing_and_clearing_cassettes(api, client, upstream):
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"])
    for word in ("one", "two", "three"):
        upstream.sse(openai.text_answer(word))
        conversation(api, client, agent, source["id"], word)
    page = client.get(f"/v1/llm-providers/{source['id']}/cassettes?limit=2").json
    assert len(page["data"]) == 2 and page["has_more"]
    rest = client.get(f"/v1/llm-providers/{source['id']}/cassettes?after={page['next_after']}").json
    cassettes = page["data"] + rest["data"]
    assert [c["answer"]["text"] for c in cassettes] == ["one", "two", "three"]
    assert len({c["request_hash"] for c in cassettes}) == 3
    client.delete(f"/v1/llm-providers/{source['id']}/cassettes", status=204)
    assert client.get(f"/v1/llm-providers/{source['id']}/cassettes").json["data"] == []
    unknown = "0190a000-0000-7000-8000-000000000000"
    error_of(client.get(f"/v1/llm-providers/{unknown}/cassettes", expect_errors=True), 404, "NOT_FOUND")
    error_of(client.delete(f"/v1/llm-providers/{unknown}/cassettes", expect_errors=True), 404, "NOT_FOUND")


def test_a_provider_that_does_not_record_stores_nothing(api, client, upstream):
    source = recording(api, upstream, record=False)
    agent = api.agent(provider_id=source["id"])
    upstream.sse(openai.text_answer("not kept"))
    conversation(api, client, agent, source["id"], "hi")
    assert client.get(f"/v1/llm-providers/{source['id']}/cassettes").json["data"] == []


def test_replay_providers_are_checked(api, client, upstream):
    source = recording(api, upstream)
    sim = api.provider(name="sim", provider_type="llmsim")
    before = client.get("/v1/llm-providers").json["data"]
    for settings in ({"source_provider_id": "0190a000-0000-7000-8000-000000000000"}, {"source_provider_id": sim["id"]},
                     {"speed": 1}, {"source_provider_id": source["id"], "speed": -1}):  # fmt: skip
        body = {"name": "r", "provider_type": "replay", "settings": settings}
        error_of(client.post_json("/v1/llm-providers", body, expect_errors=True), 400, "VALIDATION_ERROR")
    no_settings = {"name": "r", "provider_type": "replay"}
    error_of(client.post_json("/v1/llm-providers", no_settings, expect_errors=True), 400, "VALIDATION_ERROR")
    assert client.get("/v1/llm-providers").json["data"] == before
    replay = replaying(api, source)
    patch = {"settings": {"source_provider_id": replay["id"]}}  # itself
    error_of(client.patch_json(f"/v1/llm-providers/{replay['id']}", patch, expect_errors=True), 400,
             "VALIDATION_ERROR")  # fmt: skip
    error = error_of(client.delete(f"/v1/llm-providers/{source['id']}", expect_errors=True), 409, "CONFLICT")
    assert "replay" in error["message"]
    client.delete(f"/v1/llm-providers/{replay['id']}", status=204)
    client.delete(f"/v1/llm-providers/{source['id']}", status=204)


def test_settings_sent_back_as_shown_keep_the_credential_header(api, client, upstream):
    source = recording(api, upstream, record=False)
    shown = client.get(f"/v1/llm-providers/{source['id']}").json["settings"]
    assert shown["extra_headers"] == {"X-Team-Token": "[redacted]"}
    client.patch_json(f"/v1/llm-providers/{source['id']}", {"settings": {**shown, "record": True}})
    agent = api.agent(provider_id=source["id"])
    upstream.sse(openai.text_answer("ok"))
    conversation(api, client, agent, source["id"], "hi")
    assert upstream.requests[0]["headers"]["x-team-token"] == CREDENTIAL  # not "[redacted]"
    assert len(client.get(f"/v1/llm-providers/{source['id']}/cassettes").json["data"]) == 1


def test_a_copy_without_the_secret_key_still_replays(make_app, db_path, upstream):
    from conftest import Api

    recorder = make_app(secret_key="the recorder's own secret")
    api, client = Api(webtest.TestApp(recorder)), webtest.TestApp(recorder)
    source = recording(api, upstream)
    agent = api.agent(provider_id=source["id"])
    upstream.sse(openai.text_answer("recorded ", "once"))
    _, recorded = conversation(api, client, agent, source["id"], "hello")
    recorder.close()
    upstream.close()
    player = make_app(db_path)  # the same database, no secret key: the source's key cannot be opened
    api, client = Api(webtest.TestApp(player)), webtest.TestApp(player)
    replay = replaying(api, source)
    _, replayed = conversation(api, client, agent, replay["id"], "hello")
    assert shape(replayed) == shape(recorded)
