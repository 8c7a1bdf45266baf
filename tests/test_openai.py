"""The OpenAI-compatible adapter against a stand-in speaking Chat Completions streaming."""

from conftest import CANARY_KEY, DONE, chunk, finish, remote_session


def usage(prompt, completion):
    return chunk(usage={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})


def text_answer(*pieces, prompt=9, completion=2):
    first = [chunk({"role": "assistant", "content": "", "refusal": None})]
    return first + [chunk({"content": p}) for p in pieces] + [chunk({}, "stop"), usage(prompt, completion), DONE]


def tool_fragment(index, call_id=None, name=None, arguments=""):
    call = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call.update(id=call_id, type="function")
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


def test_plain_text_answer_and_the_request(api, client, upstream):
    session = remote_session(api, upstream, "openai", max_tokens=321)
    upstream.sse(text_answer("Hel", "lo!"))
    api.message(session["id"], "Say hello", status=201)
    events = finish(client, session["id"])
    assert [e["data"]["delta"] for e in events if e["type"] == "message.delta"] == ["Hel", "lo!"]
    answer = events[-2]["data"]["message"]
    assert answer["content"] == [{"type": "text", "text": "Hello!"}]
    assert (answer["model"], answer["provider_id"]) == ("test-model", session_agent_provider(client, session))
    done = events[-1]["data"]
    assert done["status"] == "completed" and done["usage"] == {"input_tokens": 9, "output_tokens": 2}
    request = upstream.requests[0]
    assert (request["method"], request["path"]) == ("POST", "/v1/chat/completions")
    assert request["headers"]["authorization"] == f"Bearer {CANARY_KEY}"
    body = request["json"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"]) == ("test-model", 321)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
    assert "tools" not in body


def test_turns_reuse_the_connection_to_the_provider(api, client, upstream):
    session = remote_session(api, upstream, "openai")
    for word in ("one", "two", "three"):
        upstream.sse(text_answer(word))
        api.message(session["id"], word, status=201)
        assert finish(client, session["id"])[-1]["data"]["status"] == "completed"
    assert len({r["connection"] for r in upstream.requests}) == 1


def test_a_kept_connection_the_provider_has_closed_is_replaced(api, client, upstream):
    session = remote_session(api, upstream, "openai")
    upstream.sse(text_answer("one"))
    api.message(session["id"], "one", status=201)
    finish(client, session["id"])
    upstream.restart()  # the kept connection is closed by the provider
    upstream.sse(text_answer("two"))
    api.message(session["id"], "two", status=201)
    done = finish(client, session["id"])
    assert done[-1]["data"]["status"] == "completed"
    assert done[-2]["data"]["message"]["content"] == [{"type": "text", "text": "two"}]
    assert len(upstream.requests) == 2 and upstream.requests[0]["connection"] != upstream.requests[1]["connection"]


def session_agent_provider(client, session):
    return client.get(f"/v1/agents/{session['agent_id']}").json["provider_id"]


def test_tool_call_with_split_arguments_then_the_results_in_openai_format(api, client, upstream):
    session = remote_session(api, upstream, "openai", capabilities=["test_math"])
    upstream.sse([
        chunk({"role": "assistant", "content": None}),
        tool_fragment(0, "call_Qx1", "add"),
        tool_fragment(0, arguments='{"a"'),
        tool_fragment(0, arguments=': 2, "b'),
        tool_fragment(0, arguments='": 3}'),
        chunk({}, "tool_calls"),
        usage(50, 20),
        DONE,
    ])  # fmt: skip
    upstream.sse(text_answer("It is 5.", prompt=80, completion=4))
    api.message(session["id"], "What is 2 + 3?", status=201)
    events = finish(client, session["id"])
    call = next(e["data"]["tool_call"] for e in events if e["type"] == "tool.call")
    assert call == {"id": "call_Qx1", "name": "add", "arguments": {"a": 2, "b": 3}}
    assert next(e["data"]["result"] for e in events if e["type"] == "tool.result") == {"result": 5}
    assert events[-1]["data"]["usage"] == {"input_tokens": 130, "output_tokens": 24}
    tools = upstream.requests[0]["json"]["tools"]
    assert tools[0]["type"] == "function" and tools[0]["function"]["name"] == "add"
    assert tools[0]["function"]["parameters"]["required"] == ["a", "b"]
    second = upstream.requests[1]["json"]["messages"]
    assert second[2] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_Qx1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}]}  # fmt: skip
    assert second[3] == {"role": "tool", "tool_call_id": "call_Qx1", "content": '{"result":5}'}


def test_two_tool_calls_in_one_response(api, client, upstream):
    session = remote_session(api, upstream, "openai", capabilities=["test_math"])
    upstream.sse([
        tool_fragment(0, "call_A", "multiply"),
        tool_fragment(1, "call_B", "subtract"),
        tool_fragment(0, arguments='{"a": 6, "b": 7}'),
        tool_fragment(1, arguments='{"a": 9, "b": 4}'),
        chunk({}, "tool_calls"),
        usage(10, 10),
        DONE,
    ])  # fmt: skip
    upstream.sse(text_answer("42 and 5"))
    api.message(session["id"], "two sums", status=201)
    events = finish(client, session["id"])
    results = [(e["data"]["tool_call_id"], e["data"]["result"]) for e in events if e["type"] == "tool.result"]
    assert results == [("call_A", {"result": 42}), ("call_B", {"result": 5})]
    tool_messages = [m for m in upstream.requests[1]["json"]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_A", "call_B"]


def test_no_key_means_no_authorization_and_base_url_may_end_with_a_slash(api, client, upstream):
    provider = api.provider(provider_type="openai", base_url=upstream.url + "/v1/", default_model="llama3")
    session = api.session(api.agent(provider_id=provider["id"])["id"])
    upstream.sse(text_answer("ok"))
    api.message(session["id"], "hi", status=201)
    assert finish(client, session["id"])[-1]["data"]["status"] == "completed"
    assert upstream.requests[0]["path"] == "/v1/chat/completions"
    assert "authorization" not in upstream.requests[0]["headers"]


def test_per_turn_controls_choose_the_model(api, client, upstream):
    session = remote_session(api, upstream, "openai")
    upstream.sse(text_answer("ok"))
    body = {"content": "hi", "controls": {"model": "gpt-4.1", "temperature": 0.3}}
    client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201)
    done = finish(client, session["id"])[-1]["data"]
    assert done["model"] == "gpt-4.1"
    assert (upstream.requests[0]["json"]["model"], upstream.requests[0]["json"]["temperature"]) == ("gpt-4.1", 0.3)


def test_models_come_from_the_upstream(api, client, upstream):
    provider = api.provider(provider_type="openai", base_url=upstream.url + "/v1", api_key=CANARY_KEY)
    upstream.json(200, {"object": "list", "data": [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]})  # fmt: skip
    page = client.get(f"/v1/llm-providers/{provider['id']}/models").json
    assert [m["id"] for m in page["data"]] == ["gpt-4o", "gpt-4o-mini"]
    assert upstream.requests[0]["path"] == "/v1/models"
    assert upstream.requests[0]["headers"]["authorization"] == f"Bearer {CANARY_KEY}"


def test_an_event_too_large_to_be_one_fails_the_turn_at_once(api, client, upstream, monkeypatch):
    """A stream whose line never ends is refused once it passes the limit (read in pieces,
    never copied again at each piece: a slow read would stall every other request)."""
    import everruns

    monkeypatch.setattr(everruns, "SSE_EVENT_BYTES", 256 * 1024)
    session = remote_session(api, upstream, "openai")
    upstream.sse([text_answer("ok")[0], b"data: " + b"x" * (1024 * 1024)])
    api.message(session["id"], "Say hello", status=201)
    done = finish(client, session["id"])[-1]["data"]
    assert done["status"] == "failed" and done["error"]["code"] == "PROVIDER_STREAM_ERROR"
    assert "over 262144 bytes" in done["error"]["message"]


def test_each_assistant_message_says_what_its_call_cost(api, client, upstream):
    session = remote_session(api, upstream, "openai", capabilities=["test_math"])
    upstream.sse([chunk({"role": "assistant", "content": None}), tool_fragment(0, "call_Qx1", "add", '{"a":2,"b":3}'),
                  chunk({}, "tool_calls"), usage(50, 20), DONE])  # fmt: skip
    upstream.sse(text_answer("It is ", "5.", prompt=80, completion=4))
    api.message(session["id"], "What is 2 + 3?", status=201)
    finish(client, session["id"])
    user, call, tool, answer = client.get(f"/v1/sessions/{session['id']}/messages").json["data"]
    assert (call["usage"], answer["usage"]) == ({"input_tokens": 50, "output_tokens": 20},
                                                {"input_tokens": 80, "output_tokens": 4})  # fmt: skip
    assert call["latency_ms"]["first_token"] is None  # tool calls only: no text
    assert 0 <= answer["latency_ms"]["first_token"] <= answer["latency_ms"]["total"] < 10_000
    assert answer["model"] == "test-model" and answer["incomplete"] is False
    for other in (user, tool):  # only assistant messages have these
        assert not set(other) & {"provider_id", "model", "usage", "latency_ms", "incomplete"}
