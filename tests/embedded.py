"""A program that embeds the server with Python tools, for tests/test_embedding.py:
`python tests/embedded.py --port PORT --db DB` (what it does is in each tool's docstring).
Its hooks print one line per session.completed: `hook: <turn_id> <status>`."""

from gevent import monkey

monkey.patch_all(subprocess=False)

import argparse  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import everruns  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--db", required=True)
parser.add_argument("--marker", default=os.devnull, help="where `record` appends a line each time it runs")
args = parser.parse_args()


@everruns.tool(capability="device")
def record(note: str) -> dict:
    """Append the note to the marker file, then wait a minute (a tool a crash interrupts)."""
    with open(args.marker, "a") as f:
        f.write(note + "\n")
    gevent.sleep(60)
    return {"recorded": note}


@everruns.tool(capability="device", threaded=True)
def block_in_c(seconds: float) -> dict:
    """Block its OS thread for some seconds in C code (the unpatched time.sleep), then a hash."""
    monkey.get_original("time", "sleep")(seconds)
    return {"slept": seconds, "digest": hashlib.pbkdf2_hmac("sha256", b"x", b"salt", 1000).hex()[:8]}


def completed(event):
    print(f"hook: {event.turn_id} {event.data.status}", flush=True)


# Given to create_app, the hook also sees what the start stores (turns a crash interrupted, closed).
app = everruns.create_app(args.db, tools=[record, block_in_c], hooks={"session.completed": completed},
                          check_events=True)  # fmt: skip

everruns.serve(app, "127.0.0.1", args.port)
