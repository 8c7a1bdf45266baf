"""Messages: both body forms, limits, Idempotency-Key, pagination, titles, what a cancel keeps."""

import gevent
import pytest
from conftest import error_of, finish, wait_until

MiB = 1024 * 1024


def user_messages(client, url):
    """The ids of the session's user messages, once its turns are done."""
    finish(client, url.split("/")[3])
    return [m["id"] for m in client.get(url).json["data"] if m["role"] == "user"]


def test_post_shorthand_and_full_form(api, client):
    session = api.session()
    short = api.message(session["id"], "hello", status=201)
    assert short["role"] == "user" and short["content"] == [{"type": "text", "text": "hello"}]
    body = {"message": {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
    full = client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201).json
    assert [p["text"] for p in full["content"]] == ["a", "b"]
    finish(client, session["id"])
    listed = client.get(f"/v1/sessions/{session['id']}/messages").json["data"]
    assert [m["id"] for m in listed if m["role"] == "user"] == [short["id"], full["id"]]


def test_full_form_with_text_content_and_controls(api, client):
    session = api.session()
    body = {
        "message": {"role": "user", "content": "hi"},
        "controls": {"model": "m", "max_iterations": 3, "temperature": 0.2},
    }
    assert (
        client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201).json["content"][0]["text"] == "hi"
    )


def test_only_user_messages_can_be_posted(api, client):
    session = api.session()
    for role in ("assistant", "tool", "system"):
        body = {"message": {"role": role, "content": "x"}}
        error_of(client.post_json(f"/v1/sessions/{session['id']}/messages", body, status="*"), 400, "VALIDATION_ERROR")
    assert client.get(f"/v1/sessions/{session['id']}/messages").json["data"] == []


def test_bad_bodies_are_rejected(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    for body in (
        {},
        {"content": ""},
        {"content": []},
        {"content": 5},
        {"content": "x", "extra": 1},
        {"content": "x", "message": {"role": "user", "content": "y"}},
        {"content": "x", "controls": {"temperature": 3}},
    ):
        error_of(client.post_json(url, body, status="*"), 400, "VALIDATION_ERROR")


def test_message_text_limit_at_its_boundary(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    assert client.post_json(url, {"content": "x" * MiB}).status_int == 201
    error_of(client.post_json(url, {"content": "x" * (MiB + 1)}, status="*"), 400, "VALIDATION_ERROR")
    parts = [{"type": "text", "text": "x" * (MiB // 2)}, {"type": "text", "text": "x" * (MiB // 2 + 1)}]
    body = {"message": {"role": "user", "content": parts}}
    error_of(client.post_json(url, body, status="*"), 400, "VALIDATION_ERROR")


def test_missing_session_is_404(client):
    url = "/v1/sessions/01890000-0000-7000-8000-000000000000/messages"
    error_of(client.post_json(url, {"content": "x"}, status="*"), 404, "NOT_FOUND")


def test_unknown_provider_in_controls_is_400(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    body = {"content": "x", "controls": {"provider_id": "01890000-0000-7000-8000-000000000000"}}
    error = error_of(client.post_json(url, body, status="*"), 400, "VALIDATION_ERROR")
    assert error["details"][0]["loc"] == ["controls", "provider_id"]


def test_idempotent_retry_returns_the_first_message(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    first = client.post_json(url, {"content": "once"}, headers={"Idempotency-Key": "k1"}, status=201).json
    again = client.post_json(url, {"content": "once"}, headers={"Idempotency-Key": "k1"}, status=200).json
    same = ("id", "content", "created_at")  # the same message (its turn may have claimed it meanwhile)
    assert {k: again[k] for k in same} == {k: first[k] for k in same}
    same_in_full_form = {"message": {"role": "user", "content": "once"}}
    again = client.post_json(url, same_in_full_form, headers={"Idempotency-Key": "k1"}, status=200).json
    assert {k: again[k] for k in same} == {k: first[k] for k in same}
    assert user_messages(client, url) == [first["id"]]


def test_same_key_with_another_body_is_409(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    client.post_json(url, {"content": "one"}, headers={"Idempotency-Key": "k"}, status=201)
    error_of(client.post_json(url, {"content": "two"}, headers={"Idempotency-Key": "k"}, status="*"), 409, "CONFLICT")
    assert len(user_messages(client, url)) == 1


def test_keys_are_per_session(api, client):
    a, b = api.session(), api.session()
    for s in (a, b):
        client.post_json(
            f"/v1/sessions/{s['id']}/messages", {"content": "x"}, headers={"Idempotency-Key": "k"}, status=201
        )


def test_idempotency_key_length_limit(api, client):
    url = f"/v1/sessions/{api.session()['id']}/messages"
    client.post_json(url, {"content": "x"}, headers={"Idempotency-Key": "k" * 255}, status=201)
    error_of(
        client.post_json(url, {"content": "y"}, headers={"Idempotency-Key": "k" * 256}, status="*"),
        400,
        "VALIDATION_ERROR",
    )


def test_messages_oldest_first_with_pages(api, client):
    session = api.session()
    made = [api.message(session["id"], f"m{i}", status=201)["id"] for i in range(5)]
    url = f"/v1/sessions/{session['id']}/messages"
    finish(client, session["id"])
    everything = [m["id"] for m in client.get(url).json["data"]]  # each question, then its answer
    assert [i for i in everything if i in made] == made and len(everything) == 10
    page = client.get(url + "?limit=3").json
    assert [m["id"] for m in page["data"]] == everything[:3] and page["next_after"] == everything[2]
    rest = client.get(url + f"?limit=7&after={page['next_after']}").json
    assert [m["id"] for m in rest["data"]] == everything[3:] and rest["has_more"] is False


@pytest.mark.parametrize(
    "body", [{"content": [{"text": "hi"}]}, {"message": {"role": "user", "content": [{"text": "hi"}]}}]
)
def test_a_part_without_its_type_says_so(api, client, body):
    session = api.session()
    response = client.post_json(f"/v1/sessions/{session['id']}/messages", body, status="*")
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert error["message"].endswith("content.0.type: Field required")
    assert [d["loc"][-3:] for d in error["details"]] == [["content", 0, "type"]]  # one cause, no union branches


def test_messages_are_listed_in_the_order_of_the_conversation(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    api.message(session["id"], 'add {"a": 1, "b": 2}', status=201)
    api.message(session["id"], "and then?", status=201)  # posted while the first turn runs
    finish(client, session["id"])
    url = f"/v1/sessions/{session['id']}/messages?limit=2"
    pages = [client.get(url).json]
    while pages[-1]["has_more"]:
        pages.append(client.get(f"{url}&after={pages[-1]['next_after']}").json)
    roles = [m["role"] for page in pages for m in page["data"]]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert [m["content"][0].get("text") for page in pages for m in page["data"]][4] == "and then?"


def test_a_posted_message_is_listed_at_once_and_pages_miss_nothing(api, client):
    session = api.session(api.agent(provider_id=api.provider(provider_type="llmsim", name="slow",
                                                             settings={"token_delay_ms": 30})["id"])["id"])  # fmt: skip
    url = f"/v1/sessions/{session['id']}/messages"
    api.message(session["id"], "one two three", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session['id']}").json["status"] == "running", pause=0.005)
    waiting = api.message(session["id"], "waiting", status=201)
    during = client.get(url).json["data"]
    assert [m["content"][0]["text"] for m in during] == ["one two three", "waiting"]  # read your writes
    assert during[-1]["id"] == waiting["id"]  # waiting for its turn: listed last
    finish(client, session["id"])
    later = client.get(f"{url}?after={during[-1]['id']}").json["data"]  # the running turn's answer came after
    assert [m["content"][0]["text"] for m in later] == ["You said: one two three", "You said: waiting"]
    whole = [m["content"][0]["text"] for m in client.get(url).json["data"]]
    assert whole == ["one two three", "You said: one two three", "waiting", "You said: waiting"]
    other = api.session()
    assert client.get(f"/v1/sessions/{other['id']}/messages?after={during[-1]['id']}").json["data"] == []


def test_an_untitled_session_takes_its_title_from_its_first_message(api, client):
    session = api.session()
    api.message(session["id"], "\n  Plan the garden for spring  \nwith the details below", status=201)
    title = client.get(f"/v1/sessions/{session['id']}").json["title"]
    assert title == "Plan the garden for spring"
    api.message(session["id"], "Something else", status=201)
    assert client.get(f"/v1/sessions/{session['id']}").json["title"] == title
    long = api.session()
    api.message(long["id"], "Compare the three cheapest flights from Lisbon to Berlin next weekend please", status=201)
    cut = "Compare the three cheapest flights from Lisbon to Berlin…"  # at a word, near 60 characters
    assert client.get(f"/v1/sessions/{long['id']}").json["title"] == cut
    named = api.session(title="Mine")
    api.message(named["id"], "Hello", status=201)
    assert client.get(f"/v1/sessions/{named['id']}").json["title"] == "Mine"


def test_a_cancelled_turn_keeps_the_text_it_streamed(api, client, app, upstream):
    from conftest import DONE, chunk

    slow = api.provider(name="slow", provider_type="llmsim", settings={"token_delay_ms": 30})
    session = app.client.sessions.create(api.agent(provider_id=slow["id"])["id"])
    session.send("one two three four five six seven eight nine ten eleven twelve thirteen fourteen")
    deltas = []
    for event in session.stream():
        if event.type == "message.delta":
            deltas.append(event.data.delta)
            if len(deltas) == 5:
                gevent.spawn(session.cancel)
        if event.type == "session.completed":
            assert event.data.status == "cancelled"
            break
    kept = session.messages()[-1]
    assert kept.role == "assistant" and kept.incomplete is True and len(deltas) >= 5
    assert kept.content[0].text == "".join(deltas) and kept.latency_ms.first_token is not None
    model = api.provider(name="up", provider_type="openai", base_url=upstream.url + "/v1", default_model="m")
    upstream.sse([chunk({"content": "ok"}), chunk({}, "stop"), DONE])
    assert session.ask("go on", provider_id=model["id"], timeout=20) == "ok"
    assert {"role": "assistant", "content": "".join(deltas)} in upstream.requests[0]["json"]["messages"]
