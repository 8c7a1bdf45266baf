"""Everruns benchmark: turn latency, throughput, commit-to-client time, idle-stream memory.

By default it starts its own server (`python everruns.py`) on a free port of
127.0.0.1 with a fresh database and gevent's blocking monitor on, and uses the
built-in simulator at 0 ms per token. Run it from the repository root:

    python bench/bench.py            # full run, about a minute
    python bench/bench.py --quick    # fewer turns and streams

With --url it measures a server you started yourself instead (RSS and the
blocking monitor need --pid and the server's stderr, so they are skipped).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Client:
    """A tiny JSON client with one keep-alive connection."""

    def __init__(self, url):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = self.conn.getresponse()
        raw = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:200]!r}")
        return json.loads(raw) if raw else None


class Stream:
    """A live SSE connection that yields (arrival time, event)."""

    def __init__(self, url, session_id):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.conn.request("GET", f"/v1/sessions/{session_id}/events")
        self.response = self.conn.getresponse()
        assert self.response.readline().startswith(b"retry:")  # it joins the first event's block

    def next_stored(self):
        """The next stored event (deltas skipped) and when it arrived."""
        event = None
        while True:
            line = self.response.readline()
            if not line:
                raise RuntimeError("stream closed")
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
            elif line == b"\n" and event is not None:
                if event["seq"] is not None:
                    return time.time(), event
                event = None

    def until_completed(self, samples=None):
        while True:
            arrived, event = self.next_stored()
            if samples is not None:
                samples.append(arrived - _parse_ts(event["ts"]))
            if event["type"] == "session.completed":
                return event

    def close(self):
        self.conn.close()


def _parse_ts(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def new_session(client, agent_id):
    return client.call("POST", f"/v1/agents/{agent_id}/sessions", {})["id"]


def one_turn(url, client, session_id, stream, samples=None):
    started = time.perf_counter()
    client.call("POST", f"/v1/sessions/{session_id}/messages", {"content": "hello bench"})
    done = stream.until_completed(samples)
    assert done["data"]["status"] == "completed", done
    return time.perf_counter() - started


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def latency(url, agent_id, turns):
    client, times, commit_to_client = Client(url), [], []
    for _ in range(turns):
        sid = new_session(client, agent_id)
        stream = Stream(url, sid)
        times.append(one_turn(url, client, sid, stream, commit_to_client))
        stream.close()
    return times, commit_to_client


def throughput(url, agent_id, sessions, seconds):
    setup = Client(url)
    ids = [new_session(setup, agent_id) for _ in range(sessions)]
    count = [0]
    deadline = time.perf_counter() + seconds

    def worker(sid):
        client, stream = Client(url), Stream(url, sid)
        while time.perf_counter() < deadline:
            one_turn(url, client, sid, stream)
            count[0] += 1
        stream.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, sid) for sid in ids], raise_error=True)
    return count[0] / (time.perf_counter() - started)


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle_streams(url, agent_id, count, pid):
    client = Client(url)
    sid = new_session(client, agent_id)
    before = rss_mb(pid)
    streams = [Stream(url, sid) for _ in range(count)]
    gevent.sleep(1)
    after = rss_mb(pid)
    for s in streams:
        s.close()
    return before, after


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir):
    port = free_port()
    env = {**os.environ, "GEVENT_MONITOR_THREAD_ENABLE": "1", "GEVENT_MAX_BLOCKING_TIME": "0.1"}
    log = open(Path(workdir) / "server.log", "w+")
    cmd = [sys.executable, str(ROOT / "everruns.py"), "--port", str(port), "--db", str(Path(workdir) / "bench.db"),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            Client(url).call("GET", "/health")
            return proc, url, log
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="measure a running server instead of starting one")
    parser.add_argument("--pid", type=int, help="the running server's pid (for RSS)")
    parser.add_argument("--quick", action="store_true", help="a shorter run")
    args = parser.parse_args()
    turns, seconds, streams = (50, 2, 200) if args.quick else (200, 5, 1000)
    workdir = tempfile.mkdtemp(prefix="everruns-bench-")
    proc = log = None
    url, pid = args.url, args.pid
    if not url:
        proc, url, log = start_server(workdir)
        pid = proc.pid
    try:
        client = Client(url)
        agent_id = client.call("POST", "/v1/agents", {"name": "bench"})["id"]
        latency(url, agent_id, 5)  # warm-up
        times, c2c = latency(url, agent_id, turns)
        ms = [t * 1000 for t in times]
        print(f"latency, POST to session.completed over SSE ({turns} sequential turns):")
        print(f"  p50 {pct(ms, 50):.2f} ms   p95 {pct(ms, 95):.2f} ms   p99 {pct(ms, 99):.2f} ms")
        c2c_ms = [c * 1000 for c in c2c]
        print(f"commit to client ({len(c2c_ms)} stored events; event ts has 1 ms resolution, so this overstates):")
        print(f"  p50 {pct(c2c_ms, 50):.2f} ms   p95 {pct(c2c_ms, 95):.2f} ms   mean {statistics.mean(c2c_ms):.2f} ms")
        for n in (20, 100):
            cpu, wall = cpu_seconds(pid) if pid else 0, time.perf_counter()
            rate = throughput(url, agent_id, n, seconds)
            busy = f" (server CPU {100 * (cpu_seconds(pid) - cpu) / (time.perf_counter() - wall):.0f}%)" if pid else ""
            print(f"throughput with {n} concurrent sessions: {rate:.0f} turns/s{busy}")
        if pid:
            before, after = idle_streams(url, agent_id, streams, pid)
            print(f"RSS with {streams} idle open streams: {after:.1f} MB (before opening them: {before:.1f} MB)")
    finally:
        if proc:
            proc.terminate()
            proc.wait(15)
            log.seek(0)
            blocked = log.read().count("appears to be blocked")
            print(f"gevent blocking monitor (over 100 ms): {blocked} report(s)")


if __name__ == "__main__":
    main()
