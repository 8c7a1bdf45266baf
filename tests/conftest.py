"""Shared fixtures: a fresh app and database per test, a WebTest client,
helpers to create resources, and a real server process on 127.0.0.1."""

from gevent import monkey

monkey.patch_all()  # as `python everruns.py` does: before everruns (and peewee) is imported

import contextlib  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import webtest  # noqa: E402

import everruns  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ---- the databases -----------------------------------------------------------
# Every test that uses a database runs on both backends: a SQLite file, and a
# database of its own on a throwaway PostgreSQL server (cloned from a migrated
# template). A test of SQLite itself (its file, its pragmas) is marked `sqlite`.


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite: a test of SQLite itself (its file, pragmas or sqlite3): SQLite only")
    config.addinivalue_line("markers", "postgresql: a test of what only PostgreSQL does: PostgreSQL only")
    config.addinivalue_line("markers", "slow: a fault test that takes long by design (run once, on one interpreter)")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        only = [name for name in ("sqlite", "postgresql") if metafunc.definition.get_closest_marker(name)]
        metafunc.parametrize("backend", only or ["sqlite", "postgresql"])


class Postgres:
    """A PostgreSQL server for this test run, on 127.0.0.1 (a free port), in a temporary
    folder, with no durability (fsync off); stopped at the end of the run."""

    def __init__(self, folder):
        import glob
        import itertools

        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does it)")
        self.bin, self.folder, self.port = os.path.dirname(found[-1]), folder, free_port()
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        if self.as_owner:  # PostgreSQL refuses to run as root
            subprocess.run(["chown", "-R", "postgres", str(folder)], check=True)
        self._run("initdb", "-D", f"{folder}/data", "-A", "trust", "--no-sync", "--no-locale", "-E", "UTF8",
                  "-U", "postgres")  # fmt: skip
        self.options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -k {folder} -c fsync=off "
                        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400")  # fmt: skip
        self.start()
        self.base = f"postgresql://postgres@127.0.0.1:{self.port}/"
        self._names = itertools.count(1)
        try:
            self._admin("CREATE DATABASE everruns_template")
            everruns.create_app(self.base + "everruns_template", env={}).close()  # migrated once
        except BaseException:  # the fixture never yields: stop the server here, or it outlives the run
            self.stop()
            raise

    def _run(self, tool, *args):
        subprocess.run([*self.as_owner, f"{self.bin}/{tool}", *args], check=True, capture_output=True)

    def _admin(self, sql):
        import psycopg

        with psycopg.connect(self.base + "postgres", autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self):
        """The URL of a new database, a copy of the migrated template."""
        name = f"test_{next(self._names)}"
        self._admin(f"CREATE DATABASE {name} TEMPLATE everruns_template")
        return self.base + name

    def start(self):
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-l", f"{self.folder}/log", "-o", self.options, "-w", "start")

    def stop(self, mode="immediate"):
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-m", mode, "stop")

    def restart(self):
        """A restart as an operator makes one: every connection is closed."""
        self._run("pg_ctl", "-D", f"{self.folder}/data", "-l", f"{self.folder}/log", "-o", self.options, "-m", "fast",
                  "-w", "restart")  # fmt: skip

    def terminate_backends(self, database):
        """Close every connection to a database from the server's side (as an idle timeout or a firewall would)."""
        self._admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' "
                    "AND pid <> pg_backend_pid()")  # fmt: skip


@pytest.fixture
def own_postgres():
    """A PostgreSQL server for one test alone: to restart, stop and start again."""
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="everruns-postgres-")
    server = Postgres(folder)
    yield server
    with contextlib.suppress(subprocess.CalledProcessError):
        server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="everruns-postgres-")  # in /tmp: its owner, postgres, must reach it
    server = Postgres(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def another_connection(db):
    """A plain DB-API connection to a test's database, beside the app's (`?` placeholders)."""
    if db.startswith("postgresql://"):
        import psycopg

        class Conn(psycopg.Connection):
            def execute(self, sql, params=None, **kwargs):
                return super().execute(sql.replace("?", "%s"), params, **kwargs)

        return Conn.connect(db, autocommit=True)
    import sqlite3

    return sqlite3.connect(db)


@pytest.fixture
def db_path(backend, tmp_path, request):
    """The test's database: a SQLite file path, or a PostgreSQL URL."""
    if backend == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return str(tmp_path / "everruns.db")


@pytest.fixture
def make_app(db_path):
    """Build apps (closed after the test); default: the test's own database file. Every
    event they store is checked against its model (EVENTS): a mismatch fails the test."""
    apps = []

    def make(db=None, **options):
        options.setdefault("env", {})
        options.setdefault("check_events", True)
        app = everruns.create_app(db or db_path, **options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()
    mismatches = [m for app in apps for m in app.everruns.journal.mismatches]
    assert not mismatches, f"events whose data their model (everruns.EVENTS) does not describe: {mismatches}"


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return webtest.TestApp(app)


class Api:
    """Short helpers over a WebTest client."""

    def __init__(self, client):
        self.client = client

    def default_provider(self):
        return next(p for p in self.client.get("/v1/llm-providers").json["data"] if p["is_default"])

    def provider(self, **fields):
        body = {"name": "p", "provider_type": "openai", **fields}
        return self.client.post_json("/v1/llm-providers", body, status=201).json

    def agent(self, **fields):
        return self.client.post_json("/v1/agents", {"name": "helper", **fields}, status=201).json

    def session(self, agent_id=None, **fields):
        agent_id = agent_id or self.agent()["id"]
        return self.client.post_json(f"/v1/agents/{agent_id}/sessions", fields, status=201).json

    def message(self, session_id, text="hello", **kwargs):
        return self.client.post_json(f"/v1/sessions/{session_id}/messages", {"content": text}, **kwargs).json


@pytest.fixture
def api(client):
    return Api(client)


def error_of(response, status, code):
    """Assert the standard error envelope and return the error object."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    assert set(response.json) == {"error"}
    error = response.json["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return error


def wait_until(condition, timeout=10.0, what="the condition", pause=0.02):
    """Wait for `condition()` to be true (other greenlets run meanwhile); its value."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(pause)  # gevent's, once patched
    return value


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=10):
    """A plain HTTP call: (status, headers, parsed JSON or raw bytes)."""
    data = json.dumps(body).encode() if body is not None else None
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, rh, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, rh, raw = e.code, e.headers, e.read()
    is_json = rh.get("Content-Type", "").startswith("application/json") and raw
    return status, rh, json.loads(raw) if is_json else raw


class Server:
    """`python everruns.py` (or a program that embeds it: `script`) in a child process on a
    free 127.0.0.1 port."""

    def __init__(self, db, *args, env=None, port=None, script=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        clean = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("EVERRUNS_")}
        self.log = tempfile.TemporaryFile("w+")  # the server's output
        cmd = [sys.executable, str(script or ROOT / "everruns.py"), "--port", str(self.port), "--db", db, *args]
        env = {**clean, "EVERRUNS_CHECK_EVENTS": "1", **(env or {})}  # every event checked against its model
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def _wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if http("GET", self.url + "/health", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.output()}")

    def call(self, method, path, body=None, headers=None, timeout=10):
        return http(method, self.url + path, body, headers, timeout)

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    """Start real servers; every one still running is killed after the test."""
    servers = []

    def start(db=None, *args, env=None, port=None, script=None):
        server = Server(db or str(tmp_path / "server.db"), *args, env=env, port=port, script=script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        mismatches = [line for line in server.output().splitlines() if "does not match its model" in line]
        server.log.close()
        assert not mismatches, f"events whose data their model (everruns.EVENTS) does not describe: {mismatches}"


# ---- events -----------------------------------------------------------------


def parse_sse(text):
    """SSE text as a list of events: {"id", "event", "data"} (data parsed), plus
    {"comment": ...} and {"retry": ...} items for those lines."""
    items, fields = [], {}
    for line in text.split("\n"):
        if not line:
            if "data" in fields:
                items.append({"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])})
            fields = {}
        elif line.startswith(":"):
            items.append({"comment": line[1:].strip()})
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "retry":
                items.append({"retry": value})
            else:
                fields[name] = value
    return items


def events_of(items):
    return [i["data"] for i in items if "data" in i]


def finish(client, session_id, after=None):
    """Wait (with ?until=completed) until the session is settled; its events."""
    query = "until=completed" + (f"&after={after}" if after is not None else "")
    return events_of(parse_sse(client.get(f"/v1/sessions/{session_id}/events?{query}").text))


@pytest.fixture
def live(app):
    """The test's app served on a real 127.0.0.1 socket in this process, by the server `serve` runs."""
    server = everruns._Server(("127.0.0.1", 0), app, app.everruns.config)
    server.start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.stop(timeout=1)


class SSEStream:
    """A live SSE connection over a socket, read event by event with timeouts."""

    def __init__(self, base_url, path, headers=None, timeout=15, rcvbuf=None):
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        if rcvbuf:  # set before connecting: the window the server sees is small from the start
            self.conn.sock = socket.socket()
            self.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.conn.sock.settimeout(timeout)
            self.conn.sock.connect((parts.hostname, parts.port))
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.timeout = timeout

    def __iter__(self):
        fields = {}
        while True:
            raw = self.response.readline()
            if not raw:
                return
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                yield {"comment": line[1:].strip()}
            elif line.startswith("retry:"):
                yield {"retry": line[6:].strip()}
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                yield {"id": fields.get("id"), "event": fields.get("event"), "data": json.loads(fields["data"])}
                fields = {}

    def until(self, predicate):
        """Events up to and including the first that matches (comments skipped)."""
        got = []
        for item in self:
            if "data" in item:
                got.append(item)
                if predicate(item["data"]):
                    return got
        raise AssertionError(f"stream ended before the awaited event; got {[g['event'] for g in got]}")

    def rest(self):
        """Everything until the server closes the stream."""
        return list(self)

    def close(self):
        self.conn.close()


# ---- LLM providers ----------------------------------------------------------

CANARY_KEY = "sk-canary-ZZ9-plural-Z-alpha-0042"


def chunk(delta=None, finish_reason=None, usage=None):
    """One `chat.completion.chunk` as OpenAI streams it."""
    body = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk", "created": 1730000000,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"}  # fmt: skip
    if usage is not None:
        body.update(choices=[], usage=usage)
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Upstream:
    """An LLM provider stand-in on 127.0.0.1: it records each request and
    answers with the next scripted reply (status, headers, body pieces)."""

    def __init__(self):
        from gevent.pool import Pool
        from gevent.pywsgi import WSGIServer

        self.requests, self.replies = [], []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None, spawn=Pool())
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def restart(self):
        """Stop (closing every connection, kept-alive ones too) and listen again on the same port."""
        from gevent.pool import Pool
        from gevent.pywsgi import WSGIServer

        port = self.server.server_port
        self.server.stop(timeout=0)  # kills the connections' greenlets (they are in its pool)
        self.server = WSGIServer(("127.0.0.1", port), self.app, log=None, error_log=None, spawn=Pool())
        self.server.start()

    def reply(self, status=200, body=(), headers=None, hang=0.0, drop=False):
        """Script the next answer: body pieces are bytes, or events to wait for; `drop` cuts
        the connection after them."""
        self.replies.append(
            {"status": status, "body": list(body), "headers": headers or {}, "hang": hang, "drop": drop}
        )

    def sse(self, events, **kwargs):
        self.reply(200, events, {"Content-Type": "text/event-stream"}, **kwargs)

    def json(self, status, obj, headers=None):
        self.reply(status, [json.dumps(obj).encode()], {"Content-Type": "application/json", **(headers or {})})

    def app(self, environ, start_response):
        import gevent

        raw = environ["wsgi.input"].read()
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        self.requests.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"], "headers": headers,
                              "json": json.loads(raw) if raw else None,
                              "connection": environ["REMOTE_PORT"]})  # fmt: skip
        script = self.replies.pop(0) if self.replies else {"status": 599, "body": [b"unscripted"], "headers": {},
                                                            "hang": 0, "drop": False}  # fmt: skip
        gevent.sleep(script["hang"])
        start_response(f"{script['status']} X", list(script["headers"].items()))

        def body():
            for piece in script["body"]:
                if hasattr(piece, "wait"):  # a gate (gevent.event.Event): the rest once the test sets it
                    piece.wait(30)
                    continue
                yield piece
                gevent.sleep(0)
            if script["drop"]:
                raise ConnectionAbortedError("the stand-in drops the connection")

        return body()

    def close(self):
        self.server.stop(timeout=0)  # kept-alive connections are closed, not waited for


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


def remote_session(api, upstream, provider_type, capabilities=(), **settings):
    """A session whose agent talks to the stand-in provider with the canary key."""
    base_url = upstream.url + ("/v1" if provider_type == "openai" else "")
    provider = api.provider(provider_type=provider_type, base_url=base_url, api_key=CANARY_KEY,
                            default_model="test-model", settings=settings)  # fmt: skip
    agent = api.agent(provider_id=provider["id"], capabilities=list(capabilities), system_prompt="Be brief.")
    return api.session(agent["id"])


# ---- traces ------------------------------------------------------------------


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: it keeps the spans of each export."""

    def __init__(self):
        from gevent.pywsgi import WSGIServer

        self.bodies, self.paths = [], []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        if environ.get("HTTP_CONTENT_ENCODING") == "gzip":
            body = gzip.decompress(body)
        self.paths.append(environ["PATH_INFO"])
        self.bodies.append(body)
        start_response("200 OK", [("Content-Type", "application/x-protobuf")])
        return [b""]

    def spans(self):
        """Every span received: {name, trace_id, span_id, parent, attributes, status, kind}."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        spans = []
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource.resource.attributes}["service.name"]
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        spans.append({"name": span.name, "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                      "parent": span.parent_span_id.hex(), "status": span.status.code,
                                      "kind": span.kind, "service": service,
                                      "attributes": {a.key: attribute(a.value) for a in span.attributes}})  # fmt: skip
        return spans

    def close(self):
        self.server.stop(timeout=0)


def attribute(value):
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [attribute(v) for v in value.array_value.values]
    return getattr(value, kind)


@pytest.fixture
def collector():
    """An OTLP/HTTP receiver for the test."""
    receiver = Collector()
    yield receiver
    receiver.close()


# ---- the blocking monitor ---------------------------------------------------

# gevent's monitor thread reports any call that holds the hub for over 100 ms.
MONITOR = {"GEVENT_MONITOR_THREAD_ENABLE": "1", "GEVENT_MAX_BLOCKING_TIME": "0.1"}


def stored_events(server, session_id):
    """A real server's stored events of a session (up to 100)."""
    status, _, page = server.call("GET", f"/v1/sessions/{session_id}/events?format=json&limit=100")
    assert status == 200
    return page["data"]


def blocking_reports(server):
    """The monitor's reports in a server's output (started with env=MONITOR)."""
    return [line for line in server.output().splitlines() if "appears to be blocked" in line]


def health_latencies(server, until, limit=30.0):
    """Time GET /health again and again until `until()` is true: the answers' latencies in seconds."""
    latencies, deadline = [], time.monotonic() + limit
    while True:  # at least once
        started = time.monotonic()
        assert server.call("GET", "/health", timeout=5)[0] == 200
        latencies.append(time.monotonic() - started)
        if until():
            return latencies
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)
