"""The command line: options, --help, --version, serving, graceful stop."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT, free_port, wait_until

import everruns


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30, cwd=ROOT, env=env)


def test_help_lists_every_setting():
    out = run("everruns.py", "--help").stdout
    for s in everruns.SETTINGS:
        assert s.flag in out and s.env in out


def test_version_from_script_and_module():
    assert run("everruns.py", "--version").stdout.strip() == f"everruns {everruns.__version__}"
    assert run("-m", "everruns", "--version").stdout.strip() == f"everruns {everruns.__version__}"


def test_readme_configuration_table_matches_the_settings():
    assert everruns.settings_table() in (ROOT / "README.md").read_text()


def test_bad_option_values_are_refused():
    assert run("everruns.py", "--sync", "sometimes").returncode == 2
    assert run("everruns.py", "--port", "ninety").returncode == 2


def test_server_prints_urls_and_answers(start_server, tmp_path):
    server = start_server()
    status, _, body = server.call("GET", "/v1/capabilities")
    assert status == 200 and len(body["data"]) == 7
    assert f"http://127.0.0.1:{server.port}/swagger-ui/" in server.output()
    assert f"Console: http://127.0.0.1:{server.port}/\n" in server.output()
    status, _, health = server.call("GET", "/health")
    assert health == {"status": "ok", "version": everruns.__version__, "database": "ok", "backend": "sqlite",
                      "instance": health["instance"]}  # fmt: skip
    again = start_server(str(tmp_path / "again.db"))
    assert again.call("GET", "/health")[2]["instance"] not in ("", health["instance"])  # one per process


def test_environment_variables_configure_the_server(start_server, tmp_path):
    server = start_server(str(tmp_path / "env.db"), env={"EVERRUNS_API_KEY": "from-env"})
    assert server.call("GET", "/v1/agents")[0] == 401
    assert server.call("GET", "/v1/agents", headers={"Authorization": "Bearer from-env"})[0] == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_graceful_stop_checkpoints_the_database(start_server, tmp_path, sig):
    db = str(tmp_path / "stop.db")
    server = start_server(db)
    server.call("POST", "/v1/agents", {"name": "kept"})
    assert server.stop(sig) == 0
    assert "stopped" in server.output()
    wal = tmp_path / "stop.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    names = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM agent")]
    assert names == ["kept"]


def test_switches_and_their_environment_variables():
    parse = everruns._parser().parse_args
    assert everruns._resolve_settings(parse(["--allow-private-fetch"]), {})["allow_private_fetch"] is True
    assert everruns._resolve_settings(parse([]), {})["allow_private_fetch"] is False
    assert everruns._resolve_settings(parse([]), {"EVERRUNS_INSECURE": "true"})["insecure"] is True
    with pytest.raises(ValueError):
        everruns._resolve_settings(parse([]), {"EVERRUNS_INSECURE": "maybe"})


BAD_SETTINGS = [
    (["--max-connections", "0"], {}, "--max-connections"),
    (["--idle-timeout", "-5"], {}, "--idle-timeout"),
    (["--request-timeout", "0"], {}, "--request-timeout"),
    (["--port", "70000"], {}, "--port"),
    (["--shutdown-grace", "nan"], {}, "--shutdown-grace"),
    ([], {"EVERRUNS_SYNC": "off"}, "--sync (EVERRUNS_SYNC)"),
    ([], {"EVERRUNS_MAX_CONNECTIONS": "-1"}, "--max-connections (EVERRUNS_MAX_CONNECTIONS)"),
    ([], {"EVERRUNS_LOG_LEVEL": "loud"}, "--log-level (EVERRUNS_LOG_LEVEL)"),
    (["--api-key-file", "/nonexistent/key"], {}, "--api-key-file"),
    (["--default-provider", "nosuch"], {}, "--default-provider"),
]


@pytest.mark.parametrize(("args", "env", "named"), BAD_SETTINGS)
def test_a_bad_setting_stops_the_server_with_one_line(tmp_path, args, env, named):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVERRUNS_")}
    result = run("everruns.py", "--db", str(tmp_path / "x.db"), *args, env={**clean, **env})
    assert result.returncode == 2 and result.stdout == ""  # never "listening"
    assert named in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "options", [{"max_connections": 0}, {"idle_timeout": -5}, {"sync": "off"}, {"context_budget": 10}, {"port": True}]
)
def test_create_app_checks_its_options_as_the_command_line_does(db_path, options):
    with pytest.raises(ValueError, match=f"--{next(iter(options)).replace('_', '-')}"):
        everruns.create_app(db_path, env={}, **options)


def test_a_secret_given_in_a_bad_form_is_never_echoed():
    with pytest.raises(ValueError) as raised:
        everruns._settings({"api_key": 12345678})
    assert "12345678" not in str(raised.value)


def start_failure(tmp_path, *args):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EVERRUNS_")}
    result = run("everruns.py", "--port", str(free_port()), *args, env=clean)
    assert result.stdout == "" and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.returncode, result.stderr


def test_a_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        status, said = start_failure(tmp_path, "--db", str(tmp_path / "x.db"), "--port", str(taken.getsockname()[1]))
    assert status == 1 and "cannot listen" in said


@pytest.mark.parametrize(
    ("db", "status", "said"),
    [
        ("missing/x.db", 1, "does not exist"),
        (".", 2, "is a directory"),
        ("corrupt.db", 1, "cannot be used"),
        ("mysql://user@localhost/everruns", 2, "not supported"),
        ("/proc/x.db", 1, "cannot be used"),
        ("/sys/x.db", 1, "cannot be used"),
        ("postgresql://user:pw-canary-4471@127.0.0.1:1/everruns", 1, "cannot be used"),  # nobody listens there
    ],
)
def test_a_database_that_cannot_be_opened_is_one_line(tmp_path, db, status, said):
    (tmp_path / "corrupt.db").write_bytes(b"this is not a SQLite database, not at all" * 10)
    where = db if "://" in db else str(tmp_path / db)
    got_status, got = start_failure(tmp_path, "--db", where)
    assert got_status == status and said in got
    assert "pw-canary-4471" not in got  # a database password is a secret


def test_postgresql_without_its_driver_is_one_line(monkeypatch):
    monkeypatch.setattr(everruns.pw, "psycopg", None)  # as when the `postgres` extra is not installed
    with pytest.raises(everruns.StartupError, match=r"pip install 'everruns\[postgres\]'"):
        everruns.create_app("postgresql://user@127.0.0.1:1/everruns", env={})


def test_an_unknown_log_level_is_one_line(tmp_path):
    status, said = start_failure(tmp_path, "--db", str(tmp_path / "x.db"), "--log-level", "loud")
    assert status == 2 and "--log-level" in said


def test_without_its_packages_it_says_what_to_install_in_one_line():
    result = run("-S", "everruns.py", "--version")  # no site-packages: none of its dependencies
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "pip install everruns" in result.stderr


def test_a_second_server_on_one_sqlite_file_refuses_and_the_first_goes_on(start_server, tmp_path):
    db = str(tmp_path / "one.db")
    first = start_server(db)
    slow = first.call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                     "settings": {"token_delay_ms": 100}})[2]  # fmt: skip
    agent = first.call("POST", "/v1/agents", {"name": "a", "provider_id": slow["id"]})[2]
    session = first.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]
    first.call("POST", f"/v1/sessions/{session}/messages", {"content": "one two three four five six seven"})
    wait_until(lambda: first.call("GET", f"/v1/sessions/{session}")[2]["status"] == "running", what="the turn")
    second = run("everruns.py", "--db", db, "--port", str(free_port()))
    assert second.returncode == 1 and second.stdout == "" and len(second.stderr.strip().splitlines()) == 1
    assert db in second.stderr and f"process {first.proc.pid}" in second.stderr
    status, _, raw = first.call("GET", f"/v1/sessions/{session}/events?until=completed", timeout=30)
    assert status == 200 and b'"status":"completed"' in raw and b"INTERRUPTED" not in raw
    assert "Traceback" not in first.output() and "UNIQUE" not in first.output()


@pytest.mark.sqlite
def test_a_second_app_on_one_sqlite_file_in_one_process_is_refused(make_app, db_path):
    import webtest

    app = make_app(db_path)
    with pytest.raises(everruns.StartupError, match="this process"):
        everruns.create_app(db_path, env={})
    assert webtest.TestApp(app).get("/health").json["status"] == "ok"  # the first one untouched
    app.close()
    everruns.create_app(db_path, env={}).close()  # free again once it is closed
