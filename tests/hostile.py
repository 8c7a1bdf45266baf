"""Hostile upstreams for tests/test_faults.py, stdlib only, run as a child process:
`python tests/hostile.py MODE [ARGS...]`. It serves 127.0.0.1 on a free port and prints
the port on its first stdout line (except `stdio-deep`, an MCP server on stdin/stdout).

LLM provider modes (OpenAI Chat Completions under /v1):
  keepalive          200 event stream of blank lines and comments, forever, as fast as it can
  empty-deltas       200 event stream of chunks with an empty delta, forever, as fast as it can
  words S [N]        a text delta every S seconds, forever (or N words, then stop and [DONE])
  huge-400           400 with a 300 MB JSON error body (Content-Length), as fast as it can
  huge-models        GET /v1/models: 200 with a 300 MB JSON listing (Content-Length)
  slow-400           400, Content-Length 1000, the body at one byte a second
MCP modes (Streamable HTTP at /mcp; initialize, notifications and tools/list answered):
  mcp-progress       tools/call: an event stream of progress notifications, never the answer
  mcp-pages          tools/list: pages of one tool with an 8 MB inputSchema, each with a nextCursor
  mcp-huge           tools/call: a 300 MB JSON answer
  mcp-surrogate      tools/call: a text with a lone surrogate ("\\ud800" in the JSON)
  mcp-deep           tools/call: a result nested 100,000 levels deep
  stdio-deep         as mcp-deep, over stdio (JSON-RPC lines)
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HUGE = 300 * 1024 * 1024  # 314572800 bytes
BLOCK = 1024 * 1024
DEEP = 100_000
MODE, ARGS = sys.argv[1], sys.argv[2:]


def chunk(delta, finish_reason=None):
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}  # fmt: skip
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def padded(prefix, suffix, total, fill=b"x"):
    """Pieces of a body of exactly `total` bytes: prefix, fill bytes, suffix."""
    yield prefix
    left = total - len(prefix) - len(suffix)
    block = fill * BLOCK
    while left > 0:
        yield block[: min(left, BLOCK)]
        left -= BLOCK
    yield suffix


def rpc(request_id, result):
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def deep_answer(request_id):
    nested = "[" * DEEP + "]" * DEEP
    return (f'{{"jsonrpc":"2.0","id":{json.dumps(request_id)},"result":{{"content":[{{"type":"text","text":"x"}}],'
            f'"structuredContent":{{"deep":{nested}}}}}}}').encode()  # fmt: skip


INITIALIZED = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
               "serverInfo": {"name": "hostile", "version": "1.0"}}  # fmt: skip
ECHO = {"name": "echo", "description": "Say it back.", "inputSchema": {"type": "object", "properties": {}}}


def big_schema():
    """An inputSchema of about 8 MB: a few hundred thousand properties."""
    count = 8 * 1024 * 1024 // len(b'"p000000":{"type":"string"},')
    properties = ",".join(f'"p{i:06d}":{{"type":"string"}}' for i in range(count))
    return ('{"type":"object","properties":{' + properties + "}}").encode()


SCHEMA = big_schema() if MODE == "mcp-pages" else b""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the connection closes after each answer

    def log_message(self, *args):
        pass

    def head(self, status, content_type, length=None, **extra):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def answer(self, status, body, content_type="application/json", **extra):
        self.head(status, content_type, len(body), **extra)
        self.wfile.write(body)

    def forever(self, piece, pause=0.0):
        """Write the piece again and again, until the client goes away."""
        self.head(200, "text/event-stream")
        while True:
            self.wfile.write(piece)
            if pause:
                time.sleep(pause)

    def pieces(self, status, pieces, total):
        self.head(status, "application/json", total)
        for piece in pieces:
            self.wfile.write(piece)

    def do_GET(self):
        try:
            if MODE == "huge-models" and self.path.endswith("/models"):
                prefix = b'{"object":"list","data":[{"id":"m","object":"model","description":"'
                self.pieces(200, padded(prefix, b'"}]}', HUGE), HUGE)
            elif self.path.endswith("/models"):
                self.answer(200, b'{"object":"list","data":[{"id":"m","object":"model"}]}')
            else:
                self.answer(405, b'{"error":"no server-initiated stream"}')
        except OSError:
            pass  # the client went away

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if self.path.startswith("/mcp"):
                self.mcp(json.loads(body))
            else:
                self.chat()
        except OSError:
            pass  # the client went away

    def do_DELETE(self):
        self.answer(200, b"{}")

    def chat(self):
        if MODE == "keepalive":
            self.forever((b": keep-alive\n\n" + b"\n" + b"  \r\n") * 3000)
        elif MODE == "empty-deltas":
            self.forever(b'data: {"choices":[{"index":0,"delta":{}}]}\n\n' * 1000)
        elif MODE == "words":
            pause, count = float(ARGS[0]), int(ARGS[1]) if len(ARGS) > 1 else None
            self.head(200, "text/event-stream")
            self.wfile.write(chunk({"role": "assistant", "content": ""}))
            sent = 0
            while count is None or sent < count:
                time.sleep(pause)
                self.wfile.write(chunk({"content": f"word{sent} "}))
                sent += 1
            self.wfile.write(chunk({}, "stop") + b"data: [DONE]\n\n")
        elif MODE == "huge-400":
            self.pieces(400, padded(b'{"error":{"message":"', b'"}}', HUGE), HUGE)
        elif MODE == "slow-400":
            self.head(400, "application/json", 1000)
            for byte in padded(b'{"error":{"message":"', b'"}}', 1000, b"s"):
                for i in range(len(byte)):
                    self.wfile.write(byte[i : i + 1])
                    time.sleep(1)
        else:
            self.answer(500, b'{"error":{"message":"not a provider mode"}}')

    def mcp(self, message):
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:  # a notification
            self.answer(202, b"")
        elif method == "initialize":
            self.answer(200, rpc(request_id, INITIALIZED), Mcp_Session_Id="hostile-session")
        elif method == "tools/list" and MODE == "mcp-pages":
            page = int((message.get("params") or {}).get("cursor", "p0")[1:])
            prefix = json.dumps({"jsonrpc": "2.0", "id": request_id})[:-1].encode()
            prefix += f',"result":{{"tools":[{{"name":"t{page}","description":"big","inputSchema":'.encode()
            suffix = f'}}],"nextCursor":"p{page + 1}"}}}}'.encode()
            self.pieces(200, [prefix, SCHEMA, suffix], len(prefix) + len(SCHEMA) + len(suffix))
        elif method == "tools/list":
            self.answer(200, rpc(request_id, {"tools": [ECHO]}))
        elif method == "tools/call":
            self.call(request_id)
        else:
            self.answer(200, rpc(request_id, {}))

    def call(self, request_id):
        if MODE == "mcp-progress":
            note = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{}}\n\n'
            self.forever(note * 500)
        elif MODE == "mcp-huge":
            prefix = b'{"jsonrpc":"2.0","id":' + json.dumps(request_id).encode()
            prefix += b',"result":{"content":[{"type":"text","text":"'
            self.pieces(200, padded(prefix, b'"}]}}', HUGE), HUGE)
        elif MODE == "mcp-surrogate":
            text = b'{"content":[{"type":"text","text":"half a pair: \\ud800 (alone)"}]}'
            self.answer(200, b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (json.dumps(request_id).encode(), text))
        elif MODE == "mcp-deep":
            self.answer(200, deep_answer(request_id))
        else:
            self.answer(200, rpc(request_id, {"content": [{"type": "text", "text": "fine"}]}))


def stdio_deep():
    """An MCP server on stdin/stdout whose tools/call answer is nested DEEP levels."""
    for line in sys.stdin.buffer:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:
            continue
        if method == "initialize":
            out = rpc(request_id, INITIALIZED)
        elif method == "tools/list":
            out = rpc(request_id, {"tools": [ECHO]})
        elif method == "tools/call":
            out = deep_answer(request_id)
        else:
            out = rpc(request_id, {})
        sys.stdout.buffer.write(out + b"\n")
        sys.stdout.buffer.flush()


if __name__ == "__main__":
    if MODE == "stdio-deep":
        stdio_deep()
    else:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        print(server.server_address[1], flush=True)
        server.serve_forever()
