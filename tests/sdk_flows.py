"""Programs written with the official Everruns SDK for Python (everruns-sdk 0.3.1), run
against a live server as their users run them: `python tests/sdk_flows.py FLOW [ARGS]`
with EVERRUNS_API_URL (http://127.0.0.1:PORT/api) and EVERRUNS_API_KEY set. Each prints
what it saw, one JSON object per line, for tests/test_sdk.py to check."""

import asyncio
import json
import os
import sys

from everruns_sdk import AgentCapabilityConfig, AgentClient, ContentPart, Everruns, ToolDefinition, extract_tool_calls
from everruns_sdk.sse import EventStream, StreamOptions

ENDS = ("turn.completed", "turn.failed", "turn.cancelled")


def say(**seen):
    print(json.dumps(seen), flush=True)


def text_of(data):
    parts = (data.get("message") or {}).get("content") or []
    return "".join(p.get("text") or "" for p in parts if p.get("type") == "text")


async def events_until_the_turn_ends(stream, on_event=None):
    """The events of a stream up to the end of a turn (the stream never ends by itself),
    read as the SDK's examples read them."""
    seen, events = [], stream.__aiter__()
    try:
        while not seen or seen[-1].type not in ENDS:
            seen.append(await asyncio.wait_for(events.__anext__(), timeout=45))
            if on_event is not None:
                await on_event(seen[-1])
        return seen
    finally:
        stream.stop()
        await stream.aclose()


async def basic(client):
    """The flow of the SDK's examples/basic.py, with the messages listed before cleaning up."""
    agent = await client.agents.create(name="example-assistant-py", system_prompt="You are a helpful assistant.",
                                       capabilities=[AgentCapabilityConfig(ref="current_time")])  # fmt: skip
    session = await client.sessions.create(agent_id=agent.id, capabilities=[AgentCapabilityConfig(ref="current_time")])
    message = await client.messages.create(session_id=session.id, text="What time is it right now?")
    events = await events_until_the_turn_ends(client.events.stream(session.id))
    messages = await client.messages.list(session.id)
    say(agent=[agent.name, agent.status, agent.harness_id, [c.ref for c in agent.capabilities]],
        session=[session.agent_id, session.status, session.harness_id], message=message.id,
        types=[e.type for e in events], sequences=[e.sequence for e in events],
        answer=[text_of(e.data) for e in events if e.type == "output.message.completed"],
        roles=[m.role for m in messages], session_after=(await client.sessions.get(session.id)).status)  # fmt: skip
    await client.sessions.delete(session.id)
    await client.agents.delete(agent.id)
    say(agents_left=[a.name for a in await client.agents.list()])


async def tool(client):
    """A turn with a built-in tool on the simulator (it calls the tool a message names)."""
    agent = await client.agents.create(name="calculator", system_prompt="Use the tools.",
                                       capabilities=[AgentCapabilityConfig(ref="test_math")])  # fmt: skip
    session = await client.sessions.create(agent_id=agent.id)
    await client.messages.create(session_id=session.id, text='add {"a": 2, "b": 3}')
    events = await events_until_the_turn_ends(client.events.stream(session.id))
    say(types=[e.type for e in events],
        tool=[e.data for e in events if e.type in ("tool.started", "tool.completed")],
        answer=[text_of(e.data) for e in events if e.type == "output.message.completed"])  # fmt: skip


WEATHER = ToolDefinition(name="get_weather", description="Get current weather for a city.",
                         parameters={"type": "object", "properties": {"city": {"type": "string"}},
                                     "required": ["city"], "additionalProperties": False})  # fmt: skip


async def client_tool(client):
    """The SDK cookbook's client-tool loop: the agent asks, this program runs the tool and answers."""
    agent = await client.agents.create(name="weather-assistant-py", system_prompt="Use get_weather.", tools=[WEATHER])
    session = await client.sessions.create(agent_id=agent.id, tools=[WEATHER])
    existing = await client.events.list(session.id)
    baseline = existing[-1].id if existing else None
    stream = EventStream(client, session.id, StreamOptions(max_retries=3, since_id=baseline))

    async def answer(event):
        if event.type == "tool.call_requested":
            results = [ContentPart.make_tool_result(call.id, {"city": call.arguments.get("city"), "celsius": 18})
                       for call in extract_tool_calls(event.data)]  # fmt: skip
            accepted = await client.messages.create_tool_results(session.id, results)
            say(accepted=[accepted.accepted, accepted.status])

    task = asyncio.create_task(events_until_the_turn_ends(stream, answer))
    await asyncio.sleep(0.25)
    await client.messages.create(session_id=session.id, text='get_weather {"city": "Paris"}')
    events = await asyncio.wait_for(task, 60)
    say(
        types=[e.type for e in events], answer=[text_of(e.data) for e in events if e.type == "output.message.completed"]
    )


async def agent_client(url, key):
    """AgentClient.run: the channel of an agent, a session, a message, the reply."""
    async with Everruns(base_url=url + "/api", api_key=key) as client:
        agent = await client.agents.create(name="channel-agent", system_prompt="Be brief.")
    agent_client = AgentClient(agent_url=f"{url}/api/v1/channels/{agent.id}", credential=key)
    card = await agent_client.card()
    reply = await agent_client.run("hello there")
    session = await agent_client.create_session(title="Follow-up")
    again = await agent_client.run("and again", session_id=session["id"])
    say(card=card["name"], reply=reply, again=again)


async def follow(client, session_id, idle_timeout):
    """Stream one session's events as they come, forever (the test stops this program)."""
    stream = EventStream(client, session_id, StreamOptions(idle_timeout=float(idle_timeout)))
    events = stream.__aiter__()
    while True:
        event = await events.__anext__()
        say(id=event.id, type=event.type, sequence=event.sequence)


async def main():
    flow, args = sys.argv[1], sys.argv[2:]
    if flow == "agent_client":
        return await agent_client(os.environ["EVERRUNS_API_URL"].removesuffix("/api"), os.environ["EVERRUNS_API_KEY"])
    async with Everruns() as client:
        await {"basic": basic, "tool": tool, "client_tool": client_tool, "follow": follow}[flow](client, *args)


if __name__ == "__main__":
    asyncio.run(main())
