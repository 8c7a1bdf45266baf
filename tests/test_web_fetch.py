"""web_fetch: only public addresses (every form of a private one refused before any
connection), redirects checked hop by hop, and a real fetch when private fetches are allowed."""

import json
import logging
import socket

import gevent
import pytest
import webtest
from conftest import finish

import everruns


class Listener:
    """A loopback socket that counts the connections it gets."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port, self.accepted = self.sock.getsockname()[1], 0
        self.greenlet = gevent.spawn(self._accept)

    def _accept(self):
        while True:
            conn, _ = self.sock.accept()
            self.accepted += 1
            conn.close()

    def close(self):
        self.greenlet.kill()
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


def fetch(url, allow_private=False, fmt="markdown"):
    tool = everruns.CAPABILITIES["web_fetch"].tools[0]
    tctx = everruns._ToolContext("s", None, {"allow_private_fetch": allow_private})
    return everruns._run_tool(tool, {"url": url, "format": fmt}, tctx)


def vectors(port):
    return [
        f"http://127.0.0.1:{port}/", f"http://localhost:{port}/", f"http://2130706433:{port}/",
        f"http://0x7f000001:{port}/", f"http://0177.0.0.1:{port}/", f"http://0177.0000.0000.0001:{port}/",
        f"http://127.1:{port}/", f"http://127.0.1:{port}/", f"http://0:{port}/", f"http://0.0.0.0:{port}/",
        f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/", f"http://[::ffff:7f00:1]:{port}/",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{port}/", f"http://[::]:{port}/", f"http://127.0.0.2:{port}/",
        f"https://127.0.0.1:{port}/", f"http://user:pass@127.0.0.1:{port}/",
        "http://169.254.169.254/latest/meta-data/", "http://[::ffff:169.254.169.254]/", "http://[fd00:ec2::254]/",
        "http://100.100.100.200/", "http://10.0.0.1/", "http://172.16.0.1/", "http://192.168.1.1/",
        "http://100.64.0.1/", "http://[fe80::1]/", "http://[fc00::1]/", "http://224.0.0.1/",
        "http://255.255.255.255/", "http://198.18.0.1/",
    ]  # fmt: skip


def test_private_addresses_in_every_form_are_refused_without_a_connection(listener):
    for url in vectors(listener.port):
        result, is_error = fetch(url)
        assert is_error is True, url
        assert "refused" in result["error"], (url, result)
    assert listener.accepted == 0


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/", "http://"])
def test_other_schemes_and_no_host_are_refused(url):
    result, is_error = fetch(url)
    assert is_error is True and ("http" in result["error"] or "host" in result["error"])


def test_a_public_name_resolving_to_loopback_is_refused(listener, monkeypatch):
    monkeypatch.setattr(everruns, "_resolve", lambda host, port: ["93.184.216.34", "127.0.0.1"])
    result, is_error = fetch(f"http://looks-public.example:{listener.port}/")
    assert is_error and "refused" in result["error"] and listener.accepted == 0


def serve_html(routes):
    """A tiny web server on 127.0.0.1: path → (status, headers, body)."""
    from gevent.pywsgi import WSGIServer

    def app(environ, start_response):
        status, headers, body = routes.get(environ["PATH_INFO"], ("404 Not Found", [], b"nope"))
        start_response(status, headers)
        return [body]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    return server


def test_a_redirect_from_an_allowed_address_to_a_blocked_one_is_refused(listener, monkeypatch):
    redirector = serve_html({"/": ("302 Found", [("Location", f"http://127.0.0.1:{listener.port}/admin")], b"")})
    public = "93.184.216.34"  # what the fake DNS says; the fake internet routes it to the redirector
    monkeypatch.setattr(everruns, "_resolve", lambda host, port: [public] if host == "allowed.example" else [host])
    real_connect = everruns._connect
    monkeypatch.setattr(
        everruns,
        "_connect",
        lambda address, port, timeout: (
            real_connect("127.0.0.1", redirector.server_port, timeout)
            if address == public
            else real_connect(address, port, timeout)
        ),
    )
    result, is_error = fetch("http://allowed.example/")
    assert is_error and "refused" in result["error"] and "127.0.0.1" in result["error"]
    assert listener.accepted == 0
    redirector.stop()


PAGE = b"""<html><head><title>T</title><style>p{}</style><script>alert(1)</script></head><body>
<h1>Hello</h1><p>Some <b>bold</b> text and <a href="https://example.com/x">a link</a>.</p>
<ul><li>one</li><li>two</li></ul><pre>code  block</pre></body></html>"""


def test_a_loopback_fetch_works_when_private_fetches_are_allowed():
    site = serve_html({
        "/page": ("200 OK", [("Content-Type", "text/html; charset=utf-8")], PAGE),
        "/hop": ("301 Moved", [("Location", "/page")], b""),
        "/gone": ("404 Not Found", [("Content-Type", "text/plain")], b"no such page"),
    })  # fmt: skip
    base = f"http://127.0.0.1:{site.server_port}"
    result, is_error = fetch(f"{base}/hop", allow_private=True)
    assert is_error is False and result["status"] == 200 and result["url"] == f"{base}/page"
    markdown = result["content"]
    assert "# Hello" in markdown and "**bold**" in markdown and "[a link](https://example.com/x)" in markdown
    assert "- one" in markdown and "alert" not in markdown and "p{}" not in markdown
    text = fetch(f"{base}/page", allow_private=True, fmt="text")[0]["content"]
    assert "Hello" in text and "#" not in text and "a link" in text
    assert fetch(f"{base}/page", allow_private=True, fmt="raw")[0]["content"] == PAGE.decode()
    gone, is_error = fetch(f"{base}/gone", allow_private=True)
    assert is_error and "404" in gone["error"]
    site.stop()


def test_redirect_loops_stop_after_five():
    site = serve_html({"/loop": ("302 Found", [("Location", "/loop")], b"")})
    result, is_error = fetch(f"http://127.0.0.1:{site.server_port}/loop", allow_private=True)
    assert is_error and "redirects" in result["error"]
    site.stop()


def test_a_refusal_in_a_turn_is_an_error_result_and_the_turn_goes_on(api, client, listener):
    session = api.session(api.agent(capabilities=["web_fetch"])["id"])
    url = f"http://127.0.0.1:{listener.port}/"
    api.message(session["id"], f"web_fetch {json.dumps({'url': url})}", status=201)
    events = finish(client, session["id"])
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["is_error"] is True and events[-1]["data"]["status"] == "completed"
    assert listener.accepted == 0


def test_the_server_flag_allows_private_fetches(make_app):
    site = serve_html({"/": ("200 OK", [("Content-Type", "text/plain")], b"hello from loopback")})
    app = make_app(allow_private_fetch=True)
    client = webtest.TestApp(app)
    agent = client.post_json("/v1/agents", {"name": "f", "capabilities": ["web_fetch"]}).json
    session = client.post_json(f"/v1/agents/{agent['id']}/sessions", {}).json
    url = f"http://127.0.0.1:{site.server_port}/"
    client.post_json(f"/v1/sessions/{session['id']}/messages", {"content": f"web_fetch {json.dumps({'url': url})}"})
    result = next(e["data"] for e in finish(client, session["id"]) if e["type"] == "tool.result")
    assert result["is_error"] is False and result["result"]["content"] == "hello from loopback"
    site.stop()


def test_a_page_in_an_unknown_charset_is_read_as_utf8(caplog):
    site = serve_html({"/odd": ("200 OK", [("Content-Type", "text/html; charset=x-no-such-charset")], PAGE)})
    result, is_error = fetch(f"http://127.0.0.1:{site.server_port}/odd", allow_private=True)
    assert is_error is False and "# Hello" in result["content"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    site.stop()
