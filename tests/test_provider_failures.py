"""Provider failures end the turn cleanly, for both adapters: a clear code and
message, the session idle again, and the API key nowhere a client or a log sees."""

import logging

import pytest
import test_anthropic as anthropic
import test_openai as openai
from conftest import CANARY_KEY, finish, free_port, remote_session

KINDS = {
    "openai": (
        openai.text_answer("fine"),
        {"error": {"message": f"Incorrect API key provided: {CANARY_KEY}.", "code": "invalid_api_key"}},
        [openai.chunk({"role": "assistant", "content": ""}), openai.chunk({"content": "Hal"})],
    ),
    "anthropic": (
        anthropic.text_answer("fine"),
        {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {CANARY_KEY}"}},
        [anthropic.message_start(), *anthropic.text_block(0, "Hal")[:2]],
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


def run_turn(api, client, upstream, kind, caplog, **settings):
    """Post a message, wait for the turn; its session.completed data, after checking the key never leaked."""
    caplog.set_level(logging.DEBUG)
    session = remote_session(api, upstream, kind, **settings)
    api.message(session["id"], "hi", status=201)
    events = finish(client, session["id"])
    seen = [client.get(f"/v1/sessions/{session['id']}").text, client.get(f"/v1/sessions/{session['id']}/messages").text,
            client.get(f"/v1/sessions/{session['id']}/events?format=json&limit=100").text, str(events), caplog.text,
            client.get("/v1/llm-providers").text]  # fmt: skip
    assert not [s for s in seen if CANARY_KEY in s]
    assert client.get(f"/v1/sessions/{session['id']}").json["status"] == "idle"
    return events[-1]["data"]


def test_401_is_a_failed_turn_with_the_upstream_message(api, client, upstream, kind, caplog):
    upstream.json(401, KINDS[kind][1])
    done = run_turn(api, client, upstream, kind, caplog)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_AUTH")
    assert "401" in done["error"]["message"] and ("Incorrect API key" in done["error"]["message"]
                                                  or "invalid x-api-key" in done["error"]["message"])  # fmt: skip
    assert len(upstream.requests) == 1  # never retried


def test_429_then_success_is_retried(api, client, upstream, kind, caplog):
    upstream.json(429, {"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}, {"Retry-After": "0"})
    upstream.sse(KINDS[kind][0])
    done = run_turn(api, client, upstream, kind, caplog)
    assert done["status"] == "completed" and len(upstream.requests) == 2


def test_persistent_500_fails_after_retries(api, client, upstream, kind, caplog):
    for _ in range(3):
        upstream.json(500, {"error": {"message": "The server had an error", "type": "server_error"}})
    done = run_turn(api, client, upstream, kind, caplog)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_ERROR")
    assert "500" in done["error"]["message"] and "The server had an error" in done["error"]["message"]
    assert len(upstream.requests) == 3


def test_a_hang_past_the_timeout(api, client, upstream, kind, caplog):
    upstream.sse(KINDS[kind][0], hang=5)
    done = run_turn(api, client, upstream, kind, caplog, timeout_s=0.3)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_TIMEOUT")


def test_a_connection_dropped_mid_stream(api, client, upstream, kind, caplog):
    upstream.sse(KINDS[kind][2], drop=True)
    done = run_turn(api, client, upstream, kind, caplog)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_STREAM_ERROR")


def test_a_malformed_chunk(api, client, upstream, kind, caplog):
    upstream.sse([*KINDS[kind][2], b"data: {this is not json\n\n"])
    done = run_turn(api, client, upstream, kind, caplog)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_STREAM_ERROR")


def test_an_unreachable_provider(api, client, kind, caplog):
    dead = type("Dead", (), {"url": f"http://127.0.0.1:{free_port()}"})()
    done = run_turn(api, client, dead, kind, caplog)
    assert (done["status"], done["error"]["code"]) == ("failed", "PROVIDER_UNAVAILABLE")


def test_models_of_an_unreachable_provider_is_502(api, client, kind):
    base = f"http://127.0.0.1:{free_port()}"
    provider = api.provider(provider_type=kind, base_url=base, api_key=CANARY_KEY)
    response = client.get(f"/v1/llm-providers/{provider['id']}/models", status="*")
    assert response.status_int == 502 and response.json["error"]["code"] == "PROVIDER_UNAVAILABLE"
    assert CANARY_KEY not in response.text


HEADER_CANARY = "hdr-canary-7f3a9c2e5b"
HEADERS = {"X-Api-Key": HEADER_CANARY, "X-Team": "blue"}


def test_a_credential_extra_header_never_leaks(api, client, upstream, caplog):
    caplog.set_level(logging.DEBUG)
    session = remote_session(api, upstream, "openai", extra_headers=HEADERS)
    provider_id = client.get(f"/v1/agents/{session['agent_id']}").json["provider_id"]
    echo = {"error": {"message": f"bad header X-Api-Key={HEADER_CANARY}"}}
    upstream.json(401, echo)
    api.message(session["id"], "hi", status=201)
    done = finish(client, session["id"])[-1]["data"]
    assert upstream.requests[0]["headers"]["x-api-key"] == HEADER_CANARY  # it was sent, and echoed back
    assert done["error"]["message"].endswith("bad header X-Api-Key=[redacted]")
    upstream.json(401, echo)
    models = client.get(f"/v1/llm-providers/{provider_id}/models", status=502)
    seen = [str(done), client.get(f"/v1/sessions/{session['id']}").text, models.text, caplog.text,
            client.get(f"/v1/sessions/{session['id']}/events?format=json&limit=100").text]  # fmt: skip
    assert not [s for s in seen if HEADER_CANARY in s]
    shown = client.get(f"/v1/llm-providers/{provider_id}").json["settings"]["extra_headers"]
    assert shown == {"X-Api-Key": "[redacted]", "X-Team": "blue"}


@pytest.mark.parametrize("body", ["json", "text"])
def test_an_error_message_is_redacted_before_it_is_cut(api, client, upstream, caplog, body):
    text = "x" * 495 + CANARY_KEY + " and more text after the key"
    if body == "json":
        upstream.json(401, {"error": {"message": text}})
    else:
        upstream.reply(401, [text.encode()], {"Content-Type": "text/plain"})
    message = run_turn(api, client, upstream, "openai", caplog)["error"]["message"]
    assert message.startswith("the provider answered 401: xxx")
    assert not [n for n in range(5, len(CANARY_KEY) + 1) if CANARY_KEY[:n] in message]  # not even its start
