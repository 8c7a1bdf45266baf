"""Everruns benchmark: what a user pays per turn, in CPU, time and memory.

Each scenario starts its own server (`python everruns.py`) on a free port of
127.0.0.1 with a fresh database and gevent's blocking monitor on, drives it
from this process, and reads the server's CPU time and RSS from /proc (the
server process only). Scenarios:

    sim       the built-in simulator, 20 words per answer, 0 ms per word
    openai    an OpenAI-compatible upstream on 127.0.0.1 (bench/upstream.py),
              20 streamed tokens per answer, 0 ms per token
    openai5   the same upstream at 5 ms per token
    each      the upstream at 0 ms per token, each turn as most clients take one: open
              the session's stream (Last-Event-ID: the last event seen), wait for its
              headers, POST the message, read to `session.completed`, close

each with `--sync full` (the default) and `--sync normal`. One command prints
one table; run it from the repository root:

    python bench/bench.py                      # every scenario, a few minutes
    python bench/bench.py --quick              # shorter runs, fewer streams
    python bench/bench.py --scenario sim --sync full
    python bench/bench.py --server-arg=--foo --server-arg=bar   # extra server options
    python bench/bench.py --scenario openai --record   # the upstream's provider records (cassettes)
    python bench/bench.py --postgres postgresql://postgres@127.0.0.1:5432/postgres  # on PostgreSQL
    python bench/bench.py --postgres URL --processes 1,2,4    # several processes on one database
    python bench/bench.py --memory --python python3.10 --python python3.11   # idle RSS, base install

Per scenario: server CPU per turn and turns/s with 1, 20 and 100 concurrent
conversations (each a session of 10 turns, then a new session; the median of
3 runs of 5 s, with the lowest and highest CPU per turn), POST → first
`message.delta` and POST → `session.completed` over SSE, commit → client
(from the stored event's `ts`, 1 ms resolution), cold start to the first
`/health`, RSS idle, after the turns and with 2,000 idle open streams, and the blocking monitor's reports (over 100 ms).

With --memory, instead: the idle RSS of a base install (the built wheel, no extras) in a
fresh virtual environment per Python given (--python, repeatable; default this one), with
the bytecode cache pip writes and without any (installed with --no-compile, run with
PYTHONDONTWRITEBYTECODE: a read-only image), after the first /health and after a first turn
(the simulator); the lowest of 3 starts each.

With --processes, instead: turns/s of the simulator with 1, 2, 4 ... server processes on one
PostgreSQL database, 40 conversations spread as a load balancer would (each POST and each
stream to a process picked at random: most streams watch turns that run elsewhere), the
CPU per turn of the servers and of the PostgreSQL processes of this machine, and how long a
cancel sent to one process takes to stop a turn that runs in another. Each server process
opens up to 34 connections: PostgreSQL's max_connections must allow 34 per process started
(7 for --processes 1,2,4: `-c max_connections=400`).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import datetime  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# 18 words: the simulator answers "You said: " and them, 20 words in all
TURNS_PER_SESSION = 10  # a conversation's length in the throughput runs
ROUNDS = 3  # throughput runs per point (1 with --quick): the median, and the spread of CPU per turn
MESSAGE = "the quick brown fox jumps over the lazy dog and then the dog sleeps under the old tree"
SCENARIOS = {  # name: (what the column says, the agent's provider: None = the simulator, or the upstream's pause,
    # a stream per turn instead of one kept for the session's turns)
    "sim": ("simulator", None, False),
    "openai": ("OpenAI-compatible, 0 ms/token", 0, False),
    "openai5": ("OpenAI-compatible, 5 ms/token", 5, False),
    "each": ("OpenAI-compatible, 0 ms/token, a stream per turn", 0, True),
}


class Client:
    """A tiny JSON client with one keep-alive connection."""

    def __init__(self, url):
        self.conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=60)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        response = self.conn.getresponse()
        raw = response.read()
        if response.status >= 400:
            raise RuntimeError(f"{method} {path}: {response.status} {raw[:200]!r}")
        return json.loads(raw) if raw else None


class Stream:
    """A live SSE connection to one session's events."""

    def __init__(self, url, session_id, last_event_id=None):
        self.conn = http.client.HTTPConnection(*url.removeprefix("http://").split(":"), timeout=60)
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        self.conn.request("GET", f"/v1/sessions/{session_id}/events", headers=headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status
        self.last_id = last_event_id

    def turn(self, started, timing=None):
        """Read up to `session.completed`; with `timing`, note when the first delta and each
        stored event arrived. Deltas are recognised by their `event:` line, not parsed."""
        first_delta, kind = None, None
        readline = self.response.readline
        while True:
            line = readline()
            if not line:
                raise RuntimeError("stream closed")
            if line.startswith(b"event: "):
                kind = line[7:-1]
                if kind == b"message.delta" and first_delta is None:
                    first_delta = time.perf_counter()
            elif line.startswith(b"id: "):
                self.last_id = line[4:-1].decode()
            elif line.startswith(b"data: ") and kind != b"message.delta":
                event = json.loads(line[6:])
                if timing is not None:
                    timing["commit_to_client"].append(time.time() - _parse_ts(event["ts"]))
                if kind == b"session.completed":
                    assert event["data"]["status"] == "completed", event
                    if timing is not None:
                        done = time.perf_counter()
                        timing["completed"].append(done - started)
                        timing["first_delta"].append((first_delta or done) - started)
                    return

    def close(self):
        self.conn.close()


def _parse_ts(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(url, sql):
    """One statement on a PostgreSQL server, outside any transaction."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


class Server:
    """`python everruns.py` on a fresh database, with the blocking monitor on."""

    def __init__(self, workdir, args, postgres=None, beside=None):
        port = free_port()
        self.postgres, db = postgres, str(Path(workdir) / f"bench-{port}.db")
        if beside is not None:  # another process on that server's database (which that server drops)
            self.postgres, db = None, beside.db
        elif postgres:  # a database of its own on that server, dropped at the end
            self.database = f"everruns_bench_{port}"
            _admin(postgres, f"CREATE DATABASE {self.database}")
            db = postgres.rsplit("/", 1)[0] + "/" + self.database
        self.db = db
        env = {**os.environ, "GEVENT_MONITOR_THREAD_ENABLE": "1", "GEVENT_MAX_BLOCKING_TIME": "0.1"}
        env.pop("PYTHONDONTWRITEBYTECODE", None)  # as Python runs by default: with the bytecode cache
        self.log = open(Path(workdir) / f"server-{port}.log", "w+")
        cmd = [sys.executable, str(ROOT / "everruns.py"), "--port", str(port), "--log-level", "warning",
               "--db", db, "--max-connections", "10000", *args]  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.proc.pid
        while True:
            try:
                Client(self.url).call("GET", "/health")
                break
            except OSError:
                if self.proc.poll() is not None or time.perf_counter() - started > 30:
                    raise RuntimeError(f"the server did not start: {self._log_text()[-2000:]}") from None
                time.sleep(0.002)
        self.cold_start = time.perf_counter() - started

    def _log_text(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        """Stop the server; the number of blocking reports it logged."""
        self.proc.terminate()
        self.proc.wait(30)
        if self.postgres:
            _admin(self.postgres, f"DROP DATABASE {self.database}")
        return self._log_text().count("appears to be blocked")


class Upstream:
    """bench/upstream.py in its own process."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), str(self.port)],
                                     stdout=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdout.readline().strip() == b"ready"

    def base_url(self, pause_ms):
        return f"http://127.0.0.1:{self.port}/{pause_ms}ms/v1"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def new_session(client, agent_id):
    return client.call("POST", f"/v1/agents/{agent_id}/sessions", {})["id"]


def latency(url, agent_id, turns):
    """Sequential turns, each in a new session with its stream open first."""
    client = Client(url)
    timing = {"completed": [], "first_delta": [], "commit_to_client": []}
    for _ in range(turns):
        sid = new_session(client, agent_id)
        stream = Stream(url, sid)
        started = time.perf_counter()
        client.call("POST", f"/v1/sessions/{sid}/messages", {"content": MESSAGE})
        stream.turn(started, timing)
        stream.close()
    return timing


def throughput(urls, agent_id, sessions, seconds, each=False):
    """Turns completed, and the seconds taken, with `sessions` conversations posting back to
    back; each conversation is a session of TURNS_PER_SESSION turns, then a new one. With
    several servers, each call and each stream goes to one picked at random. With `each`, a
    stream per turn (from the last event seen), else one for the session's turns."""
    count = [0]
    deadline = time.perf_counter() + seconds

    def worker(seed):
        pick = random.Random(seed).choice
        clients = {url: Client(url) for url in urls}
        while time.perf_counter() < deadline:
            sid = new_session(clients[pick(urls)], agent_id)
            stream, last_id = Stream(pick(urls), sid), None
            for _ in range(TURNS_PER_SESSION):
                if each and stream is None:
                    stream = Stream(pick(urls), sid, last_id)
                clients[pick(urls)].call("POST", f"/v1/sessions/{sid}/messages", {"content": MESSAGE})
                stream.turn(0)
                count[0] += 1
                if each:
                    last_id = stream.last_id
                    stream.close()
                    stream = None
                if time.perf_counter() >= deadline:
                    break
            if stream is not None:
                stream.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, seed) for seed in range(sessions)], raise_error=True)
    return count[0], time.perf_counter() - started


def idle_streams(url, agent_id, count, pid):
    client = Client(url)
    sid = new_session(client, agent_id)
    streams = [Stream(url, sid) for _ in range(count)]
    gevent.sleep(1)
    rss = rss_mb(pid)
    for s in streams:
        s.close()
    return rss


# Where a turn's CPU goes: each sampled stack goes to the first category that one of its
# frames matches (frame text is "function (file:line)"), checked in this order.
PROFILE_CATEGORIES = (
    ("commits", ("Database.commit ", "_Store._commit ")),
    ("SQL statements", ("peewee.py", "sqlite3")),
    ("validation (pydantic)", ("pydantic/",)),
    ("JSON encoding (events, rows, bodies)", ("_dumps ", "json/encoder.py")),
    ("socket writes (responses, SSE frames)", ("WSGIHandler.write ", "WSGIHandler._write ", "_sendall ")),
    ("provider HTTP and stream parsing", ("_sse_events ", "_json_chunk ", "_OpenAI.", "_Anthropic.", "http/client.py")),
    ("event bus (publish, queues, SSE loop)", ("_Bus.", "on_text ", "_sse ", "_Subscriber.")),
    ("history and prompt building", ("_transcript ", "_history ", "_provider_messages ", "_llm_request ")),
    ("simulator", ("_Llmsim.", "_llmsim_answer ")),
    ("HTTP parsing, routing, handlers", ("pywsgi.py", "bottle.py", "_callback.", "_Handler.", "_App.")),
    ("event loop and greenlet switches", ("gevent/",)),
    ("turn engine and the rest", ("",)),
)


def profile_table(raw_path, cpu_ms_per_turn):
    """py-spy's raw samples as {category: (share, ms per turn)}."""
    counts = dict.fromkeys((name for name, _ in PROFILE_CATEGORIES), 0)
    for line in Path(raw_path).read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        name = next(name for name, marks in PROFILE_CATEGORIES if any(m in f for f in frames for m in marks))
        counts[name] += int(n)
    total = sum(counts.values()) or 1
    return {name: (n / total, n / total * cpu_ms_per_turn) for name, n in counts.items()}


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(scenario, sync, upstream, quick, extra_args, profile=False, postgres=None, record=False):
    """One column of the table: {row name: text}."""
    label, pause, each = SCENARIOS[scenario]
    heavy = pause  # a paused upstream makes each turn ~100 ms: fewer sequential turns
    turns, seconds, streams = (50 if quick or heavy else 200), (2 if quick else 5), (500 if quick else 2000)
    workdir = tempfile.mkdtemp(prefix="everruns-bench-")
    server = Server(workdir, ["--sync", sync, *extra_args], postgres)
    out = {"scenario": f"{label}, PostgreSQL" if postgres else f"{label}, --sync {sync}"}
    try:
        gevent.sleep(1)
        out["cold start to first /health"] = f"{server.cold_start * 1000:.0f} ms"
        out["RSS idle"] = f"{rss_mb(server.pid):.1f} MB"
        client = Client(server.url)
        agent = {"name": "bench"}
        if pause is not None:
            provider = client.call("POST", "/v1/llm-providers", {
                "name": "bench upstream", "provider_type": "openai", "base_url": upstream.base_url(pause),
                "api_key": "bench-key", "default_model": "bench-model", "settings": {"record": record}})  # fmt: skip
            agent["provider_id"] = provider["id"]
        agent_id = client.call("POST", "/v1/agents", agent)["id"]
        latency(server.url, agent_id, 5)  # warm-up
        timing = latency(server.url, agent_id, turns)
        done = turns + 5
        for name, key in (("POST → first delta", "first_delta"), ("POST → session.completed", "completed")):
            ms = [t * 1000 for t in timing[key]]
            out[f"{name} p50 / p95 / p99"] = f"{pct(ms, 50):.2f} / {pct(ms, 95):.2f} / {pct(ms, 99):.2f} ms"
        c2c = [t * 1000 for t in timing["commit_to_client"]]
        out["commit → client p50 / p95"] = f"{pct(c2c, 50):.2f} / {pct(c2c, 95):.2f} ms"
        # before the throughput runs: the streams those close are let go at their next ping (15 s)
        out[f"RSS with {streams:,} idle streams"] = f"{idle_streams(server.url, agent_id, streams, server.pid):.1f} MB"
        client_busy = []
        for n in (1, 20, 100):
            rates, costs, busy, database = [], [], [], []
            for round_ in range(1 if quick else ROUNDS):
                spy = None
                if profile and n == 20 and not round_:  # sampled at 1 kHz: this round is slower than the others
                    spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--format", "raw",
                                            "--rate", "1000", "--nonblocking", "-o", f"{workdir}/profile.txt"],
                                           stdout=subprocess.DEVNULL)  # fmt: skip
                cpu, mine = cpu_seconds(server.pid), own_cpu()
                postgres_cpu = postgres_cpu_seconds() if postgres else 0.0
                count, wall = throughput([server.url], agent_id, n, seconds, each)
                done += count
                server_cpu = cpu_seconds(server.pid) - cpu
                if postgres:
                    database.append(1000 * (postgres_cpu_seconds() - postgres_cpu) / max(count, 1))
                rates.append(count / wall)
                costs.append(1000 * server_cpu / max(count, 1))
                busy.append(100 * (own_cpu() - mine) / wall)
                if spy:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(60)
                    out["profile"] = profile_table(f"{workdir}/profile.txt", costs[-1])
            spread = f" ({min(costs):.2f} to {max(costs):.2f})" if len(costs) > 1 else ""
            out[f"turns/s, {n} session{'s' * (n > 1)}"] = f"{statistics.median(rates):.0f}"
            out[f"server CPU per turn, {n} session{'s' * (n > 1)}"] = f"{statistics.median(costs):.2f} ms{spread}"
            if database:
                out[f"PostgreSQL CPU per turn, {n} session{'s' * (n > 1)}"] = f"{statistics.median(database):.2f} ms"
            client_busy.append(f"{statistics.median(busy):.0f}%")
        out["bench client CPU (1 / 20 / 100)"] = " / ".join(client_busy)
        out[f"RSS after {done:,} turns"] = f"{rss_mb(server.pid):.1f} MB"
    finally:
        out["blocking reports (> 100 ms)"] = str(server.stop())
    return out


def postgres_cpu_seconds():
    """CPU time of every PostgreSQL process of this machine (the database the servers share)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        if text.split(" (", 1)[1].startswith("postgres)"):
            fields = text.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def cancel_elsewhere(servers, agent_id, times):
    """Milliseconds from POST /cancel on one process to its answer, for a turn that streams
    in another (the answer comes once the turn is closed)."""
    here, there = Client(servers[0].url), Client(servers[1].url)
    took = []
    for _ in range(times):
        sid = new_session(here, agent_id)
        stream = Stream(servers[0].url, sid)
        here.call("POST", f"/v1/sessions/{sid}/messages", {"content": MESSAGE})  # its turn runs on servers[0]
        while stream.response.readline() != b"event: message.delta\n":
            pass
        started = time.perf_counter()
        answer = there.call("POST", f"/v1/sessions/{sid}/cancel")
        took.append((time.perf_counter() - started) * 1000)
        assert answer["cancelled_turn"]["status"] == "cancelled", answer
        stream.close()
    return took


def scale(postgres, counts, quick):
    """One column per process count: turns/s and CPU per turn with N processes on one database.
    Every count has its servers (and database) from the start and the rounds take turns, so
    that this machine's changing speed (a shared VM) weighs on every count alike."""
    seconds, sessions, rounds = (2 if quick else 5), 40, (1 if quick else ROUNDS)
    workdir, setups = tempfile.mkdtemp(prefix="everruns-bench-"), []
    try:
        for n in counts:
            servers = [Server(workdir, [], postgres)]
            servers += [Server(workdir, [], postgres, beside=servers[0]) for _ in range(n - 1)]
            out = {"scenario": f"{n} process{'es' * (n > 1)}"}
            setups.append({"servers": servers, "out": out, "rates": [], "costs": [], "db_costs": []})
            setups[-1]["agent"] = Client(servers[0].url).call("POST", "/v1/agents", {"name": "bench"})["id"]
            throughput([s.url for s in servers], setups[-1]["agent"], sessions, 1)  # warm-up
        for _ in range(rounds):
            for setup in setups:
                servers = setup["servers"]
                cpu, db_cpu = sum(cpu_seconds(s.pid) for s in servers), postgres_cpu_seconds()
                count, wall = throughput([s.url for s in servers], setup["agent"], sessions, seconds)
                setup["rates"].append(count / wall)
                setup["costs"].append(1000 * (sum(cpu_seconds(s.pid) for s in servers) - cpu) / max(count, 1))
                setup["db_costs"].append(1000 * (postgres_cpu_seconds() - db_cpu) / max(count, 1))
        for setup in setups:
            servers, rates, out = setup["servers"], setup["rates"], setup["out"]
            spread = f"{min(rates):.0f} to {max(rates):.0f}"
            out[f"turns/s, {sessions} sessions"] = f"{statistics.median(rates):.0f} ({spread})"
            out["servers' CPU per turn"] = f"{statistics.median(setup['costs']):.2f} ms"
            out["PostgreSQL's CPU per turn"] = f"{statistics.median(setup['db_costs']):.2f} ms"
            if len(servers) > 1:
                client = Client(servers[0].url)
                slow = client.call("POST", "/v1/llm-providers", {"name": "slow", "provider_type": "llmsim",
                                                                 "settings": {"token_delay_ms": 20}})  # fmt: skip
                slow_agent = client.call("POST", "/v1/agents", {"name": "slow", "provider_id": slow["id"]})["id"]
                took = cancel_elsewhere(servers, slow_agent, 10 if quick else 30)
                out["cancel from another process p50 / max"] = f"{pct(took, 50):.1f} / {max(took):.1f} ms"
    finally:
        for setup in setups:  # the first server of each drops its database: stopped last
            setup["out"]["blocking reports (> 100 ms)"] = str(sum(s.stop() for s in reversed(setup["servers"])))
    return [setup["out"] for setup in setups]


def table(columns):
    """A Markdown table: one row per figure, one column per scenario."""
    rows = []
    for column in columns:
        for name in column:
            if name == "profile":
                continue
            key = name if not name.startswith("RSS after") else "RSS after the turns"
            if name != "scenario" and key not in rows:
                rows.append(key)

    def cell(column, row):
        if row == "RSS after the turns":
            return next(f"{v} ({k[10:]})" for k, v in column.items() if k.startswith("RSS after"))
        return column.get(row, "")

    lines = ["| | " + " | ".join(c["scenario"] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {row} | " + " | ".join(cell(c, row) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def machine():
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    return (f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, {datetime.date.today()}")  # fmt: skip


def memory(pythons):
    """The --memory table: idle RSS of a base install with and without a bytecode cache."""
    work = Path(tempfile.mkdtemp(prefix="everruns-memory-"))
    pip = ["-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([sys.executable, *pip, "wheel", "--no-deps", "-w", str(work), str(ROOT)], check=True)
    wheel = str(next(work.glob("everruns-*.whl")))
    columns = []
    for n, python in enumerate(pythons):
        column = {}
        for cached in (True, False):
            venv = work / f"venv{n}-{'cache' if cached else 'nocache'}"
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            compile_flag = [] if cached else ["--no-compile"]
            subprocess.run([str(venv / "bin/python"), *pip, "install", *compile_flag, wheel], check=True)
            if cached:
                listed = output(venv / "bin/python", "-m", "pip", "list", "--format=freeze").split()
                version = output(venv / "bin/python", "-c", "import platform; print(platform.python_version())")
                column["scenario"] = f"Python {version}"
                column["packages"] = ", ".join(p for p in listed if p.split("==")[0] in MEMORY_PACKAGES)
            env = {} if cached else {"PYTHONDONTWRITEBYTECODE": "1"}
            runs = [idle_rss(venv / "bin/everruns", work, env) for _ in range(3)]
            label = "with a bytecode cache" if cached else "without a bytecode cache"
            column[f"RSS idle, {label}"] = f"{min(r[0] for r in runs):.1f} MB"
            column[f"RSS idle after a first turn, {label}"] = f"{min(r[1] for r in runs):.1f} MB"
        columns.append(column)
    return columns


def output(*command):
    return subprocess.run([str(part) for part in command], capture_output=True, text=True, check=True).stdout.strip()


MEMORY_PACKAGES = ("everruns", "bottle", "gevent", "greenlet", "peewee", "pydantic", "pydantic_core", "pydantic-core")


def idle_rss(command, work, env):
    """Start `everruns`; its RSS 1 s after the first /health, then 1 s after a first turn."""
    port = free_port()
    db = tempfile.mkdtemp(dir=work)
    proc = subprocess.Popen(
        [str(command), "--port", str(port), "--db", f"{db}/everruns.db"],
        cwd=db,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                Client(url).call("GET", "/health")
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(1)
        idle = rss_mb(proc.pid)
        client = Client(url)
        agent = client.call("POST", "/v1/agents", {"name": "a"})
        session = client.call("POST", f"/v1/agents/{agent['id']}/sessions", {})
        client.call("POST", f"/v1/sessions/{session['id']}/messages", {"content": MESSAGE})
        client.conn.request("GET", f"/v1/sessions/{session['id']}/events?until=completed")
        assert b'"status":"completed"' in client.conn.getresponse().read()
        time.sleep(1)
        return idle, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs and 500 idle streams")
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS), help="default: all")
    parser.add_argument("--sync", action="append", choices=["full", "normal"], help="default: both")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also sample the server with py-spy during the 20-session run: where its CPU goes",
    )
    parser.add_argument("--server-arg", action="append", default=[], help="an extra option for the server")
    parser.add_argument("--otlp", action="store_true", help="trace every turn (--otlp-endpoint: the upstream takes "
                        "the spans; needs pip install -e '.[otel]')")  # fmt: skip
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="run on this PostgreSQL server instead of SQLite (postgresql://user@host:port/db of a user who "
        "may create databases: each scenario gets a new one, dropped after it)",
    )
    parser.add_argument(
        "--processes",
        metavar="N,N,...",
        help="with --postgres: turns/s with this many server processes on one database (e.g. 1,2,4)",
    )
    parser.add_argument("--record", action="store_true", help="the upstream's provider records every call "
                        "(settings.record: a cassette per model call)")  # fmt: skip
    parser.add_argument("--memory", action="store_true", help="instead: idle RSS of a base install (see above)")
    parser.add_argument("--python", action="append", help="with --memory: an interpreter to measure (repeatable)")
    args = parser.parse_args()
    if args.memory:
        pythons = args.python or [sys.executable]
        print(table(memory(pythons)))
        print(f"\n`python bench/bench.py --memory{''.join(' --python ' + p for p in pythons)}` on {machine()}")
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    # The bytecode cache, as any earlier start leaves it (the first server would otherwise write it).
    subprocess.run([sys.executable, "-m", "py_compile", str(ROOT / "everruns.py")], check=True)
    if args.processes:
        if not args.postgres:
            parser.error("--processes needs --postgres")
        print(table(scale(args.postgres, [int(n) for n in args.processes.split(",")], args.quick)))
        print(f"\n`python bench/bench.py --postgres URL --processes {args.processes}` on {machine()}")
        return
    upstream = Upstream()
    if args.otlp:
        args.server_arg += ["--otlp-endpoint", f"http://127.0.0.1:{upstream.port}"]
    try:
        syncs = args.sync or (["full"] if args.postgres else ["full", "normal"])  # --sync is SQLite's
        columns = [run(scenario, sync, upstream, args.quick, args.server_arg, args.profile, args.postgres, args.record)
                   for sync in syncs
                   for scenario in args.scenario or list(SCENARIOS)]  # fmt: skip
    finally:
        upstream.stop()
    print(table(columns))
    profiled = [c for c in columns if "profile" in c]
    if profiled:
        print("\nWhere the server's CPU goes, 20 sessions (py-spy, share of samples and ms per turn):\n")
        print("| | " + " | ".join(c["scenario"] for c in profiled) + " |")
        print("|---" * (len(profiled) + 1) + "|")
        for name, _ in PROFILE_CATEGORIES:
            cells = [f"{c['profile'][name][0]:.0%} ({c['profile'][name][1]:.2f} ms)" for c in profiled]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n`python bench/bench.py{' --quick' if args.quick else ''}` on {machine()}")


if __name__ == "__main__":
    main()
