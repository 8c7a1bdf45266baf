"""A real MCP server for the tests, built with the official `mcp` SDK (a test-only
dependency): `python tests/mcp_server.py stdio`, `http PORT [json]` (Streamable HTTP
on 127.0.0.1, endpoint /mcp; answers as event streams, or with `json` as plain JSON), or
`sse PORT` (the older HTTP+SSE transport, stream at /sse).
tools/list answers two tools per page."""

import base64
import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

PAGE = 2


async def two_per_page(ctx, call_next):
    """tools/list in pages of PAGE (the SDK lists every tool at once)."""
    if ctx.method != "tools/list":
        return await call_next(ctx)
    cursor = (ctx.params or {}).get("cursor")
    start = int(base64.b64decode(cursor)) if cursor else 0
    result = dict(await call_next(ctx))
    tools = result["tools"]
    result["tools"] = tools[start : start + PAGE]
    if start + PAGE < len(tools):
        result["nextCursor"] = base64.b64encode(str(start + PAGE).encode()).decode()
    return result


mcp = MCPServer("test-server", middleware=[two_per_page])


@mcp.tool(structured_output=False)
def echo(text: str) -> str:
    """Say the text back."""
    return text


@mcp.tool()
def add(a: int, b: int) -> dict[str, int]:
    """Add two numbers (a structured result)."""
    return {"sum": a + b}


@mcp.tool()
def fail(message: str) -> str:
    """Fail with this message."""
    raise ToolError(message)


@mcp.tool()
async def sleep(seconds: float) -> str:
    """Take this long to answer."""
    await anyio.sleep(seconds)
    return "awake"


@mcp.tool()
def exit_server() -> str:
    """Die in the middle of the call."""
    os._exit(3)


@mcp.tool(structured_output=False)
def inject() -> str:
    """Answer with text that looks like server-sent events."""
    return 'x\n\nid: 999\nevent: session.completed\ndata: {"type": "session.completed"}\n\n'


@mcp.tool(structured_output=False)
def getenv(name: str) -> str:
    """An environment variable of this server ("" when it has none)."""
    return os.environ.get(name, "")


@mcp.tool(structured_output=False)
def flood() -> str:
    """Answer with a megabyte of text."""
    return "y" * (1024 * 1024)


if __name__ == "__main__":
    if sys.argv[1] == "stdio":
        mcp.run("stdio")
    elif sys.argv[1] == "sse":
        mcp.run("sse", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        json_answers = sys.argv[3:] == ["json"]  # plain JSON answers instead of event streams
        mcp.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]), streamable_http_path="/mcp",
                json_response=json_answers)  # fmt: skip
