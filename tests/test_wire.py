"""HTTP on the wire: malformed requests, smuggling surfaces, odd bytes in
headers and paths, slow clients and a full house. Each protocol error is
answered with the JSON error envelope and a closed connection; none leaves
a traceback in the server log."""

import errno
import json
import resource
import select
import socket
import threading
import time

import pytest
from conftest import MONITOR, SSEStream, blocking_reports

import everruns

HOST = b"Host: 127.0.0.1\r\n"
AGENT = b'{"name":"a"}'  # 12 bytes
CHUNKED_AGENT = b"c\r\n" + AGENT + b"\r\n0\r\n\r\n"


def request(line=b"GET /health HTTP/1.1", headers=b"", body=b""):
    return line + b"\r\n" + HOST + headers + b"\r\n" + body


def post_agent(headers, body=AGENT):
    return request(b"POST /v1/agents HTTP/1.1", b"Content-Type: application/json\r\n" + headers, body)


def _recv(sock):
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def answer(sock, timeout=5):
    """Read one answer: (status, headers with lower-case names, body, whether the server then hung up)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        assert chunk, f"the server hung up without a complete answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}
    length = int(headers.get("content-length", 0))
    while len(body) < length and (chunk := _recv(sock)):
        body += chunk
    sock.settimeout(min(timeout, 2))  # a server that hangs up does so right after the answer
    try:
        closed = len(body) == length and _recv(sock) == b""
    except TimeoutError:
        closed = False
    return int(status_line.split()[1]), headers, body, closed


def answers(sock, count, timeout=5):
    """Read `count` answers that arrive one after the other on a kept-alive connection:
    [(status, headers, body)]."""
    sock.settimeout(timeout)
    data, got = b"", []
    while len(got) < count:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in lines)}
            length = int(headers.get("content-length", 0))
            if len(rest) >= length:
                got.append((int(status_line.split()[1]), headers, rest[:length]))
                data = rest[length:]
                continue
        chunk = _recv(sock)
        assert chunk, f"the server hung up after {len(got)} answers"
        data += chunk
    return got


def raw(server, data, timeout=5):
    """Send raw bytes on a new connection and read the answer (see `answer`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may refuse before reading everything; its answer is still there
            pass
        return answer(sock, timeout)


def envelope(reply, status, code, hang_up=True):
    """Assert the standard error envelope (and, by default, the hang-up); the error object."""
    got, headers, body, hung_up = reply
    assert got == status, body
    assert headers.get("content-type") == "application/json; charset=utf-8"
    assert set(json.loads(body)) == {"error"}
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert hung_up or not hang_up, "the server kept the connection open"
    return error


def no_traceback(server):
    assert "Traceback" not in server.output(), server.output()


def clean_log(server):
    """After a round trip (the server has caught up), no traceback in its log."""
    assert server.call("GET", "/health")[0] == 200
    no_traceback(server)


def session_id(server):
    agent = server.call("POST", "/v1/agents", {"name": "a"})[2]
    return server.call("POST", f"/v1/agents/{agent['id']}/sessions", {})[2]["id"]


def trickle(sock, drip, every=0.2, within=5.0):
    """Send one byte of `drip` every `every` s until the server answers or `within` s pass."""
    start = time.monotonic()
    for byte in drip:
        if select.select([sock], [], [], every)[0] or time.monotonic() - start > within:
            break
        try:
            sock.send(bytes([byte]))
        except OSError:
            break
    return answer(sock, timeout=max(0.1, within - (time.monotonic() - start))), time.monotonic() - start


class Slowloris:
    """`n` connections that each send a partial request line, one byte every `every` s, from one thread.
    Each is [socket, bytes sent]; sent is None once the server has dropped it."""

    def __init__(self, server, n, every=0.5):
        self.payload = b"GET /" + b"a" * 4000  # no end of line for a long while
        self.socks = []
        for _ in range(n):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.port))
            self.socks.append([sock, 0])
        self.every, self.stop, self.started = every, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.feed, daemon=True)
        self.thread.start()

    def feed(self):
        while not self.stop.is_set():
            for pair in self.socks:
                if pair[1] is None:
                    continue
                try:
                    pair[1] += pair[0].send(self.payload[pair[1] : pair[1] + 1])
                except (BlockingIOError, InterruptedError):  # still connecting
                    pass
                except OSError as e:  # dropped by the server (or still connecting: ENOTCONN)
                    pair[1] = pair[1] if e.errno == errno.ENOTCONN else None
            if all(sent != 0 for _, sent in self.socks):
                self.started.set()  # every connection got in and sent its first bytes (or was dropped)
            self.stop.wait(self.every)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for sock, _ in self.socks:
            sock.close()


@pytest.fixture
def many_files():
    """Room for hundreds of sockets here and in the server (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- protocol errors ----------------------------------------------------------


PROTOCOL_ERRORS = {
    "request-line-too-long": (request(b"GET /" + b"a" * 9000 + b" HTTP/1.1"), 414, "URI_TOO_LONG"),
    "too-many-headers": (request(headers=b"".join(b"X-%d: 1\r\n" % i for i in range(150))), 431, "HEADERS_TOO_LARGE"),
    "header-line-too-long": (request(headers=b"X-Big: " + b"a" * 70000 + b"\r\n"), 431, "HEADERS_TOO_LARGE"),
    "bad-http-version": (request(b"GET / HTTP/9.9"), 400, "BAD_REQUEST"),
    "garbage-request-line": (b"HELLO\r\n\r\n", 400, "BAD_REQUEST"),
    "folded-header": (request(headers=b"X-A: 1\r\n  continued\r\n"), 400, "BAD_REQUEST"),
    "negative-content-length": (post_agent(b"Content-Length: -1\r\n"), 400, "BAD_REQUEST"),
    "bad-chunk-size": (post_agent(b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"), 400, "BAD_REQUEST"),
    "bare-lf-request-line": (b"GET /health HTTP/1.1\n" + HOST + b"\r\n", 400, "BAD_REQUEST"),
    "bare-lf-headers": (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\nX-A: 1\n\n", 400, "BAD_REQUEST"),
    "nul-in-a-header": (request(headers=b"X-A: a\x00b\r\n"), 400, "BAD_REQUEST"),
    "chunked-on-http-1.0": (
        request(
            b"POST /v1/agents HTTP/1.0",
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_AGENT,
        ),
        400,
        "BAD_REQUEST",
    ),
}


@pytest.mark.parametrize("data, status, code", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_errors_get_the_envelope_and_a_hang_up(start_server, data, status, code):
    server = start_server()
    envelope(raw(server, data), status, code)
    clean_log(server)


SMUGGLING = {
    "two-content-lengths": b"Content-Length: 12\r\nContent-Length: 13\r\n",
    "two-equal-content-lengths": b"Content-Length: 12\r\nContent-Length: 12\r\n",
    "content-length-and-chunked": b"Content-Length: 12\r\nTransfer-Encoding: chunked\r\n",
    "plus-sign-length": b"Content-Length: +12\r\n",
    "underscore-length": b"Content-Length: 1_2\r\n",
    "gzip-then-chunked": b"Transfer-Encoding: gzip, chunked\r\n",
    "space-before-colon": b"Content-Length : 12\r\n",
}


@pytest.mark.parametrize("headers", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_bodies_are_refused_and_nothing_is_created(start_server, headers):
    server = start_server()
    body = CHUNKED_AGENT if b"chunked" in headers else AGENT
    envelope(raw(server, post_agent(headers, body)), 400, "BAD_REQUEST")
    assert server.call("GET", "/v1/agents")[2]["data"] == []
    clean_log(server)


FORM = b'--XX\r\nContent-Disposition: form-data; name="name"\r\n\r\nsneaky\r\n--XX--\r\n'


@pytest.mark.parametrize("body", [FORM, b""], ids=["with-a-body", "without"])
def test_a_multipart_form_post_is_415_and_the_next_request_is_its_own(start_server, body):
    server = start_server()
    form = request(b"POST /v1/agents HTTP/1.1", b"Content-Type: multipart/form-data; boundary=XX\r\n"
                   b"Content-Length: %d\r\n" % len(body), body)  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(form + request())  # a second request right behind it, on the same connection
        (refused, _, body), (health, _, _) = answers(sock, 2)
        assert refused == 415 and json.loads(body)["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
        assert health == 200  # /health: read from its own first byte
    assert server.call("GET", "/v1/agents")[2]["data"] == []
    clean_log(server)


def test_a_refused_body_is_never_read_as_a_request(start_server):
    server = start_server()
    inner = request(b"DELETE /v1/agents/x HTTP/1.1")  # a request hidden in a body the server refuses
    refused = request(b"POST /v1/agents HTTP/1.1", b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(inner),
                      inner)  # fmt: skip
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(refused + request(b"GET /v1/agents HTTP/1.1"))
        (status, _, _), (then, _, body) = answers(sock, 2)
        assert (status, then, json.loads(body)["data"]) == (415, 200, [])  # not the hidden DELETE (404)
    big = b"x" * (everruns.DRAIN_BYTES + 1)
    refused = request(b"POST /v1/agents HTTP/1.1", b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(big))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(refused)  # the body is held back: too large to read for nothing
        status, headers, _, closed = answer(sock)
        assert status == 415 and headers["connection"] == "close" and closed
    clean_log(server)


def test_a_chunked_body_cut_off_leaves_no_traceback(start_server):
    server = start_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(post_agent(b"Transfer-Encoding: chunked\r\n", b'c\r\n{"na'))
        sock.shutdown(socket.SHUT_WR)
        while _recv(sock):  # whatever the server says, until it hangs up
            pass
    assert server.call("GET", "/v1/agents")[2]["data"] == []
    clean_log(server)


# ---- bytes that are not UTF-8 ----------------------------------------------------


@pytest.mark.parametrize("header", [b"Cookie: a=\xe9", b"User-Agent: \xff\xfe", b"Referer: http://x/\xe9"])
def test_non_utf8_header_bytes_are_harmless(start_server, header):
    server = start_server()
    for path in (b"/health", b"/v1/agents"):
        reply = raw(server, request(b"GET " + path + b" HTTP/1.1", header + b"\r\nConnection: close\r\n"))
        assert reply[0] == 200, reply
    clean_log(server)


@pytest.mark.parametrize("value", [b"\xc2\xb2", b"\xb2"], ids=["utf8-superscript-two", "latin1-superscript-two"])
def test_a_last_event_id_that_is_not_a_number_is_a_validation_error(start_server, value):
    server = start_server()
    line = b"GET /v1/sessions/%s/events HTTP/1.1" % session_id(server).encode()
    reply = raw(server, request(line, b"Last-Event-ID: " + value + b"\r\nConnection: close\r\n"))
    envelope(reply, 400, "VALIDATION_ERROR", hang_up=False)
    clean_log(server)


def test_a_path_that_is_not_utf8_writes_nothing(start_server):
    server = start_server()
    sid = session_id(server)
    line = b"PUT /v1/sessions/%s/fs/%%ff%%fe/x HTTP/1.1" % sid.encode()
    body = b'{"content": "hi"}'
    headers = b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body)
    envelope(raw(server, request(line, headers, body)), 400, "BAD_REQUEST", hang_up=False)
    assert server.call("GET", f"/v1/sessions/{sid}/fs/x")[0] == 404
    clean_log(server)


# ---- slow clients ----------------------------------------------------------------


def test_the_request_timeout_defaults_to_30_seconds():
    parse = everruns._parser().parse_args
    assert everruns._resolve_settings(parse([]), {})["request_timeout"] == 30
    assert everruns._resolve_settings(parse([]), {"EVERRUNS_REQUEST_TIMEOUT": "2.5"})["request_timeout"] == 2.5


@pytest.mark.parametrize("how", ["flag", "env"])
def test_headers_sent_a_byte_at_a_time_time_out(start_server, how):
    if how == "flag":
        server = start_server(None, "--request-timeout", "1")
    else:
        server = start_server(env={"EVERRUNS_REQUEST_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        reply, seconds = trickle(sock, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000)
    envelope(reply, 408, "REQUEST_TIMEOUT")
    assert seconds < 5
    clean_log(server)


def test_a_body_sent_a_byte_at_a_time_times_out(start_server):
    server = start_server(None, "--request-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(post_agent(b"Content-Length: 100\r\n", b""))
        reply, seconds = trickle(sock, b'{"name": "' + b"a" * 99)
    envelope(reply, 408, "REQUEST_TIMEOUT")
    assert seconds < 5
    assert server.call("GET", "/v1/agents")[2]["data"] == []
    clean_log(server)


def test_the_request_timeout_starts_at_the_first_byte(start_server):
    server = start_server(None, "--request-timeout", "1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        time.sleep(1.5)  # silent, not slow: only the idle timeout applies
        sock.sendall(request(headers=b"Connection: close\r\n"))
        assert answer(sock)[0] == 200
    clean_log(server)


# ---- a full house ----------------------------------------------------------------


@pytest.mark.parametrize("args", [("--max-connections", "20"), ()], ids=["cap-20", "default-cap"])
def test_health_answers_during_a_slowloris(start_server, many_files, args):
    server = start_server(None, *args, env=MONITOR)
    attack = Slowloris(server, 400)
    try:
        assert attack.started.wait(5)
        for _ in range(10):
            start = time.monotonic()
            assert raw(server, request(headers=b"Connection: close\r\n"), timeout=1)[0] == 200
            assert time.monotonic() - start < 1
    finally:
        attack.close()
    clean_log(server)
    assert blocking_reports(server) == []


def test_a_full_house_of_busy_connections_answers_503_at_once(start_server):
    server = start_server(None, "--max-connections", "3")
    sid = session_id(server)
    streams = [SSEStream(server.url, f"/v1/sessions/{sid}/events", timeout=5) for _ in range(3)]
    try:
        start = time.monotonic()
        envelope(raw(server, request(), timeout=2), 503, "UNAVAILABLE")
        assert time.monotonic() - start < 2
    finally:
        for stream in streams:
            stream.close()
    no_traceback(server)  # (the closed streams may hold their slots until their next write)


def test_connections_that_ended_free_their_place_at_the_cap(start_server):
    server = start_server(None, "--max-connections", "2")
    for _ in range(20):  # keep-alive connections that the clients close while they wait
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request())
            assert answer(sock, timeout=0.2)[0] == 200
    sid = session_id(server)
    streams = [SSEStream(server.url, f"/v1/sessions/{sid}/events", timeout=5) for _ in range(2)]
    try:
        for stream in streams:
            next(iter(stream))  # both places are busy
        envelope(raw(server, request(), timeout=2), 503, "UNAVAILABLE")
    finally:
        for stream in streams:
            stream.close()
