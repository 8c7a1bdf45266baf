"""The command line: options, --help, --version, serving, graceful stop."""

import signal
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT

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


def test_server_prints_urls_and_answers(start_server):
    server = start_server()
    status, _, body = server.call("GET", "/v1/capabilities")
    assert status == 200 and len(body["data"]) == 7
    assert f"http://127.0.0.1:{server.port}/swagger-ui/" in server.output()
    status, _, health = server.call("GET", "/health")
    assert health == {"status": "ok", "version": everruns.__version__, "database": "ok"}


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
