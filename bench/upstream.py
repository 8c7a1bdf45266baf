"""A fake OpenAI-compatible upstream for the benchmark, on 127.0.0.1.

`POST .../chat/completions` streams a 20-token answer as Chat Completions
chunks (`data: {...}` lines, a usage chunk, `data: [DONE]`); the per-token
pause comes from the path: a base_url of `http://127.0.0.1:PORT/5ms/v1`
pauses 5 ms before each token, `/0ms/v1` sends the whole answer at once.
`GET .../models` lists one model. Like OpenAI's API, Ollama or vLLM, it
answers in HTTP/1.1 with chunked streams and keeps the connection open for
the next request. `POST /v1/traces` takes OpenTelemetry spans (OTLP/HTTP) and
drops them: a collector for `bench.py --otlp`.

    python bench/upstream.py PORT     # serves until killed; prints "ready"
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

TOKENS = 20
MODEL = "bench-model"


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if usage is None else []}  # fmt: skip
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _piece(data: bytes) -> bytes:
    """One piece of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
FIRST = _piece(_chunk({"role": "assistant", "content": ""}))
WORDS = [_piece(_chunk({"content": f"word{i} " if i < TOKENS - 1 else f"word{i}."})) for i in range(TOKENS)]
LAST = (
    _piece(_chunk({}, "stop") + _chunk({}, usage={"prompt_tokens": 30, "completion_tokens": TOKENS}))
    + _piece(b"data: [DONE]\n\n")
    + b"0\r\n\r\n"
)
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


def _read_request(reader) -> tuple[str, str] | None:
    """(method, path) of one request, its headers and body read; None at end of input."""
    line = reader.readline(65536)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    length = 0
    while True:
        header = reader.readline(65536)
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    reader.read(length)
    return method, path


def handle(sock, _address) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as real servers do: each token goes out at once
    reader = sock.makefile("rb")
    try:
        while request := _read_request(reader):
            _answer(sock, *request)
    except OSError:
        pass  # the server hung up (a cancelled turn): nothing to answer
    finally:
        reader.close()
        sock.close()


def _answer(sock, method: str, path: str) -> None:
    if method == "POST" and path == "/v1/traces":  # an OTLP export: taken (its body was read)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        return
    if method == "GET" and path.endswith("/models"):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(MODELS), MODELS))  # fmt: skip
        return
    match = re.match(r"/(\d+)ms/", path)
    pause = int(match.group(1)) / 1000 if match else 0.0
    if not pause:
        sock.sendall(HEAD + FIRST + b"".join(WORDS) + LAST)
        return
    sock.sendall(HEAD + FIRST)
    for word in WORDS:
        gevent.sleep(pause)
        sock.sendall(word)
    sock.sendall(LAST)


def main() -> None:
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), handle, backlog=1024)
    server.start()
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
