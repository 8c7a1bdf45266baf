"""The Anthropic adapter against a stand-in speaking the Messages streaming format."""

import json

from conftest import CANARY_KEY, finish, remote_session


def event(kind, **data):
    """One server-sent event as the Messages API streams it."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def message_start(input_tokens=25):
    message = {"id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "content": [],
               "model": "claude-sonnet-4-5", "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": input_tokens, "output_tokens": 1}}  # fmt: skip
    return event("message_start", message=message)


def text_block(index, *pieces):
    out = [event("content_block_start", index=index, content_block={"type": "text", "text": ""})]
    out += [event("content_block_delta", index=index, delta={"type": "text_delta", "text": p}) for p in pieces]
    return [*out, event("content_block_stop", index=index)]


def tool_block(index, tool_id, name, *json_pieces):
    block = {"type": "tool_use", "id": tool_id, "name": name, "input": {}}
    out = [event("content_block_start", index=index, content_block=block)]
    out += [event("content_block_delta", index=index, delta={"type": "input_json_delta", "partial_json": p})
            for p in json_pieces]  # fmt: skip
    return [*out, event("content_block_stop", index=index)]


def finish_message(stop_reason, output_tokens):
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    return [event("message_delta", delta=delta, usage={"output_tokens": output_tokens}), event("message_stop")]


def text_answer(*pieces, input_tokens=25, output_tokens=12):
    ping = event("ping")
    return [message_start(input_tokens), ping, *text_block(0, *pieces), *finish_message("end_turn", output_tokens)]


def test_plain_text_answer_and_the_request(api, client, upstream):
    session = remote_session(api, upstream, "anthropic", max_tokens=1024)
    upstream.sse(text_answer("Hello", " there"))
    api.message(session["id"], "Greet me", status=201)
    events = finish(client, session["id"])
    assert [e["data"]["delta"] for e in events if e["type"] == "message.delta"] == ["Hello", " there"]
    assert events[-2]["data"]["message"]["content"] == [{"type": "text", "text": "Hello there"}]
    assert events[-1]["data"]["usage"] == {"input_tokens": 25, "output_tokens": 12}
    request = upstream.requests[0]
    assert (request["method"], request["path"]) == ("POST", "/v1/messages")
    assert request["headers"]["x-api-key"] == CANARY_KEY
    assert request["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request["headers"]
    body = request["json"]
    assert (body["model"], body["max_tokens"], body["stream"], body["system"]) == (
        "test-model",
        1024,
        True,
        "Be brief.",
    )
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Greet me"}]}]


def test_tool_use_with_split_json_then_tool_results(api, client, upstream):
    session = remote_session(api, upstream, "anthropic", capabilities=["test_weather"])
    upstream.sse([
        message_start(400),
        *text_block(0, "Let me check."),
        *tool_block(1, "toolu_01A09q90qw90lq917835lq9", "get_weather", '{"ci', 'ty": "Par', 'is"}'),
        *finish_message("tool_use", 89),
    ])  # fmt: skip
    upstream.sse(text_answer("Sunny in Paris.", input_tokens=500, output_tokens=7))
    api.message(session["id"], "Weather in Paris?", status=201)
    events = finish(client, session["id"])
    call = next(e["data"]["tool_call"] for e in events if e["type"] == "tool.call")
    assert call == {"id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "arguments": {"city": "Paris"}}
    assert events[-1]["data"]["usage"] == {"input_tokens": 900, "output_tokens": 96}
    tools = upstream.requests[0]["json"]["tools"]
    assert tools[0]["name"] == "get_weather" and tools[0]["input_schema"]["required"] == ["city"]
    messages = upstream.requests[1]["json"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    result = messages[2]["content"][0]
    assert (result["type"], result["tool_use_id"], result["is_error"]) == ("tool_result", call["id"], False)
    assert json.loads(result["content"])["city"] == "Paris"


def test_two_tool_uses_merge_their_results_into_one_user_turn(api, client, upstream):
    session = remote_session(api, upstream, "anthropic", capabilities=["test_math"])
    upstream.sse([
        message_start(),
        *tool_block(0, "toolu_A", "add", '{"a": 1, "b": 2}'),
        *tool_block(1, "toolu_B", "divide", '{"a": 1, ', '"b": 0}'),
        *finish_message("tool_use", 30),
    ])  # fmt: skip
    upstream.sse(text_answer("3, and no division by zero."))
    api.message(session["id"], "Do both", status=201)
    assert finish(client, session["id"])[-1]["data"]["status"] == "completed"
    messages = upstream.requests[1]["json"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    results = messages[2]["content"]
    assert [(r["tool_use_id"], r["is_error"]) for r in results] == [("toolu_A", False), ("toolu_B", True)]


def test_an_error_event_mid_stream_fails_the_turn(api, client, upstream):
    session = remote_session(api, upstream, "anthropic")
    error = {"type": "overloaded_error", "message": "Overloaded"}
    upstream.sse([message_start(), *text_block(0, "Par"), event("error", error=error)])
    api.message(session["id"], "hi", status=201)
    done = finish(client, session["id"])[-1]["data"]
    assert done["status"] == "failed" and "Overloaded" in done["error"]["message"]
    assert client.get(f"/v1/sessions/{session['id']}").json["status"] == "idle"


def test_models_come_from_the_upstream(api, client, upstream):
    provider = api.provider(provider_type="anthropic", base_url=upstream.url, api_key=CANARY_KEY)
    model = {"type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5",
             "created_at": "2025-09-29T00:00:00Z"}  # fmt: skip
    upstream.json(200, {"data": [model], "has_more": False, "first_id": model["id"], "last_id": model["id"]})
    assert [m["id"] for m in client.get(f"/v1/llm-providers/{provider['id']}/models").json["data"]] == [
        "claude-sonnet-4-5"
    ]
    assert upstream.requests[0]["path"] == "/v1/models" and upstream.requests[0]["headers"]["x-api-key"] == CANARY_KEY


def test_an_assistant_message_says_what_its_call_cost(api, client, upstream):
    session = remote_session(api, upstream, "anthropic")
    upstream.sse(text_answer("Hi", " there", input_tokens=31, output_tokens=7))
    api.message(session["id"], "Say hi", status=201)
    finish(client, session["id"])
    answer = client.get(f"/v1/sessions/{session['id']}/messages").json["data"][-1]
    assert answer["usage"] == {"input_tokens": 31, "output_tokens": 7} and answer["incomplete"] is False
    assert 0 <= answer["latency_ms"]["first_token"] <= answer["latency_ms"]["total"]
