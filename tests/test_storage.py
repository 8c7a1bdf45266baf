"""Storage: separate databases per app, data across restarts, schema version, pragmas."""

import sqlite3

import pytest
import webtest
from conftest import another_connection, finish

import everruns


def test_two_apps_in_one_process_never_share_a_database(make_app, tmp_path):
    one = webtest.TestApp(make_app(str(tmp_path / "one.db")))
    two = webtest.TestApp(make_app(str(tmp_path / "two.db")))
    agent = one.post_json("/v1/agents", {"name": "only in one"}).json
    assert two.get("/v1/agents").json["data"] == []
    two.get(f"/v1/agents/{agent['id']}", status=404)
    two.post_json("/v1/agents", {"name": "only in two"})
    assert [a["name"] for a in one.get("/v1/agents").json["data"]] == ["only in one"]


def test_two_in_memory_apps_are_separate(make_app):
    one, two = webtest.TestApp(make_app(":memory:")), webtest.TestApp(make_app(":memory:"))
    one.post_json("/v1/agents", {"name": "a"})
    assert two.get("/v1/agents").json["data"] == []


def test_data_survives_a_restart_on_the_same_file(make_app, db_path):
    first = make_app(db_path)
    client = webtest.TestApp(first)
    agent = client.post_json("/v1/agents", {"name": "durable"}).json
    session = client.post_json(f"/v1/agents/{agent['id']}/sessions", {}).json
    message = client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "keep me"}).json
    first.close()
    again = webtest.TestApp(make_app(db_path))
    assert again.get(f"/v1/agents/{agent['id']}").json == agent
    assert again.get(f"/v1/sessions/{session['id']}/messages").json["data"] == [message]
    assert len(again.get("/v1/llm-providers").json["data"]) == 1  # the simulator is seeded once


@pytest.mark.sqlite
def test_schema_version_and_pragmas(app, db_path):
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == everruns.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db = app.everruns.store.db
    assert db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sync_normal_option(make_app, tmp_path):
    app = make_app(str(tmp_path / "n.db"), sync="normal")
    assert app.everruns.store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1


def test_models_match_the_migrated_tables(app):
    store = app.everruns.store
    for model in (m for m in vars(store.m).values() if isinstance(m, type)):
        columns = {c.name for c in store.db.get_columns(model._meta.table_name)}
        assert columns == set(model._meta.columns), model.__name__


def test_a_newer_schema_is_refused(db_path):
    if db_path.startswith("postgresql://"):  # the template is migrated: its version is a row of meta
        with another_connection(db_path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (everruns.SCHEMA_VERSION + 1,))
    else:
        sqlite3.connect(db_path).execute(f"PRAGMA user_version = {everruns.SCHEMA_VERSION + 1}")
    with pytest.raises(everruns.StartupError, match="newer"):
        everruns.create_app(db_path, env={})


def test_unknown_options_are_refused(db_path):
    with pytest.raises(TypeError, match="bogus"):
        everruns.create_app(db_path, bogus=1)


@pytest.mark.sqlite
def test_a_version_1_database_is_migrated_in_place(db_path):
    conn = sqlite3.connect(db_path)
    for statement in everruns._MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO agent VALUES ('01890000-0000-7000-8000-000000000001', 'old', '', '', '[]', NULL, NULL, '[]',"
        " 10, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    app = everruns.create_app(db_path, env={})
    client = webtest.TestApp(app)
    assert [a["name"] for a in client.get("/v1/agents").json["data"]] == ["old"]
    session = client.post_json("/v1/agents/01890000-0000-7000-8000-000000000001/sessions", {}).json
    client.put_json(f"/v1/sessions/{session['id']}/fs/new.txt", {"content": "v2 works"}, status=201)
    client.post_json("/v1/llm-providers", {"name": "sim", "provider_type": "llmsim", "is_default": True})
    client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": "and a turn"}, status=201)
    assert finish(client, session["id"])[-1]["data"]["status"] == "completed"  # on every column a turn writes
    app.close()
    assert sqlite3.connect(db_path).execute("PRAGMA user_version").fetchone()[0] == everruns.SCHEMA_VERSION == 13


def test_health_names_the_backend(client, backend):
    health = client.get("/health").json
    assert (health["status"], health["database"], health["backend"]) == ("ok", "ok", backend)
    assert health["instance"] == everruns.INSTANCE and len(health["instance"]) == 16


def test_importing_the_module_changes_no_other_librarys_state():
    import subprocess
    import sys

    probe = ("from gevent import monkey; monkey.patch_all(); import logging, bottle, peewee; "
             "before = (bottle.BaseRequest.MEMFILE_MAX, logging.getLogger('peewee').level); import everruns; "
             "print(before == (bottle.BaseRequest.MEMFILE_MAX, logging.getLogger('peewee').level))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                            cwd=str(everruns.__file__).rsplit("/", 1)[0])  # fmt: skip
    assert result.stdout.strip() == "True", result.stderr
