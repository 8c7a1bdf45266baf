"""Running on a device (SPEC 17): started as systemd starts a Type=notify service, with
its readiness and watchdog pings read from a socket of the test's own."""

import itertools
import re
import shlex
import socket
import subprocess
import sys
import time

from conftest import ROOT, free_port


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
