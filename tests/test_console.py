"""The console at GET / in a real headless browser (Chromium driven by Playwright), and
Swagger UI offline. The browser may reach 127.0.0.1 only."""

import os
import shutil

import pytest
from conftest import ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("EVERRUNS_SCREENSHOTS")  # a folder: save the README's screenshots there


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for these tests")
        pytest.skip(f"BROWSER TESTS NOT RUN: {CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"]  # fmt: skip
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


class Console:
    """A page of the console, with every request and console error it made."""

    def __init__(self, browser, server, width=1280, dark=False):
        self.server, self.requests, self.errors = server, [], []
        scheme = "dark" if dark else "light"
        self.context = browser.new_context(viewport={"width": width, "height": 860}, color_scheme=scheme)
        self.context.route("**/*", self._loopback_only)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def _loopback_only(self, route):
        url = route.request.url
        self.requests.append(url)
        if url.startswith(self.server.url) or url.startswith("data:"):
            route.continue_()
        else:
            route.abort()

    def open(self, path="/", ready=True):
        self.page.goto(self.server.url + path)
        if ready:
            self.page.locator("body[data-ready]").wait_for()
        return self.page

    def new_agent(self, name, *capabilities):
        page = self.page
        page.get_by_role("button", name="New agent").click()
        page.get_by_label("Name", exact=True).fill(name)
        for capability in capabilities:
            page.get_by_label(capability, exact=True).check()
        page.get_by_role("button", name="Create").click()
        page.get_by_role("button", name="New session").click()
        page.get_by_label("Message", exact=True).wait_for()

    def provider_form(self, name, provider_type, base_url):
        """Open the providers and fill the form's name, type and base URL."""
        page = self.page
        page.get_by_role("button", name="Providers").click()
        page.get_by_label("Provider name").fill(name)
        page.get_by_label("Type").select_option(provider_type)
        page.get_by_label("Base URL").fill(base_url)

    def send(self, text):
        self.page.get_by_label("Message", exact=True).fill(text)
        self.page.get_by_role("button", name="Send").click()

    def shot(self, name):
        if SCREENSHOTS:
            self.page.screenshot(path=os.path.join(SCREENSHOTS, name))

    def clean(self):
        """Nothing but loopback was asked for, and the page logged no error."""
        assert self.requests and all(u.startswith(self.server.url) or u.startswith("data:") for u in self.requests)
        assert self.errors == []
        self.context.close()


@pytest.fixture
def console(browser, start_server):
    def make(*args, width=1280, dark=False):
        return Console(browser, start_server(None, *args), width, dark)

    return make


def test_a_tool_turn_streams_into_the_conversation(console):
    ui = console()
    ui.open()
    ui.new_agent("Calculator", "test_math")
    ui.send('add {"a": 2, "b": 3}')
    log = ui.page.get_by_role("log")
    log.get_by_text("Tool results: add returned").wait_for()
    assert "Tool: add" in log.inner_text() and '"result": 5' in log.inner_text()
    ui.shot("console.png")
    ui.clean()


def simulated(ui, agent, **settings):
    """An agent whose simulator has these settings; the page, opened on a new session of it."""
    provider = ui.server.call("POST", "/v1/llm-providers", {"name": agent.lower(), "provider_type": "llmsim",
                                                            "settings": settings})[2]  # fmt: skip
    ui.server.call("POST", "/v1/agents", {"name": agent, "provider_id": provider["id"]})
    page = ui.open()
    page.get_by_role("button", name="New session").click()
    return page


def test_a_slow_turn_can_be_cancelled(console):
    from playwright.sync_api import expect

    ui = console()
    page = simulated(ui, "Slowpoke", token_delay_ms=300)
    ui.send("one two three four five six seven eight nine ten eleven twelve")
    page.get_by_role("button", name="Cancel turn").click()
    page.get_by_role("log").get_by_text("Turn cancelled").wait_for()
    expect(page.get_by_role("button", name="Cancel turn")).to_be_hidden()
    agent = ui.server.call("GET", "/v1/agents")[2]["data"][0]
    session = ui.server.call("GET", f"/v1/agents/{agent['id']}/sessions")[2]["data"][0]
    assert session["last_turn"]["status"] == "cancelled"
    ui.clean()


def test_a_file_can_be_uploaded_and_read_back(console, tmp_path):
    from playwright.sync_api import expect

    ui = console()
    ui.open()
    ui.new_agent("Filer", "session_file_system")
    (tmp_path / "notes.txt").write_text("remember the milk")
    ui.page.get_by_label("Upload file").set_input_files(str(tmp_path / "notes.txt"))
    ui.page.get_by_role("button", name="/notes.txt (17 B)").click()
    expect(ui.page.get_by_label("File content")).to_have_text("remember the milk")
    ui.clean()


def test_untrusted_text_is_shown_as_text(console):
    ui = console()
    ui.open()
    ui.new_agent("Echo")
    ui.send('<img src=x onerror="window.pwned=1">')
    log = ui.page.get_by_role("log")
    log.get_by_text('You said: <img src=x onerror="window.pwned=1">').wait_for()
    assert log.locator("img").count() == 0 and ui.page.evaluate("window.pwned") is None
    ui.clean()


def test_with_an_api_key_the_console_asks_for_it(console):
    ui = console("--api-key", "console-secret-key")
    page = ui.open(ready=False)
    page.get_by_label("API key", exact=True).fill("console-secret-key")
    page.get_by_role("button", name="Use key").click()
    page.locator("body[data-ready]").wait_for()
    ui.new_agent("Keyed", "test_math")
    ui.send('add {"a": 2, "b": 3}')
    page.get_by_role("log").get_by_text("Tool results: add returned").wait_for()
    ui.clean()  # the page asked for the key first: no call failed with 401


def test_the_page_fits_a_phone_in_dark_mode(console):
    ui = console(width=390, dark=True)
    ui.open()
    ui.new_agent("Pocket")
    ui.send("hello from a phone")
    ui.page.get_by_role("log").get_by_text("You said: hello from a phone").wait_for()
    assert ui.page.evaluate("document.documentElement.scrollWidth") <= 390
    ui.shot("console-phone.png")
    ui.clean()


def test_swagger_ui_renders_its_operations_offline(console):
    ui = console()
    page = ui.open("/swagger-ui/", ready=False)
    page.locator(".opblock").first.wait_for()
    assert page.locator(".opblock").count() > 20
    ui.shot("swagger-ui.png")
    ui.clean()


def test_screenshots_in_the_readme_exist():
    text = (ROOT / "README.md").read_text()
    for name in ("console.png", "console-phone.png", "markdown.png", "trace.png", "approval.png"):
        assert f"docs/{name}" in text and (ROOT / "docs" / name).stat().st_size > 10_000


def test_a_tool_call_waits_for_approve_or_deny(console):
    ui = console()
    ui.server.call("POST", "/v1/agents", {"name": "Careful", "capabilities": ["test_math"],
                                          "require_approval": ["add", "multiply"]})  # fmt: skip
    page = ui.open()
    page.get_by_role("button", name="New session").click()
    ui.send('add {"a": 2, "b": 3}')
    log = page.get_by_role("log")
    log.get_by_role("button", name="Approve").wait_for()
    ui.shot("approval.png")
    log.get_by_role("button", name="Approve").click()
    log.get_by_text("Tool results: add returned").wait_for()
    assert "Approved" in log.inner_text() and '"result": 5' in log.inner_text()
    ui.send('multiply {"a": 2, "b": 3}')
    log.get_by_role("button", name="Deny").click()
    log.get_by_text("Tool results: multiply failed with").wait_for()
    assert "Denied" in log.inner_text() and "denied in the console" in log.inner_text()
    ui.clean()


def test_the_device_example_end_to_end(browser, start_server):
    from playwright.sync_api import expect

    server = start_server(None, script=ROOT / "examples" / "device.py")
    ui = Console(browser, server)
    page = ui.open()
    page.get_by_role("button", name="Device").click()
    page.get_by_role("button", name="New session").click()
    page.get_by_role("button", name="Edit agent").click()
    for capability in ("sensors", "relay"):  # the two Python tools' capabilities, enabled
        expect(page.get_by_label(capability, exact=True)).to_be_checked()
    page.get_by_role("button", name="Close").click()
    ui.send('read_temperature {"room": "kitchen"}')
    log = page.get_by_role("log")
    log.get_by_text("Tool results: read_temperature returned").wait_for()
    assert '"celsius"' in log.inner_text()
    ui.send('switch_relay {"on": true}')
    log.get_by_role("button", name="Approve").click()
    log.get_by_text("Tool results: switch_relay returned").wait_for()
    assert '"heating": "on"' in log.inner_text()
    ui.clean()
    assert server.stop() == 0
    turns = [line for line in server.output().splitlines() if line.startswith("turn completed in")]
    assert len(turns) == 2 and "switch_relay returned" in turns[1]  # the hook, once per turn


def test_the_console_script_passes_eslint(tmp_path):
    import subprocess

    import everruns

    eslint = ROOT / ".ci" / "node_modules" / ".bin" / "eslint"
    if not eslint.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{eslint} is missing: .ci/run installs ESLint with npm")
        pytest.skip("ESLINT NOT RUN: .ci/run installs it (npm install --prefix .ci eslint@9 globals@15)")
    shutil.copy(ROOT / ".ci" / "eslint.config.mjs", tmp_path)
    (tmp_path / "node_modules").symlink_to(ROOT / ".ci" / "node_modules")
    (tmp_path / "console.js").write_text(everruns._CONSOLE_JS)
    (tmp_path / "bad.js").write_text('"use strict";\nconst unused = 1;\ndocument.body.innerHTML = answer;\n')

    def lint(name):
        return subprocess.run([str(eslint), name], cwd=tmp_path, capture_output=True, text=True, timeout=120)

    done = lint("console.js")
    assert done.returncode == 0, done.stdout + done.stderr
    bad = lint("bad.js").stdout  # the rules are in force
    assert all(rule in bad for rule in ("no-unused-vars", "no-undef", "no-restricted-properties")), bad


MARKDOWN = """## Plan

Some **bold**, *emphasis* and `code`.

- one
- two

1. first
2. second

| Tool | Result |
| --- | --- |
| add | 5 |

```python
print("hi")
```

See [the docs](https://example.com/docs)."""

ATTACKS = """[click](javascript:alert(1)) and [data](data:text/html,<script>alert(1)</script>)

<img src=x onerror="alert(1)"> <script>alert(2)</script> `<img src=x onerror=alert(3)>`

```
<img src=x onerror=alert(4)>
```

| a | b |
| --- | --- |
| <b onclick="alert(5)">x</b> | y |"""


def replying(ui, text):
    """A session of an agent whose simulator answers `text`; the page, opened on it."""
    page = simulated(ui, "Writer", reply=text)
    ui.send("go")
    page.get_by_role("log").locator("table").wait_for()
    return page, page.get_by_role("log")


def test_an_answer_renders_as_markdown_and_its_code_copies(console):
    ui = console()
    ui.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page, log = replying(ui, MARKDOWN)
    assert log.locator("h2").inner_text() == "Plan"
    assert [log.locator(t).first.inner_text() for t in ("strong", "em", "p code")] == ["bold", "emphasis", "code"]
    assert log.locator("ul li").all_inner_texts() == ["one", "two"]
    assert log.locator("ol li").all_inner_texts() == ["first", "second"]
    assert log.locator("th").all_inner_texts() == ["Tool", "Result"]
    assert log.locator("td").all_inner_texts() == ["add", "5"]
    link = log.locator("a", has_text="the docs")
    assert (link.get_attribute("href"), link.get_attribute("target")) == ("https://example.com/docs", "_blank")
    assert link.get_attribute("rel") == "noopener noreferrer"
    assert log.locator("pre code").inner_text() == 'print("hi")'
    log.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == 'print("hi")'
    ui.shot("markdown.png")
    ui.clean()


def test_markdown_and_html_attacks_run_nothing(console):
    ui = console()
    dialogs = []
    ui.page.on("dialog", lambda dialog: dialogs.append(dialog.message) or dialog.dismiss())
    _, log = replying(ui, ATTACKS)
    made = "img, script, b, [onclick], [onerror], a[href^='javascript'], a[href^='data'], a:not([href^='http'])"
    assert log.locator(made).count() == 0
    log.locator("td").first.click()
    assert dialogs == []
    text = log.inner_text()
    assert "<img src=x onerror=" in text and "<script>alert(2)</script>" in text and "[click](javascript:" in text
    ui.clean()


def traced_tool_turn(ui):
    """A tool turn of a new session of a Calculator agent, its Trace opened: (page, the log, the session)."""
    ui.server.call("POST", "/v1/agents", {"name": "Calculator", "capabilities": ["test_math"]})
    page = ui.open()
    page.get_by_role("button", name="New session").click()
    ui.send('add {"a": 2, "b": 3}')
    log = page.get_by_role("log")
    log.get_by_role("button", name="Trace").click()
    agent = ui.server.call("GET", "/v1/agents")[2]["data"][0]
    return page, log, ui.server.call("GET", f"/v1/agents/{agent['id']}/sessions")[2]["data"][0]


def test_a_turn_s_trace_shows_its_model_calls_and_tool_call_as_the_api_stores_them(console):
    ui = console()
    page, log, session = traced_tool_turn(ui)
    trace = log.locator(".trace")
    trace.locator("li").nth(2).wait_for()
    messages = ui.server.call("GET", f"/v1/sessions/{session['id']}/messages")[2]["data"]
    events = ui.server.call("GET", f"/v1/sessions/{session['id']}/events?format=json")[2]["data"]
    calls = [m for m in messages if m["role"] == "assistant"]
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    lines = trace.locator("li").all_inner_texts()
    assert [line.split()[0:2] for line in lines] == [["Model", "call"], ["Tool", "call"], ["Model", "call"]]
    for line, call in zip([lines[0], lines[2]], calls, strict=True):
        usage, latency = call["usage"], call["latency_ms"]
        assert f"{usage['input_tokens']} in, {usage['output_tokens']} out tokens" in line
        assert f"{latency['total']} ms" in line and call["model"] in line
    assert f'add {{"a":2,"b":3}}: {result["duration_ms"]} ms' in lines[1] and '"result": 5' in lines[1]
    from playwright.sync_api import expect

    total = session["usage"]
    tokens = f"Tokens: {total['input_tokens']} in, {total['output_tokens']} out"
    expect(page.locator("#session-usage")).to_have_text(tokens)
    expect(trace.locator(".trace-id")).to_have_count(0)  # no tracing: no trace id
    ui.shot("trace.png")
    ui.clean()


def test_a_turn_s_trace_shows_a_compaction(console):
    from playwright.sync_api import expect

    ui = console()
    page = simulated(ui, "Forgetful", context_window=1200)
    for i in range(6):  # each turn about 200 tokens: the history outgrows the window
        ui.send(f"Turn {i}: " + " ".join(f"word{i}x{j}" for j in range(40)))
        page.get_by_role("log").get_by_text(f"You said: Turn {i}:").wait_for()
    log = page.get_by_role("log")
    agent = next(a for a in ui.server.call("GET", "/v1/agents")[2]["data"] if a["name"] == "Forgetful")
    session = ui.server.call("GET", f"/v1/agents/{agent['id']}/sessions")[2]["data"][0]
    events = ui.server.call("GET", f"/v1/sessions/{session['id']}/events?format=json&types=context.compacted")[2]
    compacted = events["data"][0]
    turns = [e["turn_id"] for e in ui.server.call("GET", f"/v1/sessions/{session['id']}/events?format=json&types="
                                                         "session.completed&limit=100")[2]["data"]]  # fmt: skip
    log.get_by_role("button", name="Trace").nth(turns.index(compacted["turn_id"])).click()
    line = log.locator(".trace li.compaction")
    expect(line).to_contain_text(f"Context compacted {len(compacted['data']['turn_ids'])} earlier turns summarised")
    expect(line.locator("pre")).to_have_text(compacted["data"]["summary"])
    ui.clean()


def test_a_traced_turn_s_trace_shows_its_opentelemetry_trace_id(console, collector):
    from playwright.sync_api import expect

    ui = console("--otlp-endpoint", collector.url)
    _, log, session = traced_tool_turn(ui)
    trace_id = session["last_turn"]["trace_id"]
    assert len(trace_id) == 32
    expect(log.locator(".trace .trace-id")).to_have_text(f"OpenTelemetry trace {trace_id}")
    ui.clean()


def test_something_shows_between_send_and_the_first_token(console):
    from playwright.sync_api import expect

    ui = console()
    page = simulated(ui, "Slowpoke", token_delay_ms=3000)
    ui.send("hello")
    log = page.get_by_role("log")
    expect(log.get_by_role("status")).to_have_text("Thinking…")
    assert log.locator(".msg.assistant:not(.thinking)").count() == 0  # no token yet
    log.get_by_text("You said: hello").wait_for(timeout=30_000)
    expect(log.get_by_role("status")).to_have_count(0)
    ui.clean()


def test_on_a_phone_the_message_field_is_on_screen_without_scrolling(console):
    ui = console(width=390)
    ui.page.set_viewport_size({"width": 390, "height": 844})
    ui.server.call("POST", "/v1/agents", {"name": "Pocket"})
    page = ui.open()
    page.get_by_role("button", name="New session").click()
    field = page.get_by_label("Message", exact=True)
    field.wait_for()
    box = field.bounding_box()
    assert page.evaluate("window.scrollY") == 0 and 0 <= box["y"] and box["y"] + box["height"] <= 844, box
    ui.clean()


def test_a_provider_is_edited_and_deleted(console):
    from playwright.sync_api import expect

    ui = console()
    page = ui.open()
    ui.provider_form("Local", "openai", "http://127.0.0.1:11434/v1")
    page.get_by_label("Default model").fill("llama3.2")
    page.get_by_label("Provider key").fill("sk-local-secret")
    page.get_by_role("button", name="Add provider").click()
    providers = page.get_by_role("list", name="Providers")
    providers.get_by_role("button", name="Edit Local").click()
    expect(page.get_by_label("Default model")).to_have_value("llama3.2")
    page.get_by_label("Provider name").fill("Ollama")
    page.get_by_label("Default model").fill("qwen2.5")
    page.get_by_role("button", name="Save").click()
    expect(providers).to_contain_text("Ollama (openai, qwen2.5)")
    stored = next(p for p in ui.server.call("GET", "/v1/llm-providers")[2]["data"] if p["name"] == "Ollama")
    assert (stored["default_model"], stored["base_url"], stored["api_key_set"]) == (
        "qwen2.5", "http://127.0.0.1:11434/v1", True)  # fmt: skip
    page.once("dialog", lambda dialog: dialog.accept())
    providers.get_by_role("button", name="Delete Ollama").click()
    expect(providers).not_to_contain_text("Ollama")
    assert [p["name"] for p in ui.server.call("GET", "/v1/llm-providers")[2]["data"]] == ["Built-in simulator"]
    ui.clean()


def test_an_agent_with_approvals_and_a_client_tool_is_made_and_answered_in_the_page(console):
    ui = console()
    page = ui.open()
    page.get_by_role("button", name="New agent").click()
    page.get_by_label("Name", exact=True).fill("Helper")
    page.get_by_label("test_math", exact=True).check()
    page.get_by_label("Tools that need approval").fill("add")
    location = '[{"name": "get_location", "description": "Where the user is."}]'
    page.get_by_label("Client tools (JSON)").fill(location)
    page.get_by_label("Max iterations").fill("4")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("button", name="New session").click()
    agent = ui.server.call("GET", "/v1/agents")[2]["data"][0]
    assert (agent["require_approval"], agent["max_iterations"]) == (["add"], 4)
    assert [t["name"] for t in agent["client_tools"]] == ["get_location"]
    ui.send('add {"a": 2, "b": 3}')
    log = page.get_by_role("log")
    log.get_by_role("button", name="Approve").click()
    log.get_by_text("Tool results: add returned").wait_for()
    ui.send("get_location {}")
    log.get_by_label("Result of get_location").fill('{"city": "Lisbon"}')
    log.get_by_role("button", name="Send result").click()
    log.get_by_text('Tool results: get_location returned {"city":"Lisbon"}.').wait_for()
    assert log.get_by_role("button", name="Send result").count() == 0
    ui.clean()


def test_an_mcp_server_that_never_starts_leaves_the_page_usable(console, tmp_path):
    import json
    import sys
    import time

    from playwright.sync_api import expect

    config = tmp_path / "mcp.json"  # a program that never answers: it sleeps
    mute = {"command": sys.executable, "args": ["-c", "import time; time.sleep(120)"]}
    config.write_text(json.dumps({"mcpServers": {"mute": mute}}))
    ui = console("--mcp-config", str(config), "--allow-private-mcp")  # tickets at 127.0.0.1: refused at once
    started = time.monotonic()
    page = ui.open()
    assert time.monotonic() - started < 1.0
    page.get_by_role("button", name="New agent").click()
    expect(page.get_by_label("mcp:mute", exact=True)).to_be_visible()
    page.get_by_role("button", name="Providers").click()
    servers = page.get_by_role("list", name="MCP servers")
    expect(servers).to_contain_text("mute (stdio, starting, 0 tools)")
    page.get_by_label("MCP server name").fill("tickets")
    page.get_by_label("MCP server URL").fill("http://127.0.0.1:9/mcp")
    page.get_by_role("button", name="Add MCP server").click()
    expect(servers).to_contain_text("tickets (http")
    servers.get_by_role("button", name="Remove tickets").click()
    expect(servers).not_to_contain_text("tickets")
    ui.clean()


def test_recording_a_replay_and_fallbacks_are_set_in_the_page(console):
    from playwright.sync_api import expect

    ui = console()
    page = ui.open()
    ui.provider_form("Cloud", "openai", f"http://127.0.0.1:{free_port()}/v1")  # nothing listens: it fails
    page.get_by_label("Record its calls").check()
    page.get_by_role("button", name="Add provider").click()
    providers = page.get_by_role("list", name="Providers")
    providers.get_by_role("button", name="Replay Cloud").click()
    expect(providers).to_contain_text("Cloud (replay) (replay, replay)")
    stored = {p["name"]: p for p in ui.server.call("GET", "/v1/llm-providers")[2]["data"]}
    assert stored["Cloud"]["settings"]["record"] is True
    assert stored["Cloud (replay)"]["settings"] == {"source_provider_id": stored["Cloud"]["id"], "speed": 1.0}
    page.get_by_role("button", name="Chat").click()
    page.get_by_role("button", name="New agent").click()
    page.get_by_label("Name", exact=True).fill("Offline first")
    page.locator("#agent-provider").select_option(label="Cloud")
    page.get_by_label("Fallback 1").select_option(label="Cloud (replay)")
    page.get_by_label("Fallback 2").select_option(label="Built-in simulator")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("button", name="New session").click()
    agent = ui.server.call("GET", "/v1/agents")[2]["data"][0]
    assert agent["fallback_provider_ids"] == [stored["Cloud (replay)"]["id"], stored["Built-in simulator"]["id"]]
    page.get_by_label("Message", exact=True).fill("hello there")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("log")).to_contain_text("You said: hello there", timeout=15000)  # the last fallback
    # picking Cloud asked for its models, which it cannot list (nothing listens): the browser logs that 502
    ui.errors = [e for e in ui.errors if "502 (Bad Gateway)" not in e]
    ui.clean()
