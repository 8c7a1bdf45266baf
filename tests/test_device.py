"""Running on a device (SPEC 17): started as systemd starts a Type=notify service, with
its readiness and watchdog pings read from a socket of the test's own."""

import itertools
import logging
import os
import re
import shlex
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import webtest
from conftest import ROOT, Api, SSEStream, error_of, finish, free_port, wait_until

import everruns


def notifications(sock, until, timeout=20.0):
    """Datagrams from the notification socket until one says `until`: (arrival time, text) each."""
    got, deadline = [], time.monotonic() + timeout
    while not got or until not in got[-1][1]:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        got.append((time.monotonic(), sock.recv(4096).decode()))
    return got


def test_started_as_systemd_would_it_notifies_ready_once_the_port_accepts_and_pings_the_watchdog(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}  # pings every 0.2 s
    command = [sys.executable, str(ROOT / "everruns.py"), "--port", str(port), "--db", str(tmp_path / "x.db")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = notifications(sock, "READY=1")
        with socket.create_connection(("127.0.0.1", port), timeout=1):  # it accepts: no retry needed
            pass
        assert len(ready) == 1 and f"MAINPID={proc.pid}" in ready[0][1]  # nothing before it
        pings = [notifications(sock, "WATCHDOG=1")[-1][0] for _ in range(6)]
        gaps = [b - a for a, b in itertools.pairwise(pings[2:])]  # (the first may have waited in the socket)
        assert all(0.05 < gap < 1.0 for gap in gaps), gaps  # about 0.2 s apart (loose bounds: a busy machine)
        proc.terminate()
        assert any("STOPPING=1" in text for _, text in notifications(sock, "STOPPING=1"))
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_without_systemd_nothing_is_sent_and_a_watchdog_for_another_process_is_not_pinged():
    import everruns

    assert everruns._watchdog_interval({}) is None
    assert everruns._watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert everruns._watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert everruns._watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_a_missing_dependency_is_one_line_not_a_traceback():
    """Python without the packages (-S: no site-packages), as a script and as the `everruns` command."""
    command = f"import sys; sys.argv[0] = '/usr/local/bin/everruns'; sys.path.insert(0, {str(ROOT)!r}); import everruns"
    for run in ([str(ROOT / "everruns.py"), "--version"], ["-c", command]):
        out = subprocess.run([sys.executable, "-S", *run], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.startswith("everruns: missing Python packages: bottle, gevent, peewee, pydantic (pip install")
        assert out.stderr.count("\n") == 1, out.stderr


def test_a_script_run_loads_tls_when_first_used_and_it_does_not_block_other_requests(start_server):
    """ssl runs (and is patched by gevent) at the first TLS connection: here to a peer that reads the
    client's hello and answers nothing, then closes. The server answers meanwhile; the turn fails."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = start_server()
    try:
        status, _, provider = server.call("POST", "/v1/llm-providers", {
            "name": "tls", "provider_type": "openai", "api_key": "k", "default_model": "m",
            "base_url": f"https://127.0.0.1:{listener.getsockname()[1]}/v1"})  # fmt: skip
        assert status == 201
        agent = server.call("POST", "/v1/agents", {"name": "a", "provider_id": provider["id"]})[2]
        session = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]
        assert server.call("POST", f"/v1/sessions/{session['id']}/messages", {"content": "hi"})[0] == 201
        listener.settimeout(20)
        peer, _ = listener.accept()
        peer.settimeout(20)
        assert peer.recv(5)[:1] == b"\x16"  # a TLS handshake record: the client's hello
        for _ in range(5):  # its handshake waits for us: the server is not held by it
            started = time.monotonic()
            assert server.call("GET", "/health", timeout=5)[0] == 200
            assert time.monotonic() - started < 1.0
        peer.close()
        listener.close()  # a retry is refused at once
        done = finish_remote(server, session["id"])
        assert done["status"] == "failed" and done["error"]["code"].startswith("PROVIDER_"), done
    finally:
        listener.close()


def finish_remote(server, session_id):
    """The session's last turn once it is settled (a real server, ?until=completed)."""
    server.call("GET", f"/v1/sessions/{session_id}/events?until=completed", timeout=60)
    return server.call("GET", f"/v1/sessions/{session_id}")[2]["last_turn"]


def test_the_readme_s_unit_file_uses_only_options_the_server_has():
    readme = (ROOT / "README.md").read_text()
    unit = re.search(r"```ini\n(\[Unit\].*?)```", readme, re.S).group(1)
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "StateDirectory=everruns" in unit
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes", "StandardOutput=journal"):
        assert option in unit
    command = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))
    assert command[0].endswith("/bin/everruns")
    flags = [word for word in command[1:] if word.startswith("--")]
    help_text = subprocess.run([sys.executable, str(ROOT / "everruns.py"), "--help"], capture_output=True, text=True,
                               timeout=60).stdout  # fmt: skip
    known = set(re.findall(r"--[a-z][a-z-]+", help_text))
    assert flags and set(flags) <= known, set(flags) - known
    assert "/var/lib/everruns/" in command[command.index("--db") + 1]  # the database in the state directory


# ---- retention and a size limit ---------------------------------------------


def age(app, session_ids, when="2020-01-01T00:00:00.000Z"):
    """Make sessions look last active long ago."""
    m = app.everruns.store.m
    with app.everruns.store.write():
        m.Session.update(updated_at=when).where(m.Session.id.in_(session_ids)).execute()


def test_retention_deletes_exactly_the_idle_sessions_past_the_age_in_batches(make_app, monkeypatch, caplog):
    monkeypatch.setattr(everruns, "RETENTION_EVERY_S", 0.05)
    monkeypatch.setattr(everruns, "RETENTION_BATCH", 3)
    caplog.set_level(logging.INFO, logger="everruns")
    app = make_app(retention_days=30)
    client = webtest.TestApp(app)
    api = Api(client)
    agent = api.agent(client_tools=[{"name": "get_location", "description": "Where the user is.",
                                     "parameters": {"type": "object", "properties": {}}}])  # fmt: skip
    old = [api.session(agent["id"])["id"] for _ in range(7)]
    for session in old[:2]:  # with messages, events and a file: all of it goes
        api.message(session, "hello", status=201)
        finish(client, session)
        client.put_json(f"/v1/sessions/{session}/fs/notes.txt", {"content": "kept until the session goes"})
    waiting = api.session(agent["id"])["id"]  # an old session whose turn waits for its client: kept
    api.message(waiting, "get_location {}", status=201)
    wait_until(lambda: client.get(f"/v1/sessions/{waiting}").json["status"] == "waiting", what="a waiting turn")
    recent = api.session(agent["id"])["id"]
    slow = api.provider(name="slow", provider_type="llmsim", settings={"token_delay_ms": 30})["id"]
    streaming = api.session(api.agent(provider_id=slow)["id"])["id"]
    age(app, [*old, waiting])  # (the streaming session is recent: the sweeps run all along)
    server = everruns._Server(("127.0.0.1", 0), app, app.everruns.config)
    server.start()
    stream = SSEStream(f"http://127.0.0.1:{server.server_port}", f"/v1/sessions/{streaming}/events")
    api.message(streaming, " ".join(f"w{i}" for i in range(40)), status=201)  # a turn runs all along
    wait_until(lambda: all(client.get(f"/v1/sessions/{s}", status="*").status_int == 404 for s in old),
               what="the old idle sessions to go")  # fmt: skip
    events = [item["data"] for item in stream.until(lambda e: e["type"] == "session.completed")]
    stream.close()
    server.stop(timeout=1)
    stored = [e["seq"] for e in events if e["seq"] is not None]
    assert stored == list(range(1, len(stored) + 1)) and events[-1]["data"]["status"] == "completed"  # no gap
    answer = events[-2]["data"]["message"]["content"][0]["text"]
    assert "".join(e["data"]["delta"] for e in events if e["type"] == "message.delta") == answer  # every word streamed
    for kept in (waiting, recent, streaming):
        assert client.get(f"/v1/sessions/{kept}").status_int == 200
    m = app.everruns.store.m
    for table in (m.Message, m.Event, m.File, m.Turn):  # nothing of them is left
        assert table.select().where(table.session_id.in_(old)).count() == 0
    counts = [int(r.getMessage().split()[2]) for r in caplog.records if r.getMessage().startswith("retention: deleted")]
    assert sorted(counts, reverse=True)[:2] == [3, 3] and sum(counts) == 7  # in batches of 3 at most
    deleted = re.search(
        r'everruns_sessions_deleted_total\{reason="retention"[^}]*\} (\S+)', client.get("/metrics").text
    )
    assert float(deleted.group(1)) == 7


@pytest.mark.sqlite
def test_max_db_mb_refuses_new_sessions_and_messages_and_reads_go_on(make_app, monkeypatch):
    monkeypatch.setattr(everruns, "SIZE_EVERY_S", 0.0)  # the size read at every check
    app = make_app(max_db_mb=1.0)
    client = webtest.TestApp(app)
    api = Api(client)
    agent = api.agent()["id"]
    big = api.session(agent)["id"]
    for _ in range(4):
        client.put_json(f"/v1/sessions/{big}/fs/{everruns._uuid7()}.txt", {"content": "x" * 300_000})
    error_of(client.post_json(f"/v1/agents/{agent}/sessions", {}, status=507), 507, "INSUFFICIENT_STORAGE")
    refused = client.post_json(f"/v1/sessions/{big}/messages", {"content": "hi"}, status=507)
    assert "--max-db-mb" in error_of(refused, 507, "INSUFFICIENT_STORAGE")["message"]
    assert client.get(f"/v1/sessions/{big}").status_int == 200  # reads go on
    assert client.get(f"/v1/sessions/{big}/messages").json["data"] == []  # nothing was stored
    client.delete(f"/v1/sessions/{big}")  # space is free again (its pages)
    session = api.session(agent)["id"]
    api.message(session, "hello", status=201)
    assert finish(client, session)[-1]["data"]["status"] == "completed"


# ---- a full disk --------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 4 MB of its own (tmpfs), for a database that fills it."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small file system cannot be mounted here (root can): {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where):
    """Write a file until the file system is full; its path."""
    path = where / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


@pytest.mark.slow  # (run once, not on every interpreter)
@pytest.mark.sqlite
def test_a_full_disk_gives_507s_reads_go_on_and_it_recovers_when_space_frees(start_server, small_disk):
    db = str(small_disk / "everruns.db")
    server = start_server(db)
    call = server.call
    answer = " ".join(["y" * 30_000] * 3)  # 3 words a second apart: its end needs new pages
    settings = {"token_delay_ms": 1000, "reply": answer}
    slow = call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim", "settings": settings})[2]["id"]
    fast = call("POST", f"/v1/agents/{call('POST', '/v1/agents', {'name': 'f'})[2]['id']}/sessions", {})[2]["id"]
    agent = call("POST", "/v1/agents", {"name": "s", "provider_id": slow})[2]["id"]
    running = call("POST", f"/v1/agents/{agent}/sessions", {})[2]["id"]
    stream = SSEStream(server.url, f"/v1/sessions/{running}/events")
    call("POST", f"/v1/sessions/{running}/messages", {"content": "a long answer, please"})
    stream.until(lambda e: e["type"] == "message.delta")  # its first word
    filler = fill(small_disk)
    statuses = []  # (the first writes may fit in pages SQLite has already)
    while len(statuses) < 300 and (not statuses or statuses[-1] != 507):
        status, _, body = call("POST", f"/v1/sessions/{fast}/messages", {"content": "x" * 20_000})
        statuses.append(status)
    assert statuses[-1] == 507 and set(statuses) <= {201, 507}, statuses
    assert body["error"]["code"] == "INSUFFICIENT_STORAGE" and "full" in body["error"]["message"]
    assert call("POST", f"/v1/agents/{agent}/sessions", {})[0] == 507
    assert call("GET", f"/v1/sessions/{fast}")[0] == 200  # reads go on
    assert call("GET", f"/v1/sessions/{fast}/messages?limit=100")[0] == 200
    for _ in range(2):  # its last words: the turn has tried to store its end (its delta goes out after)
        stream.until(lambda e: e["type"] == "message.delta")
    assert call("GET", f"/v1/sessions/{running}")[2]["status"] == "running"  # its end failed: not yet
    os.remove(filler)  # space again: no restart
    wait_until(lambda: call("GET", f"/v1/sessions/{running}")[2]["status"] == "idle", timeout=30, what="its end")
    ended = call("GET", f"/v1/sessions/{running}")[2]["last_turn"]
    assert ended["status"] == "failed" and ended["error"]["code"] == "INSUFFICIENT_STORAGE", ended
    wait_until(lambda: call("GET", f"/v1/sessions/{fast}")[2]["status"] == "idle", timeout=30, what="the others")
    assert call("POST", f"/v1/sessions/{fast}/messages", {"content": "hello again"})[0] == 201

    def answered():
        session = call("GET", f"/v1/sessions/{fast}")[2]
        return session["status"] == "idle" and session["last_turn"]["status"] == "completed"

    wait_until(answered, timeout=30, what="a new turn")
    assert server.stop() == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)  # nothing half-written
