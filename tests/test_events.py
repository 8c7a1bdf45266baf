"""Live events (SPEC section 4): SSE over a real socket, replay, filters, drops."""

import json
import socket

import gevent
import webtest
from conftest import SSEStream, error_of, events_of, finish, parse_sse, wait_until

import everruns


def slow_session(api, delay_ms=20, **agent):
    provider = api.provider(provider_type="llmsim", settings={"token_delay_ms": delay_ms})
    return api.session(api.agent(provider_id=provider["id"], **agent)["id"])


def test_stream_headers_and_retry_hint(api, live):
    session = api.session()
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events?until=completed")
    assert stream.response.getheader("Content-Type") == "text/event-stream"
    assert stream.response.getheader("Cache-Control") == "no-cache"
    assert stream.response.getheader("X-Accel-Buffering") == "no"
    # idle with nothing owed: closes after the replay; the last retry keeps a browser from reconnecting
    assert stream.rest() == [{"retry": "1000"}, {"retry": "86400000"}]


def test_deltas_have_no_id_line(api, client):
    session = api.session()
    api.message(session["id"], "hi you", status=201)
    text = client.get(f"/v1/sessions/{session['id']}/events?until=completed").text
    for block in text.removeprefix("retry: 1000\n").split("\n\n"):
        if "event: message.delta" in block:
            assert not any(line.startswith("id:") for line in block.splitlines())
        elif "event: " in block:
            assert block.startswith("id: ")


def test_client_connected_during_a_turn_gets_every_event_once(api, client, live):
    session = slow_session(api, capabilities=["test_math"])
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events")
    api.message(session["id"], 'add {"a": 20, "b": 22} please', status=201)
    got = stream.until(lambda e: e["type"] == "session.completed")
    stream.close()
    stored = client.get(f"/v1/sessions/{session['id']}/events?format=json&limit=100").json["data"]
    assert [g["data"]["seq"] for g in got if g["id"]] == [e["seq"] for e in stored]
    assert [g["data"] for g in got if g["id"]] == stored
    assert [g["id"] for g in got if g["id"]] == [str(e["seq"]) for e in stored]
    assert any(g["event"] == "message.delta" for g in got)


def test_replay_from_every_cursor_equals_the_stored_tail(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    api.message(session["id"], 'subtract {"a": 5, "b": 1}', status=201)
    stored = [e for e in finish(client, session["id"]) if e["seq"]]
    url = f"/v1/sessions/{session['id']}/events"
    for cursor in range(len(stored) + 1):
        by_query = events_of(parse_sse(client.get(f"{url}?after={cursor}&until=completed").text))
        by_header = parse_sse(client.get(f"{url}?until=completed", headers={"Last-Event-ID": str(cursor)}).text)
        assert by_query == stored[cursor:]
        assert events_of(by_header) == stored[cursor:]


def test_last_event_id_wins_over_after(api, client):
    session = api.session()
    api.message(session["id"], "x", status=201)
    finish(client, session["id"])
    text = client.get(f"/v1/sessions/{session['id']}/events?after=0&until=completed", headers={"Last-Event-ID": "3"})
    assert [e["seq"] for e in events_of(parse_sse(text.text))] == [4]


def test_bad_cursors_are_400(api, client):
    url = f"/v1/sessions/{api.session()['id']}/events"
    for bad in ("x", "-1", str(2**63)):
        error_of(client.get(url, headers={"Last-Event-ID": bad}, status="*"), 400, "VALIDATION_ERROR")
        error_of(client.get(f"{url}?after={bad}&format=json", status="*"), 400, "VALIDATION_ERROR")


def test_resume_mid_turn_has_no_gap_and_no_duplicate(api, client, live):
    session = slow_session(api)
    first = SSEStream(live.url, f"/v1/sessions/{session['id']}/events")
    api.message(session["id"], "one two three four five six seven eight", status=201)
    seen = first.until(lambda e: e["type"] == "message.delta")
    first.close()
    last_id = [e["id"] for e in seen if e["id"]][-1]
    second = SSEStream(live.url, f"/v1/sessions/{session['id']}/events", headers={"Last-Event-ID": last_id})
    rest = second.until(lambda e: e["type"] == "session.completed")
    seqs = [e["data"]["seq"] for e in seen + rest if e["id"]]
    assert seqs == list(range(1, seqs[-1] + 1))


def test_types_filter_on_stream_and_json(api, client):
    session = api.session(api.agent(capabilities=["test_math"])["id"])
    api.message(session["id"], 'add {"a": 1, "b": 2}', status=201)
    finish(client, session["id"])
    url = f"/v1/sessions/{session['id']}/events"
    tools = events_of(parse_sse(client.get(f"{url}?types=tool.call,tool.result&until=completed").text))
    assert [e["type"] for e in tools] == ["tool.call", "tool.result"]
    listed = client.get(f"{url}?types=message.*&format=json").json["data"]
    assert {e["type"] for e in listed} == {"message.created"} and len(listed) == 4
    error_of(client.get(f"{url}?types=bad%20type", status="*"), 400, "VALIDATION_ERROR")


def test_json_listing_pages_by_seq(api, client):
    session = api.session()
    api.message(session["id"], "x", status=201)
    finish(client, session["id"])
    url = f"/v1/sessions/{session['id']}/events"
    page = client.get(url + "?limit=3", headers={"Accept": "application/json"}).json
    assert [e["seq"] for e in page["data"]] == [1, 2, 3] and page["has_more"] and page["next_after"] == 3
    rest = client.get(url + f"?format=json&after={page['next_after']}").json
    assert [e["seq"] for e in rest["data"]] == [4] and rest["next_after"] is None


def test_until_completed_waits_for_owed_messages(api, live):
    session = slow_session(api, delay_ms=5)
    for text in ("a b", "c d"):
        api.message(session["id"], text, status=201)
    got = SSEStream(live.url, f"/v1/sessions/{session['id']}/events?until=completed").rest()
    assert [e["event"] for e in got if "event" in e].count("session.completed") == 2


def test_ping_comments_keep_idle_streams_alive(app, api, live):
    app.everruns.ping_s = 0.05
    stream = SSEStream(live.url, f"/v1/sessions/{api.session()['id']}/events")
    items = iter(stream)
    assert next(items) == {"retry": "1000"}
    assert next(items) == {"comment": "ping"}
    stream.close()


def test_slow_subscriber_is_dropped_while_others_and_the_turn_go_on(app, api, live):
    # ~8 MB of deltas: more than the socket buffers (4 MB at most here) plus the 1,000-event queue
    words = " ".join(f"w{i}" for i in range(25000))
    provider = api.provider(provider_type="llmsim", settings={"reply": words})
    session = api.session(api.agent(provider_id=provider["id"])["id"])
    path = f"/v1/sessions/{session['id']}/events"
    slow = SSEStream(live.url, path, rcvbuf=4096)  # connected, never read during the turn
    fast = SSEStream(live.url, path)
    api.message(session["id"], "go", status=201)
    got = fast.until(lambda e: e["type"] == "session.completed")
    assert len([e for e in got if e["event"] == "message.delta"]) == 25000
    assert got[-1]["data"]["data"]["status"] == "completed"
    slow_items = slow.rest()  # its stream was cut: it ends without the end of the turn
    assert slow_items and not any(e.get("event") == "session.completed" for e in slow_items)
    resumed = SSEStream(live.url, path + "?until=completed", headers={"Last-Event-ID": "2"}).rest()
    assert [e["event"] for e in resumed if "event" in e] == ["message.created", "session.completed"]


def test_cancel_mid_turn(api, client, live):
    session = slow_session(api, delay_ms=50)
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events")
    api.message(session["id"], " ".join(["word"] * 100), status=201)
    stream.until(lambda e: e["type"] == "message.delta")
    cancelled = client.post(f"/v1/sessions/{session['id']}/cancel").json
    assert cancelled["status"] == "idle" and cancelled["last_turn"]["status"] == "cancelled"
    done = stream.until(lambda e: e["type"] == "session.completed")[-1]["data"]["data"]
    assert (done["status"], done["error"]) == ("cancelled", None)
    assert client.post(f"/v1/sessions/{session['id']}/cancel").json["status"] == "idle"  # idle: a no-op
    api.message(session["id"], "again", status=201)
    assert finish(client, session["id"], after=3)[-1]["data"]["status"] == "completed"


def test_cancel_unknown_session_is_404(client):
    error_of(client.post("/v1/sessions/01890000-0000-7000-8000-000000000000/cancel", status="*"), 404, "NOT_FOUND")


def test_delete_mid_turn_ends_the_turn_and_the_stream(app, api, client, live, caplog):
    session = slow_session(api, delay_ms=50)
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events")
    api.message(session["id"], " ".join(["word"] * 100), status=201)
    stream.until(lambda e: e["type"] == "message.delta")
    client.delete(f"/v1/sessions/{session['id']}", status=204)
    assert all(e.get("event") != "session.completed" for e in stream.rest())  # the stream ends
    client.get(f"/v1/sessions/{session['id']}", status=404)
    assert session["id"] not in app.everruns.scheduler._workers  # the turn's greenlet is gone
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text


def test_delete_agent_mid_turn(api, client, live):
    session = slow_session(api, delay_ms=50)
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events")
    api.message(session["id"], " ".join(["word"] * 100), status=201)
    stream.until(lambda e: e["type"] == "message.delta")
    client.delete(f"/v1/agents/{session['agent_id']}", status=204)
    stream.rest()
    client.get(f"/v1/sessions/{session['id']}", status=404)


def test_a_cursor_past_the_stored_events_still_gets_the_live_turn(api, client, live):
    session = slow_session(api)
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events?after=3")
    api.message(session["id"], "a b c", status=201)
    got = stream.until(lambda e: e["type"] == "session.completed")
    assert [e["event"] for e in got] == [*["message.delta"] * 5, "session.completed"]


def test_until_completed_closes_even_with_a_cursor_past_the_turn(api, live):
    session = slow_session(api)
    api.message(session["id"], "one two three", status=201)
    stream = SSEStream(live.url, f"/v1/sessions/{session['id']}/events?until=completed&after=1000", timeout=10)
    assert [i for i in stream.rest() if "data" in i and i["id"]] == []  # nothing past the cursor; and it closed


def test_a_stream_that_never_reads_is_dropped_by_bytes_too():
    bus = everruns._Bus()
    sub = bus.subscribe("s")
    for _ in range(7):  # 7 MiB: far under the 1,000-event limit, under the 8 MiB one
        bus.publish_delta("s", "t", "m", "x" * (1 << 20))
    assert not sub.dropped
    bus.publish_delta("s", "t", "m", "x" * (1 << 20))
    assert sub.dropped and sub not in bus._subscribers.get("s", ())


def sse_turn(live, api, events):
    """A plain turn read with a third-party SSE client (`events(url)` yields (type, data)),
    connected before the message is posted: (type, data) pairs up to session.completed."""
    session = slow_session(api, delay_ms=5)
    gevent.spawn_later(0.2, api.message, session["id"], "one two three", status=201)
    got = []
    for kind, data in events(f"{live.url}/v1/sessions/{session['id']}/events"):
        got.append((kind, data))
        if kind == "session.completed":
            return got
    raise AssertionError(f"the stream ended early: {got}")


def test_httpx_sse_reads_every_event_and_nothing_empty(api, live):
    import httpx
    import httpx_sse

    def read(url):
        with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(client, "GET", url) as source:
            yield from ((e.event, e.json()) for e in source.iter_sse())

    events = sse_turn(live, api, read)
    assert [t for t, _ in events if t != "message.delta"] == ["message.created", "session.started",
                                                              "message.created", "session.completed"]  # fmt: skip
    assert all(data["type"] == kind for kind, data in events)


def test_sseclient_reads_every_event_and_nothing_empty(api, live):
    import urllib.request

    import sseclient

    def read(url):
        with urllib.request.urlopen(url, timeout=10) as response:
            yield from ((e.event, json.loads(e.data)) for e in sseclient.SSEClient(response).events())

    events = sse_turn(live, api, read)
    assert [t for t, _ in events][-1] == "session.completed" and "message.delta" in [t for t, _ in events]
    assert all(data["type"] == kind for kind, data in events)


def test_pings_never_look_like_events_to_httpx_sse(app, api, live):
    import httpx
    import httpx_sse

    app.everruns.ping_s = 0.05
    session = api.session()
    api.message(session["id"], "hello", status=201)
    finish(webtest.TestApp(app), session["id"])
    url = f"{live.url}/v1/sessions/{session['id']}/events"
    with httpx.Client(timeout=10) as client, httpx_sse.connect_sse(client, "GET", url) as source:
        events = source.iter_sse()
        stored = [next(events) for _ in range(4)]  # the replay
        gevent.spawn_later(0.3, api.message, session["id"], "again", status=201)  # pings meanwhile
        following = next(events)
    assert [e.event for e in stored] == ["message.created", "session.started", "message.created", "session.completed"]
    assert following.event == "message.created" and following.json()["data"]["message"]["content"][0]["text"] == "again"


def test_two_writers_of_one_session_never_collide(app, api, client):
    session = api.session()
    app.everruns.bus.subscribe(session["id"])  # someone streams: the bus keeps the session's last seq
    api.message(session["id"], "first", status=201)
    finish(client, session["id"])
    url = f"/v1/sessions/{session['id']}/messages"
    with app.everruns.journal.tx(session["id"]) as tx:  # another writer holds the lock
        post = gevent.spawn(client.post_json, url, {"content": "second"}, status="*")
        gevent.sleep(0.05)  # the post now waits for the lock
        tx.emit("session.started", {"turn_id": "t", "input_message_ids": []}, "t")
    assert post.get(timeout=10).status_int == 201
    seqs = [e["seq"] for e in client.get(f"/v1/sessions/{session['id']}/events?format=json&limit=100").json["data"]]
    assert seqs == list(range(1, len(seqs) + 1))


def test_the_bus_forgets_sessions_nobody_streams(app, api, client):
    session = api.session()
    api.message(session["id"], "hello", status=201)
    finish(client, session["id"])
    with gevent.Timeout(5):
        while session["id"] in app.everruns.scheduler._workers:  # the worker ends after its turn
            gevent.sleep(0.01)
    assert session["id"] not in app.everruns.bus.last_seq


def test_a_stream_whose_client_leaves_is_let_go_at_once(app, api, client, live):
    """No ping and no event needed (pings are 15 s apart): a client that opens a stream per turn
    and closes it leaves nothing behind. A client that sends bytes after its request is not
    taken for gone: its stream goes on."""
    session = api.session()["id"]
    streams = [socket.create_connection(("127.0.0.1", live.server_port), timeout=5) for _ in range(3)]
    for stream in streams:
        stream.sendall(f"GET /v1/sessions/{session}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
    assert app.everruns.bus.streams() == 3
    streams[0].close()
    streams[1].shutdown(socket.SHUT_RDWR)
    streams[1].close()
    streams[2].sendall(b"x")  # not a close: the stream stays
    wait_until(lambda: app.everruns.bus.streams() == 1, timeout=5, what="the streams of the clients that left to end")
    api.message(session, "hello", status=201)
    finish(client, session)
    text = b""
    with gevent.Timeout(5):
        while b"session.completed" not in text:
            text += streams[2].recv(65536)
    streams[2].close()


def test_until_completed_sends_a_turn_that_ends_while_the_replay_reads(app, api, client, monkeypatch):
    """The replay has read what was stored; the running turn ends before the stream checks whether
    the session is settled: it is, and the turn's last events wait in the stream's queue. They are
    sent before the stream ends."""
    session = slow_session(api, delay_ms=20)["id"]
    api.message(session, "tell me about the quick brown fox and the lazy dog", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{session}").json["status"] == "running", what="the turn")
    replay = everruns._stored_batches

    def replay_then_the_turn_ends(*args):
        yield from replay(*args)
        wait_until(lambda: everruns._settled(app.everruns.store.m, session), what="the turn to end")

    monkeypatch.setattr(everruns, "_stored_batches", replay_then_the_turn_ends)
    events = finish(client, session)
    stored = client.get(f"/v1/sessions/{session}/events?format=json").json["data"]
    assert [e["seq"] for e in events if e["seq"]] == [e["seq"] for e in stored]
    assert events[-1]["type"] == "session.completed"
