"""A device that embeds Everruns: the agent's tools are two Python functions (a
temperature sensor, and a heating relay that a person must approve), the console is
served for people, and a hook prints each turn as it completes.

    python examples/device.py [--port 9000] [--db device.db]

Open http://127.0.0.1:9000/, pick the agent "Device", open a session and ask it. The
built-in simulator (no API key, no network) calls a tool that a message names, with the
JSON object in the message as its arguments:

    read_temperature {"room": "kitchen"}
    switch_relay {"on": true}          (the console asks you to approve it)

With a real model (OPENAI_API_KEY, or a provider made in the console) ask in words:
"Is the attic warmer than the kitchen? If it is below 18 degrees, turn the heating on."
"""

from gevent import monkey

monkey.patch_all(subprocess=False)  # first, before anything imports socket or threading

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
from typing import Literal  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # everruns.py, one folder up
import everruns  # noqa: E402

ROOMS = {"kitchen": 21.0, "garage": 12.5, "attic": 26.0}  # a stand-in for real sensors
relay = {"on": False}


@everruns.tool(capability="sensors")
def read_temperature(room: Literal["kitchen", "garage", "attic"]) -> dict:
    """Read the temperature of a room of the house, in degrees Celsius."""
    return {"room": room, "celsius": round(ROOMS[room] + random.uniform(-0.5, 0.5), 1)}


@everruns.tool(capability="relay")
def switch_relay(on: bool) -> dict:
    """Switch the heating relay on or off."""
    relay["on"] = on
    return {"heating": "on" if on else "off"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--db", default="device.db")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = everruns.create_app(args.db, tools=[read_temperature, switch_relay])
    app.capability("relay", name="Heating relay", system_prompt="Switching the heating needs a person's approval.")
    app.capability("sensors", name="Temperature sensors")

    @app.on("session.completed")
    def report(event: object) -> None:
        """One line per turn: how it ended, and the agent's last words."""
        answer = [m for m in app.client.sessions.get(event.session_id).messages() if m.role == "assistant"]
        text = " ".join(p.text for p in answer[-1].content if p.type == "text") if answer else ""
        print(f"turn {event.data.status} in {event.data.duration_ms} ms: {text[:200]}", flush=True)

    if not any(agent.name == "Device" for agent in app.client.agents.list()):
        app.client.agents.create(name="Device", capabilities=["sensors", "relay"], require_approval=["switch_relay"],
                                 system_prompt="You look after the heating of a small house.")  # fmt: skip
    print(f"Device console: http://127.0.0.1:{args.port}/", flush=True)
    everruns.serve(app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
