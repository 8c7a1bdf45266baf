"""The session file system: over HTTP, through tools, isolated per session, no way out of the root."""

import base64
import json

import pytest
from conftest import MONITOR, blocking_reports, error_of, finish, health_latencies, stored_events

import everruns


@pytest.fixture
def fs_session(api):
    return api.session(api.agent(capabilities=["session_file_system"])["id"])


def fs_url(session, path=""):
    return f"/v1/sessions/{session['id']}/fs" + (f"/{path}" if path else "")


def tool(api, client, session, name, **arguments):
    """Run one tool through a real turn (the simulator calls it); its tool.result data."""
    api.message(session["id"], f"{name} {json.dumps(arguments)}", status=201)
    return [e["data"] for e in finish(client, session["id"]) if e["type"] == "tool.result"][-1]


def test_put_get_replace_delete_over_http(client, fs_session):
    created = client.put_json(fs_url(fs_session, "notes/todo.md"), {"content": "# Todo\n"}, status=201).json
    assert (created["path"], created["type"], created["content"], created["encoding"]) == (
        "/notes/todo.md", "file", "# Todo\n", "text")  # fmt: skip
    assert created["size_bytes"] == 7
    replaced = client.put_json(fs_url(fs_session, "notes/todo.md"), {"content": "done"}, status=200).json
    assert replaced["content"] == "done" and replaced["created_at"] == created["created_at"]
    notes = client.get(fs_url(fs_session, "notes")).json
    entry = {"name": "todo.md", "path": "/notes/todo.md", "type": "file", "size_bytes": 4}
    assert notes == {"path": "/notes", "type": "directory", "entries": [entry]}
    root = client.get(fs_url(fs_session)).json
    assert root["entries"] == [{"name": "notes", "path": "/notes", "type": "directory", "size_bytes": 0}]
    client.delete(fs_url(fs_session, "notes/todo.md"), status=204)
    error_of(client.get(fs_url(fs_session, "notes/todo.md"), status="*"), 404, "NOT_FOUND")


def test_binary_files_round_trip_as_base64(client, fs_session):
    data = bytes(range(256))
    body = {"content": base64.b64encode(data).decode(), "encoding": "base64"}
    client.put_json(fs_url(fs_session, "bin/blob"), body, status=201)
    got = client.get(fs_url(fs_session, "bin/blob")).json
    assert got["encoding"] == "base64" and base64.b64decode(got["content"]) == data and got["size_bytes"] == 256
    error_of(client.put_json(fs_url(fs_session, "bad"), {"content": "@@@", "encoding": "base64"}, status="*"),
             400, "VALIDATION_ERROR")  # fmt: skip


def test_directories(client, fs_session):
    assert client.put_json(fs_url(fs_session, "a/b"), {"type": "directory"}, status=201).json["entries"] == []
    client.put_json(fs_url(fs_session, "a/b"), {"type": "directory"}, status=200)
    client.put_json(fs_url(fs_session, "a/b/c.txt"), {"content": "x"}, status=201)
    error_of(client.delete(fs_url(fs_session, "a"), status="*"), 409, "CONFLICT")
    client.delete(fs_url(fs_session, "a/b/c.txt"), status=204)
    client.delete(fs_url(fs_session, "a/b"), status=204)  # empty now
    client.put_json(fs_url(fs_session, "a/x/y/z.txt"), {"content": "deep"}, status=201)
    client.delete(fs_url(fs_session, "a") + "?recursive=true", status=204)
    assert client.get(fs_url(fs_session)).json["entries"] == []


def test_conflicts_between_files_and_directories(client, fs_session):
    client.put_json(fs_url(fs_session, "f"), {"content": "file"}, status=201)
    error_of(client.put_json(fs_url(fs_session, "f/child"), {"content": "x"}, status="*"), 409, "CONFLICT")
    error_of(client.put_json(fs_url(fs_session, "f"), {"type": "directory"}, status="*"), 409, "CONFLICT")
    client.put_json(fs_url(fs_session, "d"), {"type": "directory"}, status=201)
    error_of(client.put_json(fs_url(fs_session, "d"), {"content": "x"}, status="*"), 409, "CONFLICT")


def test_size_limits(client, fs_session):
    mib = 1024 * 1024
    client.put_json(fs_url(fs_session, "max"), {"content": "x" * mib}, status=201)
    error_of(client.put_json(fs_url(fs_session, "over"), {"content": "x" * (mib + 1)}, status="*"), 413,
             "PAYLOAD_TOO_LARGE")  # fmt: skip
    for i in range(9):
        client.put_json(fs_url(fs_session, f"f{i}"), {"content": "x" * mib}, status=201)
    error_of(client.put_json(fs_url(fs_session, "one-too-many"), {"content": "x"}, status="*"), 413,
             "PAYLOAD_TOO_LARGE")  # fmt: skip


def test_unknown_session_and_path(client):
    missing = everruns._uuid7()
    error_of(client.get(f"/v1/sessions/{missing}/fs", status="*"), 404, "NOT_FOUND")
    error_of(client.put_json(f"/v1/sessions/{missing}/fs/a", {"content": "x"}, status="*"), 404, "NOT_FOUND")


def test_sessions_never_see_each_others_files(api, client):
    agent = api.agent(capabilities=["session_file_system"])
    one, two = api.session(agent["id"]), api.session(agent["id"])
    client.put_json(fs_url(one, "secret.txt"), {"content": "only mine"}, status=201)
    error_of(client.get(fs_url(two, "secret.txt"), status="*"), 404, "NOT_FOUND")
    assert client.get(fs_url(two)).json["entries"] == []
    result = tool(api, client, two, "read_file", path="/secret.txt")
    assert result["is_error"] is True and "does not exist" in result["result"]["error"]


def test_tools_and_http_see_the_same_files(api, client, fs_session):
    written = tool(api, client, fs_session, "write_file", path="/docs/plan.md", content="step one\nstep two\n")
    assert written["is_error"] is False and written["result"]["created"] is True
    assert client.get(fs_url(fs_session, "docs/plan.md")).json["content"] == "step one\nstep two\n"
    client.put_json(fs_url(fs_session, "docs/ideas.md"), {"content": "a step further"}, status=201)
    assert tool(api, client, fs_session, "read_file", path="/docs/ideas.md")["result"]["content"] == "a step further"
    listing = tool(api, client, fs_session, "list_directory", path="/docs")["result"]
    assert [e["name"] for e in listing["entries"]] == ["ideas.md", "plan.md"]
    grep = tool(api, client, fs_session, "grep_files", pattern="step (one|further)", path="/")["result"]
    assert [(m["path"], m["line_number"]) for m in grep["matches"]] == [("/docs/ideas.md", 1), ("/docs/plan.md", 1)]
    assert tool(api, client, fs_session, "stat_file", path="/docs")["result"]["type"] == "directory"
    refused = tool(api, client, fs_session, "delete_file", path="/docs")
    assert refused["is_error"] is True and "not empty" in refused["result"]["error"]
    assert tool(api, client, fs_session, "delete_file", path="/docs", recursive=True)["result"]["deleted"] == 3
    assert client.get(fs_url(fs_session)).json["entries"] == []


def test_grep_guards(api, client, fs_session):
    client.put_json(fs_url(fs_session, "a.txt"), {"content": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!"}, status=201)
    slow = tool(api, client, fs_session, "grep_files", pattern="(a+)+$")
    assert slow["is_error"] is True and "took longer than 2 s" in slow["result"]["error"]
    bad = tool(api, client, fs_session, "grep_files", pattern="([unclosed")
    assert bad["is_error"] is True and "regular expression" in bad["result"]["error"]
    lines = "\n".join(f"hit {i}" for i in range(500))
    client.put_json(fs_url(fs_session, "many.txt"), {"content": lines}, status=201)
    many = tool(api, client, fs_session, "grep_files", pattern="hit", path="/many.txt")["result"]
    assert many["truncated"] is True and len(many["matches"]) == everruns.GREP_MAX_MATCHES


TRAVERSALS = [
    "/../etc/passwd", "/a/../../b", "/..", "/./../x", "//..//x", "/a/b/../../../c", "..", "../x", "a/../../x",
    "/a\\b", "\\..\\x", "C:\\windows\\system32", "/a\x00b", "/\x00", "/tab\there", "/new\nline", "/del\x7f",
    "/" + "n" * 256, "/" + "a/" * 2100,
]  # fmt: skip


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_vectors_are_rejected(path):
    with pytest.raises(everruns.EverrunsError) as raised:
        everruns._normalize_path(path)
    assert raised.value.status == 400


def test_paths_are_normalised():
    assert everruns._normalize_path("/a//b/./c/") == "/a/b/c"
    assert everruns._normalize_path("/a/b/../c") == "/a/c"
    assert everruns._normalize_path("/") == "/"


@pytest.mark.parametrize("escape", ["..%2Fsecret", "%2e%2e/x", "a/%2e%2e/%2e%2e/x", "a%5Cb", "a%00b"])
def test_traversal_over_http_is_400(client, fs_session, escape):
    response = client.put_json(fs_url(fs_session) + "/" + escape, {"content": "x"}, status="*")
    error_of(response, 400, "VALIDATION_ERROR")


def test_traversal_through_a_tool_is_an_error_result(api, client, fs_session):
    result = tool(api, client, fs_session, "write_file", path="/../../escape", content="x")
    assert result["is_error"] is True and "root" in result["result"]["error"]


def test_deleting_a_session_deletes_its_files(api, client, fs_session):
    client.put_json(fs_url(fs_session, "f"), {"content": "x"}, status=201)
    client.delete(f"/v1/sessions/{fs_session['id']}", status=204)
    m = client.app.everruns.store.m
    assert m.File.select().where(m.File.session_id == fs_session["id"]).count() == 0


CATASTROPHIC = ["(.*a){20}b", "(a|a)*b", "((a+))+b", "(a+)+$"]


def test_catastrophic_patterns_never_stall_the_server(start_server):
    server = start_server(None, env=MONITOR)
    agent = server.call("POST", "/v1/agents", {"name": "fs", "capabilities": ["session_file_system"]})[2]
    sessions = [server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"] for _ in CATASTROPHIC]
    for sid, pattern in zip(sessions, CATASTROPHIC, strict=True):
        server.call("PUT", f"/v1/sessions/{sid}/fs/a.txt", {"content": "a" * 40 + "!"})
        server.call(
            "POST", f"/v1/sessions/{sid}/messages", {"content": f"grep_files {json.dumps({'pattern': pattern})}"}
        )
    other = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
    server.call("POST", f"/v1/sessions/{other}/messages", {"content": "meanwhile"})
    wide = server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]  # a second to compile
    pattern = ("(?i)" + "[\u0100-\uffff]" * 300)[:1024]
    server.call("POST", f"/v1/sessions/{wide}/messages", {"content": f"grep_files {json.dumps({'pattern': pattern})}"})

    def settled():
        return all(server.call("GET", f"/v1/sessions/{s}")[2]["status"] == "idle" for s in [*sessions, other, wide])

    assert max(health_latencies(server, settled)) < 0.1
    for sid in sessions:
        result = next(e for e in stored_events(server, sid) if e["type"] == "tool.result")["data"]
        assert result["is_error"] is True and "took longer than 2 s" in result["result"]["error"]
    assert stored_events(server, other)[-1]["data"]["status"] == "completed"
    assert blocking_reports(server) == []


def test_relative_paths_are_taken_from_the_root(api, client, fs_session):
    assert everruns._normalize_path("notes/a.txt") == "/notes/a.txt" and everruns._normalize_path("") == "/"
    written = tool(api, client, fs_session, "write_file", path="notes/a.txt", content="hi")
    assert written["is_error"] is False and written["result"]["path"] == "/notes/a.txt"
    assert tool(api, client, fs_session, "read_file", path="notes/a.txt")["result"]["content"] == "hi"
    assert client.get(fs_url(fs_session) + "/").json["entries"][0]["path"] == "/notes"  # a trailing slash: the root
    assert client.get(fs_url(fs_session, "notes/")).json["type"] == "directory"


@pytest.fixture
def statements(monkeypatch):
    """The SQL the app runs from now on, with parameters."""
    seen, original = [], everruns.pw.Database.execute_sql

    def execute_sql(self, sql, *args, **kwargs):
        seen.append(sql)
        return original(self, sql, *args, **kwargs)

    monkeypatch.setattr(everruns.pw.Database, "execute_sql", execute_sql)
    return seen


def test_listing_a_directory_does_not_read_its_files(client, fs_session, statements):
    client.put_json(fs_url(fs_session, "big.bin"), {"content": "x" * 1000}, status=201)
    statements.clear()
    assert client.get(fs_url(fs_session)).json["entries"][0]["size_bytes"] == 1000
    listing = [q for q in statements if "substr" in q]
    assert listing and all('"content"' not in q for q in listing)


def test_a_recursive_delete_is_one_statement(client, fs_session, statements):
    for i in range(30):
        client.put_json(fs_url(fs_session, f"d/{i}.txt"), {"content": "x"}, status=201)
    statements.clear()
    client.delete(fs_url(fs_session, "d") + "?recursive=true", status=204)
    deletes = [q for q in statements if q.startswith("DELETE")]
    assert all(" IN " not in q for q in deletes) and len(deletes) <= 2
    assert client.get(fs_url(fs_session)).json["entries"] == []
