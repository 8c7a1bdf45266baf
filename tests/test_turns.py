"""Turns: the loop of SPEC section 5 with the simulator, tools, limits and order."""

import json
import logging

import gevent
import webtest
from conftest import MONITOR, Api, blocking_reports, finish, health_latencies, remote_session, wait_until


def types_of(events):
    return [e["type"] for e in events]


def simulator(api, **settings):
    return api.provider(provider_type="llmsim", settings=settings)["id"]


def test_plain_turn_event_sequence(api, client):
    session = api.session()
    user = api.message(session["id"], "hello there", status=201)
    events = finish(client, session["id"])
    deltas = [e for e in events if e["type"] == "message.delta"]
    assert types_of(events) == ["message.created", "session.started", *["message.delta"] * len(deltas),
                                "message.created", "session.completed"]  # fmt: skip
    assert events[1]["data"]["input_message_ids"] == [user["id"]]
    answer = events[-2]["data"]["message"]
    assert answer["role"] == "assistant" and answer["content"] == [{"type": "text", "text": "You said: hello there"}]
    assert "".join(d["data"]["delta"] for d in deltas) == "You said: hello there" and len(deltas) == 4
    assert all(d["id"] is None and d["seq"] is None and d["data"]["message_id"] == answer["id"] for d in deltas)
    done = events[-1]["data"]
    assert (done["status"], done["error"], done["iterations"]) == ("completed", None, 1)
    assert done["usage"]["output_tokens"] > 0 and done["duration_ms"] >= 0
    assert [e["seq"] for e in events if e["seq"]] == [1, 2, 3, 4]


def test_tool_turn_event_sequence(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    api.message(session["id"], 'Please add {"a": 2, "b": 3}', status=201)
    stored = [e for e in finish(client, session["id"]) if e["seq"]]
    assert types_of(stored) == ["message.created", "session.started", "message.created", "tool.call", "tool.result",
                                "message.created", "message.created", "session.completed"]  # fmt: skip
    call = stored[3]["data"]["tool_call"]
    assert (call["name"], call["arguments"]) == ("add", {"a": 2, "b": 3})
    assert stored[2]["data"]["message"]["content"] == [{"type": "tool_call", **call}]
    result = stored[4]["data"]
    assert (result["tool_call_id"], result["result"], result["is_error"]) == (call["id"], {"result": 5}, False)
    assert stored[5]["data"]["message"]["role"] == "tool"
    assert "5" in stored[6]["data"]["message"]["content"][0]["text"]
    assert stored[-1]["data"]["iterations"] == 2
    assert [e["seq"] for e in stored] == list(range(1, 9))


def test_two_tool_calls_in_one_answer_run_in_order(api, client):
    session = api.session(api.agent(capabilities=["test_weather"])["id"])
    api.message(session["id"], 'get_forecast and get_weather for {"city": "Oslo"}', status=201)
    stored = [e for e in finish(client, session["id"]) if e["seq"]]
    assert types_of(stored)[3:9] == ["tool.call", "tool.result", "message.created"] * 2
    assert [stored[i]["data"]["tool_call"]["name"] for i in (3, 6)] == ["get_forecast", "get_weather"]
    assert stored[4]["data"]["result"]["city"] == "Oslo"


def test_tool_errors_become_error_results_and_the_turn_goes_on(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    api.message(session["id"], 'divide {"a": 1, "b": 0}', status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and "zero" in result["result"]["error"]
    assert events[-1]["data"]["status"] == "completed"
    api.message(session["id"], 'add {"a": "two"}', status=201)
    result = next(e["data"] for e in finish(client, session["id"], after=9) if e["type"] == "tool.result")
    assert result["is_error"] is True and "invalid arguments" in result["result"]["error"]


def test_a_tool_named_but_not_enabled_is_not_called(api, client):
    session = api.session(api.agent(capabilities=["noop"])["id"])
    api.message(session["id"], "add 1 and 2", status=201)
    assert "tool.call" not in types_of(finish(client, session["id"]))


def test_max_iterations_fails_the_turn_with_a_valid_transcript(api, client):
    session = api.session(api.agent(capabilities=["test_math"], max_iterations=1)["id"])
    api.message(session["id"], 'multiply {"a": 6, "b": 7}', status=201)
    events = finish(client, session["id"])
    done = events[-1]["data"]
    assert (done["status"], done["error"]["code"], done["iterations"]) == ("failed", "MAX_ITERATIONS", 1)
    roles = [m["role"] for m in client.get(f"/v1/sessions/{session['id']}/messages").json["data"]]
    assert roles == ["user", "assistant", "tool"]
    assert client.get(f"/v1/sessions/{session['id']}").json["status"] == "idle"


def test_controls_override_the_turn(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    body = {"content": 'add {"a": 1, "b": 1}', "controls": {"max_iterations": 1, "model": "sim-large"}}
    client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201)
    done = finish(client, session["id"])[-1]["data"]
    assert (done["status"], done["error"]["code"], done["model"]) == ("failed", "MAX_ITERATIONS", "sim-large")


def test_three_quick_messages_are_answered_in_order(api, client):
    session = api.session()
    for text in ("one", "two", "three"):
        api.message(session["id"], text, status=201)
    events = finish(client, session["id"])
    assert types_of(events).count("session.completed") == 3
    messages = client.get(f"/v1/sessions/{session['id']}/messages").json["data"]
    answers = [m["content"][0]["text"] for m in messages if m["role"] == "assistant"]
    assert answers == ["You said: one", "You said: two", "You said: three"]
    started = [e["data"]["input_message_ids"] for e in events if e["type"] == "session.started"]
    assert started == [[m["id"]] for m in messages if m["role"] == "user"]


def test_session_usage_and_last_turn(api, client):
    session = api.session()
    api.message(session["id"], "a b c", status=201)
    done = finish(client, session["id"])[-1]["data"]
    api.message(session["id"], "d e f", status=201)
    second = finish(client, session["id"], after=4)[-1]["data"]
    got = client.get(f"/v1/sessions/{session['id']}").json
    assert got["status"] == "idle"
    assert got["last_turn"] == {"id": second["turn_id"], "status": "completed", "error": None, "trace_id": None}
    total = {k: done["usage"][k] + second["usage"][k] for k in ("input_tokens", "output_tokens")}
    assert got["usage"] == total


def test_fixed_reply_setting(api, client):
    agent = api.agent(provider_id=simulator(api, reply="Always this."))
    session = api.session(agent["id"])
    api.message(session["id"], "anything", status=201)
    assert finish(client, session["id"])[-2]["data"]["message"]["content"][0]["text"] == "Always this."


def test_system_prompt_and_history_reach_the_provider(api, client, monkeypatch):
    import everruns

    seen = []
    original = everruns._Llmsim.stream
    monkeypatch.setattr(
        everruns._Llmsim, "stream", lambda self, req, on_text: seen.append(req) or original(self, req, on_text)
    )
    session = api.session(api.agent(system_prompt="Be kind.", capabilities=["current_time"])["id"])
    api.message(session["id"], "first", status=201)
    finish(client, session["id"])
    api.message(session["id"], "second", status=201)
    finish(client, session["id"], after=4)
    assert seen[-1].system.startswith("Be kind.") and "get_current_time" in seen[-1].system
    assert [m["role"] for m in seen[-1].messages] == ["user", "assistant", "user"]
    assert [t.name for t in seen[-1].tools] == ["get_current_time"]


def test_current_time_formats(api, client):
    session = api.session(api.agent(capabilities=["current_time"])["id"])
    for fmt, check in (("unix", lambda t: isinstance(t, int)), ("iso8601", lambda t: t.endswith("+09:00"))):
        body = json.dumps({"timezone": "Asia/Tokyo", "format": fmt})
        api.message(session["id"], f"get_current_time {body}", status=201)
        events = finish(client, session["id"])
        result = [e["data"] for e in events if e["type"] == "tool.result"][-1]
        assert result["is_error"] is False and check(result["result"]["time"])


def test_idempotent_retry_starts_one_turn(api, client):
    session = api.session()
    url = f"/v1/sessions/{session['id']}/messages"
    client.post_json(url, {"content": "once"}, headers={"Idempotency-Key": "r1"}, status=201)
    client.post_json(url, {"content": "once"}, headers={"Idempotency-Key": "r1"}, status=200)
    assert types_of(finish(client, session["id"])).count("session.started") == 1


def test_text_parts_reach_the_model_one_per_line(api, client):
    session = api.session()
    body = {"message": {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}}
    client.post_json(f"/v1/sessions/{session['id']}/messages", body, status=201)
    assert finish(client, session["id"])[-2]["data"]["message"]["content"][0]["text"] == "You said: a\nb"


def recording(monkeypatch):
    """The requests the simulator gets, in order."""
    import everruns

    seen, original = [], everruns._Llmsim.stream

    def stream(self, request, on_text):
        seen.append(request)
        return original(self, request, on_text)

    monkeypatch.setattr(everruns._Llmsim, "stream", stream)
    return seen


def test_only_the_newest_turns_within_the_context_budget_reach_the_model(make_app, monkeypatch):
    seen, client = recording(monkeypatch), webtest.TestApp(make_app(context_budget=4096))
    session = Api(client).session()
    texts = [f"{i} " + "x" * 500 for i in range(6)]  # a turn stores about 1,100 bytes
    for i, text in enumerate(texts):
        Api(client).message(session["id"], text, status=201)
        finish(client, session["id"], after=4 * i)
    users = [m["text"] for m in seen[-1].messages if m["role"] == "user"]
    assert users == texts[-4:]  # the current message and the three turns before it fit in 4,096 bytes
    assert [m["role"] for m in seen[-1].messages] == ["user", "assistant"] * 3 + ["user"]


def test_a_message_larger_than_the_budget_still_reaches_the_model(make_app, monkeypatch):
    seen, client = recording(monkeypatch), webtest.TestApp(make_app(context_budget=1024))
    session = Api(client).session()
    Api(client).message(session["id"], "y" * 5000, status=201)
    assert finish(client, session["id"])[-1]["data"]["status"] == "completed"
    assert [m["text"] for m in seen[-1].messages] == ["y" * 5000]


def test_a_long_history_never_blocks_the_server(db_path, start_server):
    import everruns

    app = everruns.create_app(db_path, env={})
    sid, m, words = Api(webtest.TestApp(app)).session()["id"], app.everruns.store.m, "word " * 10_000
    with app.everruns.store.write():  # 200 answered turns: 20 MB, 4 million words of history
        for _ in range(200):
            turn_id = everruns._uuid7()
            for role in ("user", "assistant"):
                everruns._insert_message(m, sid, None, role, [{"type": "text", "text": words}], turn_id)
    app.close()
    server = start_server(db_path, "--sync", "normal", env=MONITOR)
    server.call("POST", f"/v1/sessions/{sid}/messages", {"content": "and now?"})

    def settled():  # the turn has run (not: has not started yet)
        session = server.call("GET", f"/v1/sessions/{sid}")[2]
        return session["status"] == "idle" and session["last_turn"] is not None

    assert max(health_latencies(server, settled)) < 0.1
    assert server.call("GET", f"/v1/sessions/{sid}")[2]["last_turn"]["status"] == "completed"
    assert blocking_reports(server) == []


def test_two_cancels_stop_one_turn_and_never_the_next(api, client):
    session = api.session(api.agent(provider_id=simulator(api, token_delay_ms=50))["id"])
    api.message(session["id"], "one two three four five", status=201)
    api.message(session["id"], "next", status=201)
    url = f"/v1/sessions/{session['id']}/cancel"
    cancels = [gevent.spawn(client.post, url) for _ in range(2)]
    gevent.joinall(cancels, raise_error=True)
    done = [e["data"] for e in finish(client, session["id"]) if e["type"] == "session.completed"]
    assert [d["status"] for d in done] == ["cancelled", "completed"]
    assert {c.value.json["cancelled_turn"]["id"] for c in cancels} == {done[0]["turn_id"]}


def test_cancel_says_which_turn_it_stopped_when_the_next_one_runs(api, client):
    session = api.session(api.agent(provider_id=simulator(api, token_delay_ms=50))["id"])
    first = api.message(session["id"], "one two three", status=201)
    second = api.message(session["id"], "four five six", status=201)
    gevent.sleep(0.02)  # the first turn is running
    answer = client.post(f"/v1/sessions/{session['id']}/cancel").json
    assert answer["cancelled_turn"]["status"] == "cancelled"
    if answer["status"] == "running":  # the next turn started before the answer was read
        assert answer["last_turn"]["id"] != answer["cancelled_turn"]["id"]
    started = [e["data"] for e in finish(client, session["id"]) if e["type"] == "session.started"]
    assert started[0]["turn_id"] == answer["cancelled_turn"]["id"] and started[0]["input_message_ids"] == [first["id"]]
    assert started[1]["input_message_ids"] == [second["id"]]  # the next message still got its turn


def closing_fails(monkeypatch, error, times):
    """Make storing a turn's end fail `times` times with `error`; the statuses it was asked to write."""
    import everruns

    original, calls = everruns._close_turn, []

    def failing(tx, turn, status, *args):
        calls.append(status)
        if len(calls) <= times:
            raise error
        return original(tx, turn, status, *args)

    monkeypatch.setattr(everruns, "_close_turn", failing)
    return calls


def ended(api, client):
    """A turn's session.completed data, for one message in a new session, and the session."""
    session = api.session()
    api.message(session["id"], "hello", status=201)
    done = [e["data"] for e in finish(client, session["id"]) if e["type"] == "session.completed"]
    return done, client.get(f"/v1/sessions/{session['id']}").json


def test_a_failed_final_write_still_closes_the_turn(api, client, monkeypatch, caplog):
    closing_fails(monkeypatch, RuntimeError("a bug"), 1)
    done, session = ended(api, client)
    assert [(d["status"], d["error"]["code"]) for d in done] == [("failed", "INTERNAL_ERROR")]
    assert session["status"] == "idle" and session["last_turn"]["error"]["code"] == "INTERNAL_ERROR"
    assert client.post(f"/v1/sessions/{session['id']}/cancel").json["cancelled_turn"] is None


def test_a_turn_whose_end_cannot_be_written_ends_failed_once_it_can(api, client, monkeypatch, caplog):
    import everruns

    calls = closing_fails(monkeypatch, everruns.pw.OperationalError("disk I/O error"), 3)
    done, _ = ended(api, client)
    assert [(d["status"], d["error"]["code"]) for d in done] == [("failed", "UNAVAILABLE")]
    assert calls == ["completed", "failed", "failed", "failed"]  # tried again until it could be written
    lines = [r.getMessage() for r in caplog.records]  # each change of state once, no traceback
    down, up = (sum(text in line for line in lines) for text in ("database unavailable", "available again"))
    assert down == up >= 1 and not any(r.exc_info for r in caplog.records)


def test_no_turn_starts_on_a_session_being_deleted(app, api, client, monkeypatch, caplog):
    runner = app.everruns.scheduler
    session = api.session(api.agent(provider_id=simulator(api, token_delay_ms=100))["id"])
    original = type(runner).stop

    def stop_then_a_message_arrives(self, session_id):
        original(self, session_id)
        client.post_json(f"/v1/sessions/{session_id}/messages", {"content": "late"}, status=201)
        gevent.sleep(0.05)  # time enough for a turn to start, if one could

    monkeypatch.setattr(type(runner), "stop", stop_then_a_message_arrives)
    client.delete(f"/v1/sessions/{session['id']}", status=204)
    assert session["id"] not in runner._workers
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_lone_surrogate_in_tool_arguments_is_an_error_result(api, client, upstream):
    import test_openai as openai

    session = remote_session(api, upstream, "openai", capabilities=["test_math"])
    upstream.sse([openai.tool_fragment(0, "call_1", "add", '{"a": "\\ud800", "b": 1}'), openai.chunk({}, "tool_calls"),
                  openai.DONE])  # fmt: skip
    upstream.sse(openai.text_answer("ok"))
    api.message(session["id"], "add please", status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and "arguments" in result["result"]["error"]
    assert events[-1]["data"]["status"] == "completed"


def test_deeply_nested_json_in_a_message_does_not_break_the_simulator(api, client):
    big = simulator(api, context_window=65536)  # (about 15,000 tokens: more than the default window of 8,192)
    session = api.session(api.agent(capabilities=["test_math"], provider_id=big)["id"])
    api.message(session["id"], "add " + '{"a": ' * 5000 + "1" + "}" * 5000, status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and "invalid arguments" in result["result"]["error"]  # no object found
    assert events[-1]["data"]["status"] == "completed"


def test_a_failed_delete_closes_the_turn_it_stopped_and_the_session_goes_on(app, api, client, monkeypatch):
    session = api.session(api.agent(provider_id=simulator(api, token_delay_ms=50))["id"])
    api.message(session["id"], "one two three four five", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session['id']}").json["status"] == "running", pause=0.005)
    m = app.everruns.store.m

    def fail(self, *args, **kwargs):
        raise everruns_pw().OperationalError("database is locked")

    monkeypatch.setattr(m.Session, "delete_instance", fail)
    client.delete(f"/v1/sessions/{session['id']}", status=503)
    monkeypatch.undo()
    api.message(session["id"], "still there?", status=201)
    done = [e["data"] for e in finish(client, session["id"]) if e["type"] == "session.completed"]
    assert [(d["status"], (d["error"] or {}).get("code")) for d in done] == [
        ("failed", "INTERRUPTED"),
        ("completed", None),
    ]


def test_a_killed_worker_leaves_no_step_running(app, api, client):
    session = api.session(api.agent(provider_id=simulator(api, token_delay_ms=20))["id"])
    api.message(session["id"], " ".join(["word"] * 50), status=201)
    gevent.sleep(0.05)  # the model is streaming
    sub = app.everruns.bus.subscribe(session["id"])
    app.everruns.scheduler._workers[session["id"]].kill(block=True)
    while not sub.queue.empty():
        sub.queue.get()
    gevent.sleep(0.2)  # ten more words, if the model call were still going
    assert sub.queue.empty()


def everruns_pw():
    import everruns

    return everruns.pw
