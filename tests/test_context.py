"""Context management (SPEC 16): every model call fits its model's window, older turns are
compacted into a summary the turn's own model writes, GET /v1/sessions/{id}/context."""

import json
import signal
import sqlite3

import pytest
from conftest import DONE, chunk, error_of, finish, wait_until

import everruns


def simulator(api, **settings):
    return api.provider(name="sim", provider_type="llmsim", settings=settings)["id"]


def sentence(i, words=40):
    return f"Turn {i}: " + " ".join(f"word{i}x{j}" for j in range(words))


def context(client, session_id):
    return client.get(f"/v1/sessions/{session_id}/context").json


class Turns:
    """Post messages to a session and read each turn's own events."""

    def __init__(self, api, client, session):
        self.api, self.client, self.session, self.seen = api, client, session, 0

    def __call__(self, text):
        self.api.message(self.session, text, status=201)
        events = finish(self.client, self.session, after=self.seen)
        self.seen = events[-1]["seq"]
        return events


def compactions(events):
    return [e["data"] for e in events if e["type"] == "context.compacted"]


def test_a_long_session_stays_within_a_small_window(api, client):
    small = simulator(api, context_window=2000)
    session = api.session(api.agent(provider_id=small, system_prompt="Be brief.")["id"])["id"]
    compacted, turn = [], Turns(api, client, session)
    for i in range(50):
        events = turn(sentence(i))
        assert events[-1]["data"]["status"] == "completed", events[-1]
        compacted += compactions(events)
        now = context(client, session)
        assert now["context_window"] == 2000 and now["tokens_estimate"] <= 2000 - 256
    assert len(compacted) >= 3
    covered = [turn for c in compacted for turn in c["turn_ids"]]
    assert covered == sorted(covered) and len(covered) == len(set(covered))  # whole turns, oldest first, once each
    assert all(c["tokens_after"] < c["tokens_before"] for c in compacted)
    assert all(len(c["summary"].encode()) <= 2000 // 4 * 3 for c in compacted)  # under a quarter of the window
    assert compacted[0]["summary"].startswith("Summary of ") and "Summary so far" not in compacted[0]["summary"]
    assert "Summary so far: Summary of" in compacted[-1]["summary"]  # the summary before, summarised again
    now = context(client, session)
    assert now["summary"] == compacted[-1]["summary"] and now["system_prompt"].startswith("Be brief.")
    assert covered[-1] < now["turn_ids"][0]  # the turns after the summary are sent whole
    assert len(client.get(f"/v1/sessions/{session}/messages?limit=100").json["data"]) == 100  # messages unchanged
    echo = simulator(api, context_window=2000, echo_context=True)  # what the next call sends
    client.patch_json(f"/v1/sessions/{session}", {"provider_id": echo})
    answer = turn("What did I say?")[-2]["data"]["message"]["content"][0]["text"].splitlines()
    assert answer[0] == "system: Be brief."
    summary_words = " ".join(("A summary of the earlier conversation: " + now["summary"]).split()[:12])
    assert answer[1] == f"system: {summary_words}"
    assert answer[2].startswith("user: Turn ") and answer[-1] == "user: What did I say?"


class WindowedUpstream:
    """An OpenAI-compatible server on 127.0.0.1 with a context window: a request whose prompt
    is longer (4 bytes a token) gets OpenAI's 400 context_length_exceeded, as real servers do."""

    def __init__(self, window, fail_summaries=False):
        from gevent.pywsgi import WSGIServer

        self.window, self.fail_summaries, self.requests, self.rejected = window, fail_summaries, [], 0
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def app(self, environ, start_response):
        body = json.loads(environ["wsgi.input"].read())
        self.requests.append(body)
        prompt = len(json.dumps(body["messages"])) // 4
        summary = body["messages"][0]["content"].startswith("You summarise")
        if prompt > self.window or (summary and self.fail_summaries):
            self.rejected += not summary
            error = {"message": f"This model's maximum context length is {self.window} tokens. However, your "
                     f"messages resulted in {prompt} tokens.", "type": "invalid_request_error",
                     "param": "messages", "code": "context_length_exceeded"}  # fmt: skip
            start_response("400 Bad Request", [("Content-Type", "application/json")])
            return [json.dumps({"error": error}).encode()]
        last = body["messages"][-1]["content"] or ""
        text = "A short summary of it all." if summary else "Noted: " + " ".join(last.split()[:30])
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": text}),
            chunk({}, "stop"),
            chunk(usage={"prompt_tokens": prompt, "completion_tokens": 8, "total_tokens": prompt + 8}),
            DONE,
        ]

    def close(self):
        self.server.stop(timeout=0)


@pytest.fixture
def windowed():
    servers = []

    def start(window, **kwargs):
        servers.append(WindowedUpstream(window, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def remote(api, upstream, window, max_tokens=200):
    settings = {"context_window": {"default": window}, "max_tokens": max_tokens}
    provider = api.provider(provider_type="openai", base_url=upstream.url, default_model="small-model",
                            settings=settings)  # fmt: skip
    return api.session(api.agent(provider_id=provider["id"], system_prompt="Be brief.")["id"])["id"]


def test_a_server_that_rejects_long_prompts_never_gets_one(api, client, windowed):
    upstream = windowed(3000)
    session = remote(api, upstream, 3000)
    compacted, turn = [], Turns(api, client, session)
    for i in range(40):
        events = turn(sentence(i, 60))
        assert events[-1]["data"]["status"] == "completed", events[-1]["data"]
        compacted += compactions(events)
    assert upstream.rejected == 0 and compacted
    summaries = [r for r in upstream.requests if r["messages"][0]["content"].startswith("You summarise")]
    assert len(summaries) == len(compacted) and all(r["model"] == "small-model" for r in summaries)
    last = upstream.requests[-1]["messages"]
    assert last[1] == {
        "role": "system",
        "content": "A summary of the earlier conversation:\nA short summary of it all.",
    }
    assert summaries[-1]["max_tokens"] <= 3000 // 4  # the room left for it: a quarter of the window at most


def test_a_failing_summariser_leaves_the_oldest_turns_out_and_the_turn_completes(api, client, windowed, caplog):
    upstream = windowed(3000, fail_summaries=True)
    session = remote(api, upstream, 3000)
    turn = Turns(api, client, session)
    for i in range(25):
        events = turn(sentence(i, 60))
        assert events[-1]["data"]["status"] == "completed"
        assert not compactions(events)
    assert upstream.rejected == 0
    sent = upstream.requests[-1]["messages"]
    assert sent[0]["role"] == "system" and sent[1]["content"].startswith("Turn ")  # no summary, the oldest left out
    assert int(sent[1]["content"].split()[1].rstrip(":")) > 0 and sent[-1]["content"].startswith("Turn 24:")
    assert "the summary of older turns failed" in caplog.text and "oldest turns are left out" in caplog.text
    assert context(client, session)["summary"] is None


def test_a_turn_too_large_for_the_window_fails_with_its_own_code(api, client):
    session = api.session(api.agent(provider_id=simulator(api, context_window=1000))["id"])["id"]
    api.message(session, "x " * 3000, status=201)
    completed = finish(client, session)[-1]["data"]
    assert completed["status"] == "failed" and completed["error"]["code"] == "CONTEXT_TOO_LARGE"
    assert "1000 tokens" in completed["error"]["message"]
    api.message(session, "a short one", status=201)  # the session goes on
    assert finish(client, session)[-1]["data"]["status"] == "completed"


def test_the_context_window_setting_is_checked(api, client):
    for bad in (100, {}, {"default": 0}, {"m": "big"}, "8192x", True):
        body = {"name": "s", "provider_type": "llmsim", "settings": {"context_window": bad}}
        error_of(client.post_json("/v1/llm-providers", body, status=400), 400, "VALIDATION_ERROR")
    good = api.provider(name="s", provider_type="openai", settings={"context_window": {"default": 4096, "big": 32768}})
    session = api.session(api.agent(provider_id=good["id"], model="big")["id"])["id"]
    assert context(client, session)["context_window"] == 32768
    client.patch_json(f"/v1/sessions/{session}", {"model": "other"})
    assert context(client, session)["context_window"] == 4096
    known = api.provider(name="k", provider_type="openai")["id"]  # no setting: the family's window
    for model, window in (("gpt-4o-mini", 128_000), ("llama3.2:3b", 131_072), ("qwen2.5:7b", 32_768),
                          ("something-new", 8_192)):  # fmt: skip
        client.patch_json(f"/v1/sessions/{session}", {"provider_id": known, "model": model})
        assert context(client, session)["context_window"] == window
    error_of(client.get("/v1/sessions/nope/context", status=404), 404, "NOT_FOUND")


def slow_compaction(api, client, words_ms=200):
    """A session whose history fills a small window (with a fast simulator), then switched to a
    slow one: its next turn starts with a long compaction. The session's id."""
    session = api.session(api.agent(provider_id=simulator(api, context_window=2000))["id"])["id"]
    turn = Turns(api, client, session)
    for i in range(7):
        assert not compactions(turn(sentence(i)))
    slow = simulator(api, context_window=2000, token_delay_ms=words_ms)
    client.patch_json(f"/v1/sessions/{session}", {"provider_id": slow})
    return session


def test_a_cancel_during_compaction_stores_no_summary(api, client):
    session = slow_compaction(api, client)
    api.message(session, sentence(7), status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session}").json["status"] == "running", what="the turn")
    client.post(f"/v1/sessions/{session}/cancel")
    events = finish(client, session)
    assert events[-1]["data"]["status"] == "cancelled"
    assert not compactions(events) and context(client, session)["summary"] is None
    assert not [e for e in events if e["type"] == "message.delta"]  # it never got to its answer


@pytest.mark.sqlite
def test_kill_9_during_compaction_stores_nothing_half_and_the_next_turn_compacts_again(start_server, tmp_path):
    db = str(tmp_path / "kill.db")
    server = start_server(db)
    call = server.call
    _, _, provider = call("POST", "/v1/llm-providers", {"name": "sim", "provider_type": "llmsim",
                                                        "settings": {"context_window": 2000}})  # fmt: skip
    _, _, agent = call("POST", "/v1/agents", {"name": "a", "provider_id": provider["id"]})
    _, _, session = call("POST", f"/v1/agents/{agent['id']}/sessions", {})
    sid = session["id"]
    for i in range(7):
        call("POST", f"/v1/sessions/{sid}/messages", {"content": sentence(i)})
        wait_until(lambda: call("GET", f"/v1/sessions/{sid}")[2]["status"] == "idle", what="a turn")
    slowly = {"context_window": 2000, "token_delay_ms": 500}
    _, _, slow = call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim", "settings": slowly})
    call("PATCH", f"/v1/sessions/{sid}", {"provider_id": slow["id"]})
    call("POST", f"/v1/sessions/{sid}/messages", {"content": sentence(7)})
    wait_until(lambda: call("GET", f"/v1/sessions/{sid}")[2]["status"] == "running", what="the turn")
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT COUNT(*) FROM summary").fetchone() == (0,)
    conn.close()
    again = start_server(db)
    assert again.call("GET", f"/v1/sessions/{sid}")[2]["last_turn"]["error"]["code"] == "INTERRUPTED"
    again.call("PATCH", f"/v1/sessions/{sid}", {"provider_id": provider["id"]})
    again.call("POST", f"/v1/sessions/{sid}/messages", {"content": sentence(8)})
    again.call("GET", f"/v1/sessions/{sid}/events?until=completed", timeout=60)  # settled: the next turn ran
    _, _, page = again.call("GET", f"/v1/sessions/{sid}/events?format=json&types=context.compacted")
    assert len(page["data"]) == 1 and again.call("GET", f"/v1/sessions/{sid}/context")[2]["summary"]


@pytest.mark.sqlite
def test_a_10000_turn_session_s_next_turn_reads_a_bounded_part_of_it(app, api, client, monkeypatch):
    session = api.session(api.agent(provider_id=simulator(api, context_window=2000))["id"])["id"]
    rows = []
    for i in range(10_000):
        turn_id = everruns._uuid7()
        for role, text in (("user", f"question {i}"), ("assistant", f"answer {i}")):
            content = json.dumps([{"type": "text", "text": text}])
            rows.append((everruns._uuid7(), session, role, content, turn_id, "2026-01-01T00:00:00.000Z"))
    db = app.everruns.store.db
    with db.atomic():
        for row in rows:
            db.execute_sql("INSERT INTO message (id, session_id, role, content, turn_id, created_at)"
                           " VALUES (?, ?, ?, ?, ?, ?)", row)  # fmt: skip
    read = []
    original = everruns._rows

    def counted(cursor):
        for row in original(cursor):
            read.append(row)
            yield row

    monkeypatch.setattr(everruns, "_rows", counted)
    api.message(session, "and now?", status=201)
    events = finish(client, session)
    assert events[-1]["data"]["status"] == "completed" and compactions(events)
    first = len(read)
    assert first < 2_000  # of 20,001 messages: what a few summaries could take in
    for text in ("and then?", "and after that?", "and finally?"):  # the summaries catch up with the backlog
        read.clear()
        api.message(session, text, status=201)
        finish(client, session)
    assert len(read) < 200  # the turns after the summary


def test_a_compaction_reaches_the_sdk_surface_s_stream(api, client):
    session = api.session(api.agent(provider_id=simulator(api, context_window=1200))["id"])["id"]
    turn = Turns(api, client, session)
    compacted = [c for i in range(8) for c in compactions(turn(sentence(i)))]
    assert compacted
    listed = client.get(f"/api/v1/sessions/{session}/events?types=context.compacted").json["data"]
    assert [e["data"] for e in listed] == compacted and {e["type"] for e in listed} == {"context.compacted"}
