"""Everruns: a headless runtime for AI agents, in one module.

Run ``python everruns.py`` and get a REST API on http://127.0.0.1:9000 to
define agents, open sessions, post messages and watch the agent work through
a live event stream. Embed it with ``everruns.create_app(db="x.db")``.

THE MAP. The sections come in dependency order: a section uses only names
defined above it. Each starts with a banner ``# N. Name`` between two rules
(grep ``^# N[.]``: the names below are short); a sub-section starts with
``# ---- name``.

  0. Header          this map; one line for missing packages; gevent's patching
                     when run as a script; __version__, __all__
  1. Imports
  2. Constants       limits, error codes, turn and session statuses, the built-in
                     CAPABILITIES (filled in 10), the SETTINGS table
  3. Helpers         _uuid7, time, JSON, hashing, redaction, URL checks
  4. Errors          EverrunsError and its subclasses, the one error renderer, _Stop
  5. Observability   METRICS (the series) and _Metrics (GET /metrics); _Tracing
                     (OpenTelemetry, imported only when configured); the ids of log
                     lines (_LOG_IDS) and --log-format json; _Observer (one per app)
  6. Schemas         request and response models (pydantic), the provider types
                     (PROVIDER_KINDS); ---- events: the registry (EVENTS, Event)
  7. Storage         the tables (SQLite or PostgreSQL), migrations, keys at rest,
                     the one write path (_Store.write: a group commit), database
                     faults (503, 507); ---- the per-turn hot path (_SQL)
  8. Event bus       commit, then publish (_Journal, _Tx.emit); bounded queues;
                     the app's hooks (_Hooks: @app.on)
  9. Providers       the adapter interface; ---- HTTP for the remote providers
                     (every read bounded: _Clock); OpenAI; Anthropic; ---- the
                     built-in simulator; ---- record and replay (cassettes, the
                     replay type); ADAPTERS
 10. Capabilities    _Tool and _Capability; the built-in tools; ---- the session
                     file system; ---- web fetch; CAPABILITIES filled; ---- Python
                     functions as tools (app.tool, everruns.tool: an app's own)
 11. MCP client      stdio, Streamable HTTP and HTTP+SSE; _McpServer (the
                     capability mcp:NAME); the --mcp-config file
 12. Turn engine     the states of a turn and a session, and the signals (two
                     tables); running a tool; the transcript; _Scheduler (which
                     turn runs next, cancel, recovery); ---- context windows and
                     compaction (_History, the summary); _TurnRun (one turn's work:
                     its model calls fall back to the next provider, record and replay)
 13. HTTP layer      the guard (host, CORS, cross-site writes), auth, the routes
                     (@_route into _ROUTES), parsing; handlers by resource: ----
                     health and metrics, LLM providers, agents, sessions (their
                     context), messages, events
                     (SSE: one stream, _stream, two renderers), export and import (a
                     session as JSON Lines), session files,
                     capabilities, MCP servers (and before them ---- helpers
                     shared by handlers: _get, _patch, _changes; ---- retention
                     and --max-db-mb, after the sessions' handlers); ---- the
                     official SDKs' surface (/api/v1: their shapes over the
                     same handlers' helpers, the stream in their vocabulary,
                     SDK_MISSING's 501s); ---- channels (the SDK's AgentClient)
 14. OpenAPI, docs   the document built from _ROUTES and the schemas; Swagger UI
 15. Several processes  on one PostgreSQL database: leases, the notifications
                     (a table of their kinds), _Cluster
 16. In-process client  app.client: the routes' handlers called without HTTP
                     (_call), resources, session handles (send, stream, ask, ...)
 17. App factory     create_app (the one place that wires everything), the HTTP
                     server (deadlines, strict framing, a connection cap), serve;
                     ---- systemd (readiness, the watchdog)
 18. Console         the web page: its HTML, CSS and JavaScript, a route each
 19. CLI             main(): `serve` (the default), `chat` and `backup` (SQLite's online backup)

THE REGISTRIES: plain tables; a new thing is one entry.

  SETTINGS (2)                        every option: flag, environment variable,
                                      default, help (argparse and the README)
  CAPABILITIES (2, 10)                the built-in capabilities; an app's own
                                      (MCP servers, then its Python tools) sit over
                                      them (_Ctx.capabilities, a ChainMap)
  METRICS (5)                         a series of GET /metrics: type, help, labels
  PROVIDER_KINDS (6), ADAPTERS (9)    a provider type: its schemas, its adapter
  EVENTS (6)                          an event type: the model of its data
  _MIGRATIONS (7)                     the schema: a list of statements per version
  _ROUTES (13)                        a route and its OpenAPI metadata (@_route)
  _SDK_TRANSLATIONS (13)              an event type as the official SDKs name it
  SDK_MISSING (13)                    what the SDKs offer and this server has not:
                                      a 501 naming the feature
  app.tool, app.capability (10, 13)   an app's Python tools, in its registry's
                                      `python` map (never CAPABILITIES)
  app.on (8, 13)                      an app's hooks by event type (_Hooks)

RECIPES: where to change what, in order.

  A tool. An embedding program's: a Python function under @app.tool (section
    10's last sub-section makes it a _Tool; README "Embedding"). A built-in one:
    its argument model (an _In: reuse one when the arguments match, as the math
    tools share _MathArgs) and its function ``run(args, tctx) ->
    result`` in section 10: return JSON (a dict; the math tools answer
    {"result": n}), raise ToolFailed for an error result (any other exception
    is "failed with an internal error"); a _Tool in its capability's tools (in
    the CAPABILITIES.update call that ends section 10, or the tuple that call
    names, as _MATH), and the capability's system_prompt and the README's table
    if they name their tools. Tests: tests/test_capabilities.py (it lists each
    capability's tools); the simulator calls a tool whose name a message says,
    with the JSON object in the message as arguments (_llmsim_answer, 9).
  A provider type. A settings model (an _In) and a _ProviderKind in
    PROVIDER_KINDS (6); an adapter class (stream, models) in section 9 and its
    line in ADAPTERS (an assert keeps the two in step). Tests: a stand-in
    upstream that speaks the provider's protocol (tests/conftest.py, Upstream).
  An event type. A data model (an _EventData) and its line in EVENTS (6); its
    emit site: ``with ctx.journal.tx(session_id) as tx: tx.emit("x.y", data,
    turn_id)`` (8; turn_id None outside a turn; a ctx.store.write() inside it
    is part of it). The OpenAPI document, ?types= and the JSON listing follow
    EVENTS by themselves; the console (18) and the chat (19) skip a type they
    do not know: add a branch where people should see it, and a README line.
    Every test app checks every event against its model (--check-events).
    Tests: tests/test_events.py (``?format=json`` lists them; conftest's
    finish() waits for a turn and returns its events).
  A metric. Its METRICS entry (5: label values the configuration bounds, never
    a client's text), and its count where the thing happens: obs.metrics.inc
    or .observe (obs: ctx.obs, store.obs); a gauge in _gauges (13). Tests:
    tests/test_observability.py (a known workload, the numbers exactly).
  A REST resource. Its request and response models (6); its table, a
    _MIGRATIONS entry and a _Models field (7); handlers under
    ``@_route(method, path, summary, tag, body=, response=, status=, errors=)``
    in section 13 (the OpenAPI document follows); writes inside
    ``ctx.store.write()``. Tests: tests/test_<resource>.py; tests/test_openapi.py
    checks that every route is documented. If the official SDKs know it: its
    Sdk* shapes and /api/v1 routes over the same helpers (13, the SDKs'
    surface; an event type they name differently: _SDK_TRANSLATIONS), tested
    with plain HTTP (tests/test_api_v1.py) and with the SDK (tests/test_sdk.py).
"""

# =============================================================================
# 0. Header
# =============================================================================

import os as _os
import sys as _sys

# A run (as a script, or the `everruns` command) outside the environment it was installed
# into: one line that says what to install, not a traceback from the first import that fails.
_REQUIRED = ("bottle", "gevent", "peewee", "pydantic")
if __name__ == "__main__" or _os.path.basename(_sys.argv[0]) == "everruns":
    import importlib.util as _util

    _missing = [name for name in _REQUIRED if _util.find_spec(name) is None]
    if _missing:
        _sys.exit(
            f"everruns: missing Python packages: {', '.join(_missing)} "
            f"(pip install everruns, or pip install {' '.join(_REQUIRED)} openapi-ui-bundles)"
        )

# `python everruns.py` compiles this file from source at every start, and the
# compiler's leftovers stay in the process (about 12 MB, a quarter of its idle
# memory). So a script run starts again at once as an import of the module,
# which Python loads from its bytecode cache (same process id, same arguments).
_NAME = _os.path.splitext(_os.path.basename(__file__))[0] if __name__ == "__main__" else ""
if _NAME.isidentifier() and __spec__ is None and _os.name == "posix":
    _options = _sys.orig_argv[1 : len(_sys.orig_argv) - len(_sys.argv)]  # -X, -W, ... before the script
    _folder = _os.path.dirname(_os.path.abspath(__file__))
    _boot = "; ".join([
        "import sys", "sys.argv[0] = 'everruns'",  # a script run: the module patches the process
        f"sys.path.insert(0, {_folder!r})", f"import {_NAME}", f"sys.exit({_NAME}.main())",
    ])  # fmt: skip
    _sys.stdout.flush()
    _os.execv(_sys.executable, [_sys.executable, *_options, "-c", _boot, *_sys.argv[1:]])


def _patch_process() -> None:
    """gevent's patches, before anything imports socket, threading or peewee (peewee keeps one
    connection per thread: unpatched, every greenlet would share one connection and one
    transaction). Only a script run patches; an embedding program decides for itself.

    ssl is imported early (http.client asks for it) but runs, and is patched, only when first
    used: a server that opens no TLS connection does not load OpenSSL's TLS half (1.1 MB).
    """
    import importlib.abc
    import importlib.util

    from gevent import monkey

    class PatchedWhenRun(importlib.abc.Loader):  # ssl's own loader, then gevent's patch of it
        def __init__(self, loader: importlib.abc.Loader) -> None:
            self.loader = loader

        def exec_module(self, module: object) -> None:
            self.loader.exec_module(module)
            monkey.patch_ssl()

    class Deferred(importlib.abc.MetaPathFinder):  # only a first import: a later one runs it
        def find_spec(self, name: str, path: object, target: object = None) -> object:
            if name != "ssl":
                return None
            _sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.loader is not None:
                spec.loader = importlib.util.LazyLoader(PatchedWhenRun(spec.loader))
            return spec

    deferred = "ssl" not in _sys.modules
    monkey.patch_all(subprocess=False, ssl=not deferred)  # gevent.subprocess is used where it matters
    if deferred:
        _sys.meta_path.insert(0, Deferred())


if __name__ == "__main__" or _os.path.basename(_sys.argv[0]) == "everruns":
    _patch_process()

__version__ = "0.1.0"
INSTANCE = _os.urandom(8).hex()  # this process, in /health (several may serve one database)

__all__ = [
    "ADAPTERS",
    "CAPABILITIES",
    "EVENTS",
    "SETTINGS",
    "EverrunsError",
    "LLMReply",
    "LLMRequest",
    "ProviderError",
    "Setting",
    "StartupError",
    "ToolFailed",
    "TurnFailed",
    "create_app",
    "main",
    "serve",
    "settings_table",
    "tool",
]

# =============================================================================
# 1. Imports
# =============================================================================

import argparse
import base64
import bisect
import collections
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import gc
import hashlib
import hmac
import html
import inspect
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Annotated, Any, Literal

import bottle
import gevent
import gevent.event
import gevent.lock
import gevent.pool
import gevent.pywsgi
import gevent.queue
import peewee as pw
import pydantic
import pydantic_core
from playhouse.pool import PooledSqliteDatabase
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    ValidationInfo,
    model_serializer,
    model_validator,
)

_log = logging.getLogger("everruns")
_access_log = logging.getLogger("everruns.access")  # --access-log: a line per request answered

# =============================================================================
# 2. Constants and settings
# =============================================================================

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_NAME = 256
MAX_DESCRIPTION = 10 * 1024
MAX_SYSTEM_PROMPT = 1024 * 1024
MAX_MESSAGE_TEXT = 1024 * 1024
MAX_CAPABILITIES = 64
MAX_TAGS = 32
MAX_TAG = 64
MAX_IDEMPOTENCY_KEY = 255
PAGE_DEFAULT, PAGE_MAX = 20, 100
MAX_SEQ = 2**63 - 1  # SQLite's largest integer
MAX_PATH = 4096  # a session file path

# Context windows in tokens (SPEC 16): a provider's `context_window` setting, else the first
# family here whose pattern the model's name matches (case ignored), else the type's default.
MIN_CONTEXT_WINDOW = 512
CONTEXT_WINDOWS: tuple[tuple[str, int], ...] = (
    (r"^(gpt-4\.1|gpt-5|o[134]\b)", 200_000), (r"^(gpt-4o|gpt-4-turbo|chatgpt)", 128_000), (r"^gpt-4\b", 8_192),
    (r"^gpt-3\.5", 16_385), (r"claude", 200_000), (r"gemini", 1_000_000),
    (r"llama-?3\.[1-9]|llama-?4", 131_072), (r"llama", 8_192), (r"qwen", 32_768), (r"mistral-(large|small)", 131_072),
    (r"mistral|mixtral", 32_768), (r"gemma-?3", 131_072), (r"gemma", 8_192), (r"phi-?3", 4_096),
    (r"phi", 16_384), (r"deepseek", 65_536),
)  # fmt: skip
DEFAULT_WINDOWS = {"llmsim": 8_192, "anthropic": 200_000, "openai": 8_192}  # a model no family names

ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "HEADERS_TOO_LARGE",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    502: "BAD_GATEWAY",
    503: "UNAVAILABLE",
    507: "INSUFFICIENT_STORAGE",
}

# The statuses of a turn and of a session, as stored (section 12 draws how they move).
TURN_RUNNING, TURN_WAITING = "running", "waiting"
TURN_COMPLETED, TURN_FAILED, TURN_CANCELLED = "completed", "failed", "cancelled"
SESSION_IDLE, SESSION_RUNNING, SESSION_WAITING = "idle", "running", "waiting"

# The built-in capabilities, by id, in the order GET /v1/capabilities lists them
# (section 10 fills it at import; nothing changes it after). Each app has its own
# registry on top of it (_Ctx.capabilities: its MCP servers, its Python tools), and
# an agent's capability ids are checked against the app's when a request comes in.
CAPABILITIES: dict[str, Any] = {}
MCP_NAME = r"^[a-z0-9_-]{1,32}$"  # an MCP server's name (NAME__TOOL must fit a provider's 64 characters)

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What an HTML form (or a fetch without a CORS preflight) can send across sites.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
JSON_TYPE = "application/json; charset=utf-8"


def _flag(value: str) -> bool:
    """An on/off setting from the environment: 1/true/yes/on or 0/false/no/off."""
    if str(value).lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not an on/off value: {value!r}")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One server option: its flag, environment variable, default and help."""

    name: str
    flag: str
    env: str
    default: Any
    help: str
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False  # the value must be greater than `minimum`, not equal to it


SETTINGS = (
    Setting("host", "--host", "EVERRUNS_HOST", "127.0.0.1", "Address to bind."),
    Setting("port", "--port", "EVERRUNS_PORT", 9000, "Port to listen on.", int, minimum=0, maximum=65535),
    Setting(
        "db",
        "--db",
        "EVERRUNS_DB",
        "everruns.db",
        "SQLite file path, `:memory:`, or a PostgreSQL URL (`postgresql://user:password@host:5432/name`, "
        "needs the `postgres` extra).",
    ),
    Setting(
        "api_key",
        "--api-key",
        "EVERRUNS_API_KEY",
        None,
        "Require `Authorization: Bearer <key>` on every /v1/ request.",
    ),
    Setting(
        "api_key_file",
        "--api-key-file",
        "EVERRUNS_API_KEY_FILE",
        None,
        "Read the API key from this file (keeps it off the command line).",
    ),
    Setting(
        "secret_key",
        "--secret-key",
        "EVERRUNS_SECRET_KEY",
        None,
        "Encrypt provider API keys at rest with this secret (needs the `cryptography` package).",
    ),
    Setting(
        "secret_key_file",
        "--secret-key-file",
        "EVERRUNS_SECRET_KEY_FILE",
        None,
        "Read the secret key from this file (keeps it off the command line).",
    ),
    Setting(
        "insecure",
        "--insecure",
        "EVERRUNS_INSECURE",
        False,
        "Allow listening on a non-loopback address without an API key (trusted networks only).",
        _flag,
    ),
    Setting(
        "allowed_hosts",
        "--allowed-hosts",
        "EVERRUNS_ALLOWED_HOSTS",
        None,
        "Comma-separated extra `Host` names a server without an API key answers to.",
    ),
    Setting(
        "cors_origins",
        "--cors-origins",
        "EVERRUNS_CORS_ORIGINS",
        None,
        "Comma-separated origins allowed to call the API from a browser (`*` for any); CORS is off by default.",
    ),
    Setting(
        "max_connections",
        "--max-connections",
        "EVERRUNS_MAX_CONNECTIONS",
        2000,
        "Connections served at once (open event streams included). At the cap a new connection "
        "replaces the one that has waited longest for request bytes, or gets 503 if all are busy.",
        int,
        minimum=1,
    ),
    Setting(
        "idle_timeout",
        "--idle-timeout",
        "EVERRUNS_IDLE_TIMEOUT",
        60.0,
        "Seconds a connection may stay silent (no request, or a stream the client does not read) before it is closed.",
        float,
        minimum=0,
        above=True,
    ),
    Setting(
        "request_timeout",
        "--request-timeout",
        "EVERRUNS_REQUEST_TIMEOUT",
        30.0,
        "Seconds a client has, from its first byte, to send a request's line and headers, and again its body (408).",
        float,
        minimum=0,
        above=True,
    ),
    Setting(
        "context_budget",
        "--context-budget",
        "EVERRUNS_CONTEXT_BUDGET",
        1024 * 1024,
        "The most bytes of stored history a model call reads (what it sends is decided by the model's context "
        "window, in tokens: see the README).",
        int,
        minimum=1024,
    ),
    Setting(
        "sync",
        "--sync",
        "EVERRUNS_SYNC",
        "full",
        "SQLite `synchronous`: `full` survives power loss, `normal` is faster on slow storage.",
        choices=("full", "normal"),
    ),
    Setting(
        "shutdown_grace",
        "--shutdown-grace",
        "EVERRUNS_SHUTDOWN_GRACE",
        5.0,
        "Seconds running turns get to finish on Ctrl-C or SIGTERM.",
        float,
        minimum=0,
    ),
    Setting(
        "default_provider",
        "--default-provider",
        "EVERRUNS_DEFAULT_PROVIDER",
        None,
        "Provider (id, name or type) to make the default at start-up.",
    ),
    Setting(
        "mcp_config",
        "--mcp-config",
        "EVERRUNS_MCP_CONFIG",
        None,
        "A JSON file of MCP servers in the common mcpServers format (stdio and Streamable HTTP): "
        "each is a capability mcp:NAME that agents can enable.",
    ),
    Setting(
        "allow_private_fetch",
        "--allow-private-fetch",
        "EVERRUNS_ALLOW_PRIVATE_FETCH",
        False,
        "Let web_fetch reach private, loopback and link-local addresses (trusted networks only).",
        _flag,
    ),
    Setting(
        "allow_private_mcp",
        "--allow-private-mcp",
        "EVERRUNS_ALLOW_PRIVATE_MCP",
        False,
        "Let MCP servers added through the API be on private and loopback addresses (link-local and "
        "metadata addresses stay refused; servers of --mcp-config are never restricted).",
        _flag,
    ),
    Setting(
        "check_events",
        "--check-events",
        "EVERRUNS_CHECK_EVENTS",
        False,
        "Check every event's data against its model (the OpenAPI document's) before it is stored, and log "
        "any that does not match (slower: for development and tests).",
        _flag,
    ),
    Setting(
        "log_level",
        "--log-level",
        "EVERRUNS_LOG_LEVEL",
        "info",
        "Logging level.",
        choices=("debug", "info", "warning", "error"),
    ),
    Setting(
        "retention_days",
        "--retention-days",
        "EVERRUNS_RETENTION_DAYS",
        None,
        "Delete idle sessions whose last activity is older than this many days, with their messages, events and "
        "files (checked every minute, in small batches; off by default).",
        float,
        minimum=0,
        above=True,
    ),
    Setting(
        "max_db_mb",
        "--max-db-mb",
        "EVERRUNS_MAX_DB_MB",
        None,
        "Refuse new sessions and messages (507) once the database holds this many MB (off by default): a device's "
        "disk never fills up.",
        float,
        minimum=0,
        above=True,
    ),
    Setting(
        "log_format",
        "--log-format",
        "EVERRUNS_LOG_FORMAT",
        "text",
        "`json`: every line the server writes is one JSON object (time, level, message, and the request, "
        "session and turn ids where there are ones).",
        choices=("text", "json"),
    ),
    Setting(
        "access_log",
        "--access-log",
        "EVERRUNS_ACCESS_LOG",
        False,
        "Log a line per HTTP request answered (method, route, status, time to the answer's headers).",
        _flag,
    ),
    Setting(
        "metrics_auth",
        "--metrics-auth",
        "EVERRUNS_METRICS_AUTH",
        False,
        "Put GET /metrics behind the API key (open by default, like /health).",
        _flag,
    ),
    Setting(
        "otlp_endpoint",
        "--otlp-endpoint",
        "EVERRUNS_OTLP_ENDPOINT",
        None,
        "Send OpenTelemetry traces with OTLP/HTTP to this collector (http://host:4318; needs the extra: "
        "pip install 'everruns[otel]'). The OTEL_* variables are read too.",
    ),
    Setting(
        "otel_capture_content",
        "--otel-capture-content",
        "EVERRUNS_OTEL_CAPTURE_CONTENT",
        False,
        "Put messages, tool arguments and tool results in the spans (off: spans carry no text of a conversation).",
        _flag,
    ),
)

_KINDS = {int: "a whole number", float: "a number", str: "text"}


def _checked(s: Setting, value: Any) -> Any:
    """One setting's value converted to its type and checked; ValueError names the setting."""
    where = f"{s.flag} ({s.env})"
    shown = "" if "key" in s.name else f", not {value!r}"  # a secret is never echoed
    if s.type is _flag:
        try:
            return value if isinstance(value, bool) else _flag(value)
        except ValueError:
            raise ValueError(f"{where} must be on or off{shown}") from None
    try:
        if isinstance(value, bool) or (s.type is not str and not isinstance(value, (str, int, float))):
            raise ValueError
        value = s.type(value) if isinstance(value, str) or s.type is float else value
        if not isinstance(value, s.type) or (s.type is float and not math.isfinite(value)):
            raise ValueError
    except ValueError:
        raise ValueError(f"{where} must be {_KINDS[s.type]}{shown}") from None
    if s.choices and value not in s.choices:
        raise ValueError(f"{where} must be one of {', '.join(s.choices)}{shown}")
    low, high = s.minimum, s.maximum
    if low is not None and (value < low or (s.above and value == low)):
        raise ValueError(f"{where} must be {'greater than' if s.above else 'at least'} {low:g}{shown}")
    if high is not None and value > high:
        raise ValueError(f"{where} must be at most {high:g}{shown}")
    return value


def _key_from_file(config: dict[str, Any], name: str) -> None:
    """Fill `name` (api_key, secret_key) from the file its `_file` setting names."""
    path = config.get(f"{name}_file")
    if not path:
        return
    flag = f"--{name.replace('_', '-')}"
    if config.get(name):
        raise ValueError(f"give {flag} or {flag}-file, not both")
    try:
        with open(path, encoding="utf-8") as f:
            key = f.read().strip()
    except (OSError, UnicodeError) as e:
        raise ValueError(f"{flag}-file: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not key:
        raise ValueError(f"{flag}-file: {path} is empty")
    config[name] = key


def _settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting: the given value (flag, environment or create_app option) checked, else its default."""
    by_name = {s.name: s for s in SETTINGS}
    unknown = set(given) - set(by_name)
    if unknown:
        raise TypeError(f"unknown options: {', '.join(sorted(unknown))}")
    config = {s.name: s.default if given.get(s.name) is None else _checked(s, given[s.name]) for s in SETTINGS}
    for name in ("api_key", "secret_key"):
        _key_from_file(config, name)
    return config


# =============================================================================
# 3. Helpers
# =============================================================================

_uuid_state = {"ms": 0, "seq": 0}
_uuid_lock = threading.Lock()


def _uuid7() -> str:
    """A time-ordered UUID v7; strictly increasing within this process."""
    with _uuid_lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _uuid_state["ms"]:
            ms, seq = _uuid_state["ms"], _uuid_state["seq"] + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        else:
            seq = 0
        _uuid_state["ms"], _uuid_state["seq"] = ms, seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    h = f"{(ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_clock = [(-1, "")]  # the last second formatted, and its text: most calls fall in the same second


def _since(iso: str) -> int:
    """Milliseconds from a stored timestamp to now."""
    then = datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return max(0, int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds() * 1000))


TITLE_LENGTH = 60  # a title made from a message: its first line, cut at a word near this


def _title_from(text: str) -> str | None:
    """A session's title from its first message: the first line, cut at a word near
    TITLE_LENGTH characters (with an ellipsis); None for a message without text."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(line) <= TITLE_LENGTH:
        return line or None
    cut = line.rfind(" ", TITLE_LENGTH // 2, TITLE_LENGTH + 1)
    return line[: cut if cut > 0 else TITLE_LENGTH].rstrip() + "…"


def _os_thread() -> int:
    """The OS thread's id (threading.get_ident is the greenlet's once gevent patched it)."""
    from gevent import monkey

    return monkey.get_original("threading", "get_ident")()


def _iso_time(seconds: float) -> str:
    """A time (seconds since the epoch) as ISO 8601 UTC with milliseconds and a Z."""
    ms = int(seconds * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def _now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z."""
    ms = time.time_ns() // 1_000_000
    second, text = _clock[0]
    if ms // 1000 != second:
        second, text = ms // 1000, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        _clock[0] = (second, text)
    return f"{text}.{ms % 1000:03d}Z"


def _dumps(value: Any) -> str:
    """Compact JSON text, UTF-8 kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _digest(value: Any) -> str:
    """A stable hash of a JSON value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


_KEY_SHAPES = re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}|\bBearer\s+\S+")


@functools.lru_cache(maxsize=64)
def _secrets_pattern(secrets: tuple[str, ...]) -> re.Pattern | None:
    """One pattern for a set of secrets, matched in any case: a long one also where an echo
    cut its end off (down to three quarters of it), a short one only as a word of its own."""
    parts = []
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 8:
            keep = max(8, len(secret) * 3 // 4)
            optional = "".join(f"(?:{re.escape(c)}" for c in secret[keep:]) + ")?" * (len(secret) - keep)
            parts.append(re.escape(secret[:keep]) + optional)
        else:
            parts.append(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])")
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


REDACTED = "[redacted]"  # what stands for a secret blanked out, or a credential not shown


def _redact(text: str, *secrets: str | None) -> str:
    """Text with the given secrets (see _secrets_pattern) and anything shaped like an API key blanked out."""
    pattern = _secrets_pattern(tuple(sorted(filter(None, secrets))))
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _KEY_SHAPES.sub(REDACTED, text)


def _clean_text(text: str) -> str:
    """Text that UTF-8 can carry: lone surrogates (which a model's JSON escapes can
    produce) become '?', so storing or sending it never fails."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()


def _looks_like_credential(header_name: str) -> bool:
    """True for header names that usually carry a secret."""
    name = header_name.lower()
    return any(word in name for word in ("auth", "key", "token", "secret", "cookie", "password"))


def _header_secrets(headers: Mapping[str, str], every: bool = False) -> tuple[str, ...]:
    """The header values to blank out of text: a credential's whatever its length; with
    `every` (write-only headers, as an MCP server's), any other of 8 characters or more."""
    return tuple(v for k, v in headers.items() if v and (_looks_like_credential(k) or (every and len(v) >= 8)))


def _url_problem(url: str) -> str | None:
    """Why a URL cannot be used to reach an HTTP server, or None."""
    from urllib.parse import urlsplit

    if not url.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must be ASCII, without spaces or control characters (percent-encode the rest)"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL with a host"
    return "has port 0" if port == 0 else None


def _literal_address(host: str) -> str | None:
    """The address a host written as an IP address means, in any of its forms (127.1,
    2130706433, 0x7f000001, ::1), without a DNS look-up; None for a name."""
    try:
        return socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)[0][4][0]
    except (OSError, UnicodeError, ValueError):
        return None


# =============================================================================
# 4. Errors
# =============================================================================


class EverrunsError(Exception):
    """An error with an HTTP status and an UPPER_SNAKE code, shown to clients."""

    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or type(self).code
        self.details = details


def _error_class(name: str, status: int, code: str | None = None) -> type[EverrunsError]:
    """A subclass for one status; its code is the status's code in ERROR_CODES unless given."""
    return type(name, (EverrunsError,), {"status": status, "code": code or ERROR_CODES[status]})


_BadRequest = _error_class("_BadRequest", 400)
_ValidationFailed = _error_class("_ValidationFailed", 400, "VALIDATION_ERROR")
_Unauthorized = _error_class("_Unauthorized", 401)
_Forbidden = _error_class("_Forbidden", 403)
_NotFound = _error_class("_NotFound", 404)
_Conflict = _error_class("_Conflict", 409)
_RequestTimeout = _error_class("_RequestTimeout", 408)
_PayloadTooLarge = _error_class("_PayloadTooLarge", 413)
_UriTooLong = _error_class("_UriTooLong", 414)
_UnsupportedMediaType = _error_class("_UnsupportedMediaType", 415)
_HeadersTooLarge = _error_class("_HeadersTooLarge", 431)


FALLS_OVER = ("PROVIDER_UNAVAILABLE", "PROVIDER_TIMEOUT", "PROVIDER_RATE_LIMITED", "NO_CASSETTE")


class ProviderError(EverrunsError):
    """A provider call failed: a turn ends with this code and message (or, when `falls_over`
    and nothing was answered yet, calls its next fallback provider), an API call answers 502."""

    status = 502

    def __init__(self, message: str, code: str = "PROVIDER_ERROR", falls_over: bool | None = None) -> None:
        super().__init__(message, code=code)
        # unreachable, reset, a timeout, 429 or 5xx (SPEC 18), or no cassette to replay
        self.falls_over = code in FALLS_OVER if falls_over is None else falls_over


class ToolFailed(EverrunsError):
    """A tool's own failure; it becomes a result with is_error true (a Python tool may raise
    it: its message is the whole error the model sees)."""

    code = "TOOL_FAILED"


class TurnFailed(EverrunsError):
    """A turn that ended without its answer: failed, with the turn's error code (a turn's own
    work raises it to end failed, as MAX_ITERATIONS), or cancelled (code CANCELLED). The
    in-process client's ask() raises it."""

    def __init__(self, code: str, message: str, *, turn_id: str | None = None, turn_status: str = "failed") -> None:
        super().__init__(message, code=code)
        self.turn_id, self.turn_status = turn_id, turn_status


_ServiceUnavailable = _error_class("_ServiceUnavailable", 503)
_InsufficientStorage = _error_class("_InsufficientStorage", 507)
_NotImplemented = _error_class("_NotImplemented", 501)
RETRY_AFTER_S = 2  # what a 503 tells a client to wait before it tries again


class StartupError(Exception):
    """The server cannot start: one line for whoever started it, and the exit status
    (2 for a bad value given, 1 for what is wrong around it: a busy port, a bad file)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _invalid(loc: list, msg: str) -> _ValidationFailed:
    """A validation error about one field."""
    return _ValidationFailed(f"{'.'.join(map(str, loc))}: {msg}", details=[{"loc": loc, "msg": msg}])


def _error_body(status: int, message: str, code: str | None = None, details: list | None = None) -> str:
    """The one renderer of error bodies: {"error": {"message", "code"[, "details"]}}."""
    error: dict[str, Any] = {"message": message, "code": code or ERROR_CODES.get(status, "INTERNAL_ERROR")}
    if details is not None:
        error["details"] = details
    return _dumps({"error": error})


class _Stop(SystemExit):
    """Kills a turn's greenlet, or a step's. A SystemExit: a PostgreSQL query it waits
    on is then cancelled on the server and its connection stays usable (psycopg cancels
    on SystemExit; gevent's GreenletExit would leave the query running and the connection
    stuck). The greenlet catches it: one that ends with a SystemExit stops the process."""


def _stop_soon(greenlet: Any) -> None:
    """Stop a greenlet without waiting: a running one with _Stop (see there), one that never
    ran is dropped (a SystemExit thrown into a greenlet that never started would reach the hub)."""
    greenlet.kill(_Stop if greenlet.gr_frame is not None else gevent.GreenletExit, block=False)


# =============================================================================
# 5. Observability
# =============================================================================
#
# What an operator reads (SPEC 15): metrics (GET /metrics, the Prometheus text format),
# traces (OpenTelemetry spans of turns, model calls and tool calls, an optional extra
# imported only when configured), and the context of every log line (request, session and
# turn ids; --log-format json). Each app has one _Observer (ctx.obs, store.obs): the later
# sections count and trace through it.

# ---- metrics: a series family is one METRICS entry; its label values come from the
# server's configuration (statuses, provider types, capabilities, route templates), never
# from what a client sends, so the number of series cannot grow with use.


@dataclasses.dataclass(frozen=True)
class _Metric:
    """A series family: its type, help line, label names and (a histogram's) buckets."""

    kind: Literal["counter", "gauge", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()
    zero: tuple[tuple[str, ...], ...] = ()  # label values shown as 0 before anything happened


_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_SLOW = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
METRICS: dict[str, _Metric] = {
    "everruns_turns_total": _Metric("counter", "Turns ended in this process, by status.", ("status",),
                                    zero=((TURN_COMPLETED,), (TURN_FAILED,), (TURN_CANCELLED,))),
    "everruns_turn_duration_seconds": _Metric("histogram", "Turns from start to end (pauses for people included).",
                                              buckets=_SLOW),
    "everruns_time_to_first_token_seconds": _Metric("histogram", "Model calls from the request to the first streamed "
                                                    "text.", buckets=_SLOW),
    "everruns_model_calls_total": _Metric("counter", "Model calls by provider type and outcome (ok, error, "
                                          "cancelled).", ("provider_type", "outcome")),
    "everruns_tokens_total": _Metric("counter", "Tokens the providers counted, by provider type and direction "
                                     "(input, output).", ("provider_type", "direction")),
    "everruns_tool_calls_total": _Metric("counter", "Tool calls by capability (client: client tools; none: a tool "
                                         "the agent does not have) and outcome (ok, error).",
                                         ("capability", "outcome")),
    "everruns_tool_duration_seconds": _Metric("histogram", "Tools' run time, by capability.", ("capability",),
                                              buckets=_FAST[4:] + _SLOW[-4:]),
    "everruns_streams_open": _Metric("gauge", "Event streams open in this process."),
    "everruns_turns_running": _Metric("gauge", "Turns running in this process."),
    "everruns_turns_waiting": _Metric("gauge", "Turns paused for an approval or a client tool's result."),
    "everruns_messages_queued": _Metric("gauge", "User messages no turn has taken up yet."),
    "everruns_http_requests_total": _Metric("counter", "HTTP requests answered, by route template and status.",
                                            ("route", "status")),
    "everruns_sessions_deleted_total": _Metric("counter", "Sessions deleted by the server itself, by reason "
                                               "(retention: --retention-days).", ("reason",), zero=(("retention",),)),
    "everruns_db_write_seconds": _Metric("histogram", "Database writes, from asking for the write lock to their "
                                         "commit.", buckets=_FAST),
}  # fmt: skip


class _Histogram:
    """Counts per bucket (not cumulative: the text sums them), the sum and the count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.sum = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # a bucket counts values <= its bound
        self.sum += value


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Metrics:
    """One app's series: counters and histograms are kept here, gauges read when scraped
    (``gauges``: a function that returns them by name)."""

    def __init__(self) -> None:
        self.series: dict[str, dict[tuple[str, ...], Any]] = {name: {} for name in METRICS}
        for name, metric in METRICS.items():
            self.series[name].update(dict.fromkeys(metric.zero, 0))
        self.gauges: Callable[[], dict[str, float]] = dict
        self.instance: str | None = None  # on PostgreSQL: a label of every series (several processes)

    def inc(self, name: str, *labels: str, by: float = 1) -> None:
        series = self.series[name]
        series[labels] = series.get(labels, 0) + by

    def observe(self, name: str, value: float, *labels: str) -> None:
        series = self.series[name]
        histogram = series.get(labels)
        if histogram is None:
            histogram = series[labels] = _Histogram(METRICS[name].buckets)
        histogram.observe(value)

    def text(self) -> str:
        """Every series in the Prometheus text format (0.0.4)."""
        gauges, lines = self.gauges(), []
        for name, metric in METRICS.items():
            lines += [f"# HELP {name} {metric.help}", f"# TYPE {name} {metric.kind}"]
            if metric.kind == "gauge":
                if name in gauges:
                    lines.append(f"{name}{self._labels(())} {gauges[name]}")
                continue
            for values, value in self.series[name].items():
                pairs = tuple(zip(metric.labels, values, strict=True))
                if metric.kind == "counter":
                    lines.append(f"{name}{self._labels(pairs)} {value}")
                else:
                    lines += self._histogram(name, pairs, value)
        return "\n".join(lines) + "\n"

    def _histogram(self, name: str, pairs: tuple, histogram: _Histogram) -> list[str]:
        lines, total = [], 0
        for bound, count in zip((*histogram.bounds, math.inf), histogram.counts, strict=True):
            total += count
            le = "+Inf" if bound == math.inf else repr(float(bound))
            lines.append(f"{name}_bucket{self._labels((*pairs, ('le', le)))} {total}")
        labels = self._labels(pairs)
        return [*lines, f"{name}_sum{labels} {histogram.sum!r}", f"{name}_count{labels} {total}"]

    def _labels(self, pairs: tuple) -> str:
        if self.instance is not None:
            pairs = (*pairs, ("instance", self.instance))
        return "{" + ",".join(f'{k}="{_label_value(str(v))}"' for k, v in pairs) + "}" if pairs else ""


@functools.lru_cache(maxsize=256)
def _route_label(rule: str) -> str:
    """A route's template as the OpenAPI document writes it: /v1/sessions/{session_id}."""
    return re.sub(r"<([A-Za-z_]+)(?::[^>]*)?>", r"{\1}", rule)


# ---- traces: OpenTelemetry with the GenAI semantic conventions. A span is made current in
# its greenlet (_CURRENT); a turn's slow steps run in greenlets that copy their context
# (_TurnRun._stoppable), so a tool's MCP requests nest under the tool's span.

_CURRENT: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar("everruns_span", default=None)
OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACE_FLUSH_S = 2.0  # at close, how long the spans still queued have to reach the collector


class _Tracing:
    """Spans sent with OTLP/HTTP to `endpoint` (None: where the OTEL_* variables say)."""

    def __init__(self, endpoint: str | None, capture_content: bool) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.api, self.capture = trace, capture_content
        if endpoint is not None and not endpoint.rstrip("/").endswith("/v1/traces"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"  # as OTEL_EXPORTER_OTLP_ENDPOINT: the collector's base
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "everruns",
                                    "service.version": __version__, "service.instance.id": INSTANCE})  # fmt: skip
        self.provider, self.exporter = TracerProvider(resource=resource), OTLPSpanExporter(endpoint=endpoint)
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("everruns", __version__)

    def start(self, name: str, attributes: dict, parent: Any = None, kind: str = "INTERNAL") -> Any:
        """A span (not made current), a child of `parent`: a span, or (trace id, span id) in hex
        of an earlier one (a resumed turn's first run); without one, a trace of its own."""
        api = self.api
        if isinstance(parent, tuple):
            context = api.SpanContext(int(parent[0], 16), int(parent[1], 16), True, api.TraceFlags(1))
            parent = api.NonRecordingSpan(context)
        where = api.set_span_in_context(parent if parent is not None else api.INVALID_SPAN)
        return self.tracer.start_span(name, where, getattr(api.SpanKind, kind), _attributes(attributes))

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict, kind: str = "INTERNAL") -> Iterator[Any]:
        """A span made current for the block, a child of the current one; an error status when
        an Exception leaves it."""
        current = _CURRENT.get()
        span = self.start(name, attributes, current[1] if current is not None else None, kind)
        token = _CURRENT.set((self, span))
        try:
            yield span
        except Exception as e:
            self.failed(span, getattr(e, "code", type(e).__name__))
            raise
        finally:
            _CURRENT.reset(token)
            span.end()

    def failed(self, span: Any, description: str) -> None:
        span.set_status(self.api.Status(self.api.StatusCode.ERROR, description))
        span.set_attribute("error.type", description)

    @staticmethod
    def ids(span: Any) -> tuple[str, str]:
        """A span's trace id and span id, in hex."""
        context = span.get_span_context()
        return f"{context.trace_id:032x}", f"{context.span_id:016x}"

    def close(self) -> None:
        """Send what is queued, for TRACE_FLUSH_S at most (a collector that is down holds up no stop)."""
        flush = gevent.spawn(self.provider.force_flush)  # (its timeout is not one: a send retries for 10 s)
        flush.join(TRACE_FLUSH_S)
        if not flush.ready():
            _log.warning("traces: the collector did not take the last spans within %g s: dropped", TRACE_FLUSH_S)
            self.exporter.shutdown()  # a send still retrying gives up at once
            self.exporter.shutdown = lambda: None  # (the provider's shutdown would say it again)
        self.provider.shutdown()


def _attributes(attributes: dict) -> dict:
    """Span attributes without the unset ones."""
    return {k: v for k, v in attributes.items() if v is not None}


def _traced(name: str, attributes: dict, kind: str = "INTERNAL") -> Any:
    """A child span of the current one, if something is traced here (an MCP request)."""
    current = _CURRENT.get()
    return current[0].span(name, attributes, kind) if current is not None else contextlib.nullcontext()


def _tracing(config: dict, env: Mapping[str, str]) -> _Tracing | None:
    """The app's tracing: on with --otlp-endpoint (the extra missing: StartupError), or with
    the OTEL_* variables (the extra missing: a warning, and no traces)."""
    endpoint = config["otlp_endpoint"]
    if endpoint and not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", endpoint):
        raise StartupError("--otlp-endpoint must be an http:// or https:// URL (a collector's OTLP/HTTP address)", 2)
    wanted = endpoint or any(env.get(v) for v in OTLP_VARIABLES)
    if not wanted or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        return _Tracing(endpoint, config["otel_capture_content"])
    except ImportError:
        if endpoint:
            raise StartupError("--otlp-endpoint needs OpenTelemetry: pip install 'everruns[otel]'", 2) from None
        _log.warning("%s is set, but OpenTelemetry is not installed (pip install 'everruns[otel]'): no traces",
                     next(v for v in OTLP_VARIABLES if env.get(v)))  # fmt: skip
        return None


@dataclasses.dataclass
class _Observer:
    """One app's metrics and tracing (None: off)."""

    metrics: _Metrics = dataclasses.field(default_factory=_Metrics)
    tracing: _Tracing | None = None

    def span(self, name: str, attributes: dict, kind: str = "INTERNAL") -> Any:
        """A span made current for a block (a null context without tracing)."""
        return self.tracing.span(name, attributes, kind) if self.tracing else contextlib.nullcontext()

    def turn_ended(self, data: dict) -> None:
        """A session.completed was committed (by this process)."""
        self.metrics.inc("everruns_turns_total", data["status"])
        self.metrics.observe("everruns_turn_duration_seconds", data["duration_ms"] / 1000)

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()


# ---- logs: every line can say which request, session and turn it is about (_LOG_IDS, set
# by the HTTP layer and by a turn's greenlet); --log-format json writes them.

_LOG_IDS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("everruns_log", default=None)
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


_REQUESTS = itertools.count(1)


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is 1-128 characters of [A-Za-z0-9._-], else a new one
    (32 hex digits: this process's INSTANCE and a count, unique without asking for randomness)."""
    return given if given and REQUEST_ID.fullmatch(given) else f"{INSTANCE}{next(_REQUESTS):016x}"


def _log_ids(**ids: str) -> None:
    """Name what this greenlet's log lines are about (request_id, session_id, turn_id)."""
    current = _LOG_IDS.get()
    if current is None:
        _LOG_IDS.set(ids)
    else:
        current.update(ids)  # a request's own dict (the HTTP layer sets a new one per request)


class _LogIds(logging.Filter):
    """Puts the current request, session and turn ids on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = _LOG_IDS.get()
        if ids:
            for key, value in ids.items():
                setattr(record, key, value)
        return True


class _JsonLines(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": _iso_time(record.created), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}  # fmt: skip
        for key in ("request_id", "session_id", "turn_id"):
            if hasattr(record, key):
                line[key] = getattr(record, key)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["traceback"] = record.exc_text
        return _dumps(line)


# =============================================================================
# 6. Schemas
# =============================================================================


class _In(BaseModel):
    """Base of request bodies: strict JSON types, unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)  # built on first use


class _Out(BaseModel):
    """Base of response bodies."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


def _whole_number(value: Any) -> Any:
    """JSON Schema counts 40.0 as an integer; so do we (strict mode would not)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_whole_number)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]
SystemPrompt = Annotated[str, StringConstraints(max_length=MAX_SYSTEM_PROMPT)]
TagText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG)]
Tags = Annotated[list[TagText], Field(max_length=MAX_TAGS)]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Id = Annotated[str, StringConstraints(pattern=UUID_PATTERN)]
Timestamp = Annotated[str, Field(examples=["2026-01-01T12:00:00.000Z"])]


def _known_capability(capability_id: str, info: ValidationInfo) -> str:
    """A capability id of the app's registry (the validation context's), else of the built-ins."""
    registry = (info.context or {}).get("capabilities", CAPABILITIES)
    if capability_id not in registry:
        raise ValueError(f"unknown capability {capability_id!r} (GET /v1/capabilities lists them)")
    return capability_id


CapabilityId = Annotated[
    str, StringConstraints(max_length=MAX_NAME), AfterValidator(_known_capability),
    Field(description="The id of a capability (GET /v1/capabilities lists them)."),
]  # fmt: skip
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,128}$")]
# What HTTP can carry in a header value: visible ASCII, spaces and tabs.
HeaderValue = Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e\t]*$", max_length=4096)]


# An http(s) URL that can be used: printable ASCII, a host (a name, or an IPv6 address in
# brackets), a port from 1 to 65535 if any. What the server enforces, the document says.
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_H16 = "[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join([f"(?:{_H16}:){{7}}{_H16}", f"(?:{_H16}:){{1,7}}:", f":(?::{_H16}){{1,7}}", "::"]
                 + [f"(?:{_H16}:){{1,{n}}}(?::{_H16}){{1,{7 - n}}}" for n in range(1, 7)])  # fmt: skip
URL_PATTERN = (rf"^https?://(?:[A-Za-z0-9._~%!$&'()*+,;=:-]*@)?(?:\[(?:{_IPV6})\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)"
               rf"(?::{_PORT})?(?:[/?#][\x21-\x7e]*)?$")  # fmt: skip
BaseUrl = Annotated[str, StringConstraints(pattern=URL_PATTERN, max_length=2048)]
ApiKey = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Title = Annotated[str, StringConstraints(max_length=MAX_NAME)]
MaxIterations = Annotated[JsonInt, Field(ge=1, le=50)]
CapabilityList = Annotated[list[CapabilityId], Field(max_length=MAX_CAPABILITIES)]
ToolName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A client tool's parameters: a JSON Schema of an object, as the providers take them."""
    if schema.get("type") != "object":
        raise ValueError('must be a JSON Schema of an object ("type": "object")')
    properties = schema.get("properties", {})
    if not isinstance(properties, dict) or not all(isinstance(p, dict) for p in properties.values()):
        raise ValueError('"properties" must map each name to a JSON Schema (an object)')
    if not isinstance(schema.get("required", []), list):
        raise ValueError('"required" must be a list of property names')
    if len(_dumps(schema)) > MAX_DESCRIPTION:
        raise ValueError(f"is larger than {MAX_DESCRIPTION} bytes")
    return schema


class ClientToolIn(_In):
    """A tool the client runs: the model calls it, the client posts its result."""

    name: ToolName
    description: Description = ""
    parameters: Annotated[dict[str, Any], AfterValidator(_object_schema)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


class ToolSpec(_Out):
    """A tool the model may call: its name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]


ClientToolList = Annotated[list[ClientToolIn], Field(max_length=64)]
MAX_FALLBACKS = 8
FallbackList = Annotated[
    list[Id],
    Field(max_length=MAX_FALLBACKS, description="Providers called in turn, each with its own default model, when a "
          "model call fails before it answered (unreachable, a timeout, 429 or 5xx); SPEC 18."),
]  # fmt: skip
ApprovalList = Annotated[
    list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
    Field(max_length=64, description='Tools a person must approve before they run: tool names, or "*" for all.'),
]


_PICKED_TAGS: set[str] = set()  # left out of error locations


def _picked(pick: Callable[[Any], bool], when: Any, otherwise: Any, names: tuple[str, str]) -> Any:
    """A union of two forms, picked by looking at the value (so a validation error speaks
    of the one form the client meant). Its tags, in parentheses, are left out of error locations."""
    yes, no = (f"({name})" for name in names)
    _PICKED_TAGS.update((yes, no))
    return Annotated[
        Annotated[when, Tag(yes)] | Annotated[otherwise, Tag(no)], Discriminator(lambda v: yes if pick(v) else no)
    ]


def _by_key(key: str, with_key: type[BaseModel], without: type[BaseModel]) -> Any:
    """A union of two body forms, picked by whether the JSON object has `key`."""

    def has_key(value: Any) -> bool:
        return isinstance(value, dict) and key in value

    return _picked(has_key, with_key, without, (with_key.__name__, without.__name__))


def _examples(*examples: dict) -> ConfigDict:
    """A request model's config that shows these bodies as examples in the OpenAPI document."""
    return ConfigDict(json_schema_extra={"examples": list(examples)})


class _LazyModel:
    """A model that a function defines on its first use. The root models (a body or a
    response that is one of several shapes) are made this way: importing pydantic's
    RootModel builds a validator at once, and the first validator of a process costs
    1 MB, which a server nobody has called yet does not need."""

    def __init__(self, define: Callable[[], type[BaseModel]]) -> None:
        self._define, self.__name__ = define, define.__name__

    @functools.cached_property
    def model(self) -> type[BaseModel]:
        return self._define()

    def __getattr__(self, name: str) -> Any:  # model_validate, model_validate_json, __name__, ...
        return getattr(self.model, name)

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:  # a field of another model
        return handler(self.model)


def _model(model: Any) -> Any:
    """The pydantic model itself, for what must see the class (the OpenAPI schemas)."""
    return model.model if isinstance(model, _LazyModel) else model


def _names_and_values(schema: dict) -> None:
    """A map's keys as propertyNames, its values as additionalProperties: what the server
    accepts, in the form client generators understand (they ignore patternProperties)."""
    ((pattern, value),) = schema.pop("patternProperties").items()
    schema.update(propertyNames={"pattern": pattern}, additionalProperties=value)


# (the bounds before the validator: so they are in the JSON Schema as minimum and maximum)
Tokens = Annotated[int, Field(ge=MIN_CONTEXT_WINDOW, le=10_000_000), BeforeValidator(_whole_number)]
ContextWindow = Annotated[
    Tokens | Annotated[dict[ModelName, Tokens], Field(min_length=1, max_length=256)],
    Field(description="The model's context window in tokens: one number, or one per model name "
                      '({"default": 8192, "llama3.2": 131072}); unset: a known default for the model\'s family.'),
]  # fmt: skip


class LlmsimSettings(_In):
    """Settings of the built-in simulator."""

    token_delay_ms: JsonInt = Field(0, ge=0, le=10000, description="Pause before each streamed word.")
    reply: str | None = Field(None, max_length=MAX_MESSAGE_TEXT, description="A fixed answer.")
    context_window: ContextWindow | None = None
    echo_context: bool = Field(False, description="Answer with the role and first words of each message sent to it.")


class RemoteSettings(_In):
    """Settings of an OpenAI-compatible or Anthropic provider."""

    context_window: ContextWindow | None = None
    timeout_s: float = Field(60, gt=0, le=3600, description="The longest wait for progress (a connection, new text).")
    max_call_s: float = Field(1800, gt=0, le=86400, description="The longest a model call may take in all.")
    max_tokens: JsonInt = Field(4096, ge=1, le=1_000_000)
    extra_headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict, max_length=32, json_schema_extra=_names_and_values
    )
    record: bool = Field(
        False,
        description="Store each model call it serves as a cassette (SPEC 18): what was "
        "asked (no key, no header) and the streamed answer with its timing, for a replay provider.",
    )


class ReplaySettings(_In):
    """Settings of a replay provider: it answers from the cassettes another provider recorded."""

    source_provider_id: Id = Field(description="The provider whose cassettes it plays (one that records).")
    speed: float = Field(
        1.0,
        ge=0,
        le=100,
        description="The recorded delays are multiplied by it: 1 as recorded, 0 at once, 0.5 twice as fast.",
    )


@dataclasses.dataclass(frozen=True)
class _ProviderKind:
    """A provider type: its schemas are built from this entry (NAMEProviderCreate and
    NAMEProvider), and its adapter class is ADAPTERS' entry of the same type (section 9)."""

    type: str
    schema_name: str
    title: str  # "an OpenAI-compatible provider": in its schemas' descriptions
    label: str  # in the console's list of types
    default_url: str | None
    default_model: str
    settings: type[_In]
    example: dict


# The provider types: one entry each (plus an adapter in section 9).
PROVIDER_KINDS: dict[str, _ProviderKind] = {
    kind.type: kind
    for kind in (
        _ProviderKind("llmsim", "Llmsim", "a simulator provider", "Built-in simulator", None, "llmsim", LlmsimSettings,
                      {"name": "Slow simulator", "provider_type": "llmsim", "settings": {"token_delay_ms": 150}}),
        _ProviderKind("openai", "OpenAI", "an OpenAI-compatible provider",
                      "OpenAI-compatible (OpenAI, Ollama, vLLM, llama.cpp)", "https://api.openai.com/v1", "gpt-4o-mini",
                      RemoteSettings, {"name": "Ollama", "provider_type": "openai",
                                       "base_url": "http://localhost:11434/v1", "default_model": "llama3.2"}),
        _ProviderKind("anthropic", "Anthropic", "an Anthropic provider", "Anthropic", "https://api.anthropic.com",
                      "claude-sonnet-4-5", RemoteSettings,
                      {"name": "Claude", "provider_type": "anthropic", "api_key": "sk-ant-...",
                       "default_model": "claude-sonnet-4-5"}),
        _ProviderKind("replay", "Replay", "a replay provider", "Replay of recorded calls (offline)", None, "replay",
                      ReplaySettings, {"name": "Demo, offline", "provider_type": "replay",
                                       "settings": {"source_provider_id": "0190a000-0000-7000-8000-000000000000",
                                                    "speed": 0}}),
    )
}  # fmt: skip
PROVIDER_DEFAULTS = {kind.type: (kind.default_url, kind.default_model) for kind in PROVIDER_KINDS.values()}
RECORDING_TYPES = frozenset(kind.type for kind in PROVIDER_KINDS.values() if "record" in kind.settings.model_fields)
SETTINGS_MODELS: dict[str, type[_In]] = {kind.type: kind.settings for kind in PROVIDER_KINDS.values()}
ProviderType = Literal[tuple(PROVIDER_KINDS)]
AnySettings = typing.Union[tuple(dict.fromkeys(SETTINGS_MODELS.values()))]  # noqa: UP007 (built from the registry)


class _ProviderCreateCommon(_In):
    name: Name
    base_url: BaseUrl | None = None
    default_model: ModelName | None = None
    api_key: ApiKey | None = None
    is_default: bool = False


def _kind_model(base: type[BaseModel], name: str, doc: str, kind: _ProviderKind, **namespace: Any) -> type[BaseModel]:
    """One provider type's schema: `base` with its provider_type and its settings."""
    annotations = {"provider_type": Literal[kind.type], "settings": kind.settings}
    return type(name, (base,), {"__doc__": doc, "__annotations__": annotations, "__module__": __name__, **namespace})


_PROVIDER_CREATES = [
    _kind_model(_ProviderCreateCommon, f"{kind.schema_name}ProviderCreate", f"Create {kind.title}.", kind,
                model_config=_examples(kind.example),
                **({} if any(f.is_required() for f in kind.settings.model_fields.values())
                   else {"settings": Field(default_factory=kind.settings)}))  # settings required if a field is
    for kind in PROVIDER_KINDS.values()
]  # fmt: skip


@_LazyModel
def ProviderCreate() -> type[BaseModel]:
    from pydantic import RootModel

    class ProviderCreate(RootModel):
        """Body of POST /v1/llm-providers: one shape per provider_type."""

        model_config = ConfigDict(strict=True, defer_build=True)
        root: Annotated[typing.Union[tuple(_PROVIDER_CREATES)], Field(discriminator="provider_type")]  # noqa: UP007

    return ProviderCreate


class ProviderUpdate(_In):
    """Body of PATCH /v1/llm-providers/{id}; `api_key: null` removes the key."""

    name: Name = None
    base_url: BaseUrl | None = None
    default_model: ModelName = None
    api_key: ApiKey | None = None
    is_default: bool = None
    settings: AnySettings = None


class _ProviderOut(_Out):
    id: str
    name: str
    provider_type: ProviderType
    base_url: str | None
    default_model: str
    api_key_set: bool
    is_default: bool
    settings: AnySettings
    created_at: Timestamp
    updated_at: Timestamp


_PROVIDERS = [
    _kind_model(_ProviderOut, f"{kind.schema_name}Provider", f"{kind.title[0].upper()}{kind.title[1:]}.", kind)
    for kind in PROVIDER_KINDS.values()
]


@_LazyModel
def Provider() -> type[BaseModel]:
    from pydantic import RootModel

    class Provider(RootModel):
        """An LLM provider, its settings shaped by its provider_type. The API key is never
        returned, only whether one is set."""

        model_config = ConfigDict(defer_build=True)

        root: Annotated[typing.Union[tuple(_PROVIDERS)], Field(discriminator="provider_type")]  # noqa: UP007

    return Provider


class AgentCreate(_In):
    """Body of POST /v1/agents."""

    model_config = _examples(
        {"name": "Helper", "system_prompt": "Be brief.", "capabilities": ["current_time", "test_math"]}
    )

    name: Name
    description: Description = ""
    system_prompt: SystemPrompt = ""
    capabilities: CapabilityList = []
    provider_id: Id | None = None
    model: ModelName | None = None
    fallback_provider_ids: FallbackList = []
    tags: Tags = []
    max_iterations: MaxIterations = 10
    require_approval: ApprovalList = []
    client_tools: ClientToolList = []


class AgentUpdate(_In):
    """Body of PATCH /v1/agents/{id}: only the fields present change."""

    name: Name = None
    description: Description = None
    system_prompt: SystemPrompt = None
    capabilities: CapabilityList = None
    provider_id: Id | None = None
    model: ModelName | None = None
    fallback_provider_ids: FallbackList = None
    tags: Tags = None
    max_iterations: MaxIterations = None
    require_approval: ApprovalList = None
    client_tools: ClientToolList = None


class Agent(_Out):
    """An agent: system prompt, capabilities, and the model it talks to."""

    id: str
    name: str
    description: str
    system_prompt: str
    capabilities: list[str]
    provider_id: str | None
    model: str | None
    fallback_provider_ids: list[str]
    tags: list[str]
    max_iterations: int
    require_approval: list[str]
    client_tools: list[ToolSpec]
    created_at: Timestamp
    updated_at: Timestamp


class SessionCreate(_In):
    """Body of POST /v1/agents/{id}/sessions (may be empty)."""

    title: Title | None = None
    tags: Tags = []
    provider_id: Id | None = None
    model: ModelName | None = None
    fallback_provider_ids: FallbackList | None = Field(None, description="null: its agent's.")


class SessionUpdate(_In):
    """Body of PATCH /v1/sessions/{id}."""

    title: Title | None = None
    tags: Tags = None
    provider_id: Id | None = None
    model: ModelName | None = None
    fallback_provider_ids: FallbackList | None = Field(None, description="null: its agent's.")


class TurnError(_Out):
    """Why a turn failed."""

    message: str
    code: str


class LastTurn(_Out):
    """The latest turn of a session."""

    id: str
    status: Literal[TURN_RUNNING, TURN_WAITING, TURN_COMPLETED, TURN_FAILED, TURN_CANCELLED]
    error: TurnError | None
    trace_id: str | None = Field(None, description="Its OpenTelemetry trace (32 hex digits) when tracing is on.")


class Usage(_Out):
    """Token counts."""

    input_tokens: int
    output_tokens: int


class Session(_Out):
    """A conversation with an agent."""

    id: str
    agent_id: str
    title: str | None
    tags: list[str]
    provider_id: str | None
    model: str | None
    fallback_provider_ids: list[str] | None = Field(description="null: its agent's.")
    status: Literal[SESSION_IDLE, SESSION_RUNNING, SESSION_WAITING] = Field(
        description="idle: waiting for input; running: a turn is in progress; waiting: a turn is paused on a tool "
        "approval or a client tool"
    )
    created_at: Timestamp
    updated_at: Timestamp
    last_turn: LastTurn | None
    usage: Usage


class SessionContext(_Out):
    """What the session's next model call would send (SPEC 16), before its new message."""

    system_prompt: str
    summary: str | None = Field(description="What compaction wrote of the older turns (sent after the system prompt).")
    turn_ids: list[str] = Field(description="The turns sent whole, oldest first.")
    tokens_estimate: int = Field(description="The call's estimated size: system prompt, tools, summary and turns.")
    context_window: int = Field(description="The model's window, in tokens.")


class CancelResult(Session):
    """The session after a cancel, and the turn the cancel ended: the session may
    already run its next turn for a message that was waiting."""

    cancelled_turn: LastTurn | None = Field(
        description="The turn that was running when the cancel came, as it ended (null: none was running)."
    )


class TextPart(_Out):
    """Plain text."""

    type: Literal["text"]
    text: str


class ToolCallPart(_Out):
    """A tool call made by the assistant."""

    type: Literal["tool_call"]
    id: str
    name: str
    arguments: dict[str, Any]


class ToolResultPart(_Out):
    """The result of a tool call."""

    type: Literal["tool_result"]
    tool_call_id: str
    name: str
    result: Any
    is_error: bool


Part = Annotated[TextPart | ToolCallPart | ToolResultPart, Field(discriminator="type")]


class Latency(_Out):
    """How long a model call took, in milliseconds."""

    first_token: int | None = Field(description="Until its first text (null: it answered with tool calls only).")
    total: int


ASSISTANT_ONLY = ("provider_id", "model", "usage", "latency_ms", "incomplete")  # fields other roles do not have


class Message(_Out):
    """One message of a conversation. An assistant message says what wrote it and what that
    cost (null where it was stored before these were kept); other roles have none of these."""

    id: str
    session_id: str
    role: Literal["user", "assistant", "tool"]
    content: list[Part]
    turn_id: str | None
    provider_id: str | None = Field(None, description="The provider that wrote an assistant message.")
    model: str | None = Field(None, description="The model that wrote an assistant message.")
    usage: Usage | None = Field(None, description="The tokens of the model call that wrote it.")
    latency_ms: Latency | None = Field(None, description="The timing of the model call that wrote it.")
    incomplete: bool = Field(False, description="A cancelled turn's text, as far as it had streamed.")
    created_at: Timestamp

    @model_serializer(mode="wrap")
    def _by_role(self, write: Callable[[Any], dict]) -> dict:
        data = write(self)
        if self.role != "assistant":
            for name in ASSISTANT_ONLY:
                data.pop(name, None)
        return data


class TextPartIn(_In):
    """A text part of a posted message."""

    type: Literal["text"]
    text: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_TEXT)]


MessageContent = _picked(
    lambda value: isinstance(value, str),
    Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_TEXT)],
    Annotated[list[TextPartIn], Field(min_length=1, max_length=64)],
    ("text", "parts"),
)


class TurnControls(_In):
    """Per-turn overrides."""

    model: ModelName | None = None
    provider_id: Id | None = None
    max_iterations: MaxIterations | None = None
    temperature: float | None = Field(None, ge=0, le=2)


class UserMessageIn(_In):
    """A user message."""

    role: Literal["user"]
    content: MessageContent


class MessagePostFull(_In):
    """{"message": {"role": "user", "content": ...}, "controls"?}"""

    model_config = _examples(
        {
            "message": {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
            "controls": {"temperature": 0.2},
        }
    )

    message: UserMessageIn
    controls: TurnControls | None = None


class MessagePostShort(_In):
    """{"content": "text", "controls"?}"""

    model_config = _examples({"content": "What is 2 + 3? Use add."})

    content: MessageContent
    controls: TurnControls | None = None


@_LazyModel
def MessagePost() -> type[BaseModel]:
    from pydantic import RootModel

    class MessagePost(RootModel):
        """Body of POST /v1/sessions/{id}/messages, in either form."""

        model_config = ConfigDict(strict=True, defer_build=True)
        root: _by_key("message", MessagePostFull, MessagePostShort)

        def parts(self) -> list[dict]:
            """The posted content as text parts; ValueError past the text limit."""
            body = self.root
            content = body.message.content if isinstance(body, MessagePostFull) else body.content
            if isinstance(content, str):
                parts = [{"type": "text", "text": content}]
            else:
                parts = [p.model_dump() for p in content]
            if sum(len(p["text"]) for p in parts) > MAX_MESSAGE_TEXT:
                raise ValueError(f"the message text is longer than {MAX_MESSAGE_TEXT} characters")
            return parts

        def controls(self) -> dict | None:
            """The per-turn controls that were given, if any."""
            controls = self.root.controls
            return controls.model_dump(exclude_none=True) if controls else None

    return MessagePost


class ApprovalDecision(_In):
    """Body of POST /v1/sessions/{id}/tool-calls/{tool_call_id}/approval."""

    model_config = _examples({"approved": False, "reason": "not that file"})

    approved: bool
    reason: str | None = Field(None, max_length=MAX_NAME, description="Why (a denied call's result says it).")


class ToolResultPost(_In):
    """Body of POST /v1/sessions/{id}/tool-results: a client tool's result."""

    model_config = _examples({"tool_call_id": "call_abc123", "result": {"city": "Lisbon"}})

    tool_call_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    result: Any = Field(description="Any JSON value (up to 256 KiB).")
    is_error: bool = False


class Capability(_Out):
    """A capability: tools plus system-prompt text (built in, an MCP server's tools, or the
    Python functions of the program that embeds the server: category python)."""

    id: str
    name: str
    description: str
    status: Literal["available", "starting", "unavailable"] = Field(
        description="starting: an MCP server that has not listed its tools yet; unavailable: one that cannot be "
        "reached now (it has no tools meanwhile; it is tried again later and later)"
    )
    category: str
    system_prompt: str
    tools: list[ToolSpec]


McpServerName = Annotated[str, StringConstraints(pattern=MCP_NAME)]
McpHeaders = Annotated[
    dict[HeaderName, HeaderValue],
    Field(
        max_length=32, json_schema_extra=_names_and_values, description="Sent with every request; never shown again."
    ),
]


class McpServerCreate(_In):
    """Body of POST /v1/mcp-servers: a Streamable HTTP server (stdio ones come only from
    --mcp-config: the API never starts programs)."""

    model_config = _examples({"name": "tickets", "url": "https://mcp.example.com/mcp"})

    name: McpServerName
    url: BaseUrl
    headers: McpHeaders = {}
    transport: Literal["http"] = Field("http", description="Streamable HTTP (stdio servers come from --mcp-config).")

    @model_validator(mode="before")
    @classmethod
    def _no_stdio(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("transport") == "stdio":
            raise ValueError("stdio MCP servers come only from the --mcp-config file: the API never starts programs")
        return data


class McpServerUpdate(_In):
    """Body of PATCH /v1/mcp-servers/{id}: only the fields present change."""

    name: McpServerName = None
    url: BaseUrl = None
    headers: McpHeaders = None


class McpServer(_Out):
    """An MCP server: its tools are the capability mcp:NAME (headers are never shown)."""

    id: str
    name: str
    transport: Literal["stdio", "http", "sse"]
    url: str | None
    status: Literal["not_started", "starting", "ready", "unavailable"]
    tools_count: int
    error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class ModelInfo(_Out):
    """A model a provider offers."""

    id: str


class FsEntry(_Out):
    """One entry of a directory listing."""

    name: str
    path: str
    type: Literal["file", "directory"]
    size_bytes: int


class FsFile(_Out):
    """A file of the session file system."""

    path: str
    type: Literal["file"]
    content: str
    encoding: Literal["text", "base64"]
    size_bytes: int
    created_at: Timestamp
    updated_at: Timestamp


class FsDirectory(_Out):
    """A directory of the session file system, with its entries."""

    path: str
    type: Literal["directory"]
    entries: list[FsEntry]


@_LazyModel
def FsNode() -> type[BaseModel]:
    from pydantic import RootModel

    class FsNode(RootModel):
        """A file or a directory."""

        model_config = ConfigDict(defer_build=True)

        root: Annotated[FsFile | FsDirectory, Field(discriminator="type")]

    return FsNode


class FsWriteFile(_In):
    """PUT a file: its content, as text or base64."""

    content: Annotated[str, StringConstraints(max_length=2 * MAX_MESSAGE_TEXT)]
    encoding: Literal["text", "base64"] = "text"


class FsMakeDirectory(_In):
    """PUT a directory."""

    type: Literal["directory"]


@_LazyModel
def FsPut() -> type[BaseModel]:
    from pydantic import RootModel

    class FsPut(RootModel):
        """Body of PUT /v1/sessions/{id}/fs/{path}: a file's content, or {"type": "directory"}."""

        model_config = ConfigDict(strict=True, defer_build=True)
        root: _by_key("type", FsMakeDirectory, FsWriteFile)

    return FsPut


class Health(_Out):
    """Liveness and database status, and which process answered."""

    status: Literal["ok", "unavailable"] = Field(description="unavailable (503): the database cannot be used now")
    version: str
    database: Literal["ok", "unavailable"]
    backend: Literal["sqlite", "postgresql"]
    instance: str = Field(description="The answering server process (an id chosen when it starts).")


class _ErrorDetail(_Out):
    loc: list[str | int]
    msg: str


class _ErrorInfo(_Out):
    message: str
    code: str
    details: list[_ErrorDetail] | None = None


class ErrorBody(_Out):
    """The body of every error response."""

    error: _ErrorInfo


class ListQuery(BaseModel):
    """Pagination of id-keyed lists."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    limit: JsonInt = Field(PAGE_DEFAULT, ge=1, le=PAGE_MAX, description="Page size.")
    after: Id | None = Field(None, description="The id of the last item of the previous page.")


class CapabilityListQuery(ListQuery):
    """Pagination of the capability list (keyed by capability id)."""

    after: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = Field(
        None, description="The id of the last item of the previous page."
    )


class ModelListQuery(ListQuery):
    """Pagination of a provider's models (keyed by model name)."""

    after: str | None = Field(None, max_length=MAX_NAME, description="The last model of the previous page.")


class FsDeleteQuery(BaseModel):
    """Query of DELETE /v1/sessions/{id}/fs/{path}."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    recursive: bool = Field(False, description="Also delete what a directory holds.")


class _EmptyBody(_In):
    """Routes that take no body accept at most an empty JSON object."""


def _page_model(item: type[BaseModel]) -> type[BaseModel]:
    """The {data, has_more, next_after} envelope for one item type."""
    return type(
        f"{item.__name__}Page",
        (_Out,),
        {
            "__annotations__": {"data": list[item], "has_more": bool, "next_after": str | int | None},
            "__doc__": f"A page of {item.__name__} objects.",
        },
    )


def _validation_details(error: ValidationError) -> list[dict]:
    """A pydantic error as the `details` list of a VALIDATION_ERROR (the tags of _picked unions left out)."""
    return [
        {"loc": [x for x in e["loc"] if x not in _PICKED_TAGS], "msg": e["msg"]}
        for e in error.errors(include_url=False)
    ]


# ---- events: the registry ------------------------------------------------------
# Every event type with the model of its `data`, in one table (EVENTS). Every emit goes
# through it (_Tx.emit refuses a type it does not have; with --check-events, which the
# tests use, each event's data is checked against its model before it is stored); the
# OpenAPI document describes each event by it (Event: a union on `type`); the console
# and the chat read the same names. A new event type: a data model, one entry here,
# and its emit site.


class _EventData(_Out):
    """The `data` of one event type (a field added later has a default: older stored
    events lack it)."""


class SessionStartedData(_EventData):
    turn_id: str
    input_message_ids: list[str]


class MessageCreatedData(_EventData):
    message: Message


class MessageDeltaData(_EventData):
    message_id: str
    delta: str = Field(description="A piece of the assistant's text, before that message's message.created.")


class ToolCallInfo(_EventData):
    """A tool call as the model made it."""

    id: str
    name: str
    arguments: dict[str, Any]


class ToolCallStored(ToolCallInfo):
    """A tool call as stored: the server runs it, unless it waits for a person or the client."""

    approval: Literal["pending"] = Field(None, description="It waits for a person's approval.")
    executor: Literal["client"] = Field(None, description="The client runs it and posts its result.")


class ToolCallData(_EventData):
    tool_call: ToolCallStored


class ToolApprovalRequestedData(_EventData):
    tool_call: ToolCallInfo


class ToolApprovalResolvedData(_EventData):
    tool_call_id: str
    approved: bool
    reason: str | None


class ToolResultData(_EventData):
    tool_call_id: str
    name: str
    result: Any
    is_error: bool
    duration_ms: int


class ContextCompactedData(_EventData):
    summary: str = Field(description="What the model wrote of the turns it replaces (and of the summary before).")
    turn_ids: list[str] = Field(description="The turns this summary replaces in later model calls.")
    tokens_before: int = Field(description="The history's estimated size before, in tokens.")
    tokens_after: int


class ProviderFallbackData(_EventData):
    from_provider_id: str
    to_provider_id: str
    reason: str = Field(
        description="Why the call failed: its error code (PROVIDER_UNAVAILABLE, PROVIDER_TIMEOUT, "
        "PROVIDER_RATE_LIMITED, PROVIDER_ERROR for a 5xx, PROVIDER_STREAM_ERROR, NO_CASSETTE)."
    )
    message: str = Field(description="The failure, in words.")


class SessionCompletedData(_EventData):
    turn_id: str
    status: Literal[TURN_COMPLETED, TURN_FAILED, TURN_CANCELLED]
    error: TurnError | None
    usage: Usage = Field(description="Summed over the turn's model calls.")
    iterations: int
    duration_ms: int
    provider_id: str | None = None
    model: str | None = None
    trace_id: str | None = Field(None, description="The turn's OpenTelemetry trace (32 hex digits) when tracing is on.")


EVENTS: dict[str, type[_EventData]] = {
    "session.started": SessionStartedData,
    "message.created": MessageCreatedData,
    "message.delta": MessageDeltaData,  # live only: never stored, its id and seq are null
    "tool.call": ToolCallData,
    "tool.approval_requested": ToolApprovalRequestedData,
    "tool.approval_resolved": ToolApprovalResolvedData,
    "tool.result": ToolResultData,
    "context.compacted": ContextCompactedData,
    "provider.fallback": ProviderFallbackData,
    "session.completed": SessionCompletedData,
}
EVENT_TYPES = tuple(EVENTS)


class _EventBase(_Out):
    id: str | None = Field(description="null for message.delta (live only)")
    seq: int | None = Field(description="1, 2, 3 ... per session; null for message.delta")
    session_id: str
    turn_id: str | None
    ts: Timestamp


def _event_model(type_: str, data: type[_EventData]) -> type[BaseModel]:
    """The model of one event type: the envelope, its `type`, its data."""
    name = "".join(word.capitalize() for word in re.split(r"[._]", type_)) + "Event"
    annotations = {"type": Literal[type_], "data": data}
    return type(name, (_EventBase,), {"__annotations__": annotations, "__module__": __name__,
                                      "__doc__": f"The event {type_}."})  # fmt: skip


_EVENT_MODELS = [_event_model(type_, data) for type_, data in EVENTS.items()]


@_LazyModel
def Event() -> type[BaseModel]:
    from pydantic import RootModel

    class Event(RootModel):
        """A session event, its `data` shaped by its `type`."""

        model_config = ConfigDict(defer_build=True)
        root: Annotated[typing.Union[tuple(_EVENT_MODELS)], Field(discriminator="type")]  # noqa: UP007

    return Event


def _event_mismatch(type_: str, data: dict) -> str | None:
    """What is wrong with an event's data, as its model says (None: nothing)."""
    try:
        EVENTS[type_].model_validate(data)
        return None
    except ValidationError as e:
        return f"event {type_}: " + "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}"
                                               for d in _validation_details(e))  # fmt: skip


class EventsQuery(ListQuery):
    """Query of GET /v1/sessions/{id}/events (`limit` pages the JSON listing)."""

    after: JsonInt | None = Field(
        None, ge=0, le=MAX_SEQ, description="Replay events with a larger seq (Last-Event-ID wins)."
    )
    types: str | None = Field(
        None,
        max_length=1024,
        pattern=r"^[a-z_]+(\.([a-z_]+|\*))?(,[a-z_]+(\.([a-z_]+|\*))?)*$",
        description="Comma-separated event types; a trailing .* matches a prefix (message.*).",
    )
    until: Literal["completed"] | None = Field(None, description="Close the stream once the session is settled.")
    format: Literal["json", "sse"] | None = Field(None, description="json: the stored events as a JSON page.")


ProviderPage = _page_model(Provider)


class Cassette(_Out):
    """One model call a recording provider served (SPEC 18): what was asked, normalised (no key,
    no header, keys in a stable order), and the answer as it streamed."""

    id: str
    provider_id: str
    request_hash: str = Field(
        description="SHA-256 of the normalised request, the model's name left out: what a "
        "replay provider matches a call by."
    )
    model: str
    request: dict[str, Any] = Field(description="system, summary, messages, tools, temperature.")
    answer: dict[str, Any] = Field(
        description="deltas ([ms since the call began, text] each), text, tool_calls, "
        "input_tokens, output_tokens, total_ms."
    )
    created_at: Timestamp


CassettePage = _page_model(Cassette)
AgentPage = _page_model(Agent)
SessionPage = _page_model(Session)
MessagePage = _page_model(Message)
CapabilityPage = _page_model(Capability)
McpServerPage = _page_model(McpServer)
ModelPage = _page_model(ModelInfo)
EventPage = _page_model(Event)

# =============================================================================
# 7. Storage
# =============================================================================


class _NoStatements(logging.Filter):
    """peewee logs every statement with its parameters at DEBUG, API keys included: an app
    drops those records while it lives (its logger's level is left as it is)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


class _JSONField(pw.TextField):
    """A JSON value stored as text."""

    def db_value(self, value: Any) -> str | None:
        return None if value is None else _dumps(value)

    def python_value(self, value: str | None) -> Any:
        return None if value is None else json.loads(value)


# Frozen DDL, one list per schema version: a migration never depends on the
# model classes, which always describe the newest version.
_MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE provider (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, provider_type TEXT NOT NULL,
            base_url TEXT, default_model TEXT NOT NULL, api_key TEXT,
            is_default INTEGER NOT NULL DEFAULT 0, settings TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE UNIQUE INDEX provider_one_default ON provider (is_default) WHERE is_default = 1",
        """CREATE TABLE agent (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
            system_prompt TEXT NOT NULL, capabilities TEXT NOT NULL,
            provider_id TEXT REFERENCES provider (id), model TEXT, tags TEXT NOT NULL,
            max_iterations INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX agent_provider ON agent (provider_id)",
        """CREATE TABLE session (
            id TEXT PRIMARY KEY, agent_id TEXT NOT NULL REFERENCES agent (id) ON DELETE CASCADE,
            title TEXT, tags TEXT NOT NULL, provider_id TEXT REFERENCES provider (id), model TEXT,
            status TEXT NOT NULL, last_turn TEXT, input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX session_agent ON session (agent_id, id)",
        "CREATE INDEX session_provider ON session (provider_id)",
        """CREATE TABLE turn (
            id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            status TEXT NOT NULL, error TEXT, provider_id TEXT, model TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
            iterations INTEGER NOT NULL DEFAULT 0, started_at TEXT NOT NULL, ended_at TEXT)""",
        "CREATE INDEX turn_session ON turn (session_id, status)",
        """CREATE TABLE message (
            id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            role TEXT NOT NULL, content TEXT NOT NULL, turn_id TEXT, controls TEXT,
            provider_id TEXT, model TEXT, created_at TEXT NOT NULL)""",
        "CREATE INDEX message_session ON message (session_id, id)",
        "CREATE INDEX message_owed ON message (session_id) WHERE turn_id IS NULL",
        """CREATE TABLE event (
            id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL, type TEXT NOT NULL, turn_id TEXT, ts TEXT NOT NULL,
            data TEXT NOT NULL, UNIQUE (session_id, seq))""",
        """CREATE TABLE idempotency_key (
            session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            key TEXT NOT NULL, request_hash TEXT NOT NULL, message_id TEXT NOT NULL,
            created_at TEXT NOT NULL, PRIMARY KEY (session_id, key))""",
    ],
    [  # 2: the session file system
        """CREATE TABLE file (
            session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            path TEXT NOT NULL, type TEXT NOT NULL, content BLOB, encoding TEXT,
            size_bytes INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            PRIMARY KEY (session_id, path))""",
    ],
    [  # 3: several processes on one database (PostgreSQL): who runs each turn, who is alive
        "ALTER TABLE turn ADD COLUMN owner TEXT",
        "CREATE INDEX turn_running ON turn (owner) WHERE status = 'running'",
        """CREATE TABLE instance (
            id TEXT PRIMARY KEY, lock_key INTEGER NOT NULL, heartbeat INTEGER NOT NULL,
            started_at TEXT NOT NULL)""",
    ],
    [  # 4: people in the loop: tools that wait for an approval, tools the client runs
        "ALTER TABLE agent ADD COLUMN require_approval TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE agent ADD COLUMN client_tools TEXT NOT NULL DEFAULT '[]'",
    ],
    [  # 5: MCP servers added through the API (Streamable HTTP)
        """CREATE TABLE mcp_server (
            id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, url TEXT NOT NULL, headers TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
    ],
    [  # 6: the order messages were written in (their message.created's seq; see CONVERSATION_ORDER)
        "ALTER TABLE message ADD COLUMN seq INTEGER",
    ],
    [  # 7: what the SDK surface (/api/v1) gives agents and sessions: starter files, a display name, and a
        # session's own capabilities and client tools (added to its agent's)
        "ALTER TABLE agent ADD COLUMN initial_files TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE agent ADD COLUMN display_name TEXT",
        "ALTER TABLE session ADD COLUMN capabilities TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE session ADD COLUMN client_tools TEXT NOT NULL DEFAULT '[]'",
    ],
    [  # 8: what an assistant message cost (its model call's tokens and timing), and a cancelled turn's text
        "ALTER TABLE message ADD COLUMN usage TEXT",
        "ALTER TABLE message ADD COLUMN latency_ms TEXT",
        "ALTER TABLE message ADD COLUMN incomplete BOOLEAN NOT NULL DEFAULT FALSE",
    ],
    [  # 9: a turn's trace (OpenTelemetry: its span, which a resumed turn's run continues), and the count of
        # waiting turns GET /metrics reads
        "ALTER TABLE turn ADD COLUMN trace_id TEXT",
        "ALTER TABLE turn ADD COLUMN span_id TEXT",
        f"CREATE INDEX turn_waiting ON turn (status) WHERE status = '{TURN_WAITING}'",
    ],
    [  # 10: what compaction wrote of a session's older turns (SPEC 16): later calls send it instead of them
        """CREATE TABLE summary (
            id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES session (id) ON DELETE CASCADE,
            turn_id TEXT, through TEXT NOT NULL, turn_ids TEXT NOT NULL, text TEXT NOT NULL,
            tokens INTEGER NOT NULL, created_at TEXT NOT NULL)""",
        "CREATE INDEX summary_session ON summary (session_id, id)",
    ],
    [  # 11: the idle sessions by last activity, for --retention-days
        f"CREATE INDEX session_idle ON session (updated_at) WHERE status = '{SESSION_IDLE}'",
    ],
    [  # 12: the providers a model call falls back to (SPEC 18); a session's null means its agent's
        "ALTER TABLE agent ADD COLUMN fallback_provider_ids TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE session ADD COLUMN fallback_provider_ids TEXT",
    ],
    [  # 13: the model calls a recording provider served, for a replay provider (SPEC 18)
        """CREATE TABLE cassette (
            id TEXT PRIMARY KEY, provider_id TEXT NOT NULL REFERENCES provider (id) ON DELETE CASCADE,
            request_hash TEXT NOT NULL, model TEXT NOT NULL, request TEXT NOT NULL, answer TEXT NOT NULL,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX cassette_request ON cassette (provider_id, request_hash, id)",
    ],
]
SCHEMA_VERSION = len(_MIGRATIONS)


# The tables, defined once; each app binds its own subclasses to its database
# (_build_models), so two apps in one process never share one.


class _MetaTable(pw.Model):
    key = pw.TextField(primary_key=True)
    value = pw.TextField()

    class Meta:
        table_name = "meta"


class _ProviderTable(pw.Model):
    id = pw.TextField(primary_key=True)
    name = pw.TextField()
    provider_type = pw.TextField()
    base_url = pw.TextField(null=True)
    default_model = pw.TextField()
    api_key = pw.TextField(null=True)
    is_default = pw.BooleanField(default=False)
    settings = _JSONField()
    created_at = pw.TextField()
    updated_at = pw.TextField()

    class Meta:
        table_name = "provider"


class _AgentTable(pw.Model):
    id = pw.TextField(primary_key=True)
    name = pw.TextField()
    description = pw.TextField()
    system_prompt = pw.TextField()
    capabilities = _JSONField()
    provider_id = pw.TextField(null=True)
    model = pw.TextField(null=True)
    fallback_provider_ids = _JSONField(default=list)
    tags = _JSONField()
    max_iterations = pw.IntegerField()
    require_approval = _JSONField(default=list)
    client_tools = _JSONField(default=list)
    initial_files = _JSONField(default=list)  # written into each new session's files
    display_name = pw.TextField(null=True)
    created_at = pw.TextField()
    updated_at = pw.TextField()

    class Meta:
        table_name = "agent"


class _SessionTable(pw.Model):
    id = pw.TextField(primary_key=True)
    agent_id = pw.TextField()
    title = pw.TextField(null=True)
    tags = _JSONField()
    provider_id = pw.TextField(null=True)
    model = pw.TextField(null=True)
    fallback_provider_ids = _JSONField(null=True)  # null: its agent's
    status = pw.TextField(default=SESSION_IDLE)
    last_turn = _JSONField(null=True)
    input_tokens = pw.IntegerField(default=0)
    output_tokens = pw.IntegerField(default=0)
    capabilities = _JSONField(default=list)  # the session's own, added to its agent's
    client_tools = _JSONField(default=list)  # likewise
    created_at = pw.TextField()
    updated_at = pw.TextField()

    class Meta:
        table_name = "session"


class _TurnTable(pw.Model):
    id = pw.TextField(primary_key=True)
    session_id = pw.TextField()
    status = pw.TextField()
    error = _JSONField(null=True)
    provider_id = pw.TextField(null=True)
    model = pw.TextField(null=True)
    input_tokens = pw.IntegerField(default=0)
    output_tokens = pw.IntegerField(default=0)
    iterations = pw.IntegerField(default=0)
    started_at = pw.TextField()
    ended_at = pw.TextField(null=True)
    owner = pw.TextField(null=True)  # the lease of the process that runs it
    trace_id = pw.TextField(null=True)  # with tracing on: its OpenTelemetry trace, and its span
    span_id = pw.TextField(null=True)

    class Meta:
        table_name = "turn"


class _MessageTable(pw.Model):
    id = pw.TextField(primary_key=True)
    session_id = pw.TextField()
    role = pw.TextField()
    content = _JSONField()
    turn_id = pw.TextField(null=True)
    controls = _JSONField(null=True)
    provider_id = pw.TextField(null=True)
    model = pw.TextField(null=True)
    created_at = pw.TextField()
    seq = pw.IntegerField(null=True)  # its message.created event's (null: stored before version 6)
    usage = _JSONField(null=True)  # an assistant message's (null: stored before version 8)
    latency_ms = _JSONField(null=True)
    incomplete = pw.BooleanField(default=False)

    class Meta:
        table_name = "message"


class _SummaryTable(pw.Model):
    id = pw.TextField(primary_key=True)
    session_id = pw.TextField()
    turn_id = pw.TextField(null=True)  # the turn that wrote it
    through = pw.TextField()  # the newest turn it covers: later calls send the turns after it
    turn_ids = _JSONField()  # the turns this compaction summarised (those before are in the summary it took in)
    text = pw.TextField()
    tokens = pw.IntegerField()  # its estimated size
    created_at = pw.TextField()

    class Meta:
        table_name = "summary"


class _EventTable(pw.Model):
    id = pw.TextField(primary_key=True)
    session_id = pw.TextField()
    seq = pw.IntegerField()
    type = pw.TextField()
    turn_id = pw.TextField(null=True)
    ts = pw.TextField()
    data = _JSONField()

    class Meta:
        table_name = "event"


class _IdempotencyKeyTable(pw.Model):
    session_id = pw.TextField()
    key = pw.TextField()
    request_hash = pw.TextField()
    message_id = pw.TextField()
    created_at = pw.TextField()

    class Meta:
        table_name = "idempotency_key"
        primary_key = pw.CompositeKey("session_id", "key")


class _FileTable(pw.Model):
    session_id = pw.TextField()
    path = pw.TextField()
    type = pw.TextField()
    content = pw.BlobField(null=True)
    encoding = pw.TextField(null=True)
    size_bytes = pw.IntegerField(default=0)
    created_at = pw.TextField()
    updated_at = pw.TextField()

    class Meta:
        table_name = "file"
        primary_key = pw.CompositeKey("session_id", "path")


class _CassetteTable(pw.Model):
    id = pw.TextField(primary_key=True)
    provider_id = pw.TextField()
    request_hash = pw.TextField()
    model = pw.TextField()
    request = _JSONField()
    answer = _JSONField()
    created_at = pw.TextField()

    class Meta:
        table_name = "cassette"


class _McpServerTable(pw.Model):
    id = pw.TextField(primary_key=True)
    name = pw.TextField(unique=True)
    url = pw.TextField()
    headers = _JSONField()  # values sealed like provider keys
    created_at = pw.TextField()
    updated_at = pw.TextField()

    class Meta:
        table_name = "mcp_server"


@dataclasses.dataclass(frozen=True)
class _Models:
    """One app's tables, bound to its database, and the per-turn SQL in its dialect."""

    db: pw.Database
    sql: dict[str, str]
    Meta: type[_MetaTable]
    Provider: type[_ProviderTable]
    Agent: type[_AgentTable]
    Session: type[_SessionTable]
    Turn: type[_TurnTable]
    Message: type[_MessageTable]
    Event: type[_EventTable]
    IdempotencyKey: type[_IdempotencyKeyTable]
    File: type[_FileTable]
    McpServer: type[_McpServerTable]
    Summary: type[_SummaryTable]
    Cassette: type[_CassetteTable]


def _build_models(db: pw.Database) -> _Models:
    """The tables bound to one database: a subclass of each, with the same fields."""

    def bound(table: type[pw.Model]) -> type[pw.Model]:
        meta = type("Meta", (), {"database": db, "table_name": table._meta.table_name})
        return type(table.__name__, (table,), {"Meta": meta, "__module__": __name__})

    tables = {f.name: typing.get_args(f.type)[0] for f in dataclasses.fields(_Models) if f.name not in ("db", "sql")}
    sql = _SQL_POSTGRES if isinstance(db, pw.PostgresqlDatabase) else _SQL
    return _Models(db=db, sql=sql, **{name: bound(table) for name, table in tables.items()})


def _pragmas(sync: str) -> dict[str, Any]:
    """The connection pragmas (see ENGINEERING notes in the README)."""
    return {
        "journal_mode": "wal",
        "synchronous": sync,
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "journal_size_limit": 67108864,
        "temp_store": "memory",
    }


POSTGRES_POOL = 32  # connections of the pool (the writer has its own): greenlets hold one only while querying
POSTGRES_POOL_WAIT_S = 30  # how long a greenlet waits for one when all are in use
POSTGRES_RECHECK_S = 5  # a pooled connection idle this long is checked (a round trip) before it is used again


def _postgres_database(url: str) -> pw.Database:
    """A pooled PostgreSQL database through psycopg 3, refused unless it waits cooperatively."""
    _check_greenlet_local()
    if pw.psycopg is None or int(pw.__version__.split(".")[0]) < 4:  # peewee imports the driver itself
        raise StartupError("--db postgresql://... needs the driver: pip install 'everruns[postgres]'", 2)
    from gevent import monkey
    from playhouse.db_url import parse
    from playhouse.pool import PooledPostgresqlDatabase
    from psycopg import waiting

    if monkey.is_module_patched("select") and waiting.wait is waiting.wait_c:
        raise StartupError(
            "psycopg was imported before gevent patched the process: every query would block the "
            "server. Call gevent.monkey.patch_all() before importing everruns (or peewee, or psycopg)."
        )

    class Pool(PooledPostgresqlDatabase):
        """peewee's pool checks each connection it hands out with a round trip (SELECT 1):
        one more for every query of a request or a turn. Here only a connection idle for
        POSTGRES_RECHECK_S is checked so; a busy one is known to work."""

        def _is_closed(self, conn: Any) -> bool:
            idle = time.monotonic() - getattr(conn, "everruns_used", 0.0)
            conn.everruns_used = time.monotonic()
            return conn.closed or conn.broken or (idle > POSTGRES_RECHECK_S and super()._is_closed(conn))

    params = parse(url.replace("postgres://", "postgresql://", 1))
    return Pool(prefer_psycopg3=True, max_connections=POSTGRES_POOL, timeout=POSTGRES_POOL_WAIT_S, stale_timeout=300,
                **params)  # fmt: skip


def _postgres_ddl(sql: str) -> str:
    """A migration statement (written for SQLite) as PostgreSQL says it: text compared byte
    by byte as SQLite does (ids, keys and paths sort the same on both), 64-bit integers,
    bytes as bytea, booleans as booleans."""
    sql = sql.replace("is_default INTEGER NOT NULL DEFAULT 0", "is_default BOOLEAN NOT NULL DEFAULT false")
    sql = sql.replace("WHERE is_default = 1", "WHERE is_default")
    sql = re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', sql)
    return re.sub(r"\bINTEGER\b", "BIGINT", sql).replace(" BLOB", " BYTEA")


def _check_greenlet_local() -> None:
    """Refuse a process where gevent patched threading after peewee was imported."""
    import gevent.local
    from gevent import monkey

    if monkey.is_module_patched("threading") and not issubclass(pw._ConnectionLocal, gevent.local.local):
        raise RuntimeError(
            "peewee was imported before gevent patched the process: all greenlets would share "
            "one database connection. Call gevent.monkey.patch_all() before importing everruns."
        )


class _SecretUnreadable(ProviderError):
    """A stored provider key cannot be decrypted with the configured secret key."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "PROVIDER_KEY_UNREADABLE")


class _Secrets:
    """Provider API keys and credential-like `extra_headers` values at rest: Fernet-encrypted
    when a secret key is configured, plain text otherwise. Also remembers every secret it has
    seen, to blank it out of logs and error messages."""

    PREFIX = "fernet:"

    def __init__(self, secret_key: str | None) -> None:
        self.fernet, self.known = None, set()
        if secret_key:
            try:
                from cryptography.fernet import Fernet
            except ImportError:
                raise StartupError(
                    "EVERRUNS_SECRET_KEY is set but the 'cryptography' package is not installed: "
                    "pip install 'everruns[secrets]'"
                ) from None
            # Any string works as the secret: it is stretched to a Fernet key.
            self.fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret_key.encode()).digest()))

    def _seal(self, value: str | None) -> str | None:
        if value is None or value.startswith(self.PREFIX) or self.fernet is None:
            return value  # a sealed value is kept as it is
        return self.PREFIX + self.fernet.encrypt(value.encode()).decode()

    def _open(self, stored: str | None) -> str | None:
        if stored is None or not stored.startswith(self.PREFIX):
            return stored
        if self.fernet is None:
            raise _SecretUnreadable("the provider key is encrypted: start the server with its EVERRUNS_SECRET_KEY")
        try:
            return self.fernet.decrypt(stored[len(self.PREFIX) :].encode()).decode()
        except Exception:  # cryptography's InvalidToken, without importing it here
            raise _SecretUnreadable("the provider key cannot be decrypted: EVERRUNS_SECRET_KEY has changed") from None

    def seal(self, api_key: str | None) -> str | None:
        """The form in which an API key is stored (a sealed one is kept as it is)."""
        if api_key and not api_key.startswith(self.PREFIX):
            self.known.add(api_key)
        return self._seal(api_key)

    def open(self, stored: str | None) -> str | None:
        """The API key a stored value holds."""
        api_key = self._open(stored)
        if api_key:
            self.known.add(api_key)
        return api_key

    def _headers(self, settings: dict, change: Callable[[str | None], str | None], opening: bool) -> dict:
        """Settings with each credential-like extra_headers value changed; the plain ones remembered."""
        headers = settings.get("extra_headers")
        if not headers:
            return settings
        changed = {k: change(v) if _looks_like_credential(k) else v for k, v in headers.items()}
        source = changed if opening else headers
        self.known.update(source[k] for k in headers if _looks_like_credential(k) and self._redactable(source[k]))
        return {**settings, "extra_headers": changed}

    def _redactable(self, value: str | None) -> bool:
        return bool(value) and not value.startswith(self.PREFIX)

    def seal_settings(self, settings: dict) -> dict:
        """Provider settings as stored: credential-like extra_headers sealed like API keys."""
        return self._headers(settings, self._seal, opening=False)

    def open_settings(self, settings: dict) -> dict:
        """Provider settings as sent upstream: credential-like extra_headers opened."""
        return self._headers(settings, self._open, opening=True)

    def secrets_of(self, settings: dict, api_key: str | None) -> tuple[str, ...]:
        """What must be blanked out of anything a provider answers: its key and credential headers."""
        headers = settings.get("extra_headers") or {}
        credentials = (v for k, v in headers.items() if _looks_like_credential(k) and self._redactable(v))
        return tuple(filter(None, (api_key, *credentials)))

    def load(self, m: _Models) -> None:
        """Learn the stored secrets, and encrypt any plain one when a secret key is set."""
        for row in m.Provider.select():
            try:
                self.open(row.api_key)
                self.open_settings(row.settings)
            except _SecretUnreadable as e:
                _log.warning("provider %r: %s; its turns will fail with PROVIDER_KEY_UNREADABLE", row.name, e)
            if self.fernet:
                api_key, settings = self.seal(row.api_key), self.seal_settings(row.settings)
                if (api_key, settings) != (row.api_key, row.settings):
                    m.Provider.update(api_key=api_key, settings=settings).where(m.Provider.id == row.id).execute()


class _RedactingFilter(logging.Filter):
    """Blanks out API keys (the server's, stored provider keys, sk-… and Bearer tokens) in log lines."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        known = tuple(self.secrets())
        message = record.getMessage()
        clean = _redact(message, *known)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact(record.exc_text, *known)
        return True


def _is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def _db_password(db: str) -> str | None:
    """The password in a database URL (a secret like an API key), if any."""
    from urllib.parse import unquote, urlsplit

    password = urlsplit(db).password if _is_postgres(db) else None
    return unquote(password) if password else None


def _shown_db(db: str) -> str:
    """A --db value as messages show it: a URL's password masked."""
    from urllib.parse import quote

    password = _db_password(db)
    return _redact(db, password, quote(password, safe="")) if password else db


def _check_database_path(path: str) -> None:
    """Refuse, in one line, a --db that cannot be a SQLite file (before SQLite says it less clearly)."""
    if path == ":memory:" or _is_postgres(path):
        return
    if "://" in path:
        scheme = path.split("://", 1)[0]
        raise StartupError(
            f"--db: {scheme}:// databases are not supported (a file path, :memory: or postgresql://...)", 2
        )
    if os.path.isdir(path):
        raise StartupError(f"--db: {path} is a directory, not a database file", 2)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StartupError(f"--db: the folder {folder} does not exist")
    if not os.access(path if os.path.exists(path) else folder, os.R_OK | os.W_OK):
        raise StartupError(f"--db: {path} cannot be written (check its permissions and its folder's)")


def _claim_database_file(path: str) -> int | None:
    """Create the SQLite file if need be (owner-only: it may hold API keys) and hold it for
    this app: an exclusive flock on `<path>-lock`, which names the holding process. A file
    another app serves, in this process or another, is refused in one line; the lock goes
    with the app (or the process: kill -9 frees it). Not the database file itself: SQLite
    locks it with fcntl locks, which closing any descriptor of it would drop."""
    real = os.path.realpath(path)
    try:
        if not os.path.exists(real):
            os.close(os.open(real, os.O_CREAT | os.O_WRONLY, 0o600))
        fd = os.open(real + "-lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StartupError(f"--db: {path} cannot be used as a database file: {e.strerror or e}") from None
    if os.name != "posix":
        return fd
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = "this process (another app)" if holder == str(os.getpid()) else f"process {holder or '?'}"
        raise StartupError(
            f"--db: {path} is already served by {who}: one server per SQLite file "
            "(several processes share a database only on PostgreSQL)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _db_fault(error: BaseException) -> EverrunsError | None:
    """A database error that is a fault around the server, not a bug: the database cannot be
    reached or written (503), or its disk is full (507); None for anything else."""
    from playhouse.pool import MaxConnectionsExceeded

    text = " ".join(str(error).split())
    if isinstance(error, pw.IntegrityError) or not isinstance(error, (pw.DatabaseError, MaxConnectionsExceeded)):
        return None
    if "database or disk is full" in text or "No space left on device" in text or "disk full" in text:
        return _InsufficientStorage(f"the database's storage is full: {text}")
    if isinstance(error, (pw.OperationalError, pw.InterfaceError, MaxConnectionsExceeded)):
        return _ServiceUnavailable(f"the database cannot be reached or written now: {text}")
    return None


class _Group:
    """Writes that share one transaction (a group commit): the writes that are
    ready in the same turn of the event loop commit together, with one fsync.

    ``after`` runs right after the commit, in order (the journal publishes there);
    ``failed`` if the commit fails, when every write of the group fails with it.
    """

    def __init__(self) -> None:
        self.done = gevent.event.Event()
        self.error: Exception | None = None
        self.after: list[Callable[[], None]] = []
        self.failed: list[Callable[[], None]] = []
        self.locks: set[str] = set()  # the sessions whose advisory locks it holds (PostgreSQL)
        self.writes = 0  # begun in it: the first needs no savepoint (its failure rolls back nothing else)
        self.held = False  # PostgreSQL: the last write's savepoint is not released yet (see _savepoint)
        self.saved = False  # PostgreSQL: the savepoint of the write beginning is made (with its lock)

    def end(self, error: Exception | None = None) -> None:
        self.error = error
        for callback in self.failed if error else self.after:
            callback()
        self.done.set()

    def wait(self) -> None:
        """Return once the group is committed; raise if its commit failed."""
        self.done.wait()
        if self.error is not None:
            raise type(self.error)(*self.error.args)  # a fresh exception for each writer


NOTIFY_CHANNEL = "everruns"  # where the processes sharing a PostgreSQL database tell each other what changed
NOTIFY_BYTES = 7900  # a notification's payload (PostgreSQL takes up to 7,999 bytes)
DELTA_PIECE = 1000  # characters of streamed text per notified piece (at most 6 bytes each as JSON)
_LEASES = itertools.count()


def _lease_id() -> str:
    """The id this app's turns are stored under: the process's instance id (a second app in
    the process, or a lease taken again after losing one, gets a suffix)."""
    n = next(_LEASES)
    return INSTANCE if n == 0 else f"{INSTANCE}-{n}"


def _payloads(sender: str, items: list[list]) -> list[str]:
    """Notification payloads for `items`: as few as fit NOTIFY_BYTES, in order."""
    payloads, batch, size = [], [], 0
    for text in map(_dumps, items):
        if batch and size + len(text.encode()) > NOTIFY_BYTES - 64:
            payloads.append(batch)
            batch, size = [], 0
        batch.append(text)
        size += len(text.encode()) + 1
    payloads.append(batch)
    return [f'{{"from":{_dumps(sender)},"items":[{",".join(batch)}]}}' for batch in payloads if batch]


SIZE_EVERY_S = 2.0  # how often --max-db-mb reads the database's size


class _Store:
    """One app's database: its models, its write lock, its migrations and its secrets."""

    def __init__(self, path: str, sync: str = "full", secret_key: str | None = None,
                 obs: _Observer | None = None) -> None:  # fmt: skip
        _check_database_path(path)
        self.path = path
        self.obs = obs or _Observer()  # what the app counts and traces (section 5)
        self.memory = path == ":memory:"
        self.postgres = _is_postgres(path)
        self.secrets = _Secrets(secret_key)
        self.claim: int | None = None  # the lock that holds a SQLite file for this app
        if self.postgres:
            self.db = _postgres_database(path)
        elif self.memory:
            # An in-memory database lives and dies with its connection: every greenlet shares one.
            self.db = pw.SqliteDatabase(path, pragmas=_pragmas(sync), thread_safe=False)
        else:
            _check_greenlet_local()
            self.claim = _claim_database_file(path)
            # One connection per greenlet, from a pool: requests skip connect + pragmas,
            # and the last close never triggers SQLite's checkpoint-on-close mid-serving.
            self.db = PooledSqliteDatabase(path, pragmas=_pragmas(sync), max_connections=None)
        self.m = _build_models(self.db)
        self._lock = threading.RLock()
        # Every write runs on this one connection (borrowed by the writing greenlet), so
        # that several writes can share a transaction; reads keep their own connections
        # and see only what is committed.
        self._writer: Any = None  # opened by the first write
        self._group: _Group | None = None  # the open transaction, until its commit
        self._writing: Any = None  # the greenlet inside a write (on PostgreSQL others run meanwhile)
        # Several processes (PostgreSQL): the id this app's turns are stored under, and what
        # the other processes are told with the next commit (see _notify).
        self.lease = _lease_id()
        self.outbox: list[list] = []
        self.deltas: dict[tuple[str, str, str], list[str]] = {}  # streamed text, by (session, turn, message)
        self.fault: EverrunsError | None = None  # why the database cannot be used now (see noticed)
        self._probed = 0.0  # when /health last tried a write while the database was at fault
        self._sized = (-math.inf, 0.0)  # when used_mb() last read the size, and what it read

    def noticed(self, error: BaseException) -> EverrunsError | None:
        """Note a database error: a fault (see _db_fault) is logged once, when the database goes
        from usable to not, and idle connections are dropped (they may all be dead); the fault."""
        fault = _db_fault(error)
        if fault is not None:
            if self.fault is None:
                _log.warning("database unavailable: %s", fault.message)
            self.fault = fault
            if not self.memory:
                with contextlib.suppress(Exception):
                    self.db.close_idle()
        return fault

    def _usable(self) -> None:
        """A write committed: the database works (logged once, after a fault)."""
        if self.fault is not None:
            self.fault = None
            _log.warning("database available again")

    def check(self) -> None:
        """For /health: a read, and while the database is at fault a write (at most once a second,
        else the fault is raised again); the database error when it cannot be used."""
        if self.fault is not None:
            if time.monotonic() - self._probed < 1.0:
                raise pw.OperationalError(self.fault.message)
            self._probed = time.monotonic()
            with self.write():  # a row written and taken back: pages written all the same
                self.db.execute_sql(f"INSERT INTO meta (key, value) VALUES ('health', {self.db.param})", (_now_iso(),))
                self.db.execute_sql("DELETE FROM meta WHERE key = 'health'")
        self.db.execute_sql("SELECT 1").fetchone()

    @contextlib.contextmanager
    def write(self, session_id: str | None = None) -> Iterator[_Group]:
        """The one write path: a process-wide lock, then a savepoint in the open group
        transaction (BEGIN IMMEDIATE on SQLite, BEGIN on PostgreSQL, when there is none;
        the first write of a transaction needs none); on leaving, wait for its commit.

        Nothing inside may wait on anything but the database (no provider call, no tool):
        the lock is held meanwhile. On SQLite nothing inside yields to other greenlets; on
        PostgreSQL each statement does, and they wait for the lock. A write inside a write
        is part of it.

        ``session_id`` names the session whose rows the write changes: on PostgreSQL the
        write holds that session's advisory lock until the commit, so that writers in other
        processes take turns with it (see _lock_session).
        """
        started = time.monotonic()
        if self.memory:  # one shared connection: a transaction of its own
            group = _Group()
            with self._lock, self.db.atomic(lock_type="IMMEDIATE"):
                yield group
            group.end()
            self.obs.metrics.observe("everruns_db_write_seconds", time.monotonic() - started)
            return
        with self._lock:
            if self._writing is not None:  # the lock is ours: a write inside a write
                if session_id is not None and self.postgres:
                    self._lock_session(self._group, session_id, wait=True)
                yield self._group
                return
            group = self._group or self._open_group()
            self._writing = gevent.getcurrent()
            try:
                with self._on_writer():
                    if session_id is not None and self.postgres:  # before the savepoint (a rollback to it frees it)
                        try:
                            group = self._lock_session(group, session_id)
                        except BaseException as e:  # stopped while waiting: the transaction cannot go on
                            self._abandon(self._group, e)
                            raise
                    first, group.writes = not group.writes, group.writes + 1
                    if not first and not group.saved:
                        self._savepoint(group)
                    group.saved = False
                    try:
                        yield group
                    except BaseException as e:
                        if first:  # the transaction holds nothing else: it goes, and the group with it
                            self._abandon(group, e)
                        else:
                            self._undo(group, e)
                        raise
                    if not first and not self.postgres:
                        self.db.execute_sql("RELEASE w")
                    group.held = self.postgres and not first
            finally:
                self._writing = None
        group.wait()
        self.obs.metrics.observe("everruns_db_write_seconds", time.monotonic() - started)

    def _lock_session(self, group: _Group, session_id: str, wait: bool = False) -> _Group:
        """Hold a session's advisory lock until `group` commits; the group to write in.

        A group that holds locks already does not wait for another (a group of another
        process could be waiting for one of ours): when the lock is taken, this group
        commits now, and a new one, holding nothing, waits for it. (A write inside a write
        cannot commit midway: it waits.)
        """
        key = (session_id,)
        if session_id in group.locks:
            return group
        if group.locks and not wait:
            if self._try_lock(group, session_id):
                group.locks.add(session_id)
                return group
            self._commit(group)
            group = self._open_group()
        self.db.execute_sql("SELECT pg_advisory_xact_lock(hashtext(%s))", key)
        group.locks.add(session_id)
        return group

    def _try_lock(self, group: _Group, session_id: str) -> bool:
        """Try a session's lock for a write joining a group that has written already, in
        one round trip with the write's savepoint (made after the lock, so that rolling
        back to it keeps the lock; the one before is released first)."""
        key = pw.psycopg.sql.Literal(session_id).as_string(self._writer)
        lock = f"SELECT pg_try_advisory_xact_lock(hashtext({key}))"
        with pw.__exception_wrapper__:  # several statements: the simple query protocol (no parameters)
            cursor = self._writer.execute(f"{'RELEASE w; ' if group.held else ''}{lock}; SAVEPOINT w")
            while cursor.description is None and cursor.nextset():
                pass
            taken = cursor.fetchone()[0]
        group.held, group.saved = False, True
        return taken

    def _open_group(self) -> _Group:
        try:
            with self._on_writer():
                self.db.execute_sql("BEGIN" if self.postgres else "BEGIN IMMEDIATE")
        except BaseException:
            self._drop_writer_if_broken()
            raise
        self._group = _Group()
        gevent.spawn(self._commit, self._group)  # runs once this greenlet yields: after the writes ready now
        return self._group

    def _savepoint(self, group: _Group) -> None:
        """A write's savepoint. On PostgreSQL, where each statement is a round trip, the one
        before it is released in the same one (the commit releases the last)."""
        if not self.postgres:
            self.db.execute_sql("SAVEPOINT w")
            return
        with pw.__exception_wrapper__:  # two statements: the simple query protocol (no parameters)
            self._writer.execute("RELEASE w; SAVEPOINT w" if group.held else "SAVEPOINT w")
        group.held = False

    def _undo(self, group: _Group, error: BaseException) -> None:
        """Roll a failed write back to its savepoint; if the database rolled back the whole
        transaction (SQLite on a full disk or an I/O error), or the connection was stopped
        mid-query, every write of the group fails."""
        state = self._writer_state()
        if state == "transaction":
            self.db.execute_sql("ROLLBACK TO w")
            self.db.execute_sql("RELEASE w")
            return
        self._abandon(group, error, state)

    def _abandon(self, group: _Group | None, error: BaseException, state: str | None = None) -> None:
        """The group's transaction cannot go on: roll it back; every write of the group fails."""
        state = state or self._writer_state()
        if state == "transaction":
            with contextlib.suppress(Exception):
                self.db.execute_sql("ROLLBACK")
        if state == "broken":  # stopped mid-query and not cancelled: the connection cannot go on
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if group is not None and self._group is group:
            self._group = None
            group.end(error if isinstance(error, pw.DatabaseError) else pw.OperationalError(str(error)))

    def _commit(self, group: _Group) -> None:
        with self._lock:
            if self._group is not group:  # failed already
                return
            self._group = None
            try:
                with self._on_writer():
                    if self.postgres:
                        self._notify()
                    self.db.execute_sql("COMMIT")
            except pw.DatabaseError as e:
                with contextlib.suppress(Exception), self._on_writer():
                    self.db.execute_sql("ROLLBACK")
                self._drop_writer_if_broken()
                group.end(e)
            else:
                self._usable()
                group.end()

    def _drop_writer_if_broken(self) -> None:
        """A writer connection that the database side closed (a restart, a terminated backend,
        a network cut) is dropped: the next write opens a new one."""
        writer = self._writer
        if self.postgres and writer is not None and (writer.closed or writer.broken):
            with contextlib.suppress(Exception):
                writer.close()
            self._writer = None

    def _notify(self) -> None:
        """Tell the other processes what waits in the outbox (on the writer: in the open
        transaction, delivered with its commit). Streamed text goes first: it was produced
        before the events committed with it."""
        items = [["delta", *key, text[i : i + DELTA_PIECE]] for key, texts in self.deltas.items()
                 for text in ["".join(texts)] for i in range(0, len(text), DELTA_PIECE)]  # fmt: skip
        items += self.outbox
        self.deltas, self.outbox = {}, []
        for payload in _payloads(self.lease, items):
            self.db.execute_sql("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))

    def tell(self, *item: Any) -> None:
        """Tell the other processes something now (with the open group's commit if there is
        one); nothing on SQLite."""
        if self.postgres:
            self.outbox.append(list(item))
            self.send_notes()

    def send_notes(self) -> None:
        """Send what waits in the outbox, unless an open group's commit will."""
        with self._lock:
            if self._group is not None or not (self.outbox or self.deltas):
                return
            try:
                with self._on_writer():
                    self._notify()
            except pw.DatabaseError as e:
                _log.warning("could not notify the other processes: %s", e)

    def _writer_state(self) -> str:
        """ "transaction" (open, maybe failed: a savepoint rollback recovers it), "idle" (the
        database rolled it all back), or "broken" (a query still runs: PostgreSQL only)."""
        if not self.postgres:
            return "transaction" if self._writer.in_transaction else "idle"
        status = self._writer.info.transaction_status
        statuses = pw.psycopg.pq.TransactionStatus
        if status in (statuses.INTRANS, statuses.INERROR):
            return "transaction"
        return "idle" if status == statuses.IDLE else "broken"

    @contextlib.contextmanager
    def _on_writer(self) -> Iterator[None]:
        """This greenlet's queries go to the writer connection meanwhile (no yield in between)."""
        if self._writer is None:
            with pw.__exception_wrapper__:  # the driver's errors as peewee's, as for any query
                connect = pw.PostgresqlDatabase._connect if self.postgres else pw.SqliteDatabase._connect
                self._writer = connect(self.db)
        state = self.db._state
        saved = state.conn, state.closed, state.ctx, state.transactions
        state.conn, state.closed, state.ctx, state.transactions = self._writer, False, [], []
        try:
            yield
        finally:
            state.conn, state.closed, state.ctx, state.transactions = saved

    def used_mb(self) -> float:
        """What the database holds, in MB (SQLite: its pages in use; PostgreSQL: pg_database_size),
        read at most once every SIZE_EVERY_S."""
        if time.monotonic() - self._sized[0] >= SIZE_EVERY_S:
            sql = ("SELECT pg_database_size(current_database())" if self.postgres else
                   "SELECT (p.page_count - f.freelist_count) * s.page_size FROM pragma_page_count() p,"
                   " pragma_freelist_count() f, pragma_page_size() s")  # fmt: skip
            self._sized = (time.monotonic(), self.db.execute_sql(sql).fetchone()[0] / 1_048_576)
        return self._sized[1]

    def release(self) -> None:
        """Return this greenlet's connection to the pool (not for :memory:)."""
        if not self.memory and self._writing is not gevent.getcurrent() and not self.db.is_closed():
            self.db.close()

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that all see the database as it was at the first of them (one read transaction
        on this greenlet's connection), for a reader that reads in pages while turns write.
        Not for :memory:, whose one connection every greenlet shares: its reads are as they come."""
        if self.memory:
            yield
            return
        self.db.execute_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" if self.postgres else "BEGIN")
        try:
            yield
        finally:
            with contextlib.suppress(pw.DatabaseError):
                self.db.execute_sql("ROLLBACK")

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION in place; returns the version found."""
        with self.write():
            self.starting()
            if self.postgres:  # the version is a row of `meta` (none before the first migration)
                found = 0
                if self.db.execute_sql("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]:
                    row = self.db.execute_sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                    found = int(row[0]) if row else 0
            else:
                found = self.db.execute_sql("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StartupError(f"the database schema ({found}) is newer than this everruns ({SCHEMA_VERSION})")
            for statements in _MIGRATIONS[found:]:
                for sql in statements:
                    self.db.execute_sql(_postgres_ddl(sql) if self.postgres else sql)
            if self.postgres:
                self.db.execute_sql("DELETE FROM meta WHERE key = 'schema_version'")
                version = str(SCHEMA_VERSION)
                self.db.execute_sql("INSERT INTO meta (key, value) VALUES ('schema_version', %s)", (version,))
            else:
                self.db.execute_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if found == 0:
                self._seed_simulator()
        return found

    def starting(self) -> None:
        """Inside a write at start-up: on PostgreSQL, wait for other processes starting on the
        same database (one migrates, seeds and sets defaults at a time; held until the commit)."""
        if self.postgres:
            self.db.execute_sql("SELECT pg_advisory_xact_lock(0)")

    def _seed_simulator(self) -> None:
        self.add_provider("Built-in simulator", "llmsim", is_default=True)

    def add_provider(self, name: str, provider_type: str, *, api_key: str | None = None,
                     settings: dict | None = None, base_url: str | None = None, default_model: str | None = None,
                     is_default: bool = False) -> Any:  # fmt: skip
        """Store a provider, its type's defaults filling what is not given (call inside a write); the row."""
        default_url, default_name = PROVIDER_DEFAULTS[provider_type]
        if settings is None:  # the defaults, read from the fields (building the model costs 1 MB at start)
            fields = SETTINGS_MODELS[provider_type].model_fields
            settings = {name: f.get_default(call_default_factory=True) for name, f in fields.items()}
        ts = _now_iso()
        return self.m.Provider.create(
            id=_uuid7(), name=name, provider_type=provider_type, base_url=base_url or default_url,
            default_model=default_model or default_name, api_key=self.secrets.seal(api_key), is_default=is_default,
            settings=self.secrets.seal_settings(settings), created_at=ts, updated_at=ts,
        )  # fmt: skip

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close."""
        if self.memory:
            self.db.close()
            return
        if self._group is not None:
            self._commit(self._group)
        if not self.postgres:
            with contextlib.suppress(pw.DatabaseError):
                self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()
        self.db.close_all()
        if self._writer is not None:
            self._writer.close()
        if self.claim is not None:  # the last: another server may take the file from now on
            os.close(self.claim)
            self.claim = None


def _provider_out(row: Any) -> Provider:
    """A provider row as its response: no key, credential-like headers masked."""
    settings = dict(row.settings)
    if "extra_headers" in settings:
        settings["extra_headers"] = {
            k: (REDACTED if _looks_like_credential(k) else v) for k, v in settings["extra_headers"].items()
        }
    return Provider.model_validate(
        {
            "id": row.id,
            "name": row.name,
            "provider_type": row.provider_type,
            "base_url": row.base_url,
            "default_model": row.default_model,
            "api_key_set": bool(row.api_key),
            "is_default": bool(row.is_default),
            "settings": settings,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def _row_out(schema: type[BaseModel], row: Any) -> Any:
    """A row as the response schema of the same field names."""
    return schema(**{name: getattr(row, name) for name in schema.model_fields})


def _agent_out(row: Any) -> Agent:
    return _row_out(Agent, row)


def _session_out(row: Any) -> Session:
    fields = {name: getattr(row, name) for name in Session.model_fields if name != "usage"}
    return Session(**fields, usage=Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens))


def _message_out(row: Any) -> Message:
    return _row_out(Message, row)


# ---- the per-turn hot path ---------------------------------------------------
# These statements run several times per turn. They are plain SQL because
# peewee builds every query anew (about 0.25 ms each, most of a turn's CPU).

# A user message of session {} (a table or its alias) that no turn has taken up yet.
_OWED = "EXISTS (SELECT 1 FROM message m WHERE m.session_id = {}.id AND m.role = 'user' AND m.turn_id IS NULL)"
# The newest seq of session {} (an id column or a parameter): read with a statement made anyway, a round
# trip less on PostgreSQL, where the journal does not keep it.
_LAST_SEQ = "(SELECT COALESCE(MAX(seq), 0) FROM event WHERE session_id = {})"
# What a session waits for; with the last seq when the journal does not know it.
_NEXT_WORK = ("SELECT s.status, m.id, m.controls{} FROM session s LEFT JOIN message m ON m.id ="
              " (SELECT id FROM message WHERE session_id = s.id AND role = 'user' AND turn_id IS NULL"
              " ORDER BY id LIMIT 1) WHERE s.id = ?")  # fmt: skip
_SQL = {
    "session_exists": "SELECT 1 FROM session WHERE id = ?",
    "session_title": "SELECT title FROM session WHERE id = ?",
    "session_title_seq": f"SELECT title, {_LAST_SEQ.format('s.id')} FROM session s WHERE id = ?",
    "first_title": "UPDATE session SET title = ?, updated_at = ? WHERE id = ? AND title IS NULL AND NOT EXISTS"
    " (SELECT 1 FROM message WHERE session_id = ? AND role = 'user' AND id <> ?)",
    "last_seq": f"SELECT {_LAST_SEQ.format('?')}",
    "insert_event": "INSERT INTO event (id, session_id, seq, type, turn_id, ts, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
    "events_after": "SELECT id, seq, type, session_id, turn_id, ts, data FROM event"
    " WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?",
    "insert_message": "INSERT INTO message (id, session_id, role, content, turn_id, controls, provider_id, model,"
    " created_at, seq, usage, latency_ms, incomplete) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "next_work": _NEXT_WORK.format(""),
    "next_work_seq": _NEXT_WORK.format(f", {_LAST_SEQ.format('s.id')} AS last_seq"),
    "settled": f"SELECT status = '{SESSION_IDLE}' AND NOT {_OWED.format('s')} AS settled,"
    f" {_LAST_SEQ.format('s.id')} AS last_seq FROM session s WHERE s.id = ?",
    "turn_setup": "SELECT s.status, s.provider_id AS session_provider, s.model AS session_model,"
    " a.provider_id AS agent_provider, a.model AS agent_model, a.system_prompt, a.capabilities, a.max_iterations,"
    " a.require_approval, a.client_tools, s.capabilities AS session_capabilities,"
    " s.client_tools AS session_client_tools, COALESCE(s.fallback_provider_ids, a.fallback_provider_ids) AS fallbacks"
    " FROM session s JOIN agent a ON a.id = s.agent_id WHERE s.id = ?",
    "provider": "SELECT id, provider_type, base_url, default_model, api_key, settings FROM provider"
    " WHERE id = ? OR (CAST(? AS TEXT) IS NULL AND is_default)",
    "transcript": "SELECT role, content, turn_id FROM message WHERE session_id = ? AND turn_id > ?"
    " ORDER BY turn_id DESC, role != 'user' DESC, id DESC",
    "summary": "SELECT text, through, tokens FROM summary WHERE session_id = ? ORDER BY id DESC LIMIT 1",
    "cassette": "SELECT answer FROM cassette WHERE provider_id = ? AND request_hash = ? ORDER BY id DESC LIMIT 1",
    "insert_cassette": "INSERT INTO cassette (id, provider_id, request_hash, model, request, answer, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)",
    "insert_turn": "INSERT INTO turn (id, session_id, status, provider_id, model, started_at, owner, trace_id,"
    f" span_id) VALUES (?, ?, '{TURN_RUNNING}', ?, ?, ?, ?, ?, ?)",
    "turn_owned_seq": f"SELECT EXISTS (SELECT 1 FROM turn WHERE id = ? AND status = '{TURN_RUNNING}' AND owner = ?),"
    f" {_LAST_SEQ.format('?')}",  # PostgreSQL: a turn's write checks it still owns the turn
    "claim_message": "UPDATE message SET turn_id = ? WHERE id = ?",
    "pause_turn": f"UPDATE turn SET status = '{TURN_WAITING}', iterations = ?, input_tokens = ?, output_tokens = ?"
    " WHERE id = ?",
    "pause_session": f"UPDATE session SET status = '{SESSION_WAITING}', last_turn = ?, updated_at = ? WHERE id = ?",
    "resume_turn": f"UPDATE turn SET status = '{TURN_RUNNING}', owner = ? WHERE id = ?",
    "start_session": f"UPDATE session SET status = '{SESSION_RUNNING}', last_turn = ?, updated_at = ? WHERE id = ?",
    "close_turn": "UPDATE turn SET status = ?, error = ?, iterations = ?, input_tokens = ?, output_tokens = ?,"
    " ended_at = ? WHERE id = ?",
    "close_session": f"UPDATE session SET status = '{SESSION_IDLE}', last_turn = ?, input_tokens = input_tokens + ?,"
    " output_tokens = output_tokens + ?, updated_at = ? WHERE id = ?",
    "expired": f"SELECT id FROM session s WHERE status = '{SESSION_IDLE}' AND updated_at < ?"
    f" AND NOT {_OWED.format('s')} ORDER BY updated_at LIMIT ?",
    "expire": f"DELETE FROM session WHERE id = ? AND status = '{SESSION_IDLE}' AND updated_at < ?"
    f" AND NOT {_OWED.format('session')}",
    "count_waiting": f"SELECT COUNT(*) FROM turn WHERE status = '{TURN_WAITING}'",  # GET /metrics
    "count_queued": "SELECT COUNT(*) FROM message WHERE turn_id IS NULL AND role = 'user'",
}


_SQL_POSTGRES = {name: sql.replace("?", "%s") for name, sql in _SQL.items()}  # psycopg's placeholders


def _sql(m: _Models, name: str, *params: Any) -> Any:
    """Run one of the hot-path statements on the app's database; the cursor."""
    return m.db.execute_sql(m.sql[name], params)


def _rows(cursor: Any) -> Iterator[dict]:
    """A cursor's rows by column name (a column added to a query is read where it is used)."""
    names = [column[0] for column in cursor.description]
    for row in cursor:
        yield dict(zip(names, row, strict=True))


def _sql_row(m: _Models, name: str, *params: Any) -> dict | None:
    """The first row of a hot-path statement, by column name; None without one."""
    return next(_rows(_sql(m, name, *params)), None)


@dataclasses.dataclass(frozen=True)
class _TurnSetup:
    """What a turn needs of its session and agent."""

    status: str
    session_provider: str | None
    session_model: str | None
    agent_provider: str | None
    agent_model: str | None
    system_prompt: str
    capabilities: list[str]
    max_iterations: int
    require_approval: list[str]
    client_tools: list[dict]
    fallbacks: list[str]  # the session's fallback_provider_ids, else its agent's


@dataclasses.dataclass(frozen=True)
class _ProviderSpec:
    """A provider as a turn uses it (its key still as stored)."""

    id: str
    provider_type: str
    base_url: str | None
    default_model: str
    api_key: str | None
    settings: dict


def _session_exists(m: _Models, session_id: str) -> bool:
    return _sql(m, "session_exists", session_id).fetchone() is not None


def _last_seq(m: _Models, session_id: str) -> int:
    return _sql(m, "last_seq", session_id).fetchone()[0]


def _append_event(
    m: _Models, session_id: str, seq: int, type_: str, data: dict, turn_id: str | None, ts: str | None = None
) -> tuple[dict, str]:
    """Store one event (call inside a write; `ts`: now unless given); the event, and the event as JSON text."""
    event = {"id": _uuid7(), "seq": seq, "type": type_, "session_id": session_id, "turn_id": turn_id,
             "ts": ts or _now_iso()}  # fmt: skip
    data_text = _dumps(data)
    _sql(m, "insert_event", event["id"], session_id, seq, type_, turn_id, event["ts"], data_text)
    return {**event, "data": data}, _event_text(event, data_text)


def _event_text(head: dict, data_text: str) -> str:
    """An event as JSON text, from its fields but data and its data already encoded
    (the same text as encoding the whole event, without encoding the data twice)."""
    return f'{_dumps(head)[:-1]},"data":{data_text}}}'


def _stored_batches(m: _Models, session_id: str, after: int, batch: int = 100) -> Iterator[list[tuple[int, str, str]]]:
    """Stored events with seq > after, oldest first, a batch (one query) at a time: (seq, type,
    the event as JSON text, built around the stored data text rather than parsed and encoded again)."""
    while True:
        rows = list(_rows(_sql(m, "events_after", session_id, after, batch)))
        events = []
        for row in rows:
            data = row.pop("data")  # the rest is the event's head, in the order of the statement
            events.append((row["seq"], row["type"], _event_text(row, data)))
        if events:
            yield events
        if len(rows) < batch:
            return
        after = rows[-1]["seq"]


def _stored_events(m: _Models, session_id: str, after: int) -> Iterator[tuple[int, str, str]]:
    """The same, one event at a time."""
    return itertools.chain.from_iterable(_stored_batches(m, session_id, after))


def _insert_message(m: _Models, session_id: str, seq: int, role: str, content: list, turn_id: str | None = None,
                    controls: dict | None = None, message_id: str | None = None, created_at: str | None = None,
                    **cost: Any) -> dict:  # fmt: skip
    """Store a message (`seq`: its message.created event's; `created_at`: now unless given); its public
    form (as in that event). An assistant message's `cost`: provider_id, model, usage, latency_ms, incomplete."""
    message = {"id": message_id or _uuid7(), "session_id": session_id, "role": role, "content": content,
               "turn_id": turn_id}  # fmt: skip
    if role == "assistant":
        message.update({name: cost.get(name) for name in ASSISTANT_ONLY}, incomplete=bool(cost.get("incomplete")))
    message["created_at"] = created_at or _now_iso()
    controls_json = None if controls is None else _dumps(controls)
    usage, latency = message.get("usage"), message.get("latency_ms")
    _sql(m, "insert_message", message["id"], session_id, role, _dumps(content), turn_id, controls_json,
         message.get("provider_id"), message.get("model"), message["created_at"], seq,
         None if usage is None else _dumps(usage), None if latency is None else _dumps(latency),
         bool(message.get("incomplete", False)))  # fmt: skip
    return message


def _next_work(m: _Models, session_id: str, tx: Any = None) -> tuple[str, tuple[str, dict] | None] | None:
    """The session's status and its oldest user message no turn has answered yet (id,
    controls), or None; None when the session is gone. Read in `tx`, it tells the
    transaction the session's last seq (one round trip less on PostgreSQL)."""
    with_seq = tx is not None and tx.last_seq is None
    row = _sql_row(m, "next_work_seq" if with_seq else "next_work", session_id)
    if row is None:
        return None
    if with_seq:
        tx.last_seq = row["last_seq"]
    return row["status"], (row["id"], json.loads(row["controls"]) if row["controls"] else {}) if row["id"] else None


def _settled(m: _Models, session_id: str, sent: int | None = None) -> bool:
    """Idle with nothing owed: no running turn and no unanswered user message (or gone); with
    `sent`, also nothing stored after that seq (a stream has sent all there is)."""
    row = _sql_row(m, "settled", session_id)
    return row is None or (bool(row["settled"]) and (sent is None or sent >= row["last_seq"]))


def _turn_setup(m: _Models, session_id: str) -> _TurnSetup | None:
    """What a turn needs of its session and agent (None if the session is gone): a session's
    own capabilities and client tools come on top of its agent's."""
    row = _sql_row(m, "turn_setup", session_id)
    if row is None:
        return None
    lists = ("capabilities", "require_approval", "client_tools", "session_capabilities", "session_client_tools",
             "fallbacks")  # fmt: skip
    parsed = {k: json.loads(row.pop(k)) for k in lists}
    capabilities = list(dict.fromkeys([*parsed.pop("capabilities"), *parsed.pop("session_capabilities")]))
    own = parsed.pop("session_client_tools")
    tools = [t for t in parsed.pop("client_tools") if t["name"] not in {o["name"] for o in own}] + own
    return _TurnSetup(**row, **parsed, capabilities=capabilities, client_tools=tools)


def _provider_spec(m: _Models, provider_id: str | None) -> _ProviderSpec | None:
    """A provider by id, or the default one when provider_id is None."""
    row = _sql_row(m, "provider", provider_id, provider_id)
    return None if row is None else _ProviderSpec(**{**row, "settings": json.loads(row["settings"])})


@dataclasses.dataclass
class _Block:
    """One turn's stored messages, in order (role, content as JSON text), and their size in bytes."""

    turn_id: str
    rows: list[tuple[str, str]]
    size: int


def _history(m: _Models, session_id: str, budget: int, after: str = "") -> list[_Block]:
    """The turns after `after` (the newest turn a summary covers), oldest first, user messages
    first in each. Only the newest turns whose stored JSON fits in `budget` bytes are read
    (the newest turn always): a long session costs a turn no more than that."""
    cursor, kept, used = _sql(m, "transcript", session_id, after), [], 0
    for turn_id, rows in itertools.groupby(_rows(cursor), key=lambda row: row["turn_id"]):
        block = [(row["role"], row["content"]) for row in rows]
        size = sum(len(content) for _, content in block)
        if kept and used + size > budget:
            break
        kept.append(_Block(turn_id, block[::-1], size))
        used += size
    cursor.close()
    return kept[::-1]


def _summary(m: _Models, session_id: str) -> dict | None:
    """The session's latest summary (text, through, tokens), if compaction wrote one."""
    return _sql_row(m, "summary", session_id)


# =============================================================================
# 8. Event bus
# =============================================================================

QUEUE_LIMIT = 1000  # events a subscriber may fall behind before it is dropped
QUEUE_BYTES = 8 * 1024 * 1024  # and bytes of events
TAKE_LIMIT = 256  # events a stream sends in one write, when that many are waiting


@dataclasses.dataclass(frozen=True)
class _Published:
    """An event as fanned out: pre-rendered once for every subscriber.

    ``after`` is the seq of the newest stored event of the session when a
    delta (``seq`` None) was published, so a client that already replayed past
    that point never gets a stale delta.
    """

    seq: int | None
    type: str
    frame: bytes
    after: int


def _sse_frame(seq: int | None, type_: str, text: str) -> bytes:
    """One event (as JSON text) in SSE wire format; deltas carry no id line."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {type_}\ndata: {text}\n\n".encode()


class _Subscriber:
    """One live stream's bounded queue."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.queue: Any = gevent.queue.Queue(maxsize=QUEUE_LIMIT)
        self.queued_bytes = 0  # the frames waiting in the queue
        self.dropped = False
        self.left = False  # its client closed the connection (see _on_leaving)

    def leave(self) -> None:
        """Its client is gone: the stream ends without another write (None wakes it)."""
        self.left = True
        with contextlib.suppress(gevent.queue.Full):  # full: its next write fails anyway
            self.queue.put_nowait(None)

    def take(self, timeout: float) -> list[_Published | None]:
        """The next item and those already waiting behind it, up to TAKE_LIMIT (None: the
        end of the stream, always last); gevent.queue.Empty after `timeout` seconds."""
        items = [self.queue.get(timeout=timeout)]
        while items[-1] is not None and len(items) < TAKE_LIMIT and self.queue.qsize():
            items.append(self.queue.get_nowait())
        self.queued_bytes -= sum(len(item.frame) for item in items if item is not None)
        return items


class _Bus:
    """Fan-out of committed events to the live streams of each session.

    Where several processes write one database, ``reader`` reads stored events
    (session id, after seq) and the bus publishes each watched session strictly in
    seq order: an event that arrives ahead of others (written elsewhere, not yet
    heard of) has the missing ones read first. ``share``, when set, takes streamed
    text for the streams of the other processes.
    """

    def __init__(self, reader: Callable[[str, int], list[tuple[int, str, str]]] | None = None) -> None:
        self._subscribers: dict[str, set[_Subscriber]] = {}
        # The newest published seq of each session: it stamps deltas, and spares
        # the journal a query per event (publishing follows each commit at once).
        self.last_seq: dict[str, int] = {}
        self.reader = reader
        self.share: Callable[[str, str, str, str], None] | None = None
        # The text streamed so far of each message being written, by session: a stream that
        # joins mid-message learns it (the SDK's `accumulated`); gone with message.created.
        self.streaming: dict[str, dict[str, list[str]]] = {}

    def watched(self, session_id: str) -> bool:
        return session_id in self._subscribers

    def streams(self) -> int:
        """How many streams are subscribed."""
        return sum(map(len, self._subscribers.values()))

    def baseline(self, session_id: str, seq: int) -> None:
        """A new subscriber read that the session's newest stored event is `seq` (ordered
        publishing continues from there; its replay sends what came before)."""
        if self.reader is not None:
            self.last_seq[session_id] = max(self.last_seq.get(session_id, 0), seq)

    def catch_up(self, session_id: str) -> None:
        """Publish the stored events after the last published one (in order)."""
        for seq, type_, text in self.reader(session_id, self.last_seq.get(session_id, 0)):
            last = self.last_seq.get(session_id, 0)  # reading yields: others may have published meanwhile
            if seq == last + 1:
                self._publish(session_id, seq, type_, text)
            elif seq > last + 1:
                return

    def subscribe(self, session_id: str) -> _Subscriber:
        sub = _Subscriber(session_id)
        self._subscribers.setdefault(session_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        subs = self._subscribers.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subscribers[sub.session_id]

    def publish(self, session_id: str, seq: int, type_: str, text: str) -> None:
        """Hand a committed event (as JSON text) to every subscriber; never blocks (but where
        several processes write and events are missing before it: it reads them first)."""
        if self.reader is not None and session_id in self._subscribers:
            last = self.last_seq.get(session_id, 0)
            if seq != last + 1:
                if seq > last:
                    self.catch_up(session_id)
                return
        self._publish(session_id, seq, type_, text)

    def _publish(self, session_id: str, seq: int, type_: str, text: str) -> None:
        self.last_seq[session_id] = seq
        streaming = self.streaming.get(session_id)
        if streaming and type_ in ("message.created", "session.completed"):
            self._written(session_id, streaming, type_, text)
        subs = self._subscribers.get(session_id)
        if subs:
            self._fan_out(subs, _Published(seq, type_, _sse_frame(seq, type_, text), seq))

    def _written(self, session_id: str, streaming: dict, type_: str, text: str) -> None:
        """A message is stored (its streamed text is in it now), or its turn is over."""
        if type_ == "session.completed":
            del self.streaming[session_id]
            return
        found = re.search(r'"data":\{"message":\{"id":"([^"]+)"', text)
        if found:
            streaming.pop(found.group(1), None)

    def texts(self, session_id: str) -> dict[str, str]:
        """The text streamed so far of the session's messages being written."""
        return {message_id: "".join(pieces) for message_id, pieces in self.streaming.get(session_id, {}).items()}

    def publish_delta(self, session_id: str, turn_id: str, message_id: str, delta: str, shared: bool = True) -> None:
        """Hand a piece of assistant text to the session's subscribers, if it has any
        (the event's JSON is written here directly: it is the one sent most often), and
        to the other processes' (unless it comes from one)."""
        if shared and self.share is not None:
            self.share(session_id, turn_id, message_id, delta)
        self.streaming.setdefault(session_id, {}).setdefault(message_id, []).append(delta)
        subs = self._subscribers.get(session_id)
        if subs:
            text = (f'{{"id":null,"seq":null,"type":"message.delta","session_id":"{session_id}",'
                    f'"turn_id":"{turn_id}","ts":"{_now_iso()}","data":{{"message_id":"{message_id}",'
                    f'"delta":{_dumps(delta)}}}}}')  # fmt: skip
            frame = _sse_frame(None, "message.delta", text)
            self._fan_out(subs, _Published(None, "message.delta", frame, self.last_seq.get(session_id, 0)))

    def _fan_out(self, subs: set[_Subscriber], item: _Published) -> None:
        for sub in list(subs):
            self._offer(sub, item)

    def _offer(self, sub: _Subscriber, item: _Published | None) -> None:
        size = len(item.frame) if item is not None else 0
        try:
            if sub.queued_bytes and sub.queued_bytes + size > QUEUE_BYTES:
                raise gevent.queue.Full
            sub.queue.put_nowait(item)
            sub.queued_bytes += size
        except gevent.queue.Full:
            # A client this far behind is cut off; it resumes with Last-Event-ID.
            sub.dropped = True
            self.unsubscribe(sub)

    def forget(self, session_id: str) -> None:
        """Drop what the bus keeps of a session nobody streams (its last seq is read again when needed)."""
        if session_id not in self._subscribers:
            self.last_seq.pop(session_id, None)
            self.streaming.pop(session_id, None)

    def close(self, session_id: str | None = None) -> None:
        """End the streams of one session (or all) once they have sent what is queued."""
        sids = [session_id] if session_id else list(self._subscribers)
        for sid in sids:
            for sub in list(self._subscribers.get(sid, ())):
                self._offer(sub, None)  # None: the end of the stream
                self.unsubscribe(sub)
            self.last_seq.pop(sid, None)
            self.streaming.pop(sid, None)


class _Tx:
    """One write transaction of a session's journal: events emitted here are
    published to live streams only after the commit."""

    def __init__(self, m: _Models, session_id: str, last_seq: int | None,
                 check: Callable[[str, dict], None] | None = None) -> None:  # fmt: skip
        self.m, self.session_id, self.last_seq, self.events = m, session_id, last_seq, []
        self.after: list[Callable[[], None]] = []  # run once committed, after publishing
        self.check = check  # with --check-events: each event's data against its model
        self.copied = False  # its events are an imported session's: its turns did not end in this process

    def add_message(self, role: str, content: list, turn_id: str | None = None, **fields: Any) -> dict:
        """Store a message and its message.created event; the message (it keeps that event's seq)."""
        if self.last_seq is None:
            self.last_seq = _last_seq(self.m, self.session_id)
        message = _insert_message(self.m, self.session_id, self.last_seq + 1, role, content, turn_id, **fields)
        self.emit("message.created", {"message": message}, turn_id)
        return message

    def emit(self, type_: str, data: dict, turn_id: str | None = None, ts: str | None = None) -> dict:
        """Store an event of a type of EVENTS (KeyError for another; `ts`: now unless given); the event."""
        if type_ not in EVENTS:
            raise KeyError(f"{type_!r} is not an event type of EVENTS")
        if self.check is not None:
            self.check(type_, data)
        if self.last_seq is None:
            self.last_seq = _last_seq(self.m, self.session_id)
        self.last_seq += 1
        event, text = _append_event(self.m, self.session_id, self.last_seq, type_, data, turn_id, ts)
        self.events.append((event, text))
        return event


HOOK_QUEUE_LIMIT = 10_000  # events of one session waiting for its hooks; past it, new ones are skipped (logged)
HOOK_SLOW_S = 1.0  # a hook call longer than this is logged
HOOKS_GRACE_S = 5.0  # how long a closing app waits for its hooks to finish what is queued


class _Hooks:
    """An app's Python hooks (SPEC 14): functions called with each stored event after its
    commit. Each session has a greenlet of its own while it has events waiting, which calls
    them one event at a time in seq order; a hook that raises or is slow is logged, and
    delays nothing but the later events of its own session."""

    def __init__(self, release: Callable[[], None]) -> None:
        self.by_type: dict[str, list[Callable[[Any], Any]]] = {}  # "*": every type
        self.release = release  # a hook may read the database: its greenlet's connection goes back
        self._waiting: dict[str, collections.deque] = {}
        self._workers: dict[str, Any] = {}

    def add(self, type_: str, hook: Callable[[Any], Any]) -> None:
        if type_ != "*" and type_ not in EVENTS:
            raise ValueError(f"unknown event type {type_!r} (everruns.EVENTS lists them; '*' is every type)")
        if type_ == "message.delta":
            raise ValueError("message.delta is never stored, so no hook sees it (stream the session to read it)")
        if not callable(hook):
            raise TypeError(f"a hook must be callable, not {type(hook).__name__}")
        self.by_type.setdefault(type_, []).append(hook)

    def offer(self, session_id: str, events: list[tuple[dict, str]]) -> None:
        """A commit's events (each with its JSON text): queued for the session's hooks."""
        wanted = [text for event, text in events if event["type"] in self.by_type or "*" in self.by_type]
        if not wanted:
            return
        queue = self._waiting.setdefault(session_id, collections.deque())
        room = HOOK_QUEUE_LIMIT - len(queue)
        if len(wanted) > room:
            _log.warning("hooks: session %s has %d events waiting; %d skipped", session_id, len(queue),
                         len(wanted) - max(room, 0))  # fmt: skip
        queue.extend(wanted[: max(room, 0)])
        if session_id not in self._workers:
            self._workers[session_id] = gevent.spawn(self._drain, session_id)

    def _drain(self, session_id: str) -> None:
        queue = self._waiting[session_id]
        try:
            while queue:
                text = queue.popleft()
                try:
                    event = Event.model_validate_json(text).root
                except ValidationError:  # stored by an older version, say: its hooks are skipped, not the rest
                    _log.exception("hooks: an event of session %s cannot be read: %.200s", session_id, text)
                    continue
                for hook in [*self.by_type.get(event.type, ()), *self.by_type.get("*", ())]:
                    self._call(hook, event)
        finally:
            del self._workers[session_id]
            if queue:  # killed (the app closes): what is left is dropped
                queue.clear()
            del self._waiting[session_id]

    def _call(self, hook: Callable[[Any], Any], event: Any) -> None:
        started = time.monotonic()
        name = getattr(hook, "__qualname__", repr(hook))
        try:
            hook(event)
        except Exception:
            _log.exception("hook %s failed on %s (seq %s of session %s)", name, event.type, event.seq, event.session_id)
        finally:
            self.release()
        took = time.monotonic() - started
        if took > HOOK_SLOW_S:
            _log.warning("hook %s took %.1f s on %s (seq %s of session %s)", name, took, event.type, event.seq,
                         event.session_id)  # fmt: skip

    def close(self, grace: float) -> None:
        """Let the hooks finish what is queued for up to `grace` seconds, then stop them."""
        gevent.joinall(list(self._workers.values()), timeout=grace)
        gevent.killall(list(self._workers.values()), _Stop, timeout=5)


class _Lost(BaseException):
    """A turn's write found the turn no longer this process's to write (another process
    closed it, or its session was deleted): the turn stops without writing."""


class _Journal:
    """The write path for everything that produces events: commit, then publish.

    On SQLite (one process) a transaction starts from the last seq its group wrote
    for the session, else the bus's last published seq, which moves only after a
    commit: a rolled-back transaction leaves no gap. On PostgreSQL other processes
    write too: the last seq is read under the session's lock, and the commit tells
    them the new range.
    """

    def __init__(self, store: _Store, bus: _Bus, check_events: bool = False) -> None:
        self.store, self.bus = store, bus
        self.hooks = _Hooks(store.release)  # the app's Python hooks: events stored here (not by other processes)
        self._pending: dict[str, int] = {}  # the last seq written by a group not yet committed
        self.mismatches: list[str] = []  # with check_events: events whose data their model does not describe
        self.check = self._check if check_events else None
        self.busy: Callable[[str], bool] = lambda session_id: False  # whether a turn of it runs here (the scheduler's)

    def _check(self, type_: str, data: dict) -> None:
        """--check-events: an event whose data its model (EVENTS) does not describe is logged
        and kept in `mismatches` (it is stored all the same: what is checked is the code)."""
        mismatch = _event_mismatch(type_, data)
        if mismatch is not None:
            _log.error("an event does not match its model: %s", mismatch)
            self.mismatches.append(mismatch)

    @contextlib.contextmanager
    def tx(self, session_id: str, turn_id: str | None = None) -> Iterator[_Tx]:
        """A write of the session's journal; with `turn_id`, a write of that running turn,
        which goes ahead only while this process owns the turn (else _Lost, on PostgreSQL)."""
        store = self.store
        with store.write(session_id) as group:  # the last seq is read under the lock
            if store.postgres:
                last = None  # read by the first event (the session's advisory lock is held)
                if turn_id is not None:
                    owned, last = _sql(store.m, "turn_owned_seq", turn_id, store.lease, session_id).fetchone()
                    if not owned:
                        raise _Lost
                tx = _Tx(store.m, session_id, last, self.check)
            else:
                last = self._pending.get(session_id)
                tx = _Tx(store.m, session_id, self.bus.last_seq.get(session_id) if last is None else last, self.check)
            yield tx
            if tx.events and store.postgres:
                store.outbox.append(["events", session_id, tx.events[0][0]["seq"], tx.last_seq])
            elif tx.events:
                self._pending[session_id] = tx.last_seq
                group.failed.append(self._pending.clear)
            group.after.append(functools.partial(self._publish, tx))

    def _publish(self, tx: _Tx) -> None:
        """After the commit: the transaction's events to the live streams, in order. What
        the bus keeps of a session nobody streams and no turn writes goes then."""
        session_id = tx.session_id
        for event, text in tx.events:
            self.bus.publish(session_id, event["seq"], event["type"], text)
            if event["type"] == "session.completed" and not tx.copied:
                self.store.obs.turn_ended(event["data"])
        if self.hooks.by_type and tx.events and not tx.copied:
            self.hooks.offer(session_id, tx.events)
        if session_id in self._pending and self._pending[session_id] == tx.last_seq:
            del self._pending[session_id]
        for callback in tx.after:
            callback()
        if not self.busy(session_id):
            self.bus.forget(session_id)


# =============================================================================
# 9. Providers
# =============================================================================


@dataclasses.dataclass
class LLMRequest:
    """What a provider adapter is asked: a provider-neutral prompt.

    ``messages`` items are ``{"role": "user", "text"}``, ``{"role":
    "assistant", "text", "tool_calls": [{id, name, arguments}]}`` and
    ``{"role": "tool", "tool_call_id", "name", "result", "is_error"}``.
    """

    model: str
    system: str
    messages: list[dict]
    tools: list[ToolSpec]
    settings: dict
    base_url: str | None = None
    api_key: str | None = None
    temperature: float | None = None
    secrets: tuple[str, ...] = ()  # blanked out of anything the provider answers
    summary: str | None = None  # of the turns before `messages` (SPEC 16): sent right after the system prompt


def _llm_request(provider: Any, secrets: _Secrets, keys: bool = True, **fields: Any) -> LLMRequest:
    """A request to a provider row's endpoint, with its key and credential headers decrypted
    (not with `keys` false: neither is opened, nor sent)."""
    api_key, settings = (secrets.open(provider.api_key), secrets.open_settings(provider.settings)) if keys else (
        None, {k: v for k, v in provider.settings.items() if k != "extra_headers"})  # fmt: skip
    fields = {"model": provider.default_model, "system": "", "messages": [], "tools": [], **fields}
    return LLMRequest(settings=settings, base_url=provider.base_url, api_key=api_key,
                      secrets=secrets.secrets_of(settings, api_key), **fields)  # fmt: skip


@dataclasses.dataclass
class LLMReply:
    """What the model answered, once the stream has ended."""

    text: str = ""
    tool_calls: list[dict] = dataclasses.field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: dict | None = None  # {first_token, total}: set by the turn that made the call


# ---- HTTP for the remote providers ------------------------------------------

RETRY_STATUSES = {429, 500, 502, 503, 504}
RETRY_DELAYS = (0.25, 1.0)  # seconds before the 2nd and 3rd attempt (or Retry-After, up to 10 s)
KEEP_ALIVE_S = 4.0  # an idle provider connection is reused within this (servers keep theirs 5 s or more)
KEEP_ALIVE_MAX = 16  # idle connections kept per provider address
DRAIN_S = 0.05  # how long the end of a finished answer's body may take to arrive before its connection is dropped

# Idle keep-alive connections by (scheme, host, port), newest last: a turn reuses one
# instead of connecting again (and, over TLS, shaking hands again).
_idle_connections: dict[tuple[str, str, int | None], list[tuple[float, Any]]] = {}


def _address(url: str) -> tuple[tuple[str, str, int | None], str]:
    """(scheme, host, port) of a provider URL, and the path to ask for."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError(f"the provider's base_url is not an http(s) URL: {url}", "PROVIDER_ERROR")
    return (parts.scheme, parts.hostname, parts.port), parts.path + (f"?{parts.query}" if parts.query else "")


def _send(method: str, url: str, data: bytes | None, headers: dict, timeout: float) -> tuple[Any, Any, tuple]:
    """Send one request: (connection, response, address). A kept connection that the server
    has closed meanwhile is replaced by a new one, which does not count as an attempt."""
    import http.client

    address, path = _address(url)

    def exchange(conn: Any) -> tuple[Any, Any, tuple]:
        try:
            conn.request(method, path, body=data, headers=headers)
            return conn, conn.getresponse(), address
        except BaseException:
            conn.close()
            raise

    idle, now = _idle_connections.get(address, []), time.monotonic()
    while idle:
        since, conn = idle.pop()
        if now - since >= KEEP_ALIVE_S:
            conn.close()
            continue
        conn.timeout = timeout
        conn.sock.settimeout(timeout)
        with contextlib.suppress(ConnectionError):  # closed by the server while idle (reset, broken pipe)
            return exchange(conn)
    scheme, host, port = address
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    return exchange(kind(host, port, timeout=timeout))


def _keep(address: tuple, conn: Any, response: Any) -> None:
    """Keep a connection for the next request if its response was read to the end (the end
    of a streamed body usually follows the answer's last event at once), else close it."""
    import http.client

    ended = response.isclosed()
    if not ended and not response.will_close:
        try:
            conn.sock.settimeout(DRAIN_S)
            ended = not response.read(4096) and response.isclosed()
        except (OSError, http.client.HTTPException):
            ended = False
    idle = _idle_connections.setdefault(address, [])
    if ended and not response.will_close and len(idle) < KEEP_ALIVE_MAX:
        idle.append((time.monotonic(), conn))
    else:
        conn.close()


def _upstream_message(raw: bytes, secrets: Iterable[str]) -> str:
    """The provider's own error message, from {"error": {"message"}} or the raw body:
    secrets blanked out first, then cut (a cut secret would leak all but its end)."""
    message = ""
    with contextlib.suppress(ValueError, RecursionError):
        body = json.loads(raw)
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
    text = str(message) if message else raw.decode(errors="replace").strip()
    return _redact(text, *secrets)[:500] or "(no body)"


def _status_error(status: int, raw: bytes, secrets: Iterable[str]) -> ProviderError:
    code = {401: "PROVIDER_AUTH", 403: "PROVIDER_AUTH", 429: "PROVIDER_RATE_LIMITED"}.get(status, "PROVIDER_ERROR")
    message = f"the provider answered {status}: {_upstream_message(raw, secrets)}"
    return ProviderError(message, code, falls_over=status == 429 or status >= 500)


def _retry_after(response: Any, attempt: int) -> float:
    header = (response.getheader("Retry-After") or "").strip() if response is not None else ""
    if header.replace(".", "", 1).isdigit():
        return min(float(header), 10.0)
    return RETRY_DELAYS[attempt]


UPSTREAM_BODY_BYTES = 4 * 1024 * 1024  # a body that is not the answer itself (a model list, an MCP message)
ERROR_BODY_BYTES = 64 * 1024  # what is read of an error body (the rest goes with the connection)
YIELD_S = 0.005  # a reader of a fast upstream lets the other greenlets run at least this often


class _Clock:
    """The time limits of one upstream exchange: `idle_s` without progress (the reader says
    what progress is: not empty chunks, keep-alive comments or white space) and `total_s`
    in all. check() also lets the other greenlets run now and then: a socket whose data
    has arrived already returns it at once, without switching."""

    def __init__(self, idle_s: float, total_s: float | None = None, what: str = "the provider") -> None:
        self.idle_s, self.total_s, self.what = idle_s, idle_s if total_s is None else total_s, what
        self.started = self.last = self.switched = time.monotonic()

    def progress(self) -> None:
        self.last = time.monotonic()

    def check(self) -> None:
        """ProviderError (PROVIDER_TIMEOUT) once a limit is past."""
        now = time.monotonic()
        if now - self.started > self.total_s:
            raise ProviderError(f"{self.what} took longer than {self.total_s:g} s in all", "PROVIDER_TIMEOUT")
        if now - self.last > self.idle_s:
            raise ProviderError(f"{self.what} sent nothing new for {self.idle_s:g} s", "PROVIDER_TIMEOUT")
        if now - self.switched > YIELD_S:
            gevent.sleep(0)
            self.switched = time.monotonic()


def _read_upstream(response: Any, cap: int, clock: _Clock, partial: bool = False) -> bytes:
    """A response body of at most `cap` bytes, read within the clock's limits (any byte is
    progress); beyond either: ProviderError, or with `partial` what has arrived by then."""
    import http.client

    pieces, size = [], 0
    try:
        while size <= cap:
            clock.check()
            piece = response.read1(65536)
            if not piece:
                return b"".join(pieces)
            clock.progress()
            pieces.append(piece)
            size += len(piece)
    except (ProviderError, OSError, http.client.HTTPException) as e:
        if not partial:
            if isinstance(e, ProviderError):
                raise
            raise ProviderError(f"the connection to {clock.what} broke", "PROVIDER_STREAM_ERROR", True) from None
    if not partial and size > cap:
        raise ProviderError(f"{clock.what} sent a body larger than {cap} bytes", "PROVIDER_ERROR")
    return b"".join(pieces)[:cap]


@contextlib.contextmanager
def _http(
    method: str, url: str, headers: dict, body: dict | None, timeout: float, secrets: Iterable[str]
) -> Iterator[Any]:
    """Send a request, retrying 429, 5xx and connection failures (nothing was streamed yet).

    Yields the response, its status 200; anything else raises ProviderError. The
    connection is kept for the next request once the response has been read.
    """
    import http.client

    data = _dumps(body).encode() if body is not None else None
    for attempt in range(len(RETRY_DELAYS) + 1):
        response = None
        try:
            conn, response, address = _send(method, url, data, headers, timeout)
            if response.status == 200:
                break
            raw = _read_upstream(response, ERROR_BODY_BYTES, _Clock(timeout), partial=True)
            conn.close()
            if response.status not in RETRY_STATUSES or attempt == len(RETRY_DELAYS):
                raise _status_error(response.status, raw, secrets)
        except TimeoutError:
            raise ProviderError(f"the provider did not answer within {timeout:g} s", "PROVIDER_TIMEOUT") from None
        except UnicodeError:  # a header stored by an older version that HTTP cannot carry
            raise ProviderError("the provider's extra_headers cannot be sent over HTTP", "PROVIDER_ERROR") from None
        except (OSError, http.client.HTTPException) as e:
            if attempt == len(RETRY_DELAYS):
                reason = _redact(str(e) or type(e).__name__, *secrets)
                raise ProviderError(f"cannot reach the provider: {reason}", "PROVIDER_UNAVAILABLE") from None
        gevent.sleep(_retry_after(response, attempt))
    try:
        yield response
    except BaseException:
        conn.close()
        raise
    _keep(address, conn, response)


SSE_EVENT_BYTES = 16 * 1024 * 1024  # a streamed event (a line, or its data lines together) larger than this is refused


def _sse_events(response: Any, clock: _Clock, limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a streamed response, read within the clock's limits (the
    caller marks progress); ProviderError if the stream breaks or an event is over `limit`
    (SSE_EVENT_BYTES unless given)."""
    import http.client

    limit = SSE_EVENT_BYTES if limit is None else limit
    event, data, partial, size = "", [], [], 0  # partial: the pieces of a line still arriving
    while True:
        clock.check()
        try:
            block = response.read1(65536)  # what has arrived: lines are split here (readline costs twice as much)
        except TimeoutError:
            raise ProviderError(f"{clock.what} stopped sending for {clock.idle_s:g} s", "PROVIDER_TIMEOUT") from None
        except (OSError, http.client.HTTPException):
            raise ProviderError(
                f"the connection to {clock.what} broke mid-stream", "PROVIDER_STREAM_ERROR", True
            ) from None
        if not block:
            return  # an unfinished last event is not an event
        size += len(block) if b"\n" not in block else 0
        if size > limit or sum(map(len, data)) > limit:
            raise ProviderError(f"{clock.what} sent an event over {limit} bytes", "PROVIDER_STREAM_ERROR")
        if b"\n" not in block:  # a long line: kept in pieces, joined once (not copied at every block)
            partial.append(block)
            continue
        *lines, rest = b"".join([*partial, block]).split(b"\n")
        partial, size = [rest], len(rest)
        for line in lines:
            text = line.decode("utf-8", errors="replace").removesuffix("\r")
            if not text:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
            elif text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].removeprefix(" "))


def _json_chunk(data: str) -> dict:
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise ProviderError("the provider sent a malformed chunk", "PROVIDER_STREAM_ERROR") from None
    if not isinstance(chunk, dict):
        raise ProviderError("the provider sent a malformed chunk", "PROVIDER_STREAM_ERROR")
    return chunk


def _arguments(raw: str) -> dict:
    """Streamed tool arguments as an object ({} when empty; kept raw when not JSON)."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):
        return {"_unparsed_arguments": raw}
    return value if isinstance(value, dict) else {"_unparsed_arguments": raw}


def _result_text(result: Any) -> str:
    return result if isinstance(result, str) else _dumps(result)


class _Adapter:
    """One provider type: stream an answer, list the models."""

    def stream(self, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        """Call the model; on_text gets each piece of text as it arrives."""
        raise NotImplementedError

    def models(self, request: LLMRequest) -> list[str]:
        """The model names the provider offers."""
        raise NotImplementedError


class _RemoteAdapter(_Adapter):
    """What the HTTP providers share: URLs under base_url, headers, timeouts, the model list."""

    kind, chat_path, models_path = "", "", ""

    def _headers(self, request: LLMRequest) -> dict:
        """The headers of every request: JSON, SSE, extra_headers, and the provider's own
        (which win over an extra header of the same name, whatever its case)."""
        own = {"Content-Type": "application/json", "Accept": "text/event-stream", **self._auth_headers(request)}
        names = {name.lower() for name in own}
        extra = {k: v for k, v in request.settings.get("extra_headers", {}).items() if k.lower() not in names}
        return {**extra, **own}

    def _auth_headers(self, request: LLMRequest) -> dict:
        raise NotImplementedError

    def _timeout(self, request: LLMRequest) -> float:
        return float(request.settings.get("timeout_s", 60))

    def _clock(self, request: LLMRequest) -> _Clock:
        return _Clock(self._timeout(request), float(request.settings.get("max_call_s", 1800)))

    def _call(self, request: LLMRequest, method: str, path: str, body: dict | None = None) -> Any:
        """A context manager: the response of status 200 (see _http)."""
        url = (request.base_url or PROVIDER_DEFAULTS[self.kind][0]).rstrip("/") + path
        return _http(method, url, self._headers(request), body, self._timeout(request), request.secrets)

    def _failure(self, data: str, chunk: dict, request: LLMRequest) -> ProviderError:
        """An error the provider reported inside its stream (`chunk`: its event, parsed), key
        blanked out (an outage of its own, overloaded or a server error, is one a fallback may
        take over: SPEC 18)."""
        message = _upstream_message(data.encode(), request.secrets)
        error = chunk.get("error")
        kind = f"{error.get('type')} {error.get('code')}" if isinstance(error, dict) else ""
        outage = any(word in kind for word in ("overloaded", "server_error", "api_error"))
        return ProviderError(f"the provider failed mid-stream: {message}", "PROVIDER_ERROR", outage)

    @staticmethod
    @contextlib.contextmanager
    def _answering(begun: Callable[[], bool]) -> Iterator[None]:
        """Around reading an answer: a failure once it has begun (`begun`: a tool call arrived)
        is not one a fallback may take over."""
        try:
            yield
        except ProviderError as e:
            e.falls_over = e.falls_over and not begun()
            raise

    def stream(self, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        with self._call(request, "POST", self.chat_path, self.body(request)) as response:
            return self._read(response, request, on_text)

    def body(self, request: LLMRequest) -> dict:
        """The request body of a streamed answer, in the provider's format."""
        raise NotImplementedError

    def _read(self, response: Any, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        """The answer, from the provider's stream."""
        raise NotImplementedError

    def models(self, request: LLMRequest) -> list[str]:
        with self._call(request, "GET", self.models_path) as response:
            clock = _Clock(self._timeout(request), self._timeout(request), "the provider's model list")
            listing = _json_chunk(_read_upstream(response, UPSTREAM_BODY_BYTES, clock).decode(errors="replace"))
        return [m["id"] for m in listing.get("data", []) if isinstance(m, dict) and "id" in m]


class _OpenAI(_RemoteAdapter):
    """OpenAI Chat Completions, as OpenAI, Ollama, vLLM, llama.cpp and LM Studio speak it."""

    kind, chat_path, models_path = "openai", "/chat/completions", "/models"

    def _auth_headers(self, request: LLMRequest) -> dict:
        return {"Authorization": f"Bearer {request.api_key}"} if request.api_key else {}

    def body(self, request: LLMRequest) -> dict:
        """The request body of a streamed chat completion."""
        messages = [{"role": "system", "content": request.system}] if request.system else []
        if request.summary:
            messages.append({"role": "system", "content": _summary_message(request.summary)})
        for m in request.messages:
            if m["role"] == "user":
                messages.append({"role": "user", "content": m["text"]})
            elif m["role"] == "assistant":
                message: dict = {"role": "assistant", "content": m["text"] or None}
                if m["tool_calls"]:
                    message["tool_calls"] = [
                        {"id": c["id"], "type": "function",
                         "function": {"name": c["name"], "arguments": _dumps(c["arguments"])}}
                        for c in m["tool_calls"]
                    ]  # fmt: skip
                messages.append(message)
            else:
                messages.append(
                    {"role": "tool", "tool_call_id": m["tool_call_id"], "content": _result_text(m["result"])}
                )
        body = {"model": request.model, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
        body["max_tokens"] = request.settings.get("max_tokens", 4096)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def _read(self, response: Any, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        reply, calls, finished, clock = LLMReply(), {}, False, self._clock(request)
        with self._answering(lambda: bool(calls)):
            for _event, data in _sse_events(response, clock):
                if data.strip() == "[DONE]":
                    finished = True
                    break
                chunk = _json_chunk(data)
                if chunk.get("error"):
                    raise self._failure(data, chunk, request)
                usage = chunk.get("usage") or {}
                reply.input_tokens = usage.get("prompt_tokens", reply.input_tokens)
                reply.output_tokens = usage.get("completion_tokens", reply.output_tokens)
                if usage:
                    clock.progress()
                for choice in chunk.get("choices") or []:
                    finished = self._apply(choice, reply, calls, on_text, clock) or finished
            if not finished:
                raise ProviderError("the provider's stream ended before the answer did", "PROVIDER_STREAM_ERROR", True)
        reply.tool_calls = [
            {"id": c["id"] or f"call_{i}", "name": c["name"], "arguments": _arguments(c["arguments"])}
            for i, c in sorted(calls.items())
        ]
        return reply

    def _apply(self, choice: dict, reply: LLMReply, calls: dict, on_text: Callable[[str], None],
               clock: _Clock) -> bool:  # fmt: skip
        """Fold one streamed choice into the reply; True once it has a finish_reason."""
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            clock.progress()  # (a chunk with nothing in it is not)
        if delta.get("content"):
            reply.text += delta["content"]
            on_text(delta["content"])
        for fragment in delta.get("tool_calls") or []:
            call = calls.setdefault(fragment.get("index", 0), {"id": "", "name": "", "arguments": ""})
            call["id"] = fragment.get("id") or call["id"]
            function = fragment.get("function") or {}
            call["name"] += function.get("name") or ""
            call["arguments"] += function.get("arguments") or ""
        return bool(choice.get("finish_reason"))


ANTHROPIC_VERSION = "2023-06-01"


class _Anthropic(_RemoteAdapter):
    """Anthropic Messages API with streamed content blocks."""

    kind, chat_path, models_path = "anthropic", "/v1/messages", "/v1/models"

    def _auth_headers(self, request: LLMRequest) -> dict:
        return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": request.api_key} if request.api_key else {})}

    def body(self, request: LLMRequest) -> dict:
        """The request body: top-level system, strictly alternating user/assistant turns."""
        turns: list[dict] = []
        for m in request.messages:
            role, blocks = self._blocks(m)
            if turns and turns[-1]["role"] == role:
                turns[-1]["content"].extend(blocks)
            elif blocks:
                turns.append({"role": role, "content": blocks})
        body: dict = {"model": request.model, "max_tokens": request.settings.get("max_tokens", 4096)}
        body.update(messages=turns, stream=True)
        if request.system or request.summary:
            summary = _summary_message(request.summary) if request.summary else ""
            body["system"] = "\n\n".join(filter(None, [request.system, summary]))
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = min(request.temperature, 1.0)
        return body

    def _blocks(self, m: dict) -> tuple[str, list[dict]]:
        if m["role"] == "user":
            return "user", [{"type": "text", "text": m["text"]}] if m["text"] else []
        if m["role"] == "tool":
            block = {"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": _result_text(m["result"])}
            return "user", [{**block, "is_error": bool(m["is_error"])}]
        blocks = [{"type": "text", "text": m["text"]}] if m["text"] else []
        blocks += [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]} for c in m["tool_calls"]
        ]
        return "assistant", blocks

    def _read(self, response: Any, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        reply, blocks, finished, clock = LLMReply(), {}, False, self._clock(request)
        with self._answering(lambda: any(b["type"] == "tool_use" for b in blocks.values())):
            for event, data in _sse_events(response, clock):
                chunk = _json_chunk(data)
                kind = chunk.get("type", event)
                if kind != "ping":
                    clock.progress()
                if kind == "error":
                    raise self._failure(data, chunk, request)
                if kind == "message_stop":
                    finished = True
                    break
                self._apply(kind, chunk, reply, blocks, on_text)
            if not finished:
                raise ProviderError("the provider's stream ended before the answer did", "PROVIDER_STREAM_ERROR", True)
        reply.tool_calls = [
            {"id": b["id"], "name": b["name"], "arguments": _arguments(b["json"])}
            for _, b in sorted(blocks.items())
            if b["type"] == "tool_use"
        ]
        return reply

    def _apply(self, kind: str, chunk: dict, reply: LLMReply, blocks: dict, on_text: Callable[[str], None]) -> None:
        """Fold one streamed event into the reply."""
        if kind == "message_start":
            usage = (chunk.get("message") or {}).get("usage") or {}
            reply.input_tokens = usage.get("input_tokens", 0)
            reply.output_tokens = usage.get("output_tokens", 0)
        elif kind == "content_block_start":
            block = chunk.get("content_block") or {}
            blocks[chunk.get("index", 0)] = {
                "type": block.get("type"),
                "id": block.get("id"),
                "name": block.get("name"),
                "json": "",
            }
        elif kind == "content_block_delta":
            delta, block = chunk.get("delta") or {}, blocks.get(chunk.get("index", 0), {})
            if delta.get("type") == "text_delta" and delta.get("text"):
                reply.text += delta["text"]
                on_text(delta["text"])
            elif delta.get("type") == "input_json_delta":
                block["json"] = block.get("json", "") + (delta.get("partial_json") or "")
        elif kind == "message_delta":
            reply.output_tokens = (chunk.get("usage") or {}).get("output_tokens", reply.output_tokens)


# ---- the built-in simulator ---------------------------------------------------


def _words(text: str) -> list[str]:
    """Text split into words that keep their trailing white space."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


def _json_object_in(text: str, tries: int = 50) -> dict | None:
    """The first JSON object written somewhere in a text, if any (looked for at the
    first `tries` braces only: a text of a million braces must not take seconds)."""
    decoder = json.JSONDecoder()
    for match in itertools.islice(re.finditer(r"\{", text), tries):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except (ValueError, RecursionError):  # not JSON, or nested deeper than Python parses
            continue
        if isinstance(value, dict):
            return value
    return None


def _tools_named_in(text: str, tools: list[ToolSpec]) -> list[str]:
    """The tools whose exact name appears in the text, in order of appearance."""
    found = []
    for tool in tools:
        match = re.search(rf"(?<![\w]){re.escape(tool.name)}(?![\w])", text)
        if match:
            found.append((match.start(), tool.name))
    return [name for _, name in sorted(found)]


def _llmsim_answer(request: LLMRequest) -> tuple[str, list[dict]]:
    """The simulator's deterministic answer: text, or tool calls."""
    if request.system.startswith(SUMMARY_PROMPT[:40]):  # a summary that compaction asks for (SPEC 16)
        return _sim_summary(request.messages[-1]["text"], (request.settings["max_tokens"] - 1) * 3), []
    if request.settings.get("echo_context"):
        return _sim_echo(request), []
    if request.settings.get("reply") is not None:
        return request.settings["reply"], []
    last = request.messages[-1] if request.messages else {"role": "user", "text": ""}
    if last["role"] == "tool":
        results = []
        for m in reversed(request.messages):
            if m["role"] != "tool":
                break
            results.insert(0, f"{m['name']} {'failed with' if m['is_error'] else 'returned'} {_dumps(m['result'])}")
        return f"Tool results: {'; '.join(results)}.", []
    text = last.get("text", "")
    names = _tools_named_in(text, request.tools)
    if names:
        arguments = _json_object_in(text) or {}
        return "", [{"id": f"call_{uuid.uuid4().hex[:24]}", "name": n, "arguments": arguments} for n in names]
    return f"You said: {text}", []


class _Llmsim(_Adapter):
    """The built-in offline simulator (SPEC section 5), streamed word by word."""

    def stream(self, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        text, tool_calls = _llmsim_answer(request)
        delay = request.settings.get("token_delay_ms", 0) / 1000
        for word in _words(text):
            if delay:
                gevent.sleep(delay)  # also a point where a cancel can land
            on_text(word)
        said = " ".join(m.get("text") or _dumps(m.get("result")) for m in request.messages)
        prompt = f"{request.system} {request.summary} {said}" if request.summary else request.system + said
        return LLMReply(text, tool_calls, len(prompt.split()), len(_words(text)) + len(tool_calls))

    def models(self, request: LLMRequest) -> list[str]:
        return [PROVIDER_DEFAULTS["llmsim"][1]]


# ---- record and replay (SPEC 18) ------------------------------------------------
# A provider with `record: true` stores each call it serves as a cassette (the turn engine
# does, around the call: _TurnRun._model_call); a provider of type `replay` answers a call
# with the cassette of its source whose request_hash matches, which the engine finds and
# hands to the adapter in its settings ("cassette", "speed").


def _cassette_request(request: LLMRequest) -> tuple[str, str]:
    """(its hash, the request as a cassette keeps it, JSON text): what the model is asked, without
    the key, the headers, the settings or the model's name (a replay provider has its own)."""
    asked = {"system": request.system, "summary": request.summary, "messages": request.messages,
             "tools": [tool.model_dump() for tool in request.tools], "temperature": request.temperature}  # fmt: skip
    text = json.dumps(asked, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest(), text


def _blanked(text: str, secrets: tuple[str, ...]) -> str:
    """A cassette's text with the secrets blanked out (_redact) where one may be in it: a call's
    history is long, and a look for each secret's start costs far less than the pattern."""
    lowered = text.lower()
    return _redact(text, *secrets) if any(s[:8].lower() in lowered for s in secrets) else text


class _Replay(_Adapter):
    """A recorded call played back: its text streamed with the recorded delays times `speed`."""

    def stream(self, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        answer = request.settings.get("cassette")
        if answer is None:
            raise ProviderError("no recorded call matches this one (the conversation differs from the "
                                "recording, or it was not recorded)", "NO_CASSETTE")  # fmt: skip
        speed, started = request.settings.get("speed", 1.0), time.monotonic()
        for at_ms, delta in [*answer["deltas"], (answer["total_ms"], None)]:  # each piece, then the end
            if (wait := at_ms * speed / 1000 - (time.monotonic() - started)) > 0:
                gevent.sleep(wait)  # also a point where a cancel can land
            if delta is not None:
                on_text(delta)
        return LLMReply(answer["text"], answer["tool_calls"], answer["input_tokens"], answer["output_tokens"])

    def models(self, request: LLMRequest) -> list[str]:
        return [request.model]


# The adapter of each provider type of PROVIDER_KINDS (section 6), which builds its schemas.
ADAPTERS: dict[str, _Adapter] = {
    "openai": _OpenAI(),
    "anthropic": _Anthropic(),
    "llmsim": _Llmsim(),
    "replay": _Replay(),
}
assert ADAPTERS.keys() == PROVIDER_KINDS.keys(), "a provider type needs an entry and an adapter"


# =============================================================================
# 10. Capabilities and tools
# =============================================================================


class _TimeArgs(_In):
    timezone: str = Field("UTC", max_length=64, description="IANA time zone, e.g. Europe/Paris.")
    format: Literal["iso8601", "unix", "human"] = Field("iso8601", description="unix is seconds.")


class _MathArgs(_In):
    a: float
    b: float


class _CityArgs(_In):
    city: str = Field(min_length=1, max_length=128)


class _ForecastArgs(_CityArgs):
    days: JsonInt = Field(3, ge=1, le=14)


ToolPath = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATH)]


class _PathArgs(_In):
    path: ToolPath = Field(description="Absolute path, e.g. /notes/todo.md.")


class _WriteFileArgs(_PathArgs):
    content: str = Field(max_length=MAX_MESSAGE_TEXT)
    encoding: Literal["text", "base64"] = "text"


class _ListDirArgs(_In):
    path: ToolPath = "/"


class _GrepArgs(_In):
    pattern: str = Field(min_length=1, max_length=1024, description="A regular expression.")
    path: ToolPath = "/"


class _DeleteArgs(_PathArgs):
    recursive: bool = False


class _FetchArgs(_In):
    url: str = Field(min_length=1, max_length=8192, description="An http or https URL.")
    format: Literal["text", "markdown", "raw"] = "markdown"


class _Todo(_In):
    content: str = Field(min_length=1, max_length=4096)
    status: Literal["pending", "in_progress", "completed"]


class _TodoArgs(_In):
    todos: list[_Todo] = Field(max_length=256)


@dataclasses.dataclass(frozen=True)
class _Tool:
    """A tool: its name, description, argument model and the function that runs it."""

    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Any, Any], Any] | None = None
    schema: dict | None = None  # the parameters' JSON Schema, when the argument model does not say it
    timeout_s: float | None = None  # None: TOOL_TIMEOUT_S (section 12)

    @functools.cached_property
    def spec(self) -> ToolSpec:
        """Name, description and JSON-schema parameters, built once (turns send them with every call)."""
        if self.schema is not None:
            return ToolSpec(name=self.name, description=self.description, parameters=self.schema)
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        schema.pop("description", None)
        return ToolSpec(name=self.name, description=self.description, parameters=schema)


@dataclasses.dataclass(frozen=True)
class _Capability:
    """A built-in capability: tools plus the text it adds to the system prompt."""

    id: str
    name: str
    description: str
    category: str
    system_prompt: str
    tools: tuple[_Tool, ...] = ()

    def listed_tools(self) -> tuple[_Tool, ...]:
        """Its tools (an MCP server's may still be starting: see _McpServer)."""
        return self.tools

    def out(self) -> Capability:
        return Capability(
            id=self.id,
            name=self.name,
            description=self.description,
            status="available",
            category=self.category,
            system_prompt=self.system_prompt,
            tools=[t.spec for t in self.tools],
        )


@dataclasses.dataclass
class _ToolContext:
    """What a running tool may use: its session and the app's store and config."""

    session_id: str
    store: _Store
    config: dict


def _current_time(args: _TimeArgs, tctx: _ToolContext) -> dict:
    import zoneinfo

    try:
        zone = zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolFailed(f"unknown time zone: {args.timezone}") from None
    now = datetime.datetime.now(zone)
    value: Any = {
        "iso8601": now.isoformat(timespec="seconds"),
        "unix": int(now.timestamp()),
        "human": now.strftime("%A, %d %B %Y, %H:%M:%S %Z"),
    }[args.format]
    return {"timezone": args.timezone, "format": args.format, "time": value}


def _arithmetic(op: str) -> Callable[[_MathArgs, _ToolContext], dict]:
    def run(args: _MathArgs, tctx: _ToolContext) -> dict:
        if op == "divide" and args.b == 0:
            raise ToolFailed("division by zero")
        result = {"add": args.a + args.b, "subtract": args.a - args.b, "multiply": args.a * args.b}.get(op)
        result = args.a / args.b if result is None else result
        if result != result or result in (float("inf"), float("-inf")):
            raise ToolFailed("the result is not a finite number")
        return {"result": int(result) if result.is_integer() and abs(result) < 2**53 else result}

    return run


_CONDITIONS = ("sunny", "partly cloudy", "cloudy", "light rain", "rain", "thunderstorms", "snow", "fog", "windy")


def _city_numbers(city: str, salt: str) -> list[int]:
    return list(hashlib.sha256(f"{city.strip().lower()}|{salt}".encode()).digest())


def _weather_for(city: str, salt: str) -> dict:
    n = _city_numbers(city, salt)
    return {
        "temperature_c": n[0] % 45 - 10,
        "conditions": _CONDITIONS[n[1] % len(_CONDITIONS)],
        "humidity_pct": 20 + n[2] % 75,
        "wind_kph": n[3] % 60,
    }


def _get_weather(args: _CityArgs, tctx: _ToolContext) -> dict:
    return {"city": args.city, **_weather_for(args.city, "now")}


def _get_forecast(args: _ForecastArgs, tctx: _ToolContext) -> dict:
    days = []
    for day in range(1, args.days + 1):
        w = _weather_for(args.city, f"day{day}")
        days.append({"day": day, "high_c": w["temperature_c"] + 4, "low_c": w["temperature_c"] - 4, **w})
    return {"city": args.city, "days": days}


def _write_todos(args: _TodoArgs, tctx: _ToolContext) -> dict:
    todos = [t.model_dump() for t in args.todos]
    counts = {s: sum(t["status"] == s for t in todos) for s in ("pending", "in_progress", "completed")}
    return {"todos": todos, "counts": counts}


# ---- the session file system ------------------------------------------------

MAX_FILE_BYTES = 1024 * 1024
MAX_SESSION_BYTES = 10 * 1024 * 1024
MAX_SESSION_FILES = 10_000
GREP_MAX_MATCHES = 200
GREP_MAX_SECONDS = 2.0
GREP_MAX_LINE = 4096
# Python's `re` backtracks and cannot be interrupted: one pattern like (.*a){20}b
# can run for hours inside a C call, with every greenlet frozen (and compiling a long
# pattern of wide classes takes a second). So the pattern is compiled and the search
# run in a child process that is killed at the deadline.
_GREP_CHILD = """
import json, os, re, sys
os.nice(10)  # the server comes first
job = json.load(sys.stdin)
try:
    regex, matches = re.compile(job["pattern"]), []
except (re.error, RecursionError, OverflowError) as e:
    json.dump({"invalid": str(e)}, sys.stdout)
    sys.exit(0)
def search():
    for path, text in job["files"]:
        for number, line in enumerate(text.splitlines(), 1):
            if regex.search(line[:job["max_line"]]):
                matches.append({"path": path, "line_number": number, "line": line[:500]})
                if len(matches) > job["max_matches"]:
                    return
search()
json.dump(matches, sys.stdout)
"""


def _grep_away(pattern: str, files: list[tuple[str, str]]) -> list[dict]:
    """Run a regex search over (path, text) pairs in a child process, killed after GREP_MAX_SECONDS."""
    from gevent import subprocess  # cooperative whether or not the process patched subprocess

    job = _dumps({"pattern": pattern, "files": files, "max_line": GREP_MAX_LINE, "max_matches": GREP_MAX_MATCHES})
    child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GREP_CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        out, _ = child.communicate(job.encode("utf-8", "surrogatepass"), timeout=GREP_MAX_SECONDS)
    except subprocess.TimeoutExpired:
        raise ToolFailed(
            f"the search took longer than {GREP_MAX_SECONDS:g} s and was stopped: simplify the pattern"
        ) from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        raise ToolFailed("the search failed")
    found = json.loads(out)
    if isinstance(found, dict):
        raise _invalid(["pattern"], f"is not a valid regular expression: {found['invalid']}")
    return found


def _normalize_path(path: str) -> str:
    """An absolute, normalised virtual path (a relative one is taken from the root, as models
    often write them); 400 for anything that could escape the root."""
    path = path if path.startswith("/") else "/" + path
    if "\\" in path or any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise _invalid(["path"], "must not contain backslashes, NUL or control characters")
    if len(path) > MAX_PATH:
        raise _invalid(["path"], f"is longer than {MAX_PATH} characters")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise _invalid(["path"], "must not climb above the root")
            parts.pop()
        elif len(segment) > 255:
            raise _invalid(["path"], "has a name longer than 255 characters")
        else:
            parts.append(segment)
    return "/" + "/".join(parts)


def _ancestors(path: str) -> list[str]:
    """The directories above a path, outermost first, root excluded."""
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


class _Vfs:
    """One session's files and directories, stored in the database.

    Errors are EverrunsErrors: 404, 409, 400 and 413 over HTTP, error results
    for tools.
    """

    def __init__(self, store: _Store, session_id: str) -> None:
        self.store, self.m, self.session_id = store, store.m, session_id

    def _row(self, path: str) -> Any:
        File = self.m.File
        return File.get_or_none(File.session_id == self.session_id, File.path == path)

    def _need(self, path: str) -> Any:
        """The row of an existing path (root: None); 404 otherwise."""
        if path == "/":
            return None
        row = self._row(path)
        if row is None:
            raise _NotFound(f"{path} does not exist")
        return row

    def _below(self, path: str) -> Any:
        """The condition for everything below a directory."""
        File, prefix = self.m.File, path.rstrip("/") + "/"
        return (File.session_id == self.session_id) & (pw.fn.substr(File.path, 1, len(prefix)) == prefix)

    def _under(self, path: str) -> Any:
        """Everything below a directory, contents included."""
        return self.m.File.select().where(self._below(path))

    def entries(self, path: str) -> list[dict]:
        File, prefix = self.m.File, path.rstrip("/") + "/"
        listed = File.select(File.path, File.type, File.size_bytes).where(self._below(path))
        rows = [r for r in listed if "/" not in r.path[len(prefix) :]]
        return [
            {"name": r.path.rsplit("/", 1)[1], "path": r.path, "type": r.type, "size_bytes": r.size_bytes}
            for r in sorted(rows, key=lambda r: r.path)
        ]

    def read(self, path: str) -> dict:
        """A file with its content, or a directory with its entries."""
        row = self._need(path)
        if row is None or row.type == "directory":
            return {"path": path, "type": "directory", "entries": self.entries(path)}
        data = bytes(row.content or b"")
        content = data.decode() if row.encoding == "text" else base64.b64encode(data).decode()
        return {"path": path, "type": "file", "content": content, "encoding": row.encoding,
                "size_bytes": row.size_bytes, "created_at": row.created_at, "updated_at": row.updated_at}  # fmt: skip

    def stat(self, path: str) -> dict:
        row = self._need(path)
        if row is None:
            return {"path": "/", "type": "directory", "size_bytes": 0, "created_at": None, "updated_at": None}
        return {"path": path, "type": row.type, "size_bytes": row.size_bytes,
                "created_at": row.created_at, "updated_at": row.updated_at}  # fmt: skip

    def _make_parents(self, path: str, ts: str) -> None:
        for directory in _ancestors(path):
            row = self._row(directory)
            if row is not None and row.type != "directory":
                raise _Conflict(f"{directory} is a file, not a directory")
            if row is None:
                self.m.File.create(
                    session_id=self.session_id, path=directory, type="directory", created_at=ts, updated_at=ts
                )

    def _check_room(self, path: str, size: int) -> None:
        File = self.m.File
        used = File.select(pw.fn.COALESCE(pw.fn.SUM(File.size_bytes), 0), pw.fn.COUNT(File.path)).where(
            File.session_id == self.session_id, File.path != path
        ).tuples().get()  # fmt: skip
        if used[0] + size > MAX_SESSION_BYTES:
            raise _PayloadTooLarge(f"the session's files would exceed {MAX_SESSION_BYTES} bytes")
        if used[1] >= MAX_SESSION_FILES:
            raise _PayloadTooLarge(f"a session holds at most {MAX_SESSION_FILES} files and directories")

    def write(self, path: str, content: str, encoding: str = "text") -> tuple[dict, bool]:
        """Create or replace a file, parents created; (its stat, created?)."""
        if path == "/":
            raise _Conflict("/ is a directory")
        try:
            data = content.encode() if encoding == "text" else base64.b64decode(content, validate=True)
        except ValueError:
            raise _invalid(["content"], "is not valid base64") from None
        if len(data) > MAX_FILE_BYTES:
            raise _PayloadTooLarge(f"a file holds at most {MAX_FILE_BYTES} bytes")
        ts = _now_iso()
        with self.store.write(self.session_id):
            row = self._row(path)
            if row is not None and row.type == "directory":
                raise _Conflict(f"{path} is a directory")
            self._make_parents(path, ts)
            self._check_room(path, len(data))
            fields = {"content": data, "encoding": encoding, "size_bytes": len(data), "updated_at": ts}
            if row is None:
                self.m.File.create(session_id=self.session_id, path=path, type="file", created_at=ts, **fields)
            else:
                self.m.File.update(**fields).where(
                    self.m.File.session_id == self.session_id, self.m.File.path == path
                ).execute()
        return self.stat(path), row is None

    def mkdir(self, path: str) -> bool:
        """Create a directory, parents created; True if it is new."""
        if path == "/":
            return False
        ts = _now_iso()
        with self.store.write(self.session_id):
            row = self._row(path)
            if row is not None:
                if row.type != "directory":
                    raise _Conflict(f"{path} is a file")
                return False
            self._make_parents(path, ts)
            self._check_room(path, 0)
            self.m.File.create(session_id=self.session_id, path=path, type="directory", created_at=ts, updated_at=ts)
        return True

    def delete(self, path: str, recursive: bool = False) -> int:
        """Delete a file, or a directory (non-empty only when recursive); how many entries went."""
        if path == "/":
            raise _Conflict("the root directory cannot be deleted")
        with self.store.write(self.session_id):
            row = self._need(path)
            below = self.m.File.select(self.m.File.path).where(self._below(path))
            if row.type == "directory" and below.exists() and not recursive:
                raise _Conflict(f"{path} is not empty (delete it with recursive)")
            gone = 0
            if row.type == "directory":
                gone = self.m.File.delete().where(self._below(path)).execute()
            row.delete_instance()
        return gone + 1

    def grep(self, pattern: str, path: str = "/") -> dict:
        """Lines matching a regular expression in the text files under a path (or in one file)."""
        row = self._need(path)
        rows = [row] if row is not None and row.type == "file" else [r for r in self._under(path) if r.type == "file"]
        self.store.release()  # no connection is held while the child searches
        files = [(r.path, bytes(r.content or b"").decode()) for r in sorted(rows, key=lambda r: r.path)
                 if r.encoding == "text"]  # fmt: skip
        matches = _grep_away(pattern, files)  # the pattern is checked there too, even with no files
        truncated = len(matches) > GREP_MAX_MATCHES
        return {"pattern": pattern, "matches": matches[:GREP_MAX_MATCHES], "truncated": truncated}


def _fs(tctx: Any) -> _Vfs:
    return _Vfs(tctx.store, tctx.session_id)


def _read_file(args: _PathArgs, tctx: Any) -> dict:
    return _fs(tctx).read(_normalize_path(args.path))


def _write_file(args: _WriteFileArgs, tctx: Any) -> dict:
    stat, created = _fs(tctx).write(_normalize_path(args.path), args.content, args.encoding)
    return {**stat, "created": created}


def _list_directory(args: _ListDirArgs, tctx: Any) -> dict:
    path = _normalize_path(args.path)
    listing = _fs(tctx).read(path)
    if listing["type"] != "directory":
        raise _Conflict(f"{path} is a file")
    return listing


def _grep_files(args: _GrepArgs, tctx: Any) -> dict:
    return _fs(tctx).grep(args.pattern, _normalize_path(args.path))


def _delete_file(args: _DeleteArgs, tctx: Any) -> dict:
    path = _normalize_path(args.path)
    return {"path": path, "deleted": _fs(tctx).delete(path, args.recursive)}


def _stat_file(args: _PathArgs, tctx: Any) -> dict:
    return _fs(tctx).stat(_normalize_path(args.path))


# ---- web fetch ----------------------------------------------------------------

FETCH_MAX_BYTES = 2 * 1024 * 1024
FETCH_MAX_REDIRECTS = 5
FETCH_TIMEOUT_S = 10.0  # to connect, and for each read
FETCH_DEADLINE_S = 20.0  # for the whole fetch, redirects included

# Every address a fetch refuses (unless --allow-private-fetch). Listed rather
# than taken from ipaddress.is_global, which older Pythons get wrong.
BLOCKED_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
        "::/128", "::1/128", "::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
        "2001::/23", "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


def _address_allowed(address: str) -> bool:
    """True if an IP address is public: in none of BLOCKED_NETWORKS (IPv4-mapped forms unwrapped)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not any(ip in network for network in BLOCKED_NETWORKS if network.version == ip.version)


def _resolve(host: str, port: int) -> list[str]:
    """Every address a host name resolves to (tests replace this to fake DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _checked_address(host: str, port: int, allow_private: bool) -> str:
    """Resolve once; the address to connect to, if every address is allowed."""
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError) as e:
        raise ToolFailed(f"cannot resolve {host}: {e}") from None
    if not addresses:
        raise ToolFailed(f"cannot resolve {host}")
    refused = [a for a in addresses if not _address_allowed(a)]
    if refused and not allow_private:
        raise ToolFailed(f"refused: {host} resolves to a private, loopback or reserved address ({refused[0]})")
    return addresses[0]


def _connect(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to an already-checked address (tests replace this to fake the internet)."""
    return socket.create_connection((address, port), timeout=timeout)


def _pinned_connection(scheme: str, host: str, port: int, address: str, timeout: float = FETCH_TIMEOUT_S) -> Any:
    """An HTTP(S) connection to `address` that still speaks to `host` (Host header, SNI, certificate)."""
    import http.client
    import ssl

    class Pinned(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = _connect(address, port, timeout)
            if scheme == "https":
                self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=host)

    return Pinned(host, port, timeout=timeout)


def _fetch_once(url: str, allow_private: bool) -> tuple[Any, bytes, bool]:
    """One GET to a checked address: (response, body up to the cap, truncated?)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ToolFailed(f"only http and https URLs can be fetched, not {parts.scheme or 'this'}")
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ToolFailed("the URL has an invalid port") from None
    if not host:
        raise ToolFailed("the URL has no host")
    conn = _pinned_connection(parts.scheme, host, port, _checked_address(host, port, allow_private))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn.request("GET", path, headers={"User-Agent": f"everruns/{__version__}", "Accept": "text/html, text/*, */*"})
    response = conn.getresponse()
    body = response.read(FETCH_MAX_BYTES + 1)
    conn.close()
    return response, body[:FETCH_MAX_BYTES], len(body) > FETCH_MAX_BYTES


def _web_fetch(args: _FetchArgs, tctx: Any) -> dict:
    """GET a URL, following at most 5 redirects by hand, each hop checked again."""
    import http.client
    from urllib.parse import urljoin

    allow_private = bool(tctx.config.get("allow_private_fetch"))
    url = args.url
    try:
        with gevent.Timeout(FETCH_DEADLINE_S, ToolFailed(f"the fetch took longer than {FETCH_DEADLINE_S:g} s")):
            for _ in range(FETCH_MAX_REDIRECTS + 1):
                response, body, truncated = _fetch_once(url, allow_private)
                location = response.getheader("Location")
                if response.status not in (301, 302, 303, 307, 308) or not location:
                    return _fetched(url, response, body, truncated, args.format)
                url = urljoin(url, location)
    except (OSError, http.client.HTTPException) as e:
        raise ToolFailed(f"the fetch failed: {e or type(e).__name__}") from None
    raise ToolFailed(f"more than {FETCH_MAX_REDIRECTS} redirects")


def _fetched(url: str, response: Any, body: bytes, truncated: bool, fmt: str) -> dict:
    ctype = response.getheader("Content-Type") or ""
    charset = re.search(r"charset=([\w-]+)", ctype)
    try:
        text = body.decode(charset.group(1) if charset else "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know: read it as UTF-8
        text = body.decode("utf-8", errors="replace")
    if fmt != "raw" and "html" in ctype.lower():
        text = _html_to_text(text, markdown=fmt == "markdown")
    if response.status >= 400:
        raise ToolFailed(f"{url} answered {response.status}: {text[:1000]}")
    return {"url": url, "status": response.status, "content_type": ctype, "content": text, "truncated": truncated}


@functools.cache
def _html_text_parser() -> type:
    """The HTML parser class, defined on first use (html.parser and its entity table
    are half a megabyte that only web_fetch needs)."""
    import html.parser

    class _HtmlText(html.parser.HTMLParser):
        """HTML to readable text, or to markdown (headings, links, lists, code)."""

        SKIP = {"script", "style", "noscript", "template", "svg", "head"}
        BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "table", "tr", "br", "hr",
                 "blockquote", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "li", "pre"}  # fmt: skip

        def __init__(self, markdown: bool) -> None:
            super().__init__(convert_charrefs=True)
            self.markdown, self.out, self.skipping, self.href, self.pre = markdown, [], 0, None, 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in self.SKIP:
                self.skipping += 1
            elif tag in self.BLOCK:
                self.out.append("\n\n" if tag not in ("li", "br", "tr") else "\n")
            if self.markdown and not self.skipping:
                self._markdown_start(tag, dict(attrs))
            self.pre += tag == "pre"

        def _markdown_start(self, tag: str, attrs: dict) -> None:
            if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
                self.out.append("#" * int(tag[1]) + " ")
            elif tag == "li":
                self.out.append("- ")
            elif tag == "a" and attrs.get("href"):
                self.href = attrs["href"]
                self.out.append("[")
            elif tag == "pre":
                self.out.append("```\n")
            elif tag == "code" and not self.pre:
                self.out.append("`")
            elif tag in ("strong", "b"):
                self.out.append("**")

        def handle_endtag(self, tag: str) -> None:
            if tag in self.SKIP:
                self.skipping = max(0, self.skipping - 1)
            elif self.markdown and not self.skipping:
                if tag == "a" and self.href:
                    self.out.append(f"]({self.href})")
                    self.href = None
                elif tag == "pre":
                    self.out.append("\n```")
                elif tag == "code" and not self.pre:
                    self.out.append("`")
                elif tag in ("strong", "b"):
                    self.out.append("**")
            self.pre -= tag == "pre" and self.pre > 0
            if tag in self.BLOCK:
                self.out.append("\n")

        def handle_data(self, data: str) -> None:
            if not self.skipping:
                self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

        def text(self) -> str:
            joined = "".join(self.out)
            lines = [line.strip() for line in joined.split("\n")]
            return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()

    return _HtmlText


def _html_to_text(page: str, markdown: bool) -> str:
    parser = _html_text_parser()(markdown)
    parser.feed(page)
    parser.close()
    return parser.text()


_MATH = tuple(
    _Tool(op, f"{verb} two numbers: {formula}.", _MathArgs, _arithmetic(op))
    for op, verb, formula in (
        ("add", "Add", "a + b"),
        ("subtract", "Subtract", "a - b"),
        ("multiply", "Multiply", "a * b"),
        ("divide", "Divide", "a / b; dividing by zero is an error"),
    )
)

CAPABILITIES.update(
    (c.id, c)
    for c in (
        _Capability(
            "current_time",
            "Current time",
            "Tells the current date and time in any IANA time zone.",
            "utilities",
            "You can get the current date and time with get_current_time.",
            (_Tool("get_current_time", "Get the current date and time.", _TimeArgs, _current_time),),
        ),
        _Capability(
            "test_math",
            "Test math",
            "Basic arithmetic tools, for testing tool calls.",
            "testing",
            "For arithmetic, use the add, subtract, multiply and divide tools.",
            _MATH,
        ),
        _Capability(
            "test_weather",
            "Test weather",
            "Deterministic fake weather, for demos and tests.",
            "testing",
            "You can look up (fake) weather with get_weather and get_forecast.",
            (
                _Tool("get_weather", "Get the current weather in a city.", _CityArgs, _get_weather),
                _Tool("get_forecast", "Get a daily forecast for a city.", _ForecastArgs, _get_forecast),
            ),
        ),
        _Capability(
            "session_file_system",
            "Session file system",
            "A private file system for each session, stored in the database.",
            "file_system",
            "You have a private file system for this session. Paths are absolute, like /notes.md.",
            (
                _Tool("read_file", "Read a file (binary files come back as base64).", _PathArgs, _read_file),
                _Tool(
                    "write_file", "Create or replace a file; parent folders are created.", _WriteFileArgs, _write_file
                ),
                _Tool("list_directory", "List a directory.", _ListDirArgs, _list_directory),
                _Tool("grep_files", "Search text files for a regular expression.", _GrepArgs, _grep_files),
                _Tool(
                    "delete_file",
                    "Delete a file, or a directory (recursive to delete what it holds).",
                    _DeleteArgs,
                    _delete_file,
                ),
                _Tool("stat_file", "Describe a file or directory: type, size, times.", _PathArgs, _stat_file),
            ),
        ),
        _Capability(
            "web_fetch",
            "Web fetch",
            "Fetches public web pages as text or markdown.",
            "web",
            "You can fetch public web pages with web_fetch.",
            (
                _Tool(
                    "web_fetch",
                    "GET a public http(s) URL; HTML comes back as text or markdown.",
                    _FetchArgs,
                    _web_fetch,
                ),
            ),
        ),
        _Capability(
            "stateless_todo_list",
            "Todo list",
            "Lets the agent keep a todo list in the conversation.",
            "productivity",
            "Plan multi-step work with write_todos; send the whole list each time.",
            (_Tool("write_todos", "Replace the todo list.", _TodoArgs, _write_todos),),
        ),
        _Capability("noop", "No-op", "Adds nothing; useful for testing.", "testing", ""),
    )
)

# ---- Python functions as tools -------------------------------------------------
# An embedding program's own tools (SPEC 14): a plain function is a tool, the JSON Schema
# of its parameters made by pydantic from its type hints, its description its docstring.
# They belong to one app (app.tool, create_app(tools=...)): its registry's `python` map,
# never CAPABILITIES.

PYTHON_CAPABILITY = "python"  # the capability of a function given to create_app(tools=...) unmarked
PYTHON_CAPABILITY_ID = r"^[a-z0-9_-]{1,64}$"  # an MCP server's id has a colon: the two never clash
MAX_TOOL_TIMEOUT_S = 24 * 3600.0


class _PythonArgs(BaseModel):
    """Base of a Python tool's argument model: an argument it does not name is an error, as for
    every tool (lax types: the model's JSON 3 is a float's 3.0)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


def _arguments_model(function: Callable, name: str) -> type[BaseModel]:
    """The model of a function's parameters, from its signature and type hints."""
    try:  # a function, a method, a functools.partial, an object with __call__; string annotations evaluated
        parameters = inspect.signature(function, eval_str=True).parameters.values()
    except (TypeError, ValueError, NameError, SyntaxError) as e:
        raise TypeError(f"tool {name}: its signature cannot be read: {e}") from None
    fields: dict[str, Any] = {}
    for p in parameters:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) or p.name.startswith("_"):
            raise TypeError(f"tool {name}: parameter {p.name}: a tool takes named parameters the model can send "
                            "(no *args, **kwargs, positional-only or _private ones)")  # fmt: skip
        annotation = Any if p.annotation is p.empty else p.annotation
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
    try:
        return pydantic.create_model(f"{name}_arguments", __base__=_PythonArgs, **fields)
    except Exception as e:  # a type pydantic cannot describe, a field name it reserves, ...
        raise TypeError(f"tool {name}: its parameters cannot be described: {e}") from None


def _call_python(function: Callable, name: str, threaded: bool, args: BaseModel, tctx: _ToolContext) -> Any:
    """Call a Python tool with its validated arguments; its return value as JSON. What it
    raises is an error result with its message (the traceback goes to the log)."""
    kwargs = {field: getattr(args, field) for field in type(args).model_fields}
    try:
        value = gevent.get_hub().threadpool.apply(function, (), kwargs) if threaded else function(**kwargs)
    except ToolFailed:
        raise
    except Exception as e:
        _log.exception("tool %s raised", name)
        raise ToolFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from None
    try:
        return pydantic_core.to_jsonable_python(value)  # pydantic models, dataclasses, datetimes, ...
    except pydantic_core.PydanticSerializationError:
        raise ToolFailed(f"{name} returned a {type(value).__name__}, which JSON cannot carry") from None


def _python_tool(function: Callable, name: str | None = None, description: str | None = None,
                 threaded: bool = False, timeout_s: float | None = None) -> _Tool:  # fmt: skip
    """A _Tool that calls `function`; TypeError or ValueError says why it cannot be one."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise TypeError(f"{getattr(function, '__qualname__', function)} is an async def function: a tool is a "
                        "plain def (it runs in a greenlet; code that blocks in C: threaded=True)")  # fmt: skip
    if not callable(function):
        raise TypeError(f"a tool is a function, not {type(function).__name__}")
    name = getattr(function, "__name__", None) if name is None else name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
        raise ValueError(f"tool name {name!r}: 1 to 64 letters, digits, '_' or '-', as the providers take them "
                         "(name= gives one)")  # fmt: skip
    text = (inspect.getdoc(function) or "") if description is None else description
    if len(text) > MAX_DESCRIPTION:
        raise ValueError(f"tool {name}: the description is longer than {MAX_DESCRIPTION} characters")
    if timeout_s is not None and not 0 < timeout_s <= MAX_TOOL_TIMEOUT_S:
        raise ValueError(f"tool {name}: timeout_s must be above 0 and at most {MAX_TOOL_TIMEOUT_S:g}")
    run = functools.partial(_call_python, function, name, threaded)
    made = _Tool(name, text, _arguments_model(function, name), run, timeout_s=timeout_s)
    try:
        made.spec  # noqa: B018  (its JSON Schema now: a type that has none fails here, not in a turn)
    except Exception as e:
        raise TypeError(f"tool {name}: its parameters have no JSON Schema: {e}") from None
    return made


def tool(function: Callable | None = None, *, capability: str = PYTHON_CAPABILITY, name: str | None = None,
         description: str | None = None, threaded: bool = False, timeout_s: float | None = None) -> Any:  # fmt: skip
    """Mark a function as a tool for ``create_app(tools=[...])``, with the options of
    ``app.tool``; it stays a plain function, and no app has it until one is given it."""
    options = {"capability": capability, "name": name, "description": description, "threaded": threaded,
               "timeout_s": timeout_s}  # fmt: skip

    def mark(fn: Callable) -> Callable:
        _python_tool(fn, name, description, threaded, timeout_s)  # what is wrong is said here
        fn.__everruns_tool__ = options
        return fn

    return mark if function is None else mark(function)


def _python_capability(registry: collections.ChainMap, capability_id: str, **about: Any) -> _Capability:
    """An app's Python capability, made (or its name, description, category or system prompt
    changed) in its registry's `python` map."""
    python, builtin = registry.maps[-2], registry.maps[-1]
    if not isinstance(capability_id, str) or not re.fullmatch(PYTHON_CAPABILITY_ID, capability_id):
        raise ValueError(f"capability id {capability_id!r}: 1 to 64 lower-case letters, digits, '_' or '-'")
    if capability_id in builtin:
        raise ValueError(f"capability {capability_id!r} is built in: give your tools a capability of their own")
    title = capability_id.replace("_", " ").replace("-", " ").capitalize()
    current = python.get(capability_id) or _Capability(capability_id, title, "Python tools of this program.",
                                                       "python", "")  # fmt: skip
    changes = {k: v for k, v in about.items() if v is not None}
    if len(changes.get("system_prompt", "")) > MAX_SYSTEM_PROMPT:
        raise ValueError(f"capability {capability_id}: the system prompt is longer than {MAX_SYSTEM_PROMPT}")
    python[capability_id] = dataclasses.replace(current, **changes)
    return python[capability_id]


def _register_tool(registry: collections.ChainMap, capability_id: str, made: _Tool) -> None:
    """Add a Python tool to its capability in an app's registry; a tool name is one tool's."""
    for other in (*registry.maps[-2].values(), *registry.maps[-1].values()):
        if any(t.name == made.name for t in other.tools):
            raise ValueError(f"tool name {made.name!r} is taken (capability {other.id}): name= gives another")
    capability = _python_capability(registry, capability_id)
    registry.maps[-2][capability_id] = dataclasses.replace(capability, tools=(*capability.tools, made))


# =============================================================================
# 11. MCP client
# =============================================================================

# A Model Context Protocol server is a capability `mcp:NAME`: its tools, listed on
# first use, reach the model as NAME__TOOL. The client is JSON-RPC over a program's
# stdin/stdout, over Streamable HTTP or over the older HTTP+SSE transport, written
# here on gevent (no thread per call, no asyncio loop): the official SDK is asyncio.
# Listing capabilities never waits on a server: one that is not ready is started in
# the background (status "starting"), and one that failed is tried again later and
# later (1 s doubling to 5 min). Every read is bounded in bytes and in time.

MCP_PROTOCOL = "2025-06-18"  # the version asked for; a server answers the one it speaks
MCP_SSE_PROTOCOL = "2024-11-05"  # the version of the older HTTP+SSE transport
MCP_START_S = 10.0  # to start a server, initialize it and list its tools
MCP_CALL_S = 30.0  # for one tool call, in all (the turn's tool timeout bounds it too)
MCP_MESSAGE_BYTES = 4 * 1024 * 1024  # a larger message from a server is refused
MCP_LIST_BYTES = 8 * 1024 * 1024  # the pages of one tools/list together
MCP_SCHEMA_BYTES = 64 * 1024  # a tool whose input schema is larger is left out
MCP_INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER", "LANG", "TMPDIR")  # all else: its `env`
MCP_TOOLS_MAX = 512  # tools listed per server (pages are read until then)
MCP_RETRY_S, MCP_RETRY_MAX_S = 1.0, 300.0  # a server that failed to start is tried again after this, doubling
# Refused for servers added through the API whatever --allow-private-mcp says: link-local
# addresses and the cloud metadata services' (a server's own credentials live there).
METADATA_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "100.100.100.200/32", "fd00:ec2::254/128")
)


class _McpFailed(ToolFailed):
    """An MCP server could not answer (not started, exited, timed out, broke the protocol)."""


class _AnyArgs(BaseModel):
    """The arguments of an MCP tool: the server checks them against its own schema."""

    model_config = ConfigDict(extra="allow", defer_build=True)


def _mcp_name(name: str) -> str:
    """A server's name in a config file as its capability id takes it: lower case, and any
    character but a-z, 0-9, - and _ as a '-' (a file written for another MCP host works)."""
    return re.sub(r"[^a-z0-9_-]", "-", name.lower())


def _mcp_address_refusal(address: str, allow_private: bool) -> str | None:
    """Why a server added through the API may not be reached at an address, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    if any(ip in n for n in METADATA_NETWORKS if n.version == ip.version):
        return "its host is a link-local or cloud metadata address, which is always refused"
    if not allow_private and not _address_allowed(str(ip)):
        return "its host is a private, loopback or reserved address (the server allows them with --allow-private-mcp)"
    return None


class _McpCalls:
    """Requests waiting for their answers on a channel that delivers them on its own (a
    program's stdout, an event stream), by JSON-RPC id."""

    def __init__(self, name: str) -> None:
        self.name, self.pending, self.ids = name, {}, itertools.count(1)

    def received(self, raw: str | bytes, reply: Callable[[dict], None]) -> None:
        """Hand a message to the request it answers (a ping of the server's is answered)."""
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError):  # its request fails at once rather than at its timeout
            _log.warning("MCP server %s wrote a message that cannot be read", self.name)
            head = raw[:256] if isinstance(raw, bytes) else raw[:256].encode()
            found = re.search(rb'"id"\s*:\s*([0-9]{1,18})\b', head)
            waiter = self.pending.pop(int(found.group(1)), None) if found else None
            if waiter is not None:
                waiter.set_exception(_McpFailed(f"MCP server {self.name} sent an answer that cannot be read"))
            return
        if not isinstance(message, dict) or not isinstance(message.get("id"), (int, str, type(None))):
            return
        if "method" in message and "id" in message:  # a request of the server: ping is answered, no other
            known = message["method"] == "ping"
            answer = {"result": {}} if known else {"error": {"code": -32601, "message": "method not supported"}}
            reply({"jsonrpc": "2.0", "id": message["id"], **answer})
        elif (waiter := self.pending.pop(message.get("id"), None)) is not None:
            waiter.set(message)

    def request(self, method: str, params: dict, send: Callable[[dict], None], timeout: float) -> dict:
        waiter, request_id = gevent.event.AsyncResult(), next(self.ids)
        self.pending[request_id] = waiter
        try:
            send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            return waiter.get(timeout=timeout)
        except gevent.Timeout:
            raise _McpFailed(f"MCP server {self.name} did not answer {method} within {timeout:g} s") from None
        finally:
            self.pending.pop(request_id, None)

    def fail_all(self, why: str) -> None:
        waiters, self.pending = list(self.pending.values()), {}
        for waiter in waiters:
            waiter.set_exception(_McpFailed(why))


class _McpStdio:
    """A program that speaks MCP on its stdin and stdout (one JSON-RPC message per line),
    started on first use and again after it exits; what it writes to stderr is logged."""

    protocol_asked = MCP_PROTOCOL

    def __init__(self, name: str, command: str, args: list[str], env: dict[str, str]) -> None:
        self.name, self.argv, self.env = name, [command, *args], env
        self.proc: Any = None
        self.calls = _McpCalls(name)  # of the running program
        self.initialized = False
        self.protocol: str | None = None
        self.writing = gevent.lock.Semaphore()  # one message at a time on its stdin

    def ready(self) -> bool:
        return self.initialized and self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        import gevent.subprocess

        self.close()
        inherited = {k: v for k, v in os.environ.items() if k in MCP_INHERITED_ENV}  # no keys of ours
        try:
            self.proc = gevent.subprocess.Popen(
                self.argv, stdin=gevent.subprocess.PIPE, stdout=gevent.subprocess.PIPE,
                stderr=gevent.subprocess.PIPE, env={**inherited, **self.env}, start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            reason = f"{self.argv[0]}: {e.strerror or e}"
            raise _McpFailed(f"MCP server {self.name} could not be started: {reason}") from None
        self.calls, self.initialized = _McpCalls(self.name), False
        gevent.spawn(self._read, self.proc, self.calls)
        gevent.spawn(self._stderr, self.proc)

    def _read(self, proc: Any, calls: _McpCalls) -> None:
        try:
            while line := proc.stdout.readline(MCP_MESSAGE_BYTES + 1):
                if len(line) > MCP_MESSAGE_BYTES:
                    _log.warning("MCP server %s sent a message over %d bytes: stopped", self.name, MCP_MESSAGE_BYTES)
                    break
                try:
                    calls.received(line, self.send)
                except Exception:  # nothing a server writes stops the reading
                    _log.warning("MCP server %s wrote a message that cannot be read", self.name)
                gevent.sleep(0)  # a program that writes without end does not hold the server
        finally:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # deaf without its reader: it goes
            calls.fail_all(f"MCP server {self.name} exited")

    def _stderr(self, proc: Any) -> None:
        while line := proc.stderr.readline(65536):
            _log.info("MCP server %s: %s", self.name, _clean_text(line.decode(errors="replace").rstrip()))
            gevent.sleep(0)

    def send(self, message: dict) -> None:
        try:
            with self.writing:
                self.proc.stdin.write(_dumps(message).encode() + b"\n")
                self.proc.stdin.flush()
        except (OSError, ValueError, AttributeError):  # exited (a closed pipe)
            raise _McpFailed(f"MCP server {self.name} exited") from None

    def request(self, method: str, params: dict, timeout: float) -> dict:
        return self.calls.request(method, params, self.send, timeout)

    def notify(self, method: str) -> None:
        self.send({"jsonrpc": "2.0", "method": method})

    def close(self) -> None:
        """Stop the program and what it started (its process group)."""
        proc, self.proc, self.initialized = self.proc, None, False
        if proc is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=2)
        except Exception:  # still running (TimeoutExpired)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(Exception):
                pipe.close()


class _McpHttp:
    """An MCP server over Streamable HTTP: each message is a POST; the answer is JSON or an
    event stream that carries it; the session id the server gives is sent back.

    A server added through the API (`guarded`) is reached only at an address its rules
    allow (see _mcp_address_refusal), the one that was checked (no DNS rebinding in
    between), and its failures to connect all read the same (no port scanning through it).
    """

    protocol_asked = MCP_PROTOCOL

    def __init__(self, name: str, url: str, headers: dict[str, str], guarded: bool = False,
                 allow_private: bool = False) -> None:  # fmt: skip
        self.name, self.url, self.headers = name, url, headers
        self.guarded, self.allow_private = guarded, allow_private
        self.session: str | None = None
        self.protocol: str | None = None
        self.initialized = False
        self.ids = itertools.count(1)

    def ready(self) -> bool:
        return self.initialized

    def start(self) -> None:
        problem = _url_problem(self.url)
        if problem:
            raise _McpFailed(f"MCP server {self.name} cannot be used: its URL {problem}")
        self.session, self.protocol, self.initialized = None, None, False

    def _open(self, data: bytes, headers: dict, timeout: float) -> tuple[Any, Any]:
        """POST to the server: (connection, response)."""
        from urllib.parse import urlsplit

        if not self.guarded:
            conn, response, _ = _send("POST", self.url, data, headers, timeout)
            return conn, response
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = _resolve(parts.hostname, port)
        except (OSError, UnicodeError):
            addresses = []
        refusals = [r for a in addresses if (r := _mcp_address_refusal(a, self.allow_private))]
        if refusals:
            raise _McpFailed(f"MCP server {self.name} is refused: {refusals[0]}")
        if not addresses:
            raise OSError("no address")
        conn = _pinned_connection(parts.scheme, parts.hostname, port, addresses[0], timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("POST", path, body=data, headers=headers)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def _post(self, message: dict, timeout: float) -> tuple[Any, Any]:
        import http.client

        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **self.headers}
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        if self.protocol:
            headers["MCP-Protocol-Version"] = self.protocol
        try:
            return self._open(_dumps(message).encode(), headers, timeout)
        except (OSError, http.client.HTTPException, UnicodeError) as e:
            reason = "" if self.guarded else f": {getattr(e, 'strerror', None) or type(e).__name__}"
            raise _McpFailed(f"MCP server {self.name} cannot be reached{reason}") from None

    def request(self, method: str, params: dict, timeout: float) -> dict:
        import http.client

        request_id = next(self.ids)
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        clock = _Clock(timeout, timeout, f"MCP server {self.name}")
        conn, response = self._post(message, timeout)
        try:
            if response.status == 404 and self.session:  # the server forgot the session: start again
                self.initialized = False
                raise _McpFailed(f"MCP server {self.name} ended its session")
            if response.status != 200:
                raise _McpFailed(f"MCP server {self.name} answered {method} with HTTP {response.status}")
            if method == "initialize":
                self.session = response.getheader("Mcp-Session-Id") or None
            kind = (response.getheader("Content-Type") or "").split(";")[0].strip()
            if kind == "text/event-stream":
                for _event, data in _sse_events(response, clock, MCP_MESSAGE_BYTES):
                    message = json.loads(data) if data.startswith("{") else {}
                    if message.get("id") == request_id and ("result" in message or "error" in message):
                        return message
                raise _McpFailed(f"MCP server {self.name} ended the stream without answering {method}")
            return json.loads(_read_upstream(response, MCP_MESSAGE_BYTES, clock))
        except ProviderError as e:  # the bounds of _Clock and _read_upstream
            raise _McpFailed(f"MCP server {self.name} did not answer {method} within {timeout:g} s"
                             if e.code == "PROVIDER_TIMEOUT" else e.message) from None  # fmt: skip
        except (ValueError, RecursionError, OSError, http.client.HTTPException) as e:
            raise _McpFailed(f"MCP server {self.name} broke the protocol ({type(e).__name__})") from None
        finally:
            conn.close()

    def notify(self, method: str) -> None:
        conn, response = self._post({"jsonrpc": "2.0", "method": method}, MCP_START_S)
        try:
            _read_upstream(response, 65536, _Clock(MCP_START_S), partial=True)  # no answer to wait for
        finally:
            conn.close()

    def close(self) -> None:
        self.initialized = False


class _McpSse:
    """An MCP server over the older HTTP+SSE transport (protocol 2024-11-05), which many
    servers still speak: one GET event stream carries every answer, and its first event
    (`endpoint`) names the URL that messages are POSTed to. Only from --mcp-config."""

    protocol_asked = MCP_SSE_PROTOCOL

    def __init__(self, name: str, url: str, headers: dict[str, str]) -> None:
        self.name, self.url, self.headers = name, url, headers
        self.calls = _McpCalls(name)
        self.endpoint: str | None = None
        self.reader: Any = None
        self.protocol: str | None = None
        self.initialized = False

    def ready(self) -> bool:
        return self.initialized and self.reader is not None and not self.reader.dead

    def start(self) -> None:
        import http.client
        from urllib.parse import urljoin

        self.close()
        problem = _url_problem(self.url)
        if problem:
            raise _McpFailed(f"MCP server {self.name} cannot be used: its URL {problem}")
        try:
            conn, response, _ = _send("GET", self.url, None, {"Accept": "text/event-stream", **self.headers},
                                      MCP_START_S)  # fmt: skip
        except (OSError, http.client.HTTPException, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise _McpFailed(f"MCP server {self.name} cannot be reached: {reason}") from None
        if response.status != 200:
            conn.close()
            raise _McpFailed(f"MCP server {self.name} answered its event stream with HTTP {response.status}")
        conn.sock.settimeout(None)  # the stream may stay quiet between answers
        endpoint, self.calls = gevent.event.AsyncResult(), _McpCalls(self.name)
        self.reader = gevent.spawn(self._read, conn, response, endpoint, self.calls)
        try:
            self.endpoint = urljoin(self.url, endpoint.get(timeout=MCP_START_S))
        except gevent.Timeout:
            self.close()
            raise _McpFailed(f"MCP server {self.name} did not name its message endpoint") from None

    def _read(self, conn: Any, response: Any, endpoint: Any, calls: _McpCalls) -> None:
        clock = _Clock(math.inf, math.inf, f"MCP server {self.name}")
        try:
            for event, data in _sse_events(response, clock, MCP_MESSAGE_BYTES):
                if event == "endpoint":
                    endpoint.set(data.strip())
                elif event == "message":
                    calls.received(data, self.send)
        except (ProviderError, _Stop, gevent.GreenletExit):
            pass
        finally:
            conn.close()
            if not endpoint.ready():
                endpoint.set_exception(_McpFailed(f"MCP server {self.name} ended its event stream"))
            calls.fail_all(f"MCP server {self.name} ended its event stream")

    def send(self, message: dict) -> None:
        import http.client

        headers = {"Content-Type": "application/json", **self.headers}
        try:
            conn, response, _ = _send("POST", self.endpoint or self.url, _dumps(message).encode(), headers, MCP_CALL_S)
            try:
                status = response.status
                _read_upstream(response, 65536, _Clock(MCP_CALL_S), partial=True)
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, UnicodeError) as e:
            reason = getattr(e, "strerror", None) or type(e).__name__
            raise _McpFailed(f"MCP server {self.name} cannot be reached: {reason}") from None
        if status not in (200, 202, 204):
            raise _McpFailed(f"MCP server {self.name} refused a message with HTTP {status}")

    def request(self, method: str, params: dict, timeout: float) -> dict:
        return self.calls.request(method, params, self.send, timeout)

    def notify(self, method: str) -> None:
        self.send({"jsonrpc": "2.0", "method": method})

    def close(self) -> None:
        reader, self.reader, self.initialized = self.reader, None, False
        if reader is not None:
            _stop_soon(reader)


class _McpServer:
    """An MCP server as a capability (`mcp:NAME`): its tools are listed once it has started
    (in the background when only a listing asked; see listed_tools and start_tools)."""

    category = "mcp"
    system_prompt = ""

    def __init__(self, name: str, transport: Any, resource_id: str, created_at: str, updated_at: str,
                 secrets: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.name, self.transport, self.secrets = name, transport, secrets  # secrets: its header values
        self.resource_id, self.created_at, self.updated_at = resource_id, created_at, updated_at  # GET /v1/mcp-servers
        self.kind = {_McpHttp: "http", _McpSse: "sse"}.get(type(transport), "stdio")
        source = {"http": "Streamable HTTP", "sse": "HTTP+SSE", "stdio": "stdio"}[self.kind]
        self.id, self.description = f"mcp:{name}", f"Tools of the MCP server {name} ({source})."
        self.status, self.error = "not_started", None  # not_started, starting, ready, unavailable
        self._tools: tuple[_Tool, ...] = ()
        self._lock = gevent.lock.Semaphore()
        self._starting: Any = None  # the greenlet that starts it for a listing
        self.retry_at, self.backoff = 0.0, 0.0

    @property
    def tools(self) -> tuple[_Tool, ...]:
        """Its tools as listed so far, without waiting (see listed_tools)."""
        return self.listed_tools()

    def listed_tools(self) -> tuple[_Tool, ...]:
        """Its tools as listed so far; never waits: a server that is not ready (and not
        waiting for its next try) is started in the background meanwhile."""
        idle = self._starting is None or self._starting.dead
        if idle and not self.transport.ready() and time.monotonic() >= self.retry_at:
            self.status = "starting"
            self._starting = gevent.spawn(self._start_quietly)
        return self._tools

    def _start_quietly(self) -> None:
        with contextlib.suppress(_McpFailed, _Stop):  # its status and error say why
            self.start_tools()

    def start_tools(self) -> tuple[_Tool, ...]:
        """Its tools, starting the server first if need be (a program, a session: up to
        MCP_START_S, so call it from a step that can be stopped); _McpFailed while it is
        unavailable."""
        with self._lock:
            if self.transport.ready():
                return self._tools
            if self.status == "unavailable" and time.monotonic() < self.retry_at:
                raise _McpFailed(self.error or f"MCP server {self.name} is unavailable")
            self.status = "starting"
            try:
                late = _McpFailed(f"MCP server {self.name} did not start within {MCP_START_S:g} s")
                with gevent.Timeout(MCP_START_S, late):
                    self._start()
            except BaseException as e:  # failed (tried again later), or stopped meanwhile (a cancelled turn)
                self.transport.close()
                if not isinstance(e, Exception):
                    self.status = "not_started"
                    raise
                if not isinstance(e, _McpFailed):
                    _log.exception("MCP server %s could not be started", self.name)
                self.backoff = min(max(MCP_RETRY_S, self.backoff * 2), MCP_RETRY_MAX_S)
                self.status, self.retry_at = "unavailable", time.monotonic() + self.backoff
                self.error = _redact(str(e) if isinstance(e, _McpFailed) else f"{type(e).__name__}", *self.secrets)
                raise _McpFailed(self.error) from None
            self.backoff = 0.0
            return self._tools

    def _start(self) -> None:
        transport = self.transport
        transport.start()
        hello = {"protocolVersion": transport.protocol_asked, "capabilities": {},
                 "clientInfo": {"name": "everruns", "version": __version__}}  # fmt: skip
        answer = _mcp_result(self.name, transport.request("initialize", hello, MCP_START_S))
        transport.protocol = answer.get("protocolVersion") if isinstance(answer.get("protocolVersion"), str) else None
        transport.notify("notifications/initialized")
        listed, cursor, size = [], None, 0
        while len(listed) < MCP_TOOLS_MAX:
            params = {"cursor": cursor} if cursor else {}
            page = _mcp_result(self.name, transport.request("tools/list", params, MCP_START_S))
            size += len(_dumps(page))
            if size > MCP_LIST_BYTES:
                raise _McpFailed(f"MCP server {self.name} listed over {MCP_LIST_BYTES} bytes of tools")
            listed += [t for t in page.get("tools") or [] if isinstance(t, dict)]
            cursor = page.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        transport.initialized = True
        self._tools = tuple(tool for t in listed[:MCP_TOOLS_MAX] if (tool := self._tool(t)) is not None)
        self.status, self.error = "ready", None

    def _tool(self, listed: dict) -> _Tool | None:
        """A listed tool as the model sees it, or None (a name no provider takes, a huge schema)."""
        name = listed.get("name")
        fits = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name) and len(self.name) + 2 + len(name) <= 64
        schema = listed.get("inputSchema")
        schema = schema if isinstance(schema, dict) and schema.get("type") == "object" else {"type": "object"}
        if not fits or len(_dumps(schema)) > MCP_SCHEMA_BYTES:
            _log.warning("MCP server %s: tool %r left out (its name or its schema cannot reach a model)",
                         self.name, str(name)[:100])  # fmt: skip
            return None
        description = str(listed.get("description") or "")[:MAX_DESCRIPTION]
        return _Tool(f"{self.name}__{name.replace('.', '_')}", description, _AnyArgs,
                     functools.partial(self._call, name), schema)  # fmt: skip

    def _call(self, tool: str, args: _AnyArgs, tctx: Any) -> Any:
        try:
            self.start_tools()  # a server that exited is started again
            params = {"name": tool, "arguments": args.model_dump()}
            attributes = {"mcp.method.name": "tools/call", "gen_ai.tool.name": tool, "everruns.mcp.server": self.name,
                          "network.transport": "pipe" if self.kind == "stdio" else "tcp"}  # fmt: skip
            with _traced(f"tools/call {tool}", attributes, "CLIENT"):  # under the tool's span
                answer = self.transport.request("tools/call", params, MCP_CALL_S)
                result = _mcp_tool_result(self.name, _mcp_result(self.name, answer))
        except ToolFailed as e:  # what it said about its headers (credentials) is not passed on
            raise type(e)(_redact(str(e), *self.secrets)) from None
        return _redacted_value(result, self.secrets)

    def out(self) -> Capability:
        tools = self.listed_tools()
        status = {"ready": "available", "unavailable": "unavailable"}.get(self.status, "starting")
        return Capability(id=self.id, name=self.name, description=self.description, category=self.category,
                          status=status, system_prompt="", tools=[t.spec for t in tools])  # fmt: skip

    def resource(self) -> McpServer:
        url = getattr(self.transport, "url", None)
        return McpServer(id=self.resource_id, name=self.name, transport=self.kind, url=url, status=self.status,
                         tools_count=len(self._tools), error=self.error, created_at=self.created_at,
                         updated_at=self.updated_at)  # fmt: skip

    def close(self) -> None:
        if self._starting is not None:
            _stop_soon(self._starting)
        self.transport.close()


def _redacted_value(value: Any, secrets: tuple[str, ...]) -> Any:
    """A JSON value with the given secrets blanked out of it."""
    if not secrets:
        return value
    text = _dumps(value)
    clean = _redact(text, *secrets)
    if clean == text:
        return value
    try:
        return json.loads(clean)
    except ValueError:
        return clean


def _mcp_result(name: str, message: Any) -> dict:
    """The result of a JSON-RPC answer; _McpFailed for an error or anything else."""
    if not isinstance(message, dict):
        raise _McpFailed(f"MCP server {name} sent something that is not JSON-RPC")
    if isinstance(message.get("error"), dict):
        raise _McpFailed(f"MCP server {name}: {str(message['error'].get('message', 'error'))[:1000]}")
    if not isinstance(message.get("result"), dict):
        raise _McpFailed(f"MCP server {name} sent an answer without a result")
    return message["result"]


def _mcp_tool_result(name: str, result: dict) -> Any:
    """A tools/call result as a tool result: its structured content if any, else its text
    parts (other parts named, not passed on); isError raises ToolFailed with the text. A
    result that breaks the MCP schema (content that is not a list of content blocks, or
    neither content nor structured content) is _McpFailed."""
    content = result.get("content")
    blocks = isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in content)
    if (content is not None and not blocks) or (content is None and "structuredContent" not in result):
        raise _McpFailed(f"MCP server {name} answered with a result that breaks the MCP schema")
    texts = [str(p.get("text", "")) if p["type"] == "text" else f"[{p['type']} content not shown]"
             for p in content or []]  # fmt: skip
    if result.get("isError"):
        raise ToolFailed("\n".join(texts)[:4000] or "the MCP tool reported an error")
    return result["structuredContent"] if "structuredContent" in result else "\n".join(texts)


def _mcp_servers(path: str | None) -> list[_McpServer]:
    """The servers of an `mcpServers` JSON file (--mcp-config), as other MCP hosts write it:
    stdio ones (command, args, env), Streamable HTTP ones (url, headers; "type" "http" or
    "streamable-http") and HTTP+SSE ones ("type": "sse"). StartupError, in one line, for a
    file that is not one."""
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise StartupError(f"--mcp-config: {path} cannot be read as an mcpServers JSON file ({e})", 2) from None
    servers = config.get("mcpServers") if isinstance(config, dict) else None
    if not isinstance(servers, dict):
        raise StartupError(f'--mcp-config: {path} has no "mcpServers" object', 2)
    found, started, names = [], _now_iso(), {}
    for given, spec in servers.items():
        name, where = _mcp_name(given), f"--mcp-config: server {given!r}"
        if not re.fullmatch(MCP_NAME, name) or not isinstance(spec, dict):
            raise StartupError(f"{where}: a name is 1 to 32 characters, and a server an object", 2)
        if name in names:
            raise StartupError(f"{where} and {names[name]!r} would both be the capability mcp:{name}", 2)
        names[name] = given
        transport = _mcp_transport(name, spec, where)
        secrets = _header_secrets(spec.get("headers") or {}, every=True)
        found.append(_McpServer(name, transport, f"config-{name}", started, started, secrets))
    return found


def _mcp_transport(name: str, spec: dict, where: str) -> Any:
    """The transport a server's entry in the config file asks for."""
    kind = spec.get("type")
    if kind not in (None, "stdio", "http", "streamable-http", "streamableHttp", "sse"):
        raise StartupError(f'{where}: "type" must be stdio, http, streamable-http or sse', 2)
    if isinstance(spec.get("command"), str) and kind in (None, "stdio"):
        args, env = spec.get("args", []), spec.get("env", {})
        if not (isinstance(args, list) and all(isinstance(a, str) for a in args)):
            raise StartupError(f'{where}: "args" must be a list of strings', 2)
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise StartupError(f'{where}: "env" must map names to strings', 2)
        return _McpStdio(name, spec["command"], args, env)
    url, headers = spec.get("url"), spec.get("headers", {})
    if not isinstance(url, str) or kind == "stdio":
        raise StartupError(f'{where}: give "command" (stdio) or an http(s) "url"', 2)
    problem = _url_problem(url)
    if problem:
        raise StartupError(f'{where}: its "url" {problem}', 2)
    if not (isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())):
        raise StartupError(f'{where}: "headers" must map names to strings', 2)
    return _McpSse(name, url, headers) if kind == "sse" else _McpHttp(name, url, headers)


# =============================================================================
# 12. Turn engine
# =============================================================================
#
# How a turn and its session move from state to state (TURN_* and SESSION_*, as stored),
# and who moves them:
#
#   turn     running ──► completed | failed | cancelled   _TurnRun closes it: one session.completed
#            running ──► waiting                          _TurnRun: a call waits for a person or the client
#            waiting ──► running                          _Scheduler._claim, once every answer is in
#            waiting ──► cancelled                        _Scheduler.cancel (no greenlet runs it)
#            running ──► failed (INTERRUPTED)             shutdown; at start-up after a crash, or when its
#                                                         process died: _Scheduler.close_interrupted
#   session  idle ──► running                             _Scheduler._claim: its oldest owed message, in
#                                                         the transaction that stores the turn
#            running ◄──► waiting                         with its turn
#            running | waiting ──► idle                   _close_turn, in the transaction that closes it
#
# The signals that stop a turn's work (BaseExceptions: no `except Exception` catches them):
#
#   signal         means                                     raised by                      caught by
#   _Stop          stop this greenlet (see section 4)        greenlet.kill                  the greenlet's top
#   _ToolTimeout   a tool ran past TOOL_TIMEOUT_S            gevent.Timeout, in _run_tool   _run_tool
#   _Cancelled     POST .../cancel                           _TurnRun._stoppable            _TurnRun._outcome
#   _Interrupted   the shutdown grace is over                _TurnRun._stoppable            _TurnRun._outcome
#   _Gone          its session is being deleted, or this     _TurnRun._stoppable            _TurnRun.run (writes
#                  process lost its lease                                                   nothing more)
#   _Lost          another process closed the turn           _Journal.tx                    _TurnRun.run (likewise)
#
# A pause for people is not a signal: _TurnRun._run_tools returns PAUSED, the turn's
# greenlet ends, and the turn holds nothing while it waits.

TOOL_TIMEOUT_S = 30.0
MAX_TOOL_OUTPUT = 256 * 1024


class _ToolTimeout(SystemExit):
    """A tool ran past its time (raised in its greenlet; a SystemExit for the same reason)."""


class _Cancelled(BaseException):
    """Ends a turn at its next wait: POST /cancel."""


class _Interrupted(BaseException):
    """Ends a turn at its next wait: the shutdown grace is over."""


class _Gone(_Lost):
    """Ends a turn at its next wait without writing anything: its session is being deleted
    (or another process closes the turn: this one lost its lease)."""


def _capped(result: Any) -> Any:
    """A tool result as it can be stored: text UTF-8 cannot carry (a lone surrogate, which a
    JSON escape can make) as '?', cut to MAX_TOOL_OUTPUT bytes of JSON when larger."""
    text = _dumps(result)
    clean = _clean_text(text)
    if clean is not text:
        result, text = json.loads(clean), clean
    if len(text.encode()) <= MAX_TOOL_OUTPUT:
        return result
    return {"truncated": True, "preview": text.encode()[:MAX_TOOL_OUTPUT].decode(errors="ignore")}


def _checked_reply(reply: LLMReply) -> LLMReply:
    """A model's answer as it can be stored: text up to MAX_MESSAGE_TEXT, arguments up to
    MAX_TOOL_OUTPUT, and no text UTF-8 cannot carry (such arguments are kept unparsed)."""
    reply.text = _clean_text(reply.text[:MAX_MESSAGE_TEXT])
    for call in reply.tool_calls:
        call["id"], call["name"] = _clean_text(str(call["id"])), _clean_text(str(call["name"]))
        text = _dumps(call["arguments"])
        if len(text) > MAX_TOOL_OUTPUT:
            call["arguments"] = {"_unparsed_arguments": f"({len(text)} bytes of arguments: too large)"}
        elif (clean := _clean_text(text)) is not text:
            call["arguments"] = {"_unparsed_arguments": clean}
    return reply


def _run_tool(tool: _Tool, arguments: dict, tctx: _ToolContext) -> tuple[Any, bool]:
    """Validate the arguments, run the tool with a timeout (TOOL_TIMEOUT_S): (result, is_error)."""
    timeout = tool.timeout_s or TOOL_TIMEOUT_S
    if "_unparsed_arguments" in arguments:
        return {"error": "the arguments are not a JSON object that can be read (or are too large)"}, True
    try:
        args = tool.args.model_validate(arguments, strict=False)
    except ValidationError as e:
        details = _validation_details(e)
        problems = "; ".join(f"{'.'.join(map(str, d['loc'])) or 'arguments'}: {d['msg']}" for d in details)
        return {"error": f"invalid arguments: {problems}"}, True
    try:
        if tool.run is None:
            raise ToolFailed(f"{tool.name} is not available in this version")
        with gevent.Timeout(timeout, _ToolTimeout):
            return _capped(tool.run(args, tctx)), False
    except _ToolTimeout:
        return {"error": f"{tool.name} timed out after {timeout:g} s"}, True
    except EverrunsError as e:
        return _capped({"error": str(e)}), True
    except Exception:
        _log.exception("tool %s failed", tool.name)
        return {"error": f"{tool.name} failed with an internal error"}, True


@dataclasses.dataclass
class _Turn:
    """A running turn: what it needs from the database, and what it has used."""

    id: str
    session_id: str
    input_ids: list[str]
    system: str
    capabilities: list[str]
    tools: dict[str, _Tool]  # those of its capabilities: resolved when it starts to run (an MCP server may start)
    provider: _ProviderSpec | None
    model: str
    max_iterations: int
    temperature: float | None
    started: float = dataclasses.field(default_factory=time.monotonic)
    ended: gevent.event.Event | None = None  # set once the turn is closed (cancel waits on it)
    wake: gevent.event.Event | None = None  # set when the turn is asked to stop
    halted: type[BaseException] | None = None  # why: _Cancelled, _Interrupted or _Gone
    provider_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    iterations: int = 0
    approval: frozenset[str] = frozenset()  # tools a person must approve ("*": all)
    client: dict[str, ToolSpec] = dataclasses.field(default_factory=dict)  # tools the client runs
    fallbacks: tuple[str, ...] = ()  # providers a failed model call falls back to, in order (SPEC 18)
    resumed: bool = False  # taken up again after waiting: approved calls run first
    trace_id: str | None = None  # with tracing on: its trace, and the span of its first run
    span_id: str | None = None
    span: Any = None  # this run's span (an OpenTelemetry span), ended by _TurnRun.run

    def halt(self, reason: type[BaseException]) -> None:
        """Ask the turn to stop at its next wait (the first reason given wins)."""
        if self.halted is None:
            self.halted = reason
            self.wake.set()


def _capability_of(registry: Mapping[str, Any], capability_ids: list[str], tool_name: str) -> str:
    """Which of a turn's capabilities has the tool (its metrics' label)."""
    for capability_id in capability_ids:
        capability = registry.get(capability_id)
        if capability is not None and any(t.name == tool_name for t in capability.listed_tools()):
            return capability_id
    return "none"


def _tool_span_done(tracing: _Tracing, span: Any, result: Any, is_error: bool) -> None:
    """A tool span's outcome: an error status for an error result; the result with --otel-capture-content."""
    if tracing.capture:
        span.set_attribute("gen_ai.tool.call.result", _dumps(result))
    if is_error:
        tracing.failed(span, "tool_error")


def _agent_tools(registry: Mapping[str, Any], capability_ids: list[str], start: bool = False) -> dict[str, _Tool]:
    """The tools of some capabilities of an app's registry, by name; with `start`, MCP servers
    are started first (in a turn's step that can be stopped), else what they listed so far."""
    tools = {}
    for capability in (registry[c] for c in capability_ids if c in registry):
        if start and isinstance(capability, _McpServer):
            with contextlib.suppress(_McpFailed):  # unavailable: its tools are missing from this turn
                tools.update((t.name, t) for t in capability.start_tools())
        else:
            tools.update((t.name, t) for t in capability.listed_tools())
    return tools


def _system_prompt(registry: Mapping[str, Any], agent: Any) -> str:
    additions = [registry[c].system_prompt for c in agent.capabilities if c in registry]
    return "\n\n".join(p for p in [agent.system_prompt, *additions] if p)


def _transcript(blocks: list[_Block]) -> list[dict]:
    """Turns as a provider sees them: in order, user messages first within each turn, and
    never a tool call without its result."""
    rows = [(role, json.loads(content)) for block in blocks for role, content in block.rows]
    results = {p["tool_call_id"]: p for _, content in rows for p in content if p["type"] == "tool_result"}
    return [message for role, content in rows for message in _provider_messages(role, content, results)]


def _provider_messages(role: str, content: list[dict], results: dict) -> list[dict]:
    text = "\n".join(p["text"] for p in content if p["type"] == "text")
    if role == "user":
        return [{"role": "user", "text": text}]
    if role == "tool":
        return [
            {"role": "tool", **{k: p[k] for k in ("tool_call_id", "name", "result", "is_error")}}
            for p in content
            if p["type"] == "tool_result"
        ]
    calls = [{k: p[k] for k in ("id", "name", "arguments")} for p in content if p["type"] == "tool_call"]
    out = [{"role": "assistant", "text": text, "tool_calls": calls}]
    for call in calls:  # a call whose result was never stored gets one here
        if call["id"] not in results:
            out.append(_missing_result(call))
    return out


def _missing_result(call: dict) -> dict:
    result = {"error": "the tool call was not completed"}
    return {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "result": result, "is_error": True}


def _dangling_calls(m: _Models, turn_id: str) -> list[dict]:
    """Tool calls of a turn that have no stored result."""
    rows = list(m.Message.select().where(m.Message.turn_id == turn_id).order_by(m.Message.id))
    answered = {p["tool_call_id"] for r in rows for p in r.content if p["type"] == "tool_result"}
    calls = [p for r in rows if r.role == "assistant" for p in r.content if p["type"] == "tool_call"]
    return [c for c in calls if c["id"] not in answered]


WAITING_CALLS = ("approval", "client")  # the states of a call a turn waits for (see _tool_calls)


def _tool_calls(m: _Models, session_id: str, turn_id: str) -> dict[str, dict]:
    """A turn's tool calls by id, in order, each with its `call` (id, name, arguments) and
    `state`: "approval" (waits for a person), "client" (waits for the client's result),
    "approved" (to run), "denied", "done" (has its result) or "stored" (no result yet)."""
    Event = m.Event
    rows = (Event.select(Event.type, Event.data, Event.ts)
            .where(Event.session_id == session_id, Event.turn_id == turn_id,
                   Event.type.in_(("tool.call", "tool.approval_resolved", "tool.result")))
            .order_by(Event.seq))  # fmt: skip
    calls: dict[str, dict] = {}
    for row in rows:
        if row.type == "tool.call":
            call = row.data["tool_call"]
            state = {"pending": "approval"}.get(call.get("approval"), "client" if call.get("executor") else "stored")
            calls[call["id"]] = {
                "call": {k: call[k] for k in ("id", "name", "arguments")},
                "state": state,
                "at": row.ts,
            }
        elif row.data["tool_call_id"] in calls:
            resolved = "approved" if row.data.get("approved") else "denied"
            calls[row.data["tool_call_id"]]["state"] = "done" if row.type == "tool.result" else resolved
    return calls


def _store_tool_message(tx: _Tx, turn_id: str, call: dict, result: Any, is_error: bool, duration_ms: int) -> None:
    part = {"type": "tool_result", "tool_call_id": call["id"], "name": call["name"], "result": result}
    part["is_error"] = is_error
    tx.emit("tool.result", {**{k: part[k] for k in part if k != "type"}, "duration_ms": duration_ms}, turn_id)
    tx.add_message("tool", [part], turn_id)


def _close_turn(tx: _Tx, turn: Any, status: str, error: dict | None, duration_ms: int, reason: str) -> None:
    """Repair dangling tool calls, close the turn, free the session, emit session.completed.

    ``turn`` is a _Turn or a turn row: both have id, provider_id, model,
    input_tokens, output_tokens, iterations and trace_id.
    """
    m, turn_id = tx.m, turn.id
    usage = {"input_tokens": turn.input_tokens, "output_tokens": turn.output_tokens}
    if status != TURN_COMPLETED:  # a completed turn has answered every call
        for call in _dangling_calls(m, turn_id):
            _store_tool_message(tx, turn_id, call, {"error": reason}, True, 0)
    error_json = None if error is None else _dumps(error)
    _sql(m, "close_turn", status, error_json, turn.iterations, *usage.values(), _now_iso(), turn_id)
    last_turn = _dumps({"id": turn_id, "status": status, "error": error, "trace_id": turn.trace_id})
    _sql(m, "close_session", last_turn, *usage.values(), _now_iso(), tx.session_id)
    data = {
        "turn_id": turn_id,
        "status": status,
        "error": error,
        "usage": usage,
        "iterations": turn.iterations,
        "duration_ms": duration_ms,
        "provider_id": turn.provider_id,
        "model": turn.model,
        "trace_id": turn.trace_id,
    }
    tx.emit("session.completed", data, turn_id)


FAULT_RETRY_S, FAULT_RETRY_MAX_S = 0.5, 5.0  # while the database cannot be used: retries, further and further apart
DELTAS_PER_YIELD = 64  # deltas published before the streams get a turn to send them (QUEUE_LIMIT is far above)
PAUSED = "paused"  # what a turn's loop returns when the turn waits for people (not a stored status)


def _prepared_turn(m: _Models, registry: Mapping[str, Any], session_id: str, setup: _TurnSetup, message_id: str,
                   controls: dict) -> _Turn:  # fmt: skip
    """A new turn: its provider, model and limits from the message's controls, then the
    session, then the agent."""
    levels = [(controls.get("provider_id"), controls.get("model")), (setup.session_provider, setup.session_model),
              (setup.agent_provider, setup.agent_model)]  # fmt: skip
    provider = _provider_spec(m, next((p for p, _ in levels if p), None))  # None: the default provider
    model = None
    for provider_id, model in levels:  # a model, or a provider named without one: its default model
        if model or provider_id:
            break
    return _Turn(
        id=_uuid7(),
        session_id=session_id,
        input_ids=[message_id],
        system=_system_prompt(registry, setup),
        capabilities=setup.capabilities,
        tools={},
        provider=provider,
        provider_id=provider.id if provider else None,
        model=model or (provider.default_model if provider else ""),
        max_iterations=controls.get("max_iterations") or setup.max_iterations,
        temperature=controls.get("temperature"),
        approval=frozenset(setup.require_approval),
        client={t["name"]: ToolSpec(**t) for t in setup.client_tools},
        fallbacks=tuple(setup.fallbacks),
    )


class _Scheduler:
    """Which session runs next, and where: one worker greenlet per session with owed work,
    one turn at a time per session. A worker claims the session's next turn (a new one for
    the oldest owed message, or its waiting turn once every answer is in) in one
    transaction, then runs it with a _TurnRun. Cancel, delete and shutdown reach the
    running turns from here; at start-up, recover() closes what a crash left running."""

    def __init__(self, journal: _Journal, config: dict, capabilities: Mapping[str, Any]) -> None:
        self.journal, self.store, self.bus, self.config = journal, journal.store, journal.bus, config
        self.m, self.capabilities = self.store.m, capabilities
        self._workers: dict[str, Any] = {}
        self._turns: dict[str, _Turn] = {}  # the running turn of each session
        self._gone: set[str] = set()  # sessions being deleted: no new turn starts
        self.closing = False

    def kick(self, session_id: str) -> None:
        """Make sure a worker answers the session's owed messages."""
        if self.closing or session_id in self._workers or session_id in self._gone:
            return
        self._workers[session_id] = gevent.spawn(self._work, session_id)

    def _work(self, session_id: str) -> None:
        delay = FAULT_RETRY_S
        try:
            while not self.closing and session_id not in self._gone:
                try:
                    turn = self._claim(session_id)
                except Exception as e:  # the database cannot be used: try again, later and later
                    if self.store.noticed(e) is None:
                        raise
                    gevent.sleep(delay)
                    delay = min(delay * 2, FAULT_RETRY_MAX_S)
                    continue
                if turn is None:
                    return
                delay = FAULT_RETRY_S
                _TurnRun(self, turn).run()
        except _Stop:
            pass  # killed (a greenlet must not end with a SystemExit: gevent would stop the process)
        finally:
            self._workers.pop(session_id, None)
            self.bus.forget(session_id)  # the map would otherwise hold every session ever run
            self.store.release()

    def _claim(self, session_id: str) -> _Turn | None:
        """Take up the session's waiting turn once none of its calls waits any more, or claim
        the oldest owed message for a new turn (one transaction); None: nothing to do here."""
        m, registered = self.m, None
        try:
            with self.journal.tx(session_id) as tx:
                status, owed = _next_work(m, session_id, tx) or ("gone", None)
                if status == SESSION_WAITING:
                    turn = self._resume(session_id)
                elif status != SESSION_IDLE or owed is None or (setup := _turn_setup(m, session_id)) is None:
                    return None  # a turn runs (maybe in another process), or nothing is owed
                else:
                    turn = self._with_span(_prepared_turn(m, self.capabilities, session_id, setup, *owed))
                    _sql(m, "insert_turn", turn.id, session_id, turn.provider_id, turn.model, _now_iso(),
                         self.store.lease, turn.trace_id, turn.span_id)  # fmt: skip
                    _sql(m, "claim_message", turn.id, owed[0])
                    tx.emit("session.started", {"turn_id": turn.id, "input_message_ids": turn.input_ids}, turn.id)
                if turn is None:
                    return None
                last_turn = {"id": turn.id, "status": TURN_RUNNING, "error": None, "trace_id": turn.trace_id}
                _sql(m, "start_session", _dumps(last_turn), _now_iso(), session_id)
                turn.ended, turn.wake = gevent.event.Event(), gevent.event.Event()
                self._turns[session_id] = registered = turn  # before the commit: a cancel meanwhile reaches it
        except BaseException:
            if registered is not None and self._turns.get(session_id) is registered:
                del self._turns[session_id]  # not started after all
            raise
        return turn

    def _resume(self, session_id: str) -> _Turn | None:
        """The session's waiting turn, taken up again, unless one of its calls still waits."""
        m = self.m
        row = m.Turn.get_or_none(m.Turn.session_id == session_id, m.Turn.status == TURN_WAITING)
        calls = _tool_calls(m, session_id, row.id) if row is not None else {}
        setup = row and _turn_setup(m, session_id)
        if setup is None or any(c["state"] in WAITING_CALLS for c in calls.values()):
            return None
        message = m.Message.get(m.Message.turn_id == row.id, m.Message.role == "user")
        turn = _prepared_turn(m, self.capabilities, session_id, setup, message.id, message.controls or {})
        _sql(m, "resume_turn", self.store.lease, row.id)
        return self._with_span(dataclasses.replace(
            turn, id=row.id, provider=_provider_spec(m, row.provider_id), provider_id=row.provider_id,
            model=row.model, iterations=row.iterations, input_tokens=row.input_tokens, resumed=True,
            output_tokens=row.output_tokens, started=time.monotonic() - _since(row.started_at) / 1000,
            trace_id=row.trace_id, span_id=row.span_id,
        ))  # fmt: skip

    def _with_span(self, turn: _Turn) -> _Turn:
        """With tracing on, the turn's span for this run (a resumed turn's: a child of its
        first run's), its ids kept on the turn (stored, and in session.completed)."""
        tracing = self.store.obs.tracing
        if tracing is None:
            return turn
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": turn.session_id,
                      "gen_ai.provider.name": turn.provider.provider_type if turn.provider else None,
                      "gen_ai.request.model": turn.model, "everruns.turn.id": turn.id,
                      "everruns.turn.resumed": turn.resumed or None}  # fmt: skip
        parent = (turn.trace_id, turn.span_id) if turn.trace_id and turn.span_id else None
        turn.span = tracing.start("invoke_agent", attributes, parent)
        if parent is None:
            turn.trace_id, turn.span_id = tracing.ids(turn.span)
        return turn

    def closed(self, turn: _Turn) -> None:
        """The turn's end is committed: from now on the session has no running turn to cancel."""
        if self._turns.get(turn.session_id) is turn:
            del self._turns[turn.session_id]

    def busy(self, session_id: str) -> bool:
        """Whether a worker is answering the session."""
        return session_id in self._workers

    def running(self) -> list[_Turn]:
        return list(self._turns.values())

    # ---- cancel, delete, shutdown --------------------------------------------------

    def cancel(self, session_id: str, timeout: float = 10.0) -> str | None:
        """Cancel the running turn, if any, and wait until it is closed; the id of that turn
        (it may have ended otherwise: finished before it next waited, for example)."""
        turn = self._turns.get(session_id)
        if turn is None:
            waited = self._cancel_waiting(session_id)
            if waited is not None or not self.store.postgres:
                return waited
            return self._cancel_elsewhere(session_id, timeout)
        turn.halt(_Cancelled)
        turn.ended.wait(timeout)
        self._cancel_waiting(session_id)  # it paused (waiting for people) before it saw the cancel
        return turn.id

    def _cancel_waiting(self, session_id: str) -> str | None:
        """Close a turn that waits for people as cancelled (its waiting calls get error
        results); its id, or None when the session has no waiting turn."""
        m = self.m
        with self.journal.tx(session_id) as tx:
            row = m.Turn.get_or_none(m.Turn.session_id == session_id, m.Turn.status == TURN_WAITING)
            if row is None:
                return None
            _close_turn(tx, row, TURN_CANCELLED, None, _since(row.started_at), "cancelled before the tool ran")
        self.kick(session_id)  # what was posted meanwhile
        return row.id

    def _cancel_elsewhere(self, session_id: str, timeout: float) -> str | None:
        """Ask the process that runs the session's turn to cancel it, and wait (on the
        session's events) until the turn is closed; the turn's id."""
        m = self.m
        running = m.Turn.select(m.Turn.id).where(m.Turn.session_id == session_id, m.Turn.status == TURN_RUNNING)
        turn = running.first()
        if turn is None:
            return None
        sub = self.bus.subscribe(session_id)
        try:
            self.bus.baseline(session_id, _last_seq(m, session_id))
            self.store.tell("cancel", session_id, turn.id)
            deadline = time.monotonic() + timeout
            while running.where(m.Turn.id == turn.id).exists() and not sub.dropped:
                self.store.release()
                sub.take(max(0.0, deadline - time.monotonic()))
        except gevent.queue.Empty:
            pass  # not closed in time: the answer shows the turn as it is
        finally:
            self.bus.unsubscribe(sub)
            if not self.busy(session_id):
                self.bus.forget(session_id)
        return turn.id

    def halt(self, session_id: str, turn_id: str, reason: type[BaseException]) -> None:
        """Stop a turn this process runs, if it does, at its next wait."""
        turn = self._turns.get(session_id)
        if turn is not None and turn.id == turn_id:
            turn.halt(reason)

    def stop(self, session_id: str) -> None:
        """Stop a session's worker without writing anything, and start none until forget()."""
        self._gone.add(session_id)
        turn, worker = self._turns.get(session_id), self._workers.get(session_id)
        if turn is not None:
            turn.halt(_Gone)
        if worker is not None:
            worker.join(timeout=10)
            worker.kill(_Stop, block=True, timeout=5)  # a no-op once it has ended

    def forget(self, session_id: str) -> None:
        """The session is deleted (or its deletion failed): kick() may start workers for it again."""
        self._gone.discard(session_id)

    def shutdown(self, grace: float) -> None:
        """Start no new turns, give running ones `grace` seconds, interrupt the rest."""
        self.closing = True
        gevent.joinall(list(self._workers.values()), timeout=grace)
        for turn in list(self._turns.values()):
            turn.halt(_Interrupted)
        gevent.joinall(list(self._workers.values()), timeout=5)
        gevent.killall(list(self._workers.values()), _Stop, block=True, timeout=1)  # stuck: the database closes next

    # ---- recovery -------------------------------------------------------------

    def close_interrupted(self, session_id: str | None = None, reason: str = "interrupted by a restart",
                          mine: bool = False) -> None:  # fmt: skip
        """Close as INTERRUPTED the turns left running with no greenlet: a crash, or (several
        processes) a process that died; with `mine`, this process's stopped ones too (a delete
        that failed)."""
        m = self.m
        error = {"code": "INTERRUPTED", "message": "the server stopped during the turn"}
        dead = "owner IS NULL OR owner NOT IN (SELECT id FROM instance)"  # no live process has its lease
        orphaned = pw.SQL(f"({dead} OR owner = {m.db.param})", [self.store.lease]) if mine else pw.SQL(f"({dead})")
        query = m.Turn.select().where(m.Turn.status == TURN_RUNNING, orphaned)
        for turn in list(query if session_id is None else query.where(m.Turn.session_id == session_id)):
            if self._turns.get(turn.session_id) is not None:
                continue  # running here
            with self.journal.tx(turn.session_id) as tx:
                if query.where(m.Turn.id == turn.id).exists():  # still: read again under the session's lock
                    _close_turn(tx, turn, TURN_FAILED, error, 0, reason)

    def recover(self) -> list[str]:
        """Close turns a crash left running; answer owed messages. Returns the owed sessions."""
        m = self.m
        self.close_interrupted()
        owed = (
            m.Message.select(m.Message.session_id)
            .where(m.Message.role == "user", m.Message.turn_id.is_null())
            .distinct()
        )
        waiting = m.Turn.select(m.Turn.session_id).where(m.Turn.status == TURN_WAITING)  # it may have its answers
        sessions = list(dict.fromkeys([*(row.session_id for row in owed), *(row.session_id for row in waiting)]))
        for session_id in sessions:
            self.kick(session_id)
        return sessions


# ---- context windows and compaction (SPEC 16): each model call is built within its model's
# window, estimated in tokens; history that does not fit is summarised by the turn's own
# model (_TurnRun._compact, a step of the turn), and later calls send the summary instead.

SUMMARY_PROMPT = (
    "You summarise a conversation for the assistant that will continue it. Write a summary of the conversation "
    "below (and of the summary before it, if there is one): the user's goals, facts and decisions, tool results "
    "that matter, and what is still open. At most {words} words. Write only the summary."
)
SUMMARY_HEADING = "A summary of the earlier conversation:"
SIM_ANSWER_TOKENS = 256  # the simulator's room for its answer (it has no max_tokens)
MAX_COMPACTIONS = 8  # summaries one model call may ask for before it leaves the oldest turns out
SUMMARISED_TEXT = 2000  # characters of each message a summary is asked to read


def _tokens(size: int) -> int:
    """Tokens in `size` bytes of text or JSON: one per 3 bytes, which errs on the large side
    (English runs about 4 bytes a token), so that an estimate never lets a call overflow."""
    return size // 3 + 1


def _block_tokens(block: _Block) -> int:
    return _tokens(block.size) + 4 * len(block.rows)  # and a few for each message's framing


def _context_window(request: LLMRequest, provider_type: str) -> int:
    """The model's window: the provider's `context_window` setting (for this model, or its
    default), else its family's (not the simulator's), else the provider type's default."""
    setting = request.settings.get("context_window")
    if isinstance(setting, dict):
        setting = setting.get(request.model, setting.get("default"))
    if setting:
        return setting
    if provider_type != "llmsim":
        for pattern, window in CONTEXT_WINDOWS:
            if re.search(pattern, request.model, re.IGNORECASE):
                return window
    return DEFAULT_WINDOWS.get(provider_type, DEFAULT_WINDOWS["openai"])


def _read_budget(config: dict, window: int) -> int:
    """Bytes of history a call reads at most: what its summaries could take in (--context-budget
    the ceiling), so that a long session's turn reads a bounded part of it."""
    return min(config["context_budget"], window * 3 * (MAX_COMPACTIONS + 1))


def _fixed_tokens(request: LLMRequest) -> int:
    """What every call sends: the system prompt and the tools' schemas."""
    return _tokens(len(request.system.encode())) + sum(_tokens(len(t.model_dump_json())) for t in request.tools)


def _room(request: LLMRequest, provider_type: str) -> tuple[int, int]:
    """(the window, what of it the history may use): the answer's room (max_tokens, at most half
    the window), the system prompt and the tools' schemas taken out."""
    window = _context_window(request, provider_type)
    answer = SIM_ANSWER_TOKENS if provider_type == "llmsim" else request.settings.get("max_tokens", 4096)
    return window, window - min(answer, window // 2) - _fixed_tokens(request)


@dataclasses.dataclass
class _History:
    """What a model call may send of a session: its summary (text and tokens) and the turns after it."""

    summary: str | None
    summary_tokens: int
    blocks: list[_Block]

    def tokens(self) -> int:
        return self.summary_tokens + sum(map(_block_tokens, self.blocks))

    def newest(self, room: int) -> list[_Block]:
        """The newest turns that fit in `room` tokens (at least the newest one)."""
        kept, used = [], 0
        for block in reversed(self.blocks):
            used += _block_tokens(block)
            if kept and used > room:
                break
            kept.append(block)
        return kept[::-1]

    def fitted(self, room: int) -> tuple[str | None, list[_Block]]:
        """What a call sends in `room` tokens: the summary (unless it does not fit beside the
        newest turn) and the newest turns that fit beside it."""
        if self.blocks and self.summary_tokens + _block_tokens(self.blocks[-1]) > room:
            return None, self.newest(room)  # no room for the summary beside this turn
        return self.summary, self.newest(room - self.summary_tokens)


def _session_history(m: _Models, session_id: str, budget: int) -> _History:
    summary = _summary(m, session_id)
    after, text, tokens = (summary["through"], summary["text"], summary["tokens"]) if summary else ("", None, 0)
    return _History(text, tokens, _history(m, session_id, budget, after))


def _summary_message(summary: str) -> str:
    return f"{SUMMARY_HEADING}\n{summary}"


def _summarised_text(history: _History, blocks: list[_Block], limit: int) -> str:
    """What a summary is asked to read: the summary before, then the turns, at most `limit` bytes."""
    lines = [f"Summary so far: {history.summary}"] if history.summary else []
    for message in _transcript(blocks):
        said = message.get("text") or ""
        if message["role"] == "assistant" and message["tool_calls"]:
            said += " " + "; ".join(f"called {c['name']} {_dumps(c['arguments'])}" for c in message["tool_calls"])
        elif message["role"] == "tool":
            said = f"{message['name']} {'failed' if message['is_error'] else 'returned'} {_dumps(message['result'])}"
        lines.append(f"{message['role']}: {said.strip()[:SUMMARISED_TEXT]}")
    return "\n".join(lines).encode()[:limit].decode(errors="ignore")


def _sim_summary(text: str, limit: int) -> str:
    """The simulator's summary: a fixed function of the text (each line's first words), at most
    `limit` bytes."""
    lines = [" ".join(line.split()[:8]) for line in text.splitlines() if line.strip()]
    return f"Summary of {len(lines)} lines: {'; '.join(lines)}".encode()[:limit].decode(errors="ignore")


def _sim_echo(request: LLMRequest) -> str:
    """The simulator's `echo_context` answer: the role and first words of each message it was sent."""
    sent = [("system", request.system)] if request.system else []
    sent += [("system", _summary_message(request.summary))] if request.summary else []
    for message in request.messages:
        said = message.get("text") or (_dumps(message["result"]) if message["role"] == "tool" else "")
        sent.append((message["role"], said))
    return "\n".join(f"{role}: {' '.join(text.split()[:12])}" for role, text in sent)


class _TurnRun:
    """One turn's work, in its worker's greenlet, to its one session.completed (or to a pause):
    resolve its tools, then call the model, run the tools it asked for, call it again ...
    until an answer without tool calls or max_iterations. A turn stops only where it waits
    (a model call, a tool): the slow step runs in a greenlet of its own, which is killed
    when the turn is asked to stop, and the turn raises the reason (_Cancelled, ...) in its
    own greenlet. So a cancel never lands in a write, or in the next turn."""

    def __init__(self, scheduler: _Scheduler, turn: _Turn) -> None:
        self.scheduler, self.turn = scheduler, turn
        self.journal, self.store, self.bus, self.config = (
            scheduler.journal,
            scheduler.store,
            scheduler.bus,
            scheduler.config,
        )
        self.m, self.capabilities = scheduler.m, scheduler.capabilities
        self.streaming: list | None = None  # the model call under way: [message_id, pieces, started, first_token_ms]
        self.provider, self.model = turn.provider, turn.model  # the model call's: a fallback's after a failure
        self.tapes: list[tuple] = []  # recorded calls, stored with the next write of what they answered

    def run(self) -> None:
        """Run the turn to its end (or its pause), whatever happens."""
        turn, outcome = self.turn, None
        _log_ids(session_id=turn.session_id, turn_id=turn.id)
        traced = turn.span is not None and _CURRENT.set((self.store.obs.tracing, turn.span))
        try:
            outcome = self._outcome()
            if outcome is not PAUSED:
                if outcome[0] == TURN_FAILED:  # what an operator reads in the log (the event has it too)
                    _log.warning("turn %s failed: %s: %s", turn.id, outcome[1]["code"], outcome[1]["message"])
                self._finish(*outcome)
        except _Lost:
            pass  # closed by another process (or its session deleted): nothing more to write
        finally:
            self.scheduler.closed(turn)
            turn.ended.set()
            if traced:
                _CURRENT.reset(traced)
                self._end_span(outcome)

    def _end_span(self, outcome: tuple | str | None) -> None:
        """End this run's span: how the turn ended (or paused), its tokens so far."""
        turn = self.turn
        status = TURN_WAITING if outcome is PAUSED else outcome[0] if outcome else "lost"
        turn.span.set_attributes({"everruns.turn.status": status, "gen_ai.usage.input_tokens": turn.input_tokens,
                                  "gen_ai.usage.output_tokens": turn.output_tokens})  # fmt: skip
        if status == TURN_FAILED:
            self.store.obs.tracing.failed(turn.span, outcome[1]["code"])
        turn.span.end()

    def _outcome(self) -> tuple[str, dict | None, tuple[str, LLMReply] | None] | str:
        """Run the loop; how the turn ended: (status, error, its answer), or PAUSED."""
        try:
            return self._loop()
        except _Cancelled:
            return TURN_CANCELLED, None, None
        except _Interrupted:
            return TURN_FAILED, {"code": "INTERRUPTED", "message": "the server stopped during the turn"}, None
        except EverrunsError as e:
            return TURN_FAILED, {"code": e.code, "message": e.message}, None
        except Exception as e:
            fault = self.store.noticed(e)  # the database went away mid-turn: logged once
            if fault is not None:
                return (
                    TURN_FAILED,
                    {"code": fault.code, "message": f"the turn could not be stored: {fault.message}"},
                    None,
                )
            _log.exception("turn %s failed", self.turn.id)
            return TURN_FAILED, {"code": "INTERNAL_ERROR", "message": "internal error while running the turn"}, None

    def _loop(self) -> tuple[str, None, tuple[str, LLMReply]] | str:
        turn, registry = self.turn, self.capabilities
        if any(isinstance(registry.get(c), _McpServer) for c in turn.capabilities):  # a server may have to start
            turn.tools = self._stoppable(_agent_tools, registry, turn.capabilities, True)
        else:
            turn.tools = _agent_tools(registry, turn.capabilities)
        if turn.resumed:
            self._run_approved()
        while turn.iterations < turn.max_iterations:
            turn.iterations += 1
            message_id, reply = self._call_model()
            if not reply.tool_calls:
                return TURN_COMPLETED, None, (message_id, reply)
            if self._run_tools(message_id, reply) is PAUSED:
                return PAUSED
        raise TurnFailed("MAX_ITERATIONS", f"the turn reached max_iterations ({turn.max_iterations})")

    def _stoppable(self, step: Callable[..., Any], *args: Any) -> Any:
        """Run a slow step in its own greenlet; if the turn is asked to stop meanwhile,
        kill the step and raise the reason here, in the turn's own greenlet."""
        turn = self.turn
        if turn.halted is not None:
            raise turn.halted()
        # In a copy of this greenlet's context: the step's log lines and spans know their turn.
        task, finished = gevent.spawn(contextvars.copy_context().run, self._released, step, *args), False
        try:
            gevent.wait([task, turn.wake], count=1)
            finished = task.ready()
        finally:
            if not finished:  # asked to stop, or this greenlet itself was killed
                task.kill(_Stop, block=True, timeout=5)
        if not finished:
            raise turn.halted()
        result, error = task.value
        if error is not None:
            raise error
        return result

    def _released(self, step: Callable[..., Any], *args: Any) -> tuple[Any, Exception | None]:
        """(result, None) or (None, the exception): raised in the turn's greenlet, not printed by gevent's."""
        try:
            return step(*args), None
        except Exception as e:
            return None, e
        except _Stop:  # killed: nobody reads this result (and a SystemExit must not end a greenlet)
            return None, None
        finally:
            self.store.release()  # the step's greenlet had its own connection

    def _call_model(self) -> tuple[str, LLMReply]:
        """One streamed LLM call (deltas go live, nothing is stored yet): the turn's provider,
        then each of its fallbacks in turn while a call fails before any text went live
        (SPEC 18: each with its default model; provider.fallback says so)."""
        turn, fallbacks = self.turn, list(self.turn.fallbacks)
        if turn.provider is None:
            raise ProviderError("no LLM provider is configured", "PROVIDER_NOT_FOUND")
        self.provider, self.model = turn.provider, turn.model
        while True:
            try:
                return self._call_provider()
            except ProviderError as e:
                answered = self.streaming is not None and self.streaming[1]
                successor = self._successor(fallbacks) if e.falls_over and not answered else None
                if successor is None:
                    raise
                if turn.halted is not None:  # asked to stop meanwhile: no fallback
                    raise turn.halted() from None
                self.streaming = None  # nothing of the failed call is kept (a cancel from here on stores none)
                _log.warning("turn %s: provider %s failed (%s: %s); its fallback %s takes the call", turn.id,
                             self.provider.id, e.code, e.message, successor.id)  # fmt: skip
                data = {"from_provider_id": self.provider.id, "to_provider_id": successor.id, "reason": e.code,
                        "message": e.message}  # fmt: skip
            with self.journal.tx(turn.session_id, turn.id) as tx:
                tx.emit("provider.fallback", data, turn.id)
            self.provider, self.model = successor, successor.default_model

    def _successor(self, fallbacks: list[str]) -> _ProviderSpec | None:
        """The next of the fallbacks that still exists (taken from the list), or None."""
        while fallbacks:
            if (provider := _provider_spec(self.m, fallbacks.pop(0))) is not None:
                return provider
        return None

    def _call_provider(self) -> tuple[str, LLMReply]:
        """One streamed call of the current provider (self.provider, self.model)."""
        turn, provider = self.turn, self.provider
        adapter = ADAPTERS.get(provider.provider_type)
        if adapter is None:
            raise ProviderError(f"provider type {provider.provider_type} is not available", "PROVIDER_ERROR")
        message_id, plays = _uuid7(), provider
        if provider.provider_type == "replay":  # the call is built as its source built the calls it recorded
            plays = _provider_spec(self.m, provider.settings["source_provider_id"])
            if plays is None:
                raise ProviderError("the provider whose calls it replays is gone", "NO_CASSETTE")
        replaying = plays is not provider  # the replay's own default model stands for its source's
        request = _llm_request(
            plays,
            self.store.secrets,
            keys=not replaying,  # a replay calls nobody: its source's key may be unreadable here
            model=plays.default_model if replaying and self.model == provider.default_model else self.model,
            system=turn.system,
            tools=[*(t.spec for t in turn.tools.values()), *turn.client.values()],
            temperature=turn.temperature,
        )
        self._context(request, adapter, plays.provider_type)
        self.store.release()  # no connection is held across a slow network call

        published, check, metrics = itertools.count(1), self.journal.check, self.store.obs.metrics
        pieces: list[str] = []
        self.streaming = streaming = [message_id, pieces, time.monotonic(), None]  # kept if a cancel lands

        def on_text(delta: str) -> None:
            if check is not None:
                check("message.delta", {"message_id": message_id, "delta": delta})
            if streaming[3] is None:  # the first text (a call cancelled later counts too)
                streaming[3] = int((time.monotonic() - streaming[2]) * 1000)
                metrics.observe("everruns_time_to_first_token_seconds", streaming[3] / 1000)
            pieces.append(_clean_text(delta))
            self.bus.publish_delta(turn.session_id, turn.id, message_id, pieces[-1])
            if next(published) % DELTAS_PER_YIELD == 0:  # a fast model must not fill the streams' queues
                gevent.sleep(0)

        reply = _checked_reply(self._model_call(adapter, request, on_text))
        self.streaming = None
        reply.latency_ms = {"first_token": streaming[3], "total": int((time.monotonic() - streaming[2]) * 1000)}
        turn.input_tokens += reply.input_tokens
        turn.output_tokens += reply.output_tokens
        return message_id, reply

    def _context(self, request: LLMRequest, adapter: Any, kind: str) -> None:
        """The call's history within the model's window (SPEC 16; `kind`: the provider type whose
        window it is): the session's summary and the turns after it, compacted first while they
        do not fit; if a summary cannot be written, the oldest turns are left out.
        CONTEXT_TOO_LARGE when this turn alone does not fit."""
        turn = self.turn
        window, room = _room(request, kind)
        budget = _read_budget(self.config, window)
        history = _session_history(self.m, turn.session_id, budget)
        for _ in range(MAX_COMPACTIONS):
            if history.tokens() <= room:
                break
            if (size := _block_tokens(history.blocks[-1])) > room:
                raise TurnFailed("CONTEXT_TOO_LARGE", f"this turn (about {size} tokens) does not fit in the model's "
                                 f"context window ({window} tokens, {room} of them for the conversation)")  # fmt: skip
            compacted = self._compact(request, adapter, history, room, window)
            if compacted is None:
                break
            history = compacted
        summary, kept = history.fitted(room)
        if len(kept) < len(history.blocks):
            _log.warning(
                "turn %s: the %d oldest turns are left out of its model call (they do not fit in the "
                "window, and no summary of them was written)",
                turn.id,
                len(history.blocks) - len(kept),
            )
        request.summary, request.messages = summary, _transcript(kept)

    def _compact(self, request: LLMRequest, adapter: Any, history: _History, room: int,
                 window: int) -> _History | None:  # fmt: skip
        """Summarise the oldest turns (with the summary before) so that the newest fit beside the
        summary: a call of the turn's own model, stoppable like any other, then the summary and
        its context.compacted in one write; the history with it. None (logged) when no summary
        could be written."""
        turn = self.turn
        keep = history.newest(room - room // 4)  # a quarter of the room, at least, for the summary
        older, allowance = history.blocks[: len(history.blocks) - len(keep)], room - sum(map(_block_tokens, keep))
        if not older or allowance < 64:
            return None
        allowance = min(allowance, window // 4)
        prompt = SUMMARY_PROMPT.format(words=allowance * 3 // 5)
        limit = (window - allowance - _tokens(len(prompt)) - 16) * 3  # bytes the summariser can read
        chunk, used = [], len((history.summary or "").encode())
        for block in older:  # the oldest turns that it can read (at least one: cut short if need be)
            if chunk and used + block.size > limit:
                break
            chunk.append(block)
            used += block.size
        ask = dataclasses.replace(
            request,
            system=prompt,
            messages=[{"role": "user", "text": _summarised_text(history, chunk, limit)}],
            tools=[],
            summary=None,
            settings={**request.settings, "max_tokens": allowance},
        )
        self.store.release()  # no connection is held across a slow network call
        try:
            reply = self._model_call(adapter, ask, lambda delta: None)  # its text is not streamed to anyone
        except Exception as e:  # a cancel (a BaseException) ends the turn as it would any call
            _log.warning("turn %s: the summary of older turns failed: %s", turn.id, e)
            return None
        turn.input_tokens += reply.input_tokens
        turn.output_tokens += reply.output_tokens
        summary = _clean_text(reply.text.strip()).encode()[: allowance * 3].decode(errors="ignore")
        if not summary:
            _log.warning("turn %s: the summary of older turns came back empty", turn.id)
            return None
        compacted = _History(summary, _tokens(len(summary.encode())), history.blocks[len(chunk) :])
        self._store_summary(compacted, chunk, history)
        return compacted

    def _store_summary(self, compacted: _History, chunk: list[_Block], history: _History) -> None:
        """The summary (a record of the session, SPEC 16) and its context.compacted, in one write."""
        turn, covered = self.turn, [block.turn_id for block in chunk]
        data = {"summary": compacted.summary, "turn_ids": covered, "tokens_before": history.tokens(),
                "tokens_after": compacted.tokens()}  # fmt: skip
        with self.journal.tx(turn.session_id, turn.id) as tx:
            tx.m.Summary.insert(id=_uuid7(), session_id=turn.session_id, turn_id=turn.id, through=covered[-1],
                                turn_ids=covered, text=compacted.summary, tokens=compacted.summary_tokens,
                                created_at=_now_iso()).execute()  # fmt: skip
            tx.emit("context.compacted", data, turn.id)
            self._store_tapes(tx)

    def _store_tapes(self, tx: _Tx) -> None:
        """The calls recorded since the last write (SPEC 18), in this one."""
        for tape in self.tapes:
            _sql(tx.m, "insert_cassette", *tape)
        self.tapes.clear()

    def _model_call(self, adapter: Any, request: LLMRequest, on_text: Callable[[str], None]) -> LLMReply:
        """The provider's streamed answer, counted and traced (a span `chat MODEL`); stored as a
        cassette when the provider records, found among its source's when it replays (SPEC 18)."""
        obs, provider = self.store.obs, self.provider
        kind, recording = provider.provider_type, provider.settings.get("record")
        if kind == "replay" or recording:
            request_hash, asked = _cassette_request(request)
        if kind == "replay":
            row = _sql_row(self.m, "cassette", provider.settings["source_provider_id"], request_hash)
            self.store.release()
            found = {"cassette": row and json.loads(row["answer"]), "speed": provider.settings.get("speed", 1.0)}
            request = dataclasses.replace(request, settings={**request.settings, **found})
        elif recording:
            started, deltas, forward = time.monotonic(), [], on_text

            def on_text(delta: str) -> None:
                deltas.append([int((time.monotonic() - started) * 1000), delta])
                forward(delta)

        with obs.span(f"chat {request.model}", self._call_attributes(request), "CLIENT") as span:
            try:
                reply = self._stoppable(adapter.stream, request, on_text)
            except Exception:
                obs.metrics.inc("everruns_model_calls_total", kind, "error")
                raise
            except BaseException:  # cancelled, interrupted
                obs.metrics.inc("everruns_model_calls_total", kind, "cancelled")
                raise
            obs.metrics.inc("everruns_model_calls_total", kind, "ok")
            obs.metrics.inc("everruns_tokens_total", kind, "input", by=reply.input_tokens)
            obs.metrics.inc("everruns_tokens_total", kind, "output", by=reply.output_tokens)
            if span is not None:
                span.set_attributes(self._reply_attributes(reply))
        if recording:  # stored with what it answered: neither key nor header is in it, a secret it says is blanked
            answer = _dumps({"deltas": deltas, "text": reply.text, "tool_calls": reply.tool_calls,
                             "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                             "total_ms": int((time.monotonic() - started) * 1000)})  # fmt: skip
            asked, answer = _blanked(asked, request.secrets), _blanked(answer, request.secrets)
            self.tapes.append((_uuid7(), provider.id, request_hash, request.model, asked, answer, _now_iso()))
        return reply

    def _call_attributes(self, request: LLMRequest) -> dict:
        """A model call's span attributes (GenAI semantic conventions); its text only with
        --otel-capture-content (nothing is built without tracing: this is on every call)."""
        if self.store.obs.tracing is None:
            return {}
        content = self.store.obs.tracing.capture
        return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider.provider_type,
                "gen_ai.request.model": request.model, "gen_ai.request.temperature": request.temperature,
                "gen_ai.system_instructions": request.system if content else None,
                "gen_ai.input.messages": _dumps(request.messages) if content else None}  # fmt: skip

    def _reply_attributes(self, reply: LLMReply) -> dict:
        content = self.store.obs.tracing.capture
        output = {"role": "assistant", "text": reply.text, "tool_calls": reply.tool_calls}
        return _attributes({"gen_ai.usage.input_tokens": reply.input_tokens,
                            "gen_ai.usage.output_tokens": reply.output_tokens,
                            "gen_ai.response.finish_reasons": ["tool_calls" if reply.tool_calls else "stop"],
                            "gen_ai.output.messages": _dumps([output]) if content else None})  # fmt: skip

    def _assistant_message(self, tx: _Tx, message_id: str, reply: LLMReply, calls: list[dict],
                           incomplete: bool = False) -> None:  # fmt: skip
        turn, text = self.turn, reply.text
        content = ([{"type": "text", "text": text}] if text else []) + [{"type": "tool_call", **c} for c in calls]
        usage = {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens}
        tx.add_message("assistant", content, turn.id, message_id=message_id, provider_id=self.provider.id,
                       model=self.model, usage=None if incomplete else usage, latency_ms=reply.latency_ms,
                       incomplete=incomplete)  # fmt: skip
        self._store_tapes(tx)

    def _incomplete(self) -> tuple[str, LLMReply]:
        """The answer a cancel cut short: its text as far as it streamed."""
        message_id, pieces, started, first = self.streaming
        total = int((time.monotonic() - started) * 1000)
        return message_id, LLMReply(_clean_text("".join(pieces)[:MAX_MESSAGE_TEXT]),
                                    latency_ms={"first_token": first, "total": total})  # fmt: skip

    def _run_tools(self, message_id: str, reply: LLMReply) -> str | None:
        """Store each tool.call before its tool runs; each result with the next call. A call
        that needs a person's approval is stored as pending and asked for, a call of a client
        tool is stored for the client to run; once the other calls have run, the turn waits
        for the answers, holding nothing: PAUSED."""
        turn = self.turn
        tctx = _ToolContext(turn.session_id, self.store, self.config)
        pending: tuple[dict, Any, bool, int] | None = None
        waits = False
        for i, call in enumerate(reply.tool_calls):
            asks = call["name"] in turn.tools and bool({"*", call["name"]} & turn.approval)
            marker = {"approval": "pending"} if asks else {"executor": "client"} if call["name"] in turn.client else {}
            with self.journal.tx(turn.session_id, turn.id) as tx:
                if i == 0:
                    self._assistant_message(tx, message_id, reply, reply.tool_calls)
                if pending:
                    _store_tool_message(tx, turn.id, *pending)
                    pending = None
                tx.emit("tool.call", {"tool_call": {**call, **marker}}, turn.id)
                if asks:
                    tx.emit("tool.approval_requested", {"tool_call": call}, turn.id)
            waits = waits or bool(marker)
            if not marker:
                pending = (call, *self._execute(call, tctx))
        with self.journal.tx(turn.session_id, turn.id) as tx:
            if pending:
                _store_tool_message(tx, turn.id, *pending)
            if waits:
                _sql(tx.m, "pause_turn", turn.iterations, turn.input_tokens, turn.output_tokens, turn.id)
                last_turn = _dumps({"id": turn.id, "status": TURN_WAITING, "error": None, "trace_id": turn.trace_id})
                _sql(tx.m, "pause_session", last_turn, _now_iso(), turn.session_id)
        return PAUSED if waits else None

    def _run_approved(self) -> None:
        """A resumed turn first runs the calls a person approved (their tool.call is stored)."""
        turn = self.turn
        tctx = _ToolContext(turn.session_id, self.store, self.config)
        for entry in _tool_calls(self.m, turn.session_id, turn.id).values():
            if entry["state"] == "approved":
                result = self._execute(entry["call"], tctx)
                with self.journal.tx(turn.session_id, turn.id) as tx:
                    _store_tool_message(tx, turn.id, entry["call"], *result)

    def _execute(self, call: dict, tctx: _ToolContext) -> tuple[Any, bool, int]:
        """Run a call's tool (counted and traced: a span `execute_tool NAME`): (result, is_error, ms)."""
        started, obs = time.monotonic(), self.store.obs
        tool = self.turn.tools.get(call["name"])
        capability = _capability_of(self.capabilities, self.turn.capabilities, call["name"]) if tool else "none"
        with obs.span(f"execute_tool {call['name']}", self._tool_attributes(call, capability)) as span:
            if tool is None:
                result, is_error = {"error": f"this agent has no tool named {call['name']!r}"}, True
            else:
                result, is_error = self._stoppable(_run_tool, tool, call["arguments"], tctx)
            if span is not None:
                _tool_span_done(obs.tracing, span, result, is_error)
        took = time.monotonic() - started
        obs.metrics.inc("everruns_tool_calls_total", capability, "error" if is_error else "ok")
        obs.metrics.observe("everruns_tool_duration_seconds", took, capability)
        return result, is_error, int(took * 1000)

    def _tool_attributes(self, call: dict, capability: str) -> dict:
        if self.store.obs.tracing is None:
            return {}
        content = self.store.obs.tracing.capture
        return {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call["name"],
                "gen_ai.tool.call.id": call["id"], "gen_ai.tool.type": "function", "everruns.capability": capability,
                "gen_ai.tool.call.arguments": _dumps(call["arguments"]) if content else None}  # fmt: skip

    def _finish(self, status: str, error: dict | None, answer: tuple[str, LLMReply] | None = None) -> None:
        """Store the final answer (if any) and close the turn in one transaction. If that
        write fails, close it as failed without the answer, so the session never stays running:
        while the database cannot be written, as soon as it can (or, if the server stops
        first, at the next start, as interrupted)."""
        duration_ms = int((time.monotonic() - self.turn.started) * 1000)
        try:
            return self._close(status, error, duration_ms, answer)
        except Exception as e:
            fault = self.store.noticed(e)
            error = {"code": "INTERNAL_ERROR", "message": "internal error while ending the turn"}
            if fault is None:
                _log.exception("turn %s: storing its end failed; closing it as failed", self.turn.id)
            else:
                error = {"code": fault.code, "message": f"the turn's end could not be stored: {fault.message}"}
        delay = FAULT_RETRY_S
        while True:
            try:
                return self._close(TURN_FAILED, error, duration_ms)
            except Exception as e:
                if self.store.noticed(e) is None:
                    raise
                if self.scheduler.closing:
                    return
                gevent.sleep(delay)
                delay = min(delay * 2, FAULT_RETRY_MAX_S)

    def _close(self, status: str, error: dict | None, duration_ms: int,
               answer: tuple[str, LLMReply] | None = None) -> None:  # fmt: skip
        turn = self.turn
        reason = {TURN_CANCELLED: "cancelled before the tool ran"}.get(status, "the turn ended before the tool ran")
        if status == TURN_CANCELLED and self.streaming is not None and self.streaming[1]:
            answer = self._incomplete()  # what a person saw of the answer is kept
        with self.journal.tx(turn.session_id, turn.id) as tx:
            if answer is not None:
                self._assistant_message(tx, answer[0], answer[1], [], incomplete=status == TURN_CANCELLED)
            _close_turn(tx, turn, status, error, duration_ms, reason)
            tx.after.append(functools.partial(self.scheduler.closed, turn))


# =============================================================================
# 13. HTTP layer
# =============================================================================


@dataclasses.dataclass(frozen=True)
class _Header:
    """A request header a route reads, for the OpenAPI document."""

    name: str
    description: str
    max_length: int


@dataclasses.dataclass(frozen=True)
class _Route:
    """One API route and its OpenAPI metadata."""

    method: str
    path: str
    handler: Callable[..., Any]
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    query: type[BaseModel] | None = None
    headers: tuple[_Header, ...] = ()
    errors: tuple[int, ...] = ()
    also: tuple[int, ...] = ()  # other success statuses with the same response
    body_required: bool = True
    raw: bool = False  # the handler writes its own response (docs, streams)
    stream: bool = False  # also answers text/event-stream
    in_schema: bool = True
    read_body: bool = True  # False: the body is never read (what the route answers does not depend on it)
    text: str | None = None  # a raw route's media type when it answers text (GET /metrics), for the document
    media: tuple[str, ...] = ()  # a body that is not JSON (JSON Lines): its media types; the handler gets its bytes


_ROUTES: list[_Route] = []


def _route(method: str, path: str, summary: str, tag: str, **meta: Any) -> Callable:
    """Register a handler with its OpenAPI metadata."""

    def register(handler: Callable) -> Callable:
        _ROUTES.append(_Route(method, path, handler, summary, tag, **meta))
        return handler

    return register


@dataclasses.dataclass
class _Request:
    """What a handler may know of its HTTP request (`req`), copied out of bottle's globals
    (a tool call is a `call`, never this)."""

    body: Any
    query: Any
    headers: Mapping[str, str]
    client: Any = None  # a stream's connection (its socket), watched for the client leaving


@dataclasses.dataclass
class _Ctx:
    """The per-app state every handler works with."""

    store: _Store
    config: dict[str, Any]
    journal: _Journal
    scheduler: _Scheduler
    capabilities: collections.ChainMap  # this app's MCP servers, then its Python tools, over CAPABILITIES
    ping_s: float = 15.0  # seconds between `: ping` comments on idle streams
    log_filter: logging.Filter | None = None
    no_statements: logging.Filter = dataclasses.field(default_factory=_NoStatements)
    cluster: Any = None  # _Cluster: this process among others on one PostgreSQL database (section 15)
    retention: Any = None  # the greenlet of --retention-days
    mcp: list = dataclasses.field(default_factory=list)  # the MCP servers of --mcp-config (capabilities mcp:NAME)
    mcp_api: dict = dataclasses.field(default_factory=dict)  # those added through the API, by id
    watermarks: dict[str, int] = dataclasses.field(default_factory=dict)  # see CONVERSATION_ORDER
    thread: int = dataclasses.field(default_factory=_os_thread)  # the OS thread of its hub (app.client)

    @property
    def bus(self) -> _Bus:
        return self.journal.bus

    @property
    def obs(self) -> _Observer:
        return self.store.obs

    @functools.cached_property
    def validation(self) -> dict:
        """What request validators may look up (see _known_capability)."""
        return {"capabilities": self.capabilities}


def _wsgi_text(value: str) -> str:
    """A WSGI header value (bytes as Latin-1) as the UTF-8 text it holds; as it came when it is not UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value


def _request_headers(environ: dict) -> dict[str, str]:
    """The request headers by lower-case name (bottle's own view fails on bytes that are not UTF-8)."""
    headers = {k[5:].replace("_", "-").lower(): _wsgi_text(v) for k, v in environ.items() if k.startswith("HTTP_")}
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if key in environ:
            headers[key.replace("_", "-").lower()] = environ[key]
    return headers


def _read_body(environ: dict, deadline: float) -> bytes:
    """The raw body, its size limit decided before reading, read within `deadline` seconds."""
    length, stream = (environ.get("CONTENT_LENGTH") or "").strip(), environ["wsgi.input"]
    if length:
        if not re.fullmatch(r"[0-9]{1,18}", length):
            raise _BadRequest("Content-Length is not a number")
        if int(length) > MAX_BODY_BYTES:
            raise _PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
        size = int(length)
    elif "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        size = MAX_BODY_BYTES + 1
    else:
        return b""
    try:
        with gevent.Timeout(deadline, _RequestTimeout("the request body did not arrive within --request-timeout")):
            data = stream.read(size) if size else b""
    except (OSError, ValueError):  # a malformed chunk, or a body cut off
        raise _BadRequest("the request body is malformed or was cut off") from None
    if len(data) > MAX_BODY_BYTES:
        raise _PayloadTooLarge(f"request body is larger than {MAX_BODY_BYTES} bytes")
    return data


def _validation_error(error: ValidationError, what: str) -> EverrunsError:
    details = _validation_details(error)
    first = details[0]
    where = ".".join(map(str, first["loc"])) or what
    return _ValidationFailed(f"invalid {what}: {where}: {first['msg']}", details=details)


# The NUL character: SQLite stores it in text, PostgreSQL cannot, so no request may carry
# one (in a JSON string it is written \u0000, after an even number of backslashes).
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _refuse_nul(text: str | bytes, where: list) -> None:
    found = "\x00" in text if isinstance(text, str) else b"\\u0000" in text and _NUL_ESCAPE.search(text)
    if found:
        raise _invalid(where, "text must not contain the NUL character (\\u0000)")


def _parse_body(environ: dict, spec: _Route, deadline: float, context: dict) -> Any:
    """Read and validate a JSON body: 413, 415, 400 as SPEC section 2 says (`context`: what
    validators may look up, the app's capabilities)."""
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if spec.method not in STATE_CHANGING or not spec.read_body:
        return None
    if spec.media:  # a body of another kind: its bytes (within the size limit), for the handler to read
        if ctype not in spec.media:
            raise _UnsupportedMediaType(f"the request body must be {' or '.join(spec.media)}")
        return _read_body(environ, deadline)
    if ctype in FORM_TYPES:  # even without a body: a cross-site form post must fail
        raise _UnsupportedMediaType("the request body must be application/json")
    if spec.method == "DELETE":
        return None
    model, raw = spec.body, _read_body(environ, deadline)
    if not raw:
        if model and spec.body_required:
            raise _BadRequest("this request needs a JSON body")
        return model.model_validate({}, context=context) if model else None
    if ctype != "application/json":
        raise _UnsupportedMediaType("the request body must be application/json")
    _refuse_nul(raw, ["body"])
    try:
        return (model or _EmptyBody).model_validate_json(raw, context=context)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise _BadRequest("the request body is not valid JSON") from None
        raise _validation_error(e, "body") from None


def _parse_query(query: Any, model: type[BaseModel] | None) -> Any:
    """The query string as `model` (a parameter of a list field may come several times)."""
    if model is None:
        return None
    for name, value in query.items():
        _refuse_nul(value, ["query", name])
    lists = {name for name, f in model.model_fields.items() if typing.get_origin(f.annotation) is list}
    try:
        return model.model_validate({k: query.getall(k) if k in lists else v for k, v in query.items()})
    except ValidationError as e:
        raise _validation_error(e, "query") from None


def _json_response(status: int, body: str | bytes) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(body, status, {"Content-Type": JSON_TYPE})


def _error_response(error: EverrunsError) -> bottle.HTTPResponse:
    response = _json_response(error.status, _error_body(error.status, error.message, error.code, error.details))
    if error.status == 503:
        response.set_header("Retry-After", str(RETRY_AFTER_S))
    return response


def _render(spec: _Route, result: Any) -> Any:
    """A handler's return value as the HTTP response."""
    if spec.raw:
        return result
    status = spec.status
    if isinstance(result, tuple):
        status, result = result
    if result is None:
        return bottle.HTTPResponse(status=status)
    return _json_response(status, result.model_dump_json())


def _callback(ctx: _Ctx, spec: _Route) -> Callable:
    """Bind a route to one app: parse, call, render, and translate errors."""

    def callback(**params: str) -> Any:
        request = bottle.request
        try:
            if any("\x00" in v for k, v in params.items() if k.endswith("_id")):  # no id has one
                raise _NotFound("no such resource")
            if "session_id" in params:
                _log_ids(session_id=params["session_id"])
            req = _Request(
                body=_parse_body(request.environ, spec, ctx.config["request_timeout"], ctx.validation),
                query=_parse_query(request.query, spec.query),
                headers=_request_headers(request.environ),
                client=request.environ.get("everruns.socket") if spec.stream else None,
            )
            return _render(spec, _handled(ctx, spec, req, params))
        except EverrunsError as e:
            return _error_response(e)

    return callback


def _handled(ctx: _Ctx, spec: _Route, req: _Request, params: dict[str, str]) -> Any:
    """Call a route's handler; what it raises as an EverrunsError (an integrity error is a
    409, a database fault a 503 or 507, anything else a 500 whose traceback is logged)."""
    try:
        return spec.handler(ctx, req, **params)
    except (EverrunsError, bottle.HTTPResponse):
        raise
    except pw.IntegrityError:
        _log.info("integrity error on %s %s", spec.method, spec.path, exc_info=True)
        raise _Conflict("the request conflicts with the current state") from None
    except Exception as e:
        fault = ctx.store.noticed(e)  # the database cannot be used now: 503 (or 507), logged once
        if fault is None:
            _log.exception("unhandled error on %s %s", spec.method, spec.path)
        raise fault or EverrunsError("internal server error") from None
    finally:
        with contextlib.suppress(Exception):  # a connection the database closed is dropped here
            ctx.store.release()


MAX_URL = 8192
MAX_HEADER_BYTES = 32 * 1024
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"
CORS_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE"


def _names(value: str | None) -> set[str]:
    """A comma-separated setting as a set of lower-case names."""
    return {v.strip().lower() for v in (value or "").split(",") if v.strip()}


def _host_name(host: str) -> str:
    """The host of a Host header or a bind address, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _authority(origin_or_host: str) -> str:
    """host[:port] of an Origin or a Host header, lower-case, without a default port."""
    return re.sub(r":(80|443)$", "", origin_or_host.lower().rpartition("://")[2])


class _Guard:
    """What is checked before routing: request size, the Host (on a server without
    an API key: DNS rebinding), and CORS (off unless origins are allowed)."""

    def __init__(self, config: dict) -> None:
        extra = {_host_name(h) for h in _names(config["allowed_hosts"])}
        self.hosts = None if config["api_key"] else {*LOOPBACK_NAMES, _host_name(config["host"]), *extra}
        origins = {o.rstrip("/") for o in _names(config["cors_origins"])}
        self.any_origin, self.origins = "*" in origins, origins - {"*"}

    def refusal(self, environ: dict) -> EverrunsError | None:
        """Why a request is refused before it is routed, if it is."""
        if len(environ.get("PATH_INFO", "")) + len(environ.get("QUERY_STRING", "")) > MAX_URL:
            return _UriTooLong(f"the request line is longer than {MAX_URL} characters")
        try:
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            return _BadRequest("the request path is not valid UTF-8 once percent-decoded")
        if sum(len(k) + len(str(v)) for k, v in environ.items() if k.startswith("HTTP_")) > MAX_HEADER_BYTES:
            return _HeadersTooLarge(f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
        if self.hosts is not None and _host_name(environ.get("HTTP_HOST", "")) not in self.hosts:
            return _Forbidden("this server answers only requests addressed to its own host name (see --allowed-hosts)")
        if self.hosts is not None and self._cross_site(environ):
            return _Forbidden("cross-site requests that change state are refused (see --cors-origins)")
        return None

    def _cross_site(self, environ: dict) -> bool:
        """A browser's state-changing request from another site (CSRF on a server without a key)."""
        if environ["REQUEST_METHOD"] not in STATE_CHANGING:
            return False
        origin = environ.get("HTTP_ORIGIN", "").rstrip("/").lower()
        if origin:
            allowed = self.any_origin or origin in self.origins
            return not allowed and _authority(origin) != _authority(environ.get("HTTP_HOST", ""))
        return environ.get("HTTP_SEC_FETCH_SITE", "").lower() == "cross-site"

    def cors(self, environ: dict) -> list[tuple[str, str]]:
        """The CORS headers for an allowed Origin (never `*` with credentials: none are allowed)."""
        origin = environ.get("HTTP_ORIGIN", "").rstrip("/")
        if not origin or not (self.any_origin or origin.lower() in self.origins):
            return []
        allow = "*" if self.any_origin else origin
        return [("Access-Control-Allow-Origin", allow), ("Vary", "Origin"), ("Access-Control-Expose-Headers", "*")]

    def preflight(self, environ: dict) -> list[tuple[str, str]] | None:
        """The answer headers to an allowed CORS preflight, which needs no API key."""
        cors = self.cors(environ)
        if environ["REQUEST_METHOD"] != "OPTIONS" or "HTTP_ACCESS_CONTROL_REQUEST_METHOD" not in environ or not cors:
            return None
        return [*cors, ("Access-Control-Allow-Methods", CORS_ALLOW_METHODS),
                ("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS), ("Access-Control-Max-Age", "600")]  # fmt: skip


API_PREFIXES = ("/v1", "/api/v1")  # what the API key guards: the seed's API and the SDK's


def _is_api(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in API_PREFIXES)


def _presented_key(header: str) -> str:
    """The key an Authorization header gives: `Bearer <key>`, `ApiKey <key>`, or the bare key
    (what the official SDKs send)."""
    scheme, _, rest = header.strip().partition(" ")
    return rest.strip() if scheme.lower() in ("bearer", "apikey") else header.strip()


class _App(bottle.Bottle):
    """Bottle with every error it writes itself (404, 405, 500) in the JSON envelope,
    and the guard in front of the routes; what an embedding program adds (SPEC 14): its
    Python tools and capabilities, its hooks."""

    guard: _Guard
    everruns: _Ctx
    client: Any  # the in-process client (section 16)
    access_log = False  # --access-log

    def tool(self, function: Callable | None = None, *, capability: str = PYTHON_CAPABILITY,
             name: str | None = None, description: str | None = None, threaded: bool = False,
             timeout_s: float | None = None) -> Any:  # fmt: skip
        """Make a function a tool of this app, in `capability` (made if new); a decorator,
        with or without options. TypeError or ValueError says why a function cannot be one."""

        def register(fn: Callable) -> Callable:
            _register_tool(self.everruns.capabilities, capability, _python_tool(fn, name, description, threaded,
                                                                                timeout_s))  # fmt: skip
            return fn

        return register if function is None else register(function)

    def capability(self, capability_id: str, *, name: str | None = None, description: str | None = None,
                   system_prompt: str | None = None, category: str | None = None) -> Capability:  # fmt: skip
        """Make a Python capability, or change what it says of itself (its system prompt is
        added to an agent's when the agent enables it); as GET /v1/capabilities lists it."""
        about = {"name": name, "description": description, "system_prompt": system_prompt, "category": category}
        return _python_capability(self.everruns.capabilities, capability_id, **about).out()

    def on(self, event_type: str) -> Callable[[Callable], Callable]:
        """A decorator: call the function with each stored event of this type ("*": every
        type), after its commit; for one session one event at a time, in seq order."""

        def register(hook: Callable) -> Callable:
            self.everruns.journal.hooks.add(event_type, hook)
            return hook

        return register

    def wsgi(self, environ: dict, start_response: Callable) -> Any:
        request_id = _request_id(_wsgi_text(environ.get("HTTP_X_REQUEST_ID", "")))
        _LOG_IDS.set({"request_id": request_id})  # this greenlet's log lines are about this request
        respond = self._responder(environ, start_response, [("X-Request-Id", request_id)])
        refusal = self.guard.refusal(environ)
        if refusal is not None:
            body = _error_body(refusal.status, refusal.message, refusal.code).encode()
            respond(f"{refusal.status} {HTTPStatus(refusal.status).phrase}",
                    [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body)))])  # fmt: skip
            return [body]
        preflight = self.guard.preflight(environ)
        if preflight is not None:
            respond("204 No Content", preflight)
            return [b""]
        path = environ.get("PATH_INFO", "")
        if _is_api(path) and path.endswith("/"):  # `/v1/agents/` is `/v1/agents`, `fs/` is the root
            environ["PATH_INFO"] = path.rstrip("/")
        cors = self.guard.cors(environ)
        if cors:
            respond = self._responder(environ, start_response, [("X-Request-Id", request_id), *cors])
        return super().wsgi(environ, respond)

    def _responder(self, environ: dict, start_response: Callable, extra: list) -> Callable:
        """start_response with `extra` headers, which counts the answer (and logs it: --access-log)."""
        started = time.monotonic()

        def respond(status: str, headers: list, exc_info: Any = None) -> Any:
            self._answered(environ, status[:3], started)
            return start_response(status, [*headers, *extra], exc_info)

        return respond

    def _answered(self, environ: dict, status: str, started: float) -> None:
        route = environ.get("bottle.route")
        if route is None and status == "401":  # refused before routing
            with contextlib.suppress(bottle.HTTPError):
                route = self.router.match(environ)[0]
        template = _route_label(route.rule) if route is not None else "unmatched"
        self.everruns.obs.metrics.inc("everruns_http_requests_total", template, status)
        if self.access_log:
            took = (time.monotonic() - started) * 1000
            _access_log.info("%s %s %s %.1f ms", environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), status, took)

    def default_error_handler(self, res: bottle.HTTPError) -> str:
        bottle.response.content_type = JSON_TYPE
        status = res.status_code
        if status >= 500:
            _log.error("internal error: %s", res.exception or res.body)
            return _error_body(500, "internal server error")
        messages = {404: "no such route", 405: f"method {bottle.request.method} not allowed here"}
        return _error_body(status, messages.get(status, str(res.body or "request error")))


def _auth_hook(api_key: str | None, metrics: bool = False) -> Callable[[], None]:
    """A before-request hook: with an API key set, every /v1 and /api/v1 request needs it
    (and GET /metrics with `metrics`: --metrics-auth)."""
    # Digests have one length, so the comparison tells nothing, not even the key's length.
    expected = hashlib.sha256((api_key or "").encode()).digest()

    def check() -> None:
        path = bottle.request.path
        if not api_key or not (_is_api(path) or (metrics and path == "/metrics")):
            return
        token = _presented_key(_wsgi_text(bottle.request.environ.get("HTTP_AUTHORIZATION", "")))
        given = hashlib.sha256(token.encode()).digest()
        if not token or not hmac.compare_digest(given, expected):
            response = _error_response(_Unauthorized("missing or wrong API key: send Authorization: Bearer <key>"))
            response.set_header("WWW-Authenticate", "Bearer")
            raise response

    return check


# ---- helpers shared by handlers --------------------------------------------


def _get(model: Any, id_: str, what: str) -> Any:
    row = model.get_or_none(model.id == id_)
    if row is None:
        raise _NotFound(f"{what} {id_} not found")
    return row


def _need_session(m: _Models, session_id: str) -> None:
    """404 unless the session exists (one cheap query, for the hot routes)."""
    if not _session_exists(m, session_id):
        raise _NotFound(f"session {session_id} not found")


def _page(query: Any, limit: int, key: Callable[[Any], Any], out: Callable[[Any], BaseModel]) -> dict:
    rows = list(query.limit(limit + 1))
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [out(r) for r in rows],
        "has_more": has_more,
        "next_after": key(rows[-1]) if has_more else None,
    }


def _names_page(names: list[str], q: ListQuery) -> dict:
    """A page of a fixed list of names; `after` is the last name of the previous page."""
    start = names.index(q.after) + 1 if q.after in names else 0
    chosen = names[start : start + q.limit]
    has_more = start + len(chosen) < len(names)
    return {"data": chosen, "has_more": has_more, "next_after": chosen[-1] if has_more else None}


def _paged_by_id(model: Any, where: Any, q: ListQuery, newest_first: bool) -> Any:
    """A select ordered by id, after the cursor, in the given direction."""
    query = model.select().where(where)
    if q.after:
        query = query.where(model.id < q.after if newest_first else model.id > q.after)
    return query.order_by(model.id.desc() if newest_first else model.id.asc())


def _check_provider(ctx: _Ctx, provider_id: str | None, loc: list) -> None:
    m = ctx.store.m
    if provider_id is not None and m.Provider.get_or_none(m.Provider.id == provider_id) is None:
        raise _invalid(loc, f"provider {provider_id} does not exist")


def _check_providers(ctx: _Ctx, fields: Mapping[str, Any]) -> None:
    """An agent's or a session's provider_id and fallback_provider_ids (each named once) name
    providers that exist; 400 otherwise."""
    _check_provider(ctx, fields.get("provider_id"), ["provider_id"])
    for i, provider_id in enumerate(fallbacks := fields.get("fallback_provider_ids") or []):
        if provider_id in fallbacks[:i]:
            raise _invalid(["fallback_provider_ids", i], f"provider {provider_id} is named twice")
        _check_provider(ctx, provider_id, ["fallback_provider_ids", i])


def _patch(ctx: _Ctx, model: Any, id_: str, what: str, changes: dict[str, Any]) -> Any:
    """Apply a PATCH to an agent or a session (a named provider must exist); the updated row."""
    with ctx.store.write(id_ if model is ctx.store.m.Session else None):
        _get(model, id_, what)
        _check_providers(ctx, changes)
        if changes:
            model.update(**changes, updated_at=_now_iso()).where(model.id == id_).execute()
    return model.get_by_id(id_)


@contextlib.contextmanager
def _sessions_going(ctx: _Ctx, session_ids: list[str]) -> Iterator[None]:
    """Around deleting sessions: their turns stop first (writing nothing) and no new one
    starts meanwhile; once they are deleted, their streams end."""
    for session_id in session_ids:
        ctx.scheduler.stop(session_id)  # before the write: stopping a turn may wait
    try:
        yield
    except BaseException:  # not deleted after all: close their stopped turns, answer what they owe
        for session_id in session_ids:
            ctx.scheduler.forget(session_id)
            with contextlib.suppress(Exception):
                ctx.scheduler.close_interrupted(session_id, "the turn was stopped for a delete that failed", mine=True)
            ctx.scheduler.kick(session_id)
        raise
    for session_id in session_ids:
        ctx.bus.close(session_id)
        ctx.scheduler.forget(session_id)
        ctx.store.tell("gone", session_id)  # the other processes stop its turn and end its streams


def _changes(body: BaseModel) -> dict[str, Any]:
    """The fields a PATCH body sets, as plain values."""
    return {name: getattr(body, name) for name in body.model_fields_set}


# ---- health -----------------------------------------------------------------


@_route("GET", "/health", "Liveness and database status (503 while the database cannot be used)", "health",
        response=Health, also=(503,), raw=True)  # fmt: skip
def _health(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    try:
        ctx.store.check()
        state = "ok"
    except Exception as e:  # the database cannot be used (anything else is a fault of its own)
        if ctx.store.noticed(e) is None:
            raise
        state = "unavailable"
    # Written out, not through Health: monitors poll this, and a server no client has
    # called yet has built no validator (see _LazyModel).
    backend = "postgresql" if ctx.store.postgres else "sqlite"
    health = {"status": state, "version": __version__, "database": state, "backend": backend, "instance": INSTANCE}
    response = _json_response(200 if state == "ok" else 503, _dumps(health))
    if state != "ok":
        response.set_header("Retry-After", str(RETRY_AFTER_S))
    return response


PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@_route("GET", "/metrics", "Metrics in the Prometheus text format (behind the API key with --metrics-auth)",
        "health", raw=True, text="text/plain")  # fmt: skip
def _metrics(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(ctx.obs.metrics.text(), 200, {"Content-Type": PROMETHEUS_TYPE})


def _gauges(ctx: _Ctx) -> dict[str, float]:
    """GET /metrics' gauges: this process's streams and turns, and two counts of the database
    (left out while it cannot be read)."""
    gauges = {"everruns_streams_open": ctx.bus.streams(), "everruns_turns_running": len(ctx.scheduler.running())}
    try:
        gauges["everruns_turns_waiting"] = _sql(ctx.store.m, "count_waiting").fetchone()[0]
        gauges["everruns_messages_queued"] = _sql(ctx.store.m, "count_queued").fetchone()[0]
    except Exception as e:
        if ctx.store.noticed(e) is None:
            raise
    finally:
        ctx.store.release()
    return gauges


# ---- LLM providers ----------------------------------------------------------


@_route(
    "GET",
    "/v1/llm-providers",
    "List LLM providers (oldest first)",
    "llm-providers",
    response=ProviderPage,
    query=ListQuery,
)
def _list_providers(ctx: _Ctx, req: _Request) -> BaseModel:
    m = ctx.store.m
    query = _paged_by_id(m.Provider, True, req.query, newest_first=False)
    return ProviderPage(**_page(query, req.query.limit, lambda r: r.id, _provider_out))


def _make_default(m: _Models, provider_id: str) -> None:
    m.Provider.update(is_default=False).where(m.Provider.is_default == True, m.Provider.id != provider_id).execute()  # noqa: E712
    m.Provider.update(is_default=True).where(m.Provider.id == provider_id).execute()


@_route(
    "POST",
    "/v1/llm-providers",
    "Create an LLM provider",
    "llm-providers",
    body=ProviderCreate,
    response=Provider,
    status=201,
)
def _create_provider(ctx: _Ctx, req: _Request) -> BaseModel:
    body, m = req.body.root, ctx.store.m
    with ctx.store.write():
        _check_source(ctx, body.provider_type, body.settings.model_dump())
        row = ctx.store.add_provider(
            body.name, body.provider_type, api_key=body.api_key, settings=body.settings.model_dump(),
            base_url=body.base_url, default_model=body.default_model,
        )  # fmt: skip
        if body.is_default:
            _make_default(m, row.id)
    return _provider_out(m.Provider.get_by_id(row.id))


@_route(
    "GET",
    "/v1/llm-providers/<provider_id>",
    "Get an LLM provider",
    "llm-providers",
    response=Provider,
    errors=(404,),
)
def _get_provider(ctx: _Ctx, req: _Request, provider_id: str) -> BaseModel:
    return _provider_out(_get(ctx.store.m.Provider, provider_id, "provider"))


def _validated_settings(provider_type: str, settings: BaseModel) -> dict:
    model = SETTINGS_MODELS[provider_type]
    try:
        return model.model_validate(settings.model_dump(exclude_unset=True)).model_dump()
    except ValidationError as e:
        details = [{"loc": ["settings", *d["loc"]], "msg": d["msg"]} for d in _validation_details(e)]
        raise _ValidationFailed(f"invalid settings for a {provider_type} provider", details=details) from None


@_route(
    "PATCH",
    "/v1/llm-providers/<provider_id>",
    "Update an LLM provider",
    "llm-providers",
    body=ProviderUpdate,
    response=Provider,
    errors=(404, 409),
)
def _update_provider(ctx: _Ctx, req: _Request, provider_id: str) -> BaseModel:
    m = ctx.store.m
    changes = _changes(req.body)
    with ctx.store.write():
        row = _get(m.Provider, provider_id, "provider")
        if "settings" in changes:
            settings = _validated_settings(row.provider_type, req.body.settings)
            if headers := settings.get("extra_headers"):  # a value sent back as GET masks it: the stored one
                stored = row.settings.get("extra_headers", {})
                settings["extra_headers"] = {k: stored[k] if v == REDACTED and k in stored else v
                                             for k, v in headers.items()}  # fmt: skip
            _check_source(ctx, row.provider_type, settings, provider_id)
            changes["settings"] = ctx.store.secrets.seal_settings(settings)
        if "api_key" in changes:
            changes["api_key"] = ctx.store.secrets.seal(changes["api_key"])
        make_default = changes.pop("is_default", None)
        if make_default is False and row.is_default:
            raise _Conflict("exactly one provider is the default: make another one the default instead")
        if changes:
            m.Provider.update(**changes, updated_at=_now_iso()).where(m.Provider.id == provider_id).execute()
        if make_default:
            _make_default(m, provider_id)
    return _provider_out(m.Provider.get_by_id(provider_id))


@_route(
    "DELETE",
    "/v1/llm-providers/<provider_id>",
    "Delete an LLM provider",
    "llm-providers",
    status=204,
    errors=(404, 409),
)
def _delete_provider(ctx: _Ctx, req: _Request, provider_id: str) -> None:
    m = ctx.store.m
    with ctx.store.write():
        row = _get(m.Provider, provider_id, "provider")
        if row.is_default:
            raise _Conflict("the default provider cannot be deleted; make another one the default first")
        named = pw.Value(f'%"{provider_id}"%', converter=False)  # in JSON text (no LIKE wildcard in an id)
        holders = {  # what names a provider, and the 409 that says so
            "the provider is used by agents or sessions": (
                (m.Agent, m.Agent.provider_id == provider_id), (m.Session, m.Session.provider_id == provider_id)),
            "the provider is a fallback of agents or sessions (their fallback_provider_ids)": (
                (m.Agent, pw.Expression(m.Agent.fallback_provider_ids, pw.OP.ILIKE, named)),
                (m.Session, pw.Expression(m.Session.fallback_provider_ids, pw.OP.ILIKE, named))),
            "a replay provider plays this provider's recorded calls (its source_provider_id)": (
                (m.Provider, (m.Provider.provider_type == "replay")
                 & pw.Expression(m.Provider.settings, pw.OP.ILIKE, named)),),
        }  # fmt: skip
        for message, wheres in holders.items():
            if any(model.select().where(where).exists() for model, where in wheres):
                raise _Conflict(message)
        row.delete_instance()


@_route(
    "GET",
    "/v1/llm-providers/<provider_id>/models",
    "List the models a provider offers (asks the provider)",
    "llm-providers",
    response=ModelPage,
    query=ModelListQuery,
    errors=(404, 502),
)
def _list_models(ctx: _Ctx, req: _Request, provider_id: str) -> BaseModel:
    provider = _get(ctx.store.m.Provider, provider_id, "provider")
    ctx.store.release()  # no connection is held across a network call
    names = ADAPTERS[provider.provider_type].models(_llm_request(provider, ctx.store.secrets))  # 502s
    page = _names_page(names, req.query)
    return ModelPage(**{**page, "data": [ModelInfo(id=n) for n in page["data"]]})


def _check_source(ctx: _Ctx, provider_type: str, settings: dict, provider_id: str | None = None) -> None:
    """A replay provider's source: another provider, of a type that can record; 400 otherwise."""
    if provider_type != "replay":
        return
    source = ctx.store.m.Provider.get_or_none(ctx.store.m.Provider.id == settings["source_provider_id"])
    if source is None or source.id == provider_id or source.provider_type not in RECORDING_TYPES:
        raise _invalid(["settings", "source_provider_id"], "must name an OpenAI-compatible or Anthropic provider "
                       "(one that can record: settings.record)")  # fmt: skip


@_route("GET", "/v1/llm-providers/<provider_id>/cassettes", "List the model calls a provider recorded (oldest "
        "first)", "llm-providers", response=CassettePage, query=ListQuery, errors=(404,))  # fmt: skip
def _list_cassettes(ctx: _Ctx, req: _Request, provider_id: str) -> BaseModel:
    m = ctx.store.m
    _get(m.Provider, provider_id, "provider")
    query = _paged_by_id(m.Cassette, m.Cassette.provider_id == provider_id, req.query, newest_first=False)
    return CassettePage(**_page(query, req.query.limit, lambda r: r.id, functools.partial(_row_out, Cassette)))


@_route("DELETE", "/v1/llm-providers/<provider_id>/cassettes", "Delete the model calls a provider recorded",
        "llm-providers", status=204, errors=(404,))  # fmt: skip
def _clear_cassettes(ctx: _Ctx, req: _Request, provider_id: str) -> None:
    m = ctx.store.m
    with ctx.store.write():
        _get(m.Provider, provider_id, "provider")
        m.Cassette.delete().where(m.Cassette.provider_id == provider_id).execute()


# ---- agents -----------------------------------------------------------------


@_route("GET", "/v1/agents", "List agents (newest first)", "agents", response=AgentPage, query=ListQuery)
def _list_agents(ctx: _Ctx, req: _Request) -> BaseModel:
    query = _paged_by_id(ctx.store.m.Agent, True, req.query, newest_first=True)
    return AgentPage(**_page(query, req.query.limit, lambda r: r.id, _agent_out))


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _check_client_tools(ctx: _Ctx, client_tools: list[dict], capabilities: list[str],
                        field: str = "client_tools") -> None:  # fmt: skip
    """Client tool names: each once, none a tool of the agent's capabilities; 400 otherwise."""
    tools, seen = _agent_tools(ctx.capabilities, capabilities), set()
    for i, tool in enumerate(client_tools):
        if tool["name"] in tools:
            raise _invalid([field, i, "name"], f"{tool['name']!r} is a tool of one of its capabilities")
        if tool["name"] in seen:
            raise _invalid([field, i, "name"], f"{tool['name']!r} is named twice")
        seen.add(tool["name"])


def _approvals(ctx: _Ctx, names: list[str], capabilities: list[str]) -> list[str]:
    """An agent's require_approval, each name one of its tools (or "*"), or of an MCP server
    that has not listed its tools yet (never waited for); 400 otherwise."""
    tools = _agent_tools(ctx.capabilities, capabilities)
    unlisted = tuple(f"{c.name}__" for i in capabilities if isinstance(c := ctx.capabilities.get(i), _McpServer)
                     and c.status != "ready")  # fmt: skip
    for i, name in enumerate(names):
        if name != "*" and name not in tools and not name.startswith(unlisted):
            raise _invalid(["require_approval", i], f"{name!r} is not a tool of this agent's capabilities")
    return _dedupe(names)


@_route("POST", "/v1/agents", "Create an agent", "agents", body=AgentCreate, response=Agent, status=201)
def _create_agent(ctx: _Ctx, req: _Request) -> BaseModel:
    body: AgentCreate = req.body
    m, ts = ctx.store.m, _now_iso()
    fields = body.model_dump()
    fields["capabilities"] = _dedupe(fields["capabilities"])
    fields["require_approval"] = _approvals(ctx, fields["require_approval"], fields["capabilities"])
    _check_client_tools(ctx, fields["client_tools"], fields["capabilities"])
    with ctx.store.write():
        _check_providers(ctx, fields)
        row = m.Agent.create(id=_uuid7(), created_at=ts, updated_at=ts, **fields)
    return _agent_out(row)


@_route("GET", "/v1/agents/<agent_id>", "Get an agent", "agents", response=Agent, errors=(404,))
def _get_agent(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    return _agent_out(_get(ctx.store.m.Agent, agent_id, "agent"))


@_route(
    "PATCH",
    "/v1/agents/<agent_id>",
    "Update an agent",
    "agents",
    body=AgentUpdate,
    response=Agent,
    errors=(404,),
)
def _update_agent(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    m = ctx.store.m
    changes = _changes(req.body)
    if "capabilities" in changes:
        changes["capabilities"] = _dedupe(changes["capabilities"])
    if "client_tools" in changes:
        changes["client_tools"] = [tool.model_dump() for tool in changes["client_tools"]]
    if changes.keys() & {"require_approval", "capabilities", "client_tools"}:  # checked against its tools-to-be
        agent = _get(m.Agent, agent_id, "agent")
        capabilities = changes.get("capabilities", agent.capabilities)
        checked = _approvals(ctx, changes.get("require_approval", agent.require_approval), capabilities)
        if "require_approval" in changes:
            changes["require_approval"] = checked
        _check_client_tools(ctx, changes.get("client_tools", agent.client_tools), capabilities)
    return _agent_out(_patch(ctx, m.Agent, agent_id, "agent", changes))


@_route("DELETE", "/v1/agents/<agent_id>", "Delete an agent and its sessions", "agents", status=204, errors=(404,))
def _delete_agent(ctx: _Ctx, req: _Request, agent_id: str) -> None:
    _remove_agent(ctx, _get(ctx.store.m.Agent, agent_id, "agent"))


def _remove_agent(ctx: _Ctx, agent: Any) -> None:
    """Delete an agent with its sessions (their turns stopped first)."""
    m = ctx.store.m
    sessions = [s.id for s in m.Session.select(m.Session.id).where(m.Session.agent_id == agent.id)]
    with _sessions_going(ctx, sessions), ctx.store.write():
        for session_id in sorted(sessions):  # the sessions' locks, in one order (see _Store._lock_session)
            with ctx.store.write(session_id):
                pass
        agent.delete_instance()


# ---- sessions ---------------------------------------------------------------


@_route(
    "GET",
    "/v1/agents/<agent_id>/sessions",
    "List an agent's sessions (newest first)",
    "sessions",
    response=SessionPage,
    query=ListQuery,
    errors=(404,),
)
def _list_sessions(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    m = ctx.store.m
    _get(m.Agent, agent_id, "agent")
    query = _paged_by_id(m.Session, m.Session.agent_id == agent_id, req.query, newest_first=True)
    return SessionPage(**_page(query, req.query.limit, lambda r: r.id, _session_out))


@_route(
    "POST",
    "/v1/agents/<agent_id>/sessions",
    "Open a session with an agent",
    "sessions",
    body=SessionCreate,
    body_required=False,
    response=Session,
    status=201,
    errors=(404,),
)
def _create_session(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    return _session_out(_new_session(ctx, agent_id, req.body.model_dump()))


def _new_session(ctx: _Ctx, agent_id: str, fields: dict, files: Iterable[dict] = ()) -> Any:
    """Open a session with an agent (a named provider must exist), its agent's starter files
    and then `files` written into its file system, in one transaction; the row."""
    m, ts = ctx.store.m, _now_iso()
    _room_left(ctx)
    with ctx.store.write():
        agent = _get(m.Agent, agent_id, "agent")
        _check_providers(ctx, fields)
        row = m.Session.create(id=_uuid7(), agent_id=agent_id, created_at=ts, updated_at=ts, **fields)
        fs = _Vfs(ctx.store, row.id)
        for file in [*agent.initial_files, *files]:  # a path given twice: the later one wins
            fs.write(_starter_path(file["path"]), file["content"], file.get("encoding") or "text")
    return row


@_route("GET", "/v1/sessions/<session_id>", "Get a session", "sessions", response=Session, errors=(404,))
def _get_session(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    return _session_out(_get(ctx.store.m.Session, session_id, "session"))


@_route("GET", "/v1/sessions/<session_id>/context", "What the next model call would send: the summary and turns "
        "that fit in the model's window", "sessions", response=SessionContext, errors=(404,))  # fmt: skip
def _session_context(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    m = ctx.store.m
    setup = _turn_setup(m, session_id)
    if setup is None:
        raise _NotFound(f"session {session_id} not found")
    turn = _prepared_turn(m, ctx.capabilities, session_id, setup, "", {})
    tools = [*(t.spec for t in _agent_tools(ctx.capabilities, turn.capabilities).values()), *turn.client.values()]
    request = LLMRequest(turn.model, turn.system, [], tools, turn.provider.settings if turn.provider else {})
    kind = turn.provider.provider_type if turn.provider else "llmsim"
    window, room = _room(request, kind)
    history = _session_history(m, session_id, _read_budget(ctx.config, window))
    summary, kept = history.fitted(room)
    used = _fixed_tokens(request) + (history.summary_tokens if summary else 0) + sum(map(_block_tokens, kept))
    return SessionContext(system_prompt=turn.system, summary=summary, turn_ids=[b.turn_id for b in kept],
                          tokens_estimate=used, context_window=window)  # fmt: skip


@_route(
    "PATCH",
    "/v1/sessions/<session_id>",
    "Update a session's title, tags, provider or model",
    "sessions",
    body=SessionUpdate,
    response=Session,
    errors=(404,),
)
def _update_session(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    m = ctx.store.m
    changes = _changes(req.body)
    return _session_out(_patch(ctx, m.Session, session_id, "session", changes))


@_route(
    "DELETE",
    "/v1/sessions/<session_id>",
    "Delete a session with its messages and events",
    "sessions",
    status=204,
    errors=(404,),
)
def _delete_session(ctx: _Ctx, req: _Request, session_id: str) -> None:
    _remove_session(ctx, _get(ctx.store.m.Session, session_id, "session"))


def _remove_session(ctx: _Ctx, session: Any) -> None:
    """Delete a session (its turn stopped first, its streams ended)."""
    with _sessions_going(ctx, [session.id]), ctx.store.write(session.id):
        session.delete_instance()


def _room_left(ctx: _Ctx) -> None:
    """507 once the database holds --max-db-mb (SPEC 17): no new session or message then."""
    limit = ctx.config["max_db_mb"]
    if limit and (used := ctx.store.used_mb()) >= limit:
        raise _InsufficientStorage(f"the database holds {used:.1f} MB, the limit (--max-db-mb) is {limit:g} MB: "
                                   "delete sessions (or raise the limit) to add more")  # fmt: skip


# ---- retention (SPEC 17): --retention-days deletes the idle sessions last active before the
# cutoff, a batch per write (the conditions checked again in it: a message posted meanwhile
# keeps its session), the other turns going on between batches.

RETENTION_EVERY_S = 60.0
RETENTION_BATCH = 100


def _retention(ctx: _Ctx) -> None:
    """The retention greenlet: a sweep now and then every RETENTION_EVERY_S."""
    with contextlib.suppress(_Stop):  # the app closes (a greenlet must not end with a SystemExit)
        while True:
            try:
                _sweep(ctx, _iso_time(time.time() - ctx.config["retention_days"] * 86400))
            except Exception as e:
                if ctx.store.noticed(e) is None:
                    _log.exception("retention failed")
            finally:
                ctx.store.release()
            gevent.sleep(RETENTION_EVERY_S)


def _sweep(ctx: _Ctx, cutoff: str) -> int:
    """Delete the idle sessions last active before `cutoff`, in batches; how many."""
    m, total = ctx.store.m, 0
    while ids := [row[0] for row in _sql(m, "expired", cutoff, RETENTION_BATCH).fetchall()]:
        ctx.store.release()
        gone = []
        with ctx.store.write():
            for session_id in ids:
                with ctx.store.write(session_id):  # (on PostgreSQL: the session's lock too)
                    if _sql(m, "expire", session_id, cutoff).rowcount:
                        gone.append(session_id)
        for session_id in gone:
            ctx.bus.close(session_id)
            ctx.store.tell("gone", session_id)  # the other processes end its streams
        ctx.obs.metrics.inc("everruns_sessions_deleted_total", "retention", by=len(gone))
        _log.info("retention: deleted %d sessions idle since before %s", len(gone), cutoff)
        total += len(gone)
        if len(gone) < RETENTION_BATCH:
            break
        gevent.sleep(0)  # the turns and requests waiting get their turn
    return total


@_route(
    "POST",
    "/v1/sessions/<session_id>/cancel",
    "Cancel the running turn (a no-op on an idle session)",
    "sessions",
    response=CancelResult,
    errors=(404,),
)
def _cancel_session(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    m = ctx.store.m
    _get(m.Session, session_id, "session")
    turn_id = ctx.scheduler.cancel(session_id)
    session = _session_out(_get(m.Session, session_id, "session"))
    turn = m.Turn.get_or_none(m.Turn.id == turn_id) if turn_id else None
    cancelled = turn and LastTurn(id=turn.id, status=turn.status, error=turn.error)
    return CancelResult(**session.model_dump(), cancelled_turn=cancelled)


@_route(
    "POST",
    "/v1/sessions/<session_id>/tool-calls/<tool_call_id>/approval",
    "Approve or deny a tool call that waits for a person",
    "sessions",
    body=ApprovalDecision,
    response=Session,
    errors=(404, 409),
)
def _decide_tool_call(ctx: _Ctx, req: _Request, session_id: str, tool_call_id: str) -> BaseModel:
    _decide(ctx, session_id, tool_call_id, req.body.approved, req.body.reason)
    return _session_out(_get(ctx.store.m.Session, session_id, "session"))


def _decide(ctx: _Ctx, session_id: str, tool_call_id: str, approved: bool, reason: str | None) -> None:
    """A person's decision on a call that waits for one (404, 409 as _answering says)."""
    with _answering(ctx, session_id, tool_call_id, "approval", "an approval") as (tx, turn_id, entry):
        tx.emit("tool.approval_resolved", {"tool_call_id": tool_call_id, "approved": approved, "reason": reason},
                turn_id)  # fmt: skip
        if not approved:
            denied = "denied by the user" + (f": {reason}" if reason else "")
            _store_tool_message(tx, turn_id, entry["call"], {"error": denied}, True, 0)


@_route(
    "POST",
    "/v1/sessions/<session_id>/tool-results",
    "Post the result of a client tool's call",
    "sessions",
    body=ToolResultPost,
    response=Session,
    errors=(404, 409, 413),
)
def _post_tool_result(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    posted = req.body
    _client_result(ctx, session_id, posted.tool_call_id, posted.result, posted.is_error)
    return _session_out(_get(ctx.store.m.Session, session_id, "session"))


def _client_result(ctx: _Ctx, session_id: str, tool_call_id: str, result: Any, is_error: bool) -> None:
    """A client tool's result (413 past MAX_TOOL_OUTPUT; 404, 409 as _answering says)."""
    if len(_dumps(result).encode()) > MAX_TOOL_OUTPUT:
        raise _PayloadTooLarge(f"a tool result holds at most {MAX_TOOL_OUTPUT} bytes of JSON")
    with _answering(ctx, session_id, tool_call_id, "client", "the client's result") as (tx, turn_id, entry):
        _store_tool_message(tx, turn_id, entry["call"], result, is_error, _since(entry["at"]))
    ctx.obs.metrics.inc("everruns_tool_calls_total", "client", "error" if is_error else "ok")  # (no duration)


@contextlib.contextmanager
def _answering(ctx: _Ctx, session_id: str, tool_call_id: str, state: str, what: str) -> Iterator[tuple]:
    """Around answering a call its turn waits for, under the session's lock: (tx, turn id,
    the call's entry of _tool_calls). 404 for a call the session never had, 409 for one not
    in `state`; the turn is kicked after (it goes on once none of its calls waits)."""
    m = ctx.store.m
    with ctx.journal.tx(session_id) as tx:
        _need_session(m, session_id)
        # a call asked for while the other calls of its answer still run may be answered at once
        turn = m.Turn.get_or_none(m.Turn.session_id == session_id, m.Turn.status.in_((TURN_WAITING, TURN_RUNNING)))
        entry = (_tool_calls(m, session_id, turn.id) if turn else {}).get(tool_call_id)
        if entry is None and not _has_tool_call(m, session_id, tool_call_id):
            raise _NotFound(f"no tool call {tool_call_id} in this session")
        if entry is None or entry["state"] != state:
            raise _Conflict(f"this tool call is not waiting for {what}")
        yield tx, turn.id, entry
    ctx.scheduler.kick(session_id)


def _has_tool_call(m: _Models, session_id: str, tool_call_id: str) -> bool:
    calls = m.Event.select(m.Event.data).where(m.Event.session_id == session_id, m.Event.type == "tool.call")
    return any(row.data["tool_call"]["id"] == tool_call_id for row in calls)


# ---- messages ---------------------------------------------------------------

# The order a conversation happened in, as the model sees it: turn by turn, each turn's
# user message first; messages no turn has answered yet come last. (By id alone, a
# message posted while a turn runs would sit between that turn's tool call and result.)
# A message is listed as soon as it is stored. So what a running turn writes next lands
# before the messages that wait for the next turn, which a client may have listed
# already: when a page ends with a waiting message, how far the session's messages went
# then is remembered (a watermark: the newest message's seq, read by the same statement),
# and a page after that message also has what was written since. Nothing is missed,
# nothing comes twice.
CONVERSATION_ORDER = "COALESCE(turn_id, '~'), role != 'user', id"
LATER_IN_CONVERSATION = f"({CONVERSATION_ORDER}) > (SELECT {CONVERSATION_ORDER} FROM message WHERE id = {{}})"
WATERMARKS = 4096  # pages ending with a waiting message, remembered per app (the oldest forgotten first)

_IDEMPOTENCY = _Header("Idempotency-Key", "Makes a retried POST safe: the same key returns the first message.", 255)


@_route(
    "GET",
    "/v1/sessions/<session_id>/messages",
    "List a session's messages in the order of the conversation",
    "messages",
    response=MessagePage,
    query=ListQuery,
    errors=(404,),
)
def _list_messages(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    m, after, param = ctx.store.m, req.query.after, ctx.store.m.db.param  # ? or %s
    _need_session(m, session_id)
    newest = pw.SQL(f"(SELECT MAX(seq) FROM message WHERE session_id = {param})", [session_id])
    query = m.Message.select(m.Message, newest.alias("newest")).where(m.Message.session_id == session_id)
    if after and m.Message.get_or_none(m.Message.id == after, m.Message.session_id == session_id):
        later = LATER_IN_CONVERSATION.format(param)  # after that message
        mark = ctx.watermarks.get(after)  # a page ended with it while it waited for its turn
        since = [] if mark is None else [mark]
        query = query.where(pw.SQL(f"({later}{f' OR seq > {param}' if since else ''})", [after, *since]))
    elif after:  # not a message of this session: positioned by id, as every list's cursor is
        query = query.where(m.Message.id > after)
    rows = list(query.order_by(pw.SQL(CONVERSATION_ORDER)).limit(req.query.limit + 1))
    has_more, rows = len(rows) > req.query.limit, rows[: req.query.limit]
    if rows and rows[-1].turn_id is None and rows[-1].newest is not None:  # it waits for its turn
        ctx.watermarks.pop(rows[-1].id, None)
        ctx.watermarks[rows[-1].id] = rows[-1].newest
        while len(ctx.watermarks) > WATERMARKS:
            del ctx.watermarks[next(iter(ctx.watermarks))]
    return MessagePage(data=[_message_out(r) for r in rows], has_more=has_more,
                       next_after=rows[-1].id if has_more else None)  # fmt: skip


def _idempotency_key(req: _Request) -> str | None:
    key = req.headers.get("idempotency-key")
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise _invalid(["header", "Idempotency-Key"], f"longer than {MAX_IDEMPOTENCY_KEY} characters")
    if key is not None:
        _refuse_nul(key, ["header", "Idempotency-Key"])
    return key


def _replay(m: _Models, session_id: str, key: str, request_hash: str) -> Any:
    """The message stored under an idempotency key, or None; 409 if the body differs."""
    seen = m.IdempotencyKey.get_or_none(m.IdempotencyKey.session_id == session_id, m.IdempotencyKey.key == key)
    if seen is None:
        return None
    if seen.request_hash != request_hash:
        raise _Conflict("this Idempotency-Key was used with a different request body")
    return m.Message.get_by_id(seen.message_id)


@_route(
    "POST",
    "/v1/sessions/<session_id>/messages",
    "Post a user message; the agent answers in the background",
    "messages",
    body=MessagePost,
    response=Message,
    status=201,
    also=(200,),
    headers=(_IDEMPOTENCY,),
    errors=(404, 409),
)
def _post_message(ctx: _Ctx, req: _Request, session_id: str) -> Any:
    try:
        parts, controls = req.body.parts(), req.body.controls()
    except ValueError as e:
        raise _invalid(["content"], str(e)) from None
    status, message = _user_message(ctx, session_id, parts, controls, _idempotency_key(req))
    return status, Message(**message)


def _user_message(ctx: _Ctx, session_id: str, parts: list[dict], controls: dict | None,
                  key: str | None) -> tuple[int, dict]:  # fmt: skip
    """Store a user message and kick its turn: (201, the message), or (200, the message stored
    first under the same Idempotency-Key)."""
    m = ctx.store.m
    request_hash = _digest({"content": parts, "controls": controls}) if key is not None else ""
    _room_left(ctx)
    with ctx.journal.tx(session_id) as tx:
        titled = _sql(m, "session_title" if tx.last_seq is not None else "session_title_seq", session_id).fetchone()
        if titled is None:
            raise _NotFound(f"session {session_id} not found")
        if tx.last_seq is None:
            tx.last_seq = titled[1]
        if controls:
            _check_provider(ctx, controls.get("provider_id"), ["controls", "provider_id"])
        if key is not None and (first := _replay(m, session_id, key, request_hash)) is not None:
            return 200, _message_out(first).model_dump()
        message = tx.add_message("user", parts, controls=controls)
        if titled[0] is None:  # an untitled session's first message names it
            title = _title_from(" ".join(p["text"] for p in parts))
            _sql(m, "first_title", title, message["created_at"], session_id, session_id, message["id"])
        if key is not None:
            m.IdempotencyKey.create(
                session_id=session_id,
                key=key,
                request_hash=request_hash,
                message_id=message["id"],
                created_at=message["created_at"],
            )
    ctx.scheduler.kick(session_id)
    return 201, message


# ---- events -----------------------------------------------------------------


def _type_matcher(types: str | None) -> Callable[[str], bool]:
    """`?types=a.b,c.*` as a predicate on event types."""
    if not types:
        return lambda _type: True
    exact = {t for t in types.split(",") if not t.endswith(".*")}
    prefixes = tuple(t[:-1] for t in types.split(",") if t.endswith(".*"))
    return lambda type_: type_ in exact or type_.startswith(prefixes)


def _event_out(row: Any) -> dict:
    return {
        "id": row.id,
        "seq": row.seq,
        "type": row.type,
        "session_id": row.session_id,
        "turn_id": row.turn_id,
        "ts": row.ts,
        "data": row.data,
    }


def _cursor(req: _Request) -> int:
    """Where a stream resumes: Last-Event-ID (a reconnecting browser) wins over ?after."""
    header = req.headers.get("last-event-id", "").strip()
    if header:
        if not re.fullmatch(r"[0-9]{1,19}", header) or int(header) > MAX_SEQ:
            raise _invalid(["header", "Last-Event-ID"], "must be an event seq (a whole number)")
        return int(header)
    return req.query.after or 0


# Lines with no blank line after them: they join the next event's block, so no client
# sees an event without data (httpx-sse yields one for a block of only `retry:` or,
# once an id was seen, of only a comment). A browser's EventSource applies `retry:`
# as soon as it reads the line: the last one, sent when ?until=completed ends the
# stream, keeps it from reconnecting for a day (close it on session.completed).
SSE_START = b"retry: 1000\n"
SSE_PING = b": ping\n"
SSE_DONE = b"retry: 86400000\n"


class _SseFrames:
    """How a stream writes what it sends: this server's SSE (the events as stored). The
    SDK's stream (/api/v1) is a second renderer of the same stream (_SdkFrames)."""

    start = SSE_START
    ping = SSE_PING
    done = SSE_DONE  # ?until=completed: the session is settled

    def __init__(self, wanted: Callable[[str], bool]) -> None:
        self.wanted = wanted

    def join(self, out: list) -> Any:
        """What is waiting, as one write."""
        return b"".join(out)

    def joined(self, texts: dict[str, str]) -> None:
        """The text streamed so far of the messages being written when the stream joined."""

    def stored(self, seq: int, type_: str, text: str) -> bytes | None:
        return _sse_frame(seq, type_, text) if self.wanted(type_) else None

    def live(self, item: _Published) -> bytes | None:
        return item.frame if self.wanted(item.type) else None

    def closing(self, reason: str) -> bytes:
        """What goes out before the server ends the stream (a shutdown, a deletion, a slow client)."""
        return b""


def _on_leaving(client: Any, sub: _Subscriber) -> Callable[[], None]:
    """Wake a stream when its client closes the connection; returns what stops watching.

    A stream that waits would learn it only from its next write: the next event of its
    session, or a ping. Clients that open a stream per turn and close it at
    `session.completed` would each leave one behind until then, written to and failing
    (about 0.2 ms of CPU per turn with 20 such clients). The socket becomes readable when
    the client closes; a peek tells that from bytes it sent after its request (then the
    stream is left to its next write, as before).
    """
    raw = getattr(client, "_sock", client)  # gevent's socket wraps the system's
    try:
        watcher = gevent.get_hub().loop.io(client.fileno(), 1)
    except (AttributeError, OSError, ValueError):
        return lambda: None

    def readable() -> None:  # in the event loop: no waiting here
        watcher.stop()
        try:
            gone = not raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            watcher.start(readable)
            return
        except OSError:  # reset by the peer
            gone = True
        if gone:
            sub.leave()

    watcher.start(readable)
    return watcher.close


def _stream(
    ctx: _Ctx, session_id: str, cursor: int, frames: _SseFrames, until: bool = False, client: Any = None
) -> Iterator[Any]:
    """Replay stored events after the cursor, then go live: no gap, no duplicate; written
    by `frames` (bytes for HTTP; the in-process client's are event objects). `client`: the
    HTTP connection's socket, watched for the client leaving.

    The queue is subscribed before the replay reads the database, so an event
    committed meanwhile is in one or both; seq tells which were sent already.
    """
    m, sub = ctx.store.m, ctx.bus.subscribe(session_id)
    stop_watching = _on_leaving(client, sub) if client is not None else None
    frames.joined(ctx.bus.texts(session_id))  # read with the subscription: no delta between the two
    try:
        newest = _last_seq(m, session_id)
        ctx.bus.baseline(session_id, newest)
        known = min(cursor, newest)  # the newest stored event the client has
        yield frames.start
        for batch in _stored_batches(m, session_id, cursor):  # a write per batch, then the others' turn
            known = batch[-1][0]
            out = [frame for seq, type_, text in batch if (frame := frames.stored(seq, type_, text))]
            if out:
                yield frames.join(out)
            gevent.sleep(0)
        # settled, and nothing stored after what the replay read (a turn may have ended since:
        # its events are in the queue, and the live loop below sends them first)
        if until and _settled(m, session_id, known):
            yield frames.done
            return
        ctx.store.release()
        while not sub.dropped:
            try:
                items = sub.take(ctx.ping_s)
            except gevent.queue.Empty:
                yield frames.ping
                continue
            if sub.left:
                return
            out, ended = [], False  # what is waiting goes out in one write
            for item in items:
                if item is None or sub.dropped:
                    out.append(frames.closing("slow_client" if sub.dropped else "server_closing"))
                    ended = True
                    break
                if item.seq is None:
                    fresh = item.after >= known  # else a delta of a message the client already has
                else:  # else sent by the replay already, or before the cursor
                    fresh, known = item.seq > max(known, cursor), max(known, item.seq)
                if fresh and (frame := frames.live(item)):
                    out.append(frame)
                # settled, and all of it sent: on PostgreSQL the database may be ahead of this
                # stream (events another process wrote come through notifications)
                if until and item.type == "session.completed" and _settled(m, session_id, known):
                    out.append(frames.done)
                    ended = True
                    break
            if out:
                yield frames.join(out)
            if ended:
                return
        yield frames.closing("slow_client")
    except Exception as e:  # the database went away: the stream ends (the client resumes with Last-Event-ID)
        if ctx.store.noticed(e) is None:
            raise
    finally:
        if stop_watching is not None:
            stop_watching()
        ctx.bus.unsubscribe(sub)
        if not ctx.scheduler.busy(session_id):
            ctx.bus.forget(session_id)
        ctx.store.release()


def _wants_json(req: _Request) -> bool:
    if req.query.format:
        return req.query.format == "json"
    accept = req.headers.get("accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


@_route(
    "GET",
    "/v1/sessions/<session_id>/events",
    "Stream a session's events (SSE), or list the stored ones as JSON",
    "events",
    response=EventPage,
    query=EventsQuery,
    errors=(404,),
    stream=True,
    raw=True,
)
def _events(ctx: _Ctx, req: _Request, session_id: str) -> bottle.HTTPResponse:
    m = ctx.store.m
    _need_session(m, session_id)
    wanted = _type_matcher(req.query.types)
    if _wants_json(req):
        after, limit = req.query.after or 0, req.query.limit
        query = m.Event.select().where(
            m.Event.session_id == session_id,
            m.Event.seq > after,
            m.Event.type.in_([t for t in EVENT_TYPES if wanted(t)]),
        )
        page = EventPage(**_page(query.order_by(m.Event.seq), limit, lambda r: r.seq, _event_out))
        return _json_response(200, page.model_dump_json(exclude_unset=True))  # each event's data as stored
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    until = req.query.until == "completed"
    stream = _stream(ctx, session_id, _cursor(req), _SseFrames(wanted), until, req.client)
    return bottle.HTTPResponse(stream, 200, headers)


# ---- export and import (SPEC 18): a session as JSON Lines, and back as a new session --------
# An export's first line is the session ({"kind": "session", "format": 1, ...}: as GET
# /v1/sessions/{id} shows it), then its messages ({"kind": "message", ...}: as GET .../messages
# lists them, in that order), then its events ({"kind": "event", ...}: as the JSON listing shows
# them, by seq). It is read in pages within one read transaction: a session whose turn runs is
# exported as it was stored when the export began. An import stores one as a new session of an
# agent, in one write: new ids for the session, its messages, its turns and its events (each
# kind in the order of the old ones), the events numbered from 1, the times kept; a turn the
# export caught running is closed as a crash leaves one (failed, INTERRUPTED).

EXPORT_FORMAT = 1
# what an import's body may be sent as (JSON too: a client that labels every body so; never a form's type)
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json")
EXPORT_PAGE = 100  # rows an export reads per query
EXPORTED_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")  # what _now_iso writes
EXPORTED_MID_TURN = {"code": "INTERRUPTED", "message": "the session was exported while this turn ran"}


def _export_line(kind: str, text: str, head: str = "") -> bytes:
    """An object (its JSON text) as a line of an export, its kind first."""
    return f'{{"kind":"{kind}",{head}{text[1:]}\n'.encode()


def _conversation_pages(m: _Models, session_id: str) -> Iterator[list]:
    """A session's message rows in the order of the conversation (as GET .../messages), a page at a time."""
    after = None
    while True:
        query = m.Message.select().where(m.Message.session_id == session_id)
        if after is not None:
            query = query.where(pw.SQL(LATER_IN_CONVERSATION.format(m.db.param), [after]))
        rows = list(query.order_by(pw.SQL(CONVERSATION_ORDER)).limit(EXPORT_PAGE))
        if rows:
            yield rows
        if len(rows) < EXPORT_PAGE:
            return
        after = rows[-1].id


def _export_lines(ctx: _Ctx, session_id: str) -> Iterator[bytes]:
    """A session's export, a page at a time (nothing if it was deleted meanwhile)."""
    m = ctx.store.m
    try:
        with ctx.store.snapshot():
            row = m.Session.get_or_none(m.Session.id == session_id)
            if row is None:
                return
            yield _export_line("session", _session_out(row).model_dump_json(), f'"format":{EXPORT_FORMAT},')
            for rows in _conversation_pages(m, session_id):
                yield b"".join(_export_line("message", _message_out(r).model_dump_json()) for r in rows)
                gevent.sleep(0)
            for batch in _stored_batches(m, session_id, 0, EXPORT_PAGE):
                yield b"".join(_export_line("event", text) for _, _, text in batch)
                gevent.sleep(0)
    except Exception as e:  # the database went away: the body ends short (a client sees it cut off)
        if ctx.store.noticed(e) is None:
            raise
    finally:
        ctx.store.release()


@_route("GET", "/v1/sessions/<session_id>/export", "Export a session as JSON Lines: the session, its messages, "
        "its events", "sessions", errors=(404,), raw=True, text=JSONL_TYPES[0])  # fmt: skip
def _export_session(ctx: _Ctx, req: _Request, session_id: str) -> bottle.HTTPResponse:
    _need_session(ctx.store.m, session_id)
    headers = {"Content-Type": JSONL_TYPES[0],
               "Content-Disposition": f'attachment; filename="session-{session_id}.jsonl"'}  # fmt: skip
    return bottle.HTTPResponse(_export_lines(ctx, session_id), 200, headers)


def _export_objects(raw: bytes) -> Iterator[tuple[int, str, dict]]:
    """An export's lines: (line number, kind, the object without its kind); 400 for a line that is not one."""
    for n, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            obj = pydantic_core.from_json(line)
        except ValueError as e:
            raise _BadRequest(f"line {n} is not JSON ({e}): an export is JSON Lines, an object a line") from None
        kind = obj.pop("kind", None) if isinstance(obj, dict) else None
        if kind not in ("session", "message", "event"):
            raise _invalid(["line", n, "kind"], "must be session, message or event")
        yield n, kind, obj


def _export_item(n: int, kind: str, obj: dict) -> Any:
    """One line of an export as its model (Session, Message, an event's); 400 if it does not fit."""
    if kind == "session" and obj.pop("format", None) != EXPORT_FORMAT:
        raise _invalid(["line", n, "format"], f"must be {EXPORT_FORMAT}, the format of this version's exports")
    try:
        item = {"session": Session, "message": Message, "event": Event}[kind].model_validate(obj)
    except ValidationError as e:
        raise _validation_error(e, f"line {n}") from None
    item = item.root if kind == "event" else item
    for name in ("ts", "created_at"):  # stored as they are: as this server writes them (_now_iso)
        if hasattr(item, name) and not EXPORTED_TIME.fullmatch(getattr(item, name)):
            raise _invalid(
                ["line", n, name], "must be a UTC time as this server writes them (2026-01-01T12:00:00.000Z)"
            )
    return item


def _read_export(raw: bytes) -> tuple[Session, list[Message], list[Any]]:
    """An export's session, its messages and its events, checked; 400 for anything amiss."""
    found: dict[str, list] = {"session": [], "message": [], "event": []}
    for n, kind, obj in _export_objects(raw):
        if (kind == "session") == bool(found["session"]):
            raise _invalid(["line", n, "kind"], "the first line is the session, and only it")
        item = _export_item(n, kind, obj)
        if kind != "session" and item.session_id != found["session"][0].id:
            raise _invalid(["line", n, "session_id"], "not the session of the first line")
        if kind == "event" and (item.seq is None or (found["event"] and item.seq <= found["event"][-1].seq)):
            raise _invalid(["line", n, "seq"], "an export has stored events, in the order of their seq")
        found[kind].append(item)
    if not found["session"]:
        raise _BadRequest("the body is empty: it must be a session's export (JSON Lines)")
    ids = [message.id for message in found["message"]]
    created = [e.data.message.id for e in found["event"] if e.type == "message.created"]
    if len(set(ids)) < len(ids) or sorted(ids) != sorted(created):
        raise _BadRequest("each message of an export comes once, with its message.created event")
    return found["session"][0], found["message"], found["event"]


def _new_ids(messages: list[Message], events: list[Any]) -> dict[str, str]:
    """New ids for an export's messages and turns, each kind in the order of the old ones (ids sort
    in time: the conversation's order, which follows turn and message ids, stays the same)."""
    turns = {m.turn_id for m in messages} | {e.turn_id for e in events}
    turns |= {e.data.turn_id for e in events if e.type in ("session.started", "session.completed")}
    return {old: _uuid7() for old in [*sorted(m.id for m in messages), *sorted(turns - {None})]}


def _renamed(value: Any, names: Mapping[str, str], key: str = "") -> Any:
    """A JSON value with the ids `names` renames replaced where a field named id, *_id or *_ids holds them."""
    if isinstance(value, dict):
        return {k: _renamed(v, names, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, names, key) for v in value]
    if isinstance(value, str) and (key == "id" or key.endswith(("_id", "_ids"))):
        return names.get(value, value)
    return value


def _imported_fields(ctx: _Ctx, session: Session) -> dict:
    """What a new session keeps of an exported one: title, tags and usage; its provider and model
    when that provider is here (an export moves between servers: else the agent's), and those of
    its fallback providers that are here."""
    m, provider_id, fallbacks = ctx.store.m, session.provider_id, session.fallback_provider_ids
    named = [provider_id, *(fallbacks or [])]
    present = {p.id for p in m.Provider.select(m.Provider.id).where(m.Provider.id.in_(named))}
    here = provider_id in present
    kept = {"title": session.title, "tags": session.tags, "provider_id": provider_id if here else None,
            "model": session.model if here or provider_id is None else None,
            "fallback_provider_ids": None if fallbacks is None else [p for p in fallbacks if p in present]}  # fmt: skip
    try:
        SessionCreate.model_validate(kept)  # the limits of a session opened here
    except ValidationError as e:
        raise _validation_error(e, "line 1") from None
    return {**kept, "input_tokens": session.usage.input_tokens, "output_tokens": session.usage.output_tokens}


def _copy_event(tx: _Tx, event: Any, names: Mapping[str, str], messages: Mapping[str, Message]) -> None:
    """Store an exported event in the new session, its ids renamed, with what it records (its message,
    or the summary compaction wrote)."""
    data, turn_id = _renamed(event.data.model_dump(mode="json", exclude_unset=True), names), names.get(event.turn_id)
    if event.type == "message.created":
        fields = _renamed(messages[event.data.message.id].model_dump(mode="json"), names)
        cost = {name: fields[name] for name in ASSISTANT_ONLY if name in fields}
        _insert_message(tx.m, tx.session_id, tx.last_seq + 1, fields["role"], fields["content"], fields["turn_id"],
                        message_id=fields["id"], created_at=fields["created_at"], **cost)  # fmt: skip
    elif event.type == "context.compacted" and data["turn_ids"]:
        text = data["summary"]
        tx.m.Summary.insert(id=_uuid7(), session_id=tx.session_id, turn_id=turn_id, through=data["turn_ids"][-1],
                            turn_ids=data["turn_ids"], text=text, tokens=_tokens(len(text.encode())),
                            created_at=event.ts).execute()  # fmt: skip
    tx.emit(event.type, data, turn_id, event.ts)


def _copied_turns(events: list[Any], names: Mapping[str, str]) -> dict[str, dict]:
    """An export's turns as turn rows (by new id), from their session.started and session.completed
    (a turn without the latter was running, or waiting, when it was exported)."""
    turns: dict[str, dict] = {}
    for event in events:
        if event.type == "session.started":
            turn_id = names[event.data.turn_id]
            turns[turn_id] = {"id": turn_id, "status": TURN_RUNNING, "started_at": event.ts}
        elif event.type == "session.completed" and (turn := turns.get(names[event.data.turn_id])):
            data = event.data
            turn.update(status=data.status, error=data.error and data.error.model_dump(), provider_id=data.provider_id,
                        model=data.model, input_tokens=data.usage.input_tokens, iterations=data.iterations,
                        output_tokens=data.usage.output_tokens, trace_id=data.trace_id, ended_at=event.ts)  # fmt: skip
    return turns


def _store_turns(tx: _Tx, turns: dict[str, dict]) -> None:
    """An import's turn rows; a turn that had not ended is closed as after a crash (its calls without
    a result get an error result). The session's last turn is the newest."""
    m = tx.m
    for turn in turns.values():
        m.Turn.insert(session_id=tx.session_id, **turn).execute()
    for turn_id in (t["id"] for t in turns.values() if t["status"] == TURN_RUNNING):
        _close_turn(tx, m.Turn.get_by_id(turn_id), TURN_FAILED, EXPORTED_MID_TURN, 0, EXPORTED_MID_TURN["message"])
    if turns:
        last = m.Turn.get_by_id(max(turns))
        last_turn = {"id": last.id, "status": last.status, "error": last.error, "trace_id": last.trace_id}
        m.Session.update(last_turn=last_turn).where(m.Session.id == tx.session_id).execute()


def _store_import(ctx: _Ctx, agent_id: str, session: Session, messages: list[Message], events: list[Any]) -> Any:
    """Store a checked export as a new session of the agent, in one write; the session's row."""
    names, fields = _new_ids(messages, events), _imported_fields(ctx, session)
    with ctx.store.write():
        row = _new_session(ctx, agent_id, fields)
        names[session.id] = row.id
        by_id = {message.id: message for message in messages}
        with ctx.journal.tx(row.id) as tx:
            tx.last_seq, tx.copied = 0, True  # a new session: nothing stored before
            for event in events:
                _copy_event(tx, event, names, by_id)
            _store_turns(tx, _copied_turns(events, names))
    return row


@_route("POST", "/v1/agents/<agent_id>/sessions/import", "Import a session's export (JSON Lines) as a new "
        "session of an agent", "sessions", response=Session, status=201, errors=(404,), media=JSONL_TYPES)  # fmt: skip
def _import_session(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    m = ctx.store.m
    _get(m.Agent, agent_id, "agent")
    _refuse_nul(req.body or b"", ["body"])
    row = _store_import(ctx, agent_id, *_read_export(req.body or b""))
    session = _session_out(m.Session.get_by_id(row.id))
    ctx.scheduler.kick(row.id)  # its user messages no turn had taken up yet, answered as after a restart
    return session


# ---- session files ----------------------------------------------------------


def _session_fs(ctx: _Ctx, session_id: str) -> _Vfs:
    _need_session(ctx.store.m, session_id)
    return _Vfs(ctx.store, session_id)


@_route("GET", "/v1/sessions/<session_id>/fs", "List the root of a session's files", "files", response=FsNode,
        errors=(404,))  # fmt: skip
def _fs_root(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    return FsNode.model_validate(_session_fs(ctx, session_id).read("/"))


@_route("GET", "/v1/sessions/<session_id>/fs/<path:path>", "Read a file or list a directory", "files",
        response=FsNode, errors=(404,))  # fmt: skip
def _fs_get(ctx: _Ctx, req: _Request, session_id: str, path: str) -> BaseModel:
    return FsNode.model_validate(_session_fs(ctx, session_id).read(_normalize_path("/" + path)))


@_route("PUT", "/v1/sessions/<session_id>/fs/<path:path>", "Create (201) or replace (200) a file, or make a directory",
        "files", body=FsPut, response=FsNode, status=201, also=(200,), errors=(404, 409))  # fmt: skip
def _fs_put(ctx: _Ctx, req: _Request, session_id: str, path: str) -> Any:
    fs, path = _session_fs(ctx, session_id), _normalize_path("/" + path)
    body = req.body.root
    if isinstance(body, FsMakeDirectory):
        created = fs.mkdir(path)
    else:
        created = fs.write(path, body.content, body.encoding)[1]
    return (201 if created else 200), FsNode.model_validate(fs.read(path))


@_route("DELETE", "/v1/sessions/<session_id>/fs/<path:path>", "Delete a file or a directory", "files", status=204,
        query=FsDeleteQuery, errors=(404, 409))  # fmt: skip
def _fs_delete(ctx: _Ctx, req: _Request, session_id: str, path: str) -> None:
    _session_fs(ctx, session_id).delete(_normalize_path("/" + path), req.query.recursive)


# ---- capabilities -----------------------------------------------------------


@_route(
    "GET",
    "/v1/capabilities",
    "List the built-in capabilities",
    "capabilities",
    response=CapabilityPage,
    query=CapabilityListQuery,
)
def _list_capabilities(ctx: _Ctx, req: _Request) -> BaseModel:
    page = _names_page(list(ctx.capabilities), req.query)
    return CapabilityPage(**{**page, "data": [_capability_out(ctx.capabilities[i]) for i in page["data"]]})


def _capability_out(capability: Any) -> Capability:
    """A capability as listed; one that cannot say what it is (a broken MCP server) is
    listed as unavailable rather than failing the listing for everyone."""
    try:
        return capability.out()
    except Exception:
        _log.exception("capability %s cannot be listed", capability.id)
        return Capability(id=capability.id, name=capability.name, description=capability.description,
                          status="unavailable", category=capability.category, system_prompt="", tools=[])  # fmt: skip


@_route(
    "GET",
    "/v1/capabilities/<capability_id>",
    "Get a capability",
    "capabilities",
    response=Capability,
    errors=(404,),
)
def _get_capability(ctx: _Ctx, req: _Request, capability_id: str) -> BaseModel:
    if capability_id not in ctx.capabilities:
        raise _NotFound(f"capability {capability_id} not found")
    return _capability_out(ctx.capabilities[capability_id])


# ---- MCP servers ----------------------------------------------------------------


def _sync_mcp(ctx: _Ctx) -> None:
    """Bring this process's MCP servers of the API in line with the stored ones: new ones
    registered as capabilities, changed ones replaced, removed ones closed."""
    m, secrets = ctx.store.m, ctx.store.secrets
    rows = {row.id: row for row in m.McpServer.select()}
    ctx.store.release()
    for resource_id, server in list(ctx.mcp_api.items()):
        row = rows.get(resource_id)
        if row is None or row.updated_at != server.updated_at:
            server.close()
            ctx.capabilities.maps[0].pop(server.id, None)
            del ctx.mcp_api[resource_id]
    for resource_id, row in rows.items():
        if resource_id not in ctx.mcp_api:
            headers = {name: secrets.open(value) or "" for name, value in row.headers.items()}
            allow_private = ctx.config["allow_private_mcp"]
            transport = _McpHttp(row.name, row.url, headers, guarded=True, allow_private=allow_private)
            server = _McpServer(row.name, transport, row.id, row.created_at, row.updated_at,
                                _header_secrets(headers, every=True))  # fmt: skip
            ctx.mcp_api[resource_id] = ctx.capabilities.maps[0][server.id] = server


def _mcp_servers_of(ctx: _Ctx) -> dict[str, Any]:
    """Every MCP server, by resource id, in name order: --mcp-config's and the API's."""
    return {s.resource_id: s for s in sorted([*ctx.mcp, *ctx.mcp_api.values()], key=lambda s: s.name)}


def _mcp_server(ctx: _Ctx, server_id: str, changing: bool = False) -> Any:
    server = _mcp_servers_of(ctx).get(server_id)
    if server is None:
        raise _NotFound(f"MCP server {server_id} not found")
    if changing and server_id not in ctx.mcp_api:
        raise _Conflict("this MCP server comes from --mcp-config: change the file (and restart) instead")
    return server


def _check_mcp_name(ctx: _Ctx, name: str, server_id: str | None = None) -> None:
    if any(s.name == name and s.resource_id != server_id for s in _mcp_servers_of(ctx).values()):
        raise _Conflict(f"there is an MCP server named {name} already")


def _check_mcp_url(ctx: _Ctx, url: str) -> None:
    """400 for a URL whose host is written as an address the API's servers may not reach
    (a name is checked when the server is reached: see _McpHttp)."""
    from urllib.parse import urlsplit

    address = _literal_address(urlsplit(url).hostname or "")
    refusal = address and _mcp_address_refusal(address, ctx.config["allow_private_mcp"])
    if refusal:
        raise _invalid(["url"], f"is refused: {refusal}")


def _mcp_written(ctx: _Ctx, server_id: str | None) -> Any:
    """After a change: this process in line, the others told; the server as it is now."""
    _sync_mcp(ctx)
    ctx.store.tell("mcp")
    return ctx.mcp_api[server_id].resource() if server_id else None


@_route("GET", "/v1/mcp-servers", "List MCP servers", "mcp-servers", response=McpServerPage, query=ListQuery)
def _list_mcp_servers(ctx: _Ctx, req: _Request) -> BaseModel:
    servers = _mcp_servers_of(ctx)
    page = _names_page(list(servers), req.query)
    return McpServerPage(**{**page, "data": [servers[i].resource() for i in page["data"]]})


@_route(
    "POST",
    "/v1/mcp-servers",
    "Add a Streamable HTTP MCP server (its tools become the capability mcp:NAME)",
    "mcp-servers",
    body=McpServerCreate,
    response=McpServer,
    status=201,
    errors=(409,),
)
def _create_mcp_server(ctx: _Ctx, req: _Request) -> BaseModel:
    body, m, ts = req.body, ctx.store.m, _now_iso()
    _check_mcp_name(ctx, body.name)
    _check_mcp_url(ctx, body.url)
    headers = {name: ctx.store.secrets.seal(value) for name, value in body.headers.items()}
    try:
        with ctx.store.write():
            row = m.McpServer.create(id=_uuid7(), name=body.name, url=body.url, headers=headers, created_at=ts,
                                     updated_at=ts)  # fmt: skip
    except pw.IntegrityError:  # another process took the name meanwhile
        raise _Conflict(f"there is an MCP server named {body.name} already") from None
    return _mcp_written(ctx, row.id)


@_route("GET", "/v1/mcp-servers/<server_id>", "Get an MCP server", "mcp-servers", response=McpServer, errors=(404,))
def _get_mcp_server(ctx: _Ctx, req: _Request, server_id: str) -> BaseModel:
    return _mcp_server(ctx, server_id).resource()


@_route(
    "PATCH",
    "/v1/mcp-servers/<server_id>",
    "Change an MCP server added through the API",
    "mcp-servers",
    body=McpServerUpdate,
    response=McpServer,
    errors=(404, 409),
)
def _update_mcp_server(ctx: _Ctx, req: _Request, server_id: str) -> BaseModel:
    m, changes = ctx.store.m, _changes(req.body)
    _mcp_server(ctx, server_id, changing=True)
    if "name" in changes:
        _check_mcp_name(ctx, changes["name"], server_id)
    if "url" in changes:
        _check_mcp_url(ctx, changes["url"])
    if "headers" in changes:
        changes["headers"] = {name: ctx.store.secrets.seal(value) for name, value in changes["headers"].items()}
    try:
        with ctx.store.write():
            m.McpServer.update(**changes, updated_at=_now_iso()).where(m.McpServer.id == server_id).execute()
    except pw.IntegrityError:
        raise _Conflict(f"there is an MCP server named {changes.get('name')} already") from None
    return _mcp_written(ctx, server_id)


@_route("DELETE", "/v1/mcp-servers/<server_id>", "Remove an MCP server added through the API", "mcp-servers",
        status=204, errors=(404, 409))  # fmt: skip
def _delete_mcp_server(ctx: _Ctx, req: _Request, server_id: str) -> None:
    m = ctx.store.m
    _mcp_server(ctx, server_id, changing=True)
    with ctx.store.write():
        m.McpServer.delete().where(m.McpServer.id == server_id).execute()
    _mcp_written(ctx, None)


# ---- the official SDKs' surface (/api/v1) ------------------------------------------
# The shapes of everruns-sdk 0.3.1 (Python; the TypeScript and Rust SDKs speak the
# same API) over the same agents, sessions, messages, events and files, translated
# here at the edge. The event stream is the same stream (_stream) written by a second
# renderer (_SdkFrames), in the SDK's vocabulary. Where the two APIs disagree (roles,
# statuses, capabilities as objects) they have their own paths: /v1 is unchanged.

SDK = "/api/v1"
SDK_HARNESS = "generic"  # the one harness: an agent's prompt and capabilities, nothing more
SDK_ORGANIZATION = "local"
SDK_GENERIC_AGENT = "generic"  # the agent of a session opened with none: no prompt, no capabilities
SDK_NOT_WAITING = "Session is not waiting for tool results (current status: {status})"  # the SDK retries on it
SDK_STATUSES = {SESSION_IDLE: "idle", SESSION_RUNNING: "active", SESSION_WAITING: "waitingfortoolresults"}
SDK_ROLES = {"user": "user", "assistant": "agent", "tool": "tool_result"}
SDK_EVENTS_MAX = 10_000  # events a JSON listing returns at most


class SdkCapabilityRef(_In):
    """A capability of an agent or a session, as the SDK names it."""

    ref: CapabilityId
    config: Any = Field(None, description="Ignored: capabilities here take no configuration.")


class SdkToolDefinition(_In):
    """A tool the client runs (type client_side)."""

    name: ToolName
    description: Description = ""
    parameters: Annotated[dict[str, Any], AfterValidator(_object_schema)] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    type: Literal["client_side"] = Field("client_side", description="builtin tools come with their capability")
    category: Any = None
    deferrable: Any = None
    display_name: Any = None
    full_parameters: Any = None
    hints: Any = None
    policy: Any = None


def _starter_path(path: str) -> str:
    """Where a starter file goes in a session's files: `/workspace/` is the root."""
    path = _normalize_path(re.sub(r"^/?workspace(?=/|$)", "", path) or "/")
    if path == "/":
        raise _invalid(["path"], "names the root, not a file")
    return path


class SdkInitialFile(_In):
    """A starter file, written into each new session's files (`/workspace/` is taken as the root)."""

    path: ToolPath
    content: Annotated[str, StringConstraints(max_length=2 * MAX_MESSAGE_TEXT)]
    encoding: Literal["text", "base64"] = "text"
    is_readonly: bool = Field(False, description="Ignored: a session's files can all be written.")

    @model_validator(mode="after")
    def _writable(self) -> "SdkInitialFile":
        try:
            _starter_path(self.path)
            if self.encoding == "base64":
                base64.b64decode(self.content, validate=True)
        except _ValidationFailed as e:
            raise ValueError(e.message) from None
        except ValueError:
            raise ValueError("content: is not valid base64") from None
        return self


SdkRefs = Annotated[list[SdkCapabilityRef], Field(max_length=MAX_CAPABILITIES)]
SdkTools = Annotated[list[SdkToolDefinition], Field(max_length=64)]
SdkFiles = Annotated[list[SdkInitialFile], Field(max_length=64)]


class SdkAgentCreate(_In):
    """Body of POST /api/v1/agents: creates the agent, or updates the one with this id (or,
    without an id, the newest with this name), as the SDK's create, apply and apply_by_name do."""

    model_config = _examples({"name": "example-assistant", "system_prompt": "Be brief.",
                              "capabilities": [{"ref": "current_time"}]})  # fmt: skip

    name: Name
    system_prompt: SystemPrompt
    id: Id | None = None
    display_name: Name | None = None
    description: Description | None = None
    default_model_id: ModelName | None = None
    tags: Tags = []
    capabilities: SdkRefs = []
    tools: SdkTools = []
    initial_files: SdkFiles = []
    max_iterations: MaxIterations | None = None
    harness_id: str | None = Field(None, max_length=MAX_NAME, description=f"Only {SDK_HARNESS!r}.")
    harness_name: str | None = Field(None, max_length=MAX_NAME, description=f"Only {SDK_HARNESS!r}.")
    parallel_tool_calls: bool | None = None
    mcpServers: Any = None
    network_access: Any = None


class SdkCapabilityOut(_Out):
    ref: str
    config: Any = None


class SdkToolOut(_Out):
    type: Literal["client_side"]
    name: str
    description: str
    parameters: dict[str, Any]


class SdkFileOut(_Out):
    path: str
    content: str
    encoding: str
    is_readonly: bool


class SdkAgent(_Out):
    """An agent, in the SDK's shape."""

    id: str
    name: str
    display_name: str | None
    description: str | None
    system_prompt: str
    harness_id: str
    status: Literal["active"]
    default_model_id: str | None
    tags: list[str]
    capabilities: list[SdkCapabilityOut]
    tools: list[SdkToolOut]
    initial_files: list[SdkFileOut]
    max_iterations: int
    created_at: Timestamp
    updated_at: Timestamp


class SdkSessionCreate(_In):
    """Body of POST /api/v1/sessions: with agent_id, agent_name or neither (the built-in
    agent `generic`); its capabilities, tools and starter files come on top of the agent's."""

    model_config = _examples({"agent_id": "01890000-0000-7000-8000-000000000001", "title": "First"})

    agent_id: Id | None = None
    agent_name: Name | None = None
    harness_id: str | None = Field(None, max_length=MAX_NAME, description=f"Only {SDK_HARNESS!r}.")
    harness_name: str | None = Field(None, max_length=MAX_NAME, description=f"Only {SDK_HARNESS!r}.")
    title: Title | None = None
    model_id: ModelName | None = None
    tags: Tags = []
    capabilities: SdkRefs = []
    tools: SdkTools = []
    initial_files: SdkFiles = []
    locale: Any = None
    parallel_tool_calls: bool | None = None
    agent_identity_id: Any = None
    hints: Any = None
    max_iterations: Any = None
    mcpServers: Any = None
    network_access: Any = None
    system_prompt: Any = None
    workspace_id: Any = None


class SdkSession(_Out):
    """A session, in the SDK's shape (status: idle, active or waitingfortoolresults)."""

    id: str
    organization_id: str
    harness_id: str
    agent_id: str
    title: str | None
    model_id: str | None
    status: Literal["idle", "active", "waitingfortoolresults"]
    tags: list[str]
    capabilities: list[SdkCapabilityOut]
    tools: list[SdkToolOut]
    usage: Usage
    created_at: Timestamp
    updated_at: Timestamp


class SdkChannelSession(SdkSession):
    """A session of a channel (AgentClient), with what waits for a person."""

    pending_approvals: list[ToolCallInfo]
    pending_questions: list[dict]


class SdkContentPart(_Out):
    type: Literal["text", "tool_call", "tool_result"]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    arguments: dict[str, Any] | None = None
    tool_call_id: str | None = None
    result: Any = None
    error: str | None = None


class SdkMessage(_Out):
    """A message, in the SDK's shape (roles user, agent and tool_result)."""

    id: str
    session_id: str
    role: Literal["user", "agent", "tool_result"]
    content: list[SdkContentPart]
    created_at: Timestamp


class SdkTextIn(_In):
    type: Literal["text"] = Field(description="Only text parts.")
    text: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_TEXT)]


class SdkMessageIn(_In):
    role: Literal["user"] = Field(description="Tool results go to .../tool-results.")
    content: Annotated[list[SdkTextIn], Field(min_length=1, max_length=64)]


class SdkControls(_In):
    model_id: ModelName | None = None
    locale: Any = None
    error_disclosure: Any = None
    hints: Any = None
    reasoning: Any = None


class SdkMessageCreate(_In):
    """Body of POST .../sessions/{id}/messages."""

    model_config = _examples({"message": {"role": "user", "content": [{"type": "text", "text": "Hello"}]}})

    message: SdkMessageIn
    controls: SdkControls | None = None
    addressed_participant_id: Any = None
    external_actor: Any = None
    metadata: Any = None
    tags: Any = None


class SdkToolResult(_In):
    tool_call_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    result: Any = None
    error: str | None = Field(None, max_length=MAX_DESCRIPTION, description="The call failed: why.")


class SdkToolResults(_In):
    """Body of POST .../sessions/{id}/tool-results: client tools' results."""

    model_config = _examples({"tool_results": [{"tool_call_id": "call_abc123", "result": {"city": "Lisbon"}}]})

    tool_results: Annotated[list[SdkToolResult], Field(min_length=1, max_length=64)]


class SdkApproval(_In):
    tool_call_id: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    approved: bool
    reason: str | None = Field(None, max_length=MAX_NAME)


class SdkApprovals(_In):
    """Body of POST /api/v1/channels/{agent_id}/sessions/{id}/tool-approvals."""

    decisions: Annotated[list[SdkApproval], Field(min_length=1, max_length=64)]


class SdkAccepted(_Out):
    accepted: int
    status: str = Field(description="The session's status afterwards.")


class SdkCancelled(_Out):
    status: Literal["cancelled", "no_op"]
    message: str


class SdkCapability(_Out):
    """A capability, in the SDK's shape."""

    id: str
    name: str
    description: str
    status: str
    category: str
    system_prompt: str
    tool_definitions: list[ToolSpec]
    is_mcp: bool


class SdkEventContext(_Out):
    turn_id: str | None


class SdkEvent(_Out):
    """An event in the SDK's vocabulary (see the README's table): `id` is a string, deltas' too."""

    id: str
    type: str
    ts: Timestamp
    session_id: str
    sequence: int | None
    context: SdkEventContext
    data: dict[str, Any]


class SdkChannelCard(_Out):
    """What a channel (an agent, for AgentClient) is."""

    id: str
    name: str
    description: str
    accepted_input: list[str]
    credentials: list[str]
    conversation_starters: list[str]


def _sdk_list(item: type[BaseModel], extra: dict | None = None) -> type[BaseModel]:
    """The SDK's {data: [...]} envelope of one item type."""
    return type(f"{item.__name__}List", (_Out,), {"__annotations__": {"data": list[item], **(extra or {})},
                                                    "__doc__": f"Every {item.__name__}."})  # fmt: skip


SdkAgentList, SdkSessionList, SdkMessageList = _sdk_list(SdkAgent), _sdk_list(SdkSession), _sdk_list(SdkMessage)
SdkCapabilityList, SdkEventList = _sdk_list(SdkCapability), _sdk_list(SdkEvent)
SdkChannelSessionList = _sdk_list(SdkSession, {"next_page_token": str | None})


class SdkListQuery(BaseModel):
    """Query of the SDK's lists."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    search: str | None = Field(None, max_length=MAX_NAME, description="Part of a name or title, in any case.")
    agent_id: str | None = Field(None, max_length=MAX_NAME, description="Only this agent's sessions.")


class SdkEventsQuery(BaseModel):
    """Query of the SDK's event listing and stream: where to resume, which types."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    since_id: str | None = Field(None, max_length=MAX_NAME, description="The events after this event's id.")
    after_sequence: JsonInt | None = Field(None, ge=0, le=MAX_SEQ, description="The events after this sequence.")
    types: list[Annotated[str, StringConstraints(max_length=64)]] = Field([], max_length=64)
    exclude: list[Annotated[str, StringConstraints(max_length=64)]] = Field([], max_length=64)
    limit: JsonInt | None = Field(None, ge=1, le=SDK_EVENTS_MAX)


def _sdk_harness(harness_id: str | None, harness_name: str | None) -> None:
    for given in (harness_id, harness_name):
        if given not in (None, SDK_HARNESS):
            raise _NotImplemented(f"harnesses other than the built-in {SDK_HARNESS!r} are not available here")


def _sdk_tools(tools: list[SdkToolDefinition]) -> list[dict]:
    return [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in tools]


def _sdk_tools_out(tools: list[dict]) -> list[SdkToolOut]:
    return [SdkToolOut(type="client_side", **t) for t in tools]


def _sdk_agent(row: Any) -> SdkAgent:
    files = [SdkFileOut(path=f["path"], content=f["content"], encoding=f.get("encoding") or "text",
                        is_readonly=bool(f.get("is_readonly"))) for f in row.initial_files]  # fmt: skip
    return SdkAgent(id=row.id, name=row.name, display_name=row.display_name, description=row.description or None,
                    system_prompt=row.system_prompt, harness_id=SDK_HARNESS, status="active",
                    default_model_id=row.model, tags=row.tags,
                    capabilities=[SdkCapabilityOut(ref=c) for c in row.capabilities],
                    tools=_sdk_tools_out(row.client_tools), initial_files=files, max_iterations=row.max_iterations,
                    created_at=row.created_at, updated_at=row.updated_at)  # fmt: skip


def _sdk_session(row: Any, shape: type[SdkSession] = SdkSession, **more: Any) -> SdkSession:
    return shape(id=row.id, organization_id=SDK_ORGANIZATION, harness_id=SDK_HARNESS, agent_id=row.agent_id,
                 title=row.title, model_id=row.model, status=SDK_STATUSES[row.status], tags=row.tags,
                 capabilities=[SdkCapabilityOut(ref=c) for c in row.capabilities],
                 tools=_sdk_tools_out(row.client_tools),
                 usage=Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens),
                 created_at=row.created_at, updated_at=row.updated_at, **more)  # fmt: skip


def _sdk_part(part: dict) -> dict:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    if part["type"] == "tool_call":
        return {"type": "tool_call", "id": part["id"], "name": part["name"], "arguments": part["arguments"]}
    result = part["result"]
    if part["is_error"]:
        error = result.get("error") if isinstance(result, dict) else None
        return {"type": "tool_result", "tool_call_id": part["tool_call_id"], "error": str(error or _dumps(result))}
    return {"type": "tool_result", "tool_call_id": part["tool_call_id"], "result": result}


def _sdk_message(message: dict) -> dict:
    """A message (as stored, or as in message.created) in the SDK's shape."""
    return {"id": message["id"], "session_id": message["session_id"], "role": SDK_ROLES[message["role"]],
            "content": [_sdk_part(p) for p in message["content"]], "created_at": message["created_at"]}  # fmt: skip


def _sdk_text(result: Any) -> str:
    return result if isinstance(result, str) else _dumps(result)


def _sdk_tool_completed(data: dict, texts: dict) -> tuple[str, dict]:
    done = {"tool_call_id": data["tool_call_id"], "tool_name": data["name"], "success": not data["is_error"],
            "status": "error" if data["is_error"] else "success", "duration_ms": data["duration_ms"]}  # fmt: skip
    if data["is_error"]:
        return "tool.completed", {**done, "error": _sdk_part({**data, "type": "tool_result"})["error"]}
    return "tool.completed", {**done, "result": [{"type": "text", "text": _sdk_text(data["result"])}]}


def _sdk_turn_ended(data: dict, texts: dict) -> tuple[str, dict]:
    ended = {"turn_id": data["turn_id"], "iterations": data["iterations"], "duration_ms": data["duration_ms"],
             "usage": data["usage"]}  # fmt: skip
    if data["status"] == TURN_FAILED:
        return "turn.failed", {**ended, "error": data["error"]["message"], "error_code": data["error"]["code"]}
    if data["status"] == TURN_CANCELLED:
        return "turn.cancelled", {**ended, "reason": "cancelled"}
    return "turn.completed", {**ended, "status": data["status"]}


def _sdk_message_created(data: dict, texts: dict) -> tuple[str, dict] | None:
    message = data["message"]
    if message["role"] == "tool":
        return None  # its tool.completed said it
    if message["role"] == "user":
        return "input.message", {"message": _sdk_message(message)}
    texts.pop(message["id"], None)
    return "output.message.completed", {"message": _sdk_message(message)}


def _sdk_delta(data: dict, texts: dict) -> tuple[str, dict]:
    accumulated = texts[data["message_id"]] = texts.get(data["message_id"], "") + data["delta"]
    return "output.message.delta", {"message_id": data["message_id"], "delta": data["delta"],
                                    "accumulated": accumulated}  # fmt: skip


def _sdk_tool_call(data: dict, texts: dict) -> tuple[str, dict] | None:
    call = {k: data["tool_call"][k] for k in ("id", "name", "arguments")}
    if data["tool_call"].get("approval"):
        return None  # tool.approval_requested says it
    if data["tool_call"].get("executor") == "client":
        return "tool.call_requested", {"tool_calls": [call]}
    return "tool.started", {"tool_call": call}


# Each stored event type in the SDK's vocabulary: (its type, its data), or None for one it
# does not show. A type not here passes through under its own name (tool.approval_*, ...).
_SDK_TRANSLATIONS: dict[str, Callable[[dict, dict], tuple[str, dict] | None]] = {
    "session.started": lambda data, texts: ("turn.started", {"turn_id": data["turn_id"],
                                                             "input_message_id": data["input_message_ids"][0]}),
    "message.created": _sdk_message_created,
    "message.delta": _sdk_delta,
    "tool.call": _sdk_tool_call,
    "tool.result": _sdk_tool_completed,
    "session.completed": _sdk_turn_ended,
}  # fmt: skip


def _sdk_event(event: dict, texts: dict[str, str], after: int | None = None) -> dict | None:
    """An event in the SDK's shape; None for one it does not show. `texts`: the text streamed
    so far of each message being written (for `accumulated`); a delta's id carries `after`,
    the seq it follows, so that a stream resumed from it starts there."""
    translate = _SDK_TRANSLATIONS.get(event["type"])
    translated = translate(event["data"], texts) if translate else (event["type"], event["data"])
    if translated is None:
        return None
    type_, data = translated
    event_id = event["id"] or f"delta_{after}_{data['message_id']}_{len(data['accumulated'])}"
    return {"id": event_id, "type": type_, "ts": event["ts"], "session_id": event["session_id"],
            "sequence": event["seq"], "context": {"turn_id": event["turn_id"]}, "data": data}  # fmt: skip


def _sdk_filter(q: SdkEventsQuery) -> Callable[[str], bool]:
    types, exclude = set(q.types), set(q.exclude)
    return lambda type_: (not types or type_ in types) and type_ not in exclude


class _SdkFrames(_SseFrames):
    """The stream in the SDK's vocabulary: `connected` first, every event a whole event
    with a string id, `disconnecting` before the server ends it."""

    start = b'event: connected\ndata: {"status":"connected"}\n\n'

    def __init__(self, wanted: Callable[[str], bool]) -> None:
        super().__init__(wanted)
        self.texts: dict[str, str] = {}

    def joined(self, texts: dict[str, str]) -> None:
        self.texts = dict(texts)

    def stored(self, seq: int, type_: str, text: str) -> bytes | None:
        return self._frame(json.loads(text))

    def live(self, item: _Published) -> bytes | None:
        text = item.frame.partition(b"data: ")[2][:-2]  # the event as JSON text (see _sse_frame)
        return self._frame(json.loads(text), item.after if item.seq is None else None)

    def _frame(self, event: dict, after: int | None = None) -> bytes | None:
        sdk = _sdk_event(event, self.texts, after)
        if sdk is None or not self.wanted(sdk["type"]):
            return None
        return f"event: {sdk['type']}\nid: {sdk['id']}\ndata: {_dumps(sdk)}\n\n".encode()

    def closing(self, reason: str) -> bytes:
        return f'event: disconnecting\ndata: {{"reason":"{reason}","retry_ms":1000}}\n\n'.encode()


def _sdk_cursor(m: _Models, session_id: str, q: SdkEventsQuery) -> int:
    """The seq a listing or a stream resumes after: since_id (an event's id, or a delta's,
    which says the seq it follows), else after_sequence, else the start."""
    if q.since_id:
        row = m.Event.get_or_none(m.Event.id == q.since_id, m.Event.session_id == session_id)
        if row is not None:
            return row.seq
        found = re.fullmatch(r"delta_([0-9]{1,19})_.*", q.since_id)
        return int(found.group(1)) if found else 0
    return q.after_sequence or 0


def _sdk_events(ctx: _Ctx, session_id: str, q: SdkEventsQuery) -> SdkEventList:
    m, wanted, texts = ctx.store.m, _sdk_filter(q), {}
    out: list[dict] = []
    for _, _, text in _stored_events(m, session_id, _sdk_cursor(m, session_id, q)):
        sdk = _sdk_event(json.loads(text), texts)
        if sdk is not None and wanted(sdk["type"]):
            out.append(sdk)
            if len(out) >= (q.limit or SDK_EVENTS_MAX):
                break
    return SdkEventList(data=out)


def _sdk_stream(ctx: _Ctx, req: _Request, session_id: str) -> bottle.HTTPResponse:
    _need_session(ctx.store.m, session_id)
    q = req.query
    frames = _SdkFrames(_sdk_filter(q))
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    stream = _stream(ctx, session_id, _sdk_cursor(ctx.store.m, session_id, q), frames, client=req.client)
    return bottle.HTTPResponse(stream, 200, headers)


def _sdk_agent_row(ctx: _Ctx, id_or_name: str) -> Any:
    """An agent by id, or the newest of that name; 404 otherwise."""
    m = ctx.store.m
    row = m.Agent.get_or_none(m.Agent.id == id_or_name) or (
        m.Agent.select().where(m.Agent.name == id_or_name).order_by(m.Agent.id.desc()).first()
    )
    if row is None:
        raise _NotFound(f"agent {id_or_name} not found")
    return row


@_route("GET", f"{SDK}/agents", "List agents", "sdk: agents", response=SdkAgentList, query=SdkListQuery)
def _sdk_list_agents(ctx: _Ctx, req: _Request) -> BaseModel:
    m, search = ctx.store.m, (req.query.search or "").lower()
    rows = m.Agent.select().order_by(m.Agent.id.desc())
    return SdkAgentList(data=[_sdk_agent(r) for r in rows if search in f"{r.name}\n{r.description}".lower()])


@_route("POST", f"{SDK}/agents", "Create an agent, or update the one with this id (or this name)", "sdk: agents",
        body=SdkAgentCreate, response=SdkAgent, status=201, also=(200,), errors=(501,))  # fmt: skip
def _sdk_put_agent(ctx: _Ctx, req: _Request) -> Any:
    body, m, ts = req.body, ctx.store.m, _now_iso()
    _sdk_harness(body.harness_id, body.harness_name)
    capabilities, client_tools = _dedupe([r.ref for r in body.capabilities]), _sdk_tools(body.tools)
    _check_client_tools(ctx, client_tools, capabilities, "tools")
    fields = {"name": body.name, "system_prompt": body.system_prompt, "description": body.description or "",
              "display_name": body.display_name, "model": body.default_model_id, "tags": body.tags,
              "capabilities": capabilities, "client_tools": client_tools,
              "initial_files": [f.model_dump() for f in body.initial_files],
              "max_iterations": body.max_iterations or 10}  # fmt: skip
    with ctx.store.write():
        if body.id is not None:
            row = m.Agent.get_or_none(m.Agent.id == body.id)
        else:
            row = m.Agent.select().where(m.Agent.name == body.name).order_by(m.Agent.id.desc()).first()
        if row is not None:
            m.Agent.update(**fields, updated_at=ts).where(m.Agent.id == row.id).execute()
            return 200, _sdk_agent(m.Agent.get_by_id(row.id))
        row = m.Agent.create(id=body.id or _uuid7(), created_at=ts, updated_at=ts, **fields)
    return 201, _sdk_agent(row)


@_route("GET", f"{SDK}/agents/<agent>", "Get an agent (by id or name)", "sdk: agents", response=SdkAgent,
        errors=(404,))  # fmt: skip
def _sdk_get_agent(ctx: _Ctx, req: _Request, agent: str) -> BaseModel:
    return _sdk_agent(_sdk_agent_row(ctx, agent))


@_route("DELETE", f"{SDK}/agents/<agent>", "Delete an agent and its sessions", "sdk: agents", status=204,
        errors=(404,))  # fmt: skip
def _sdk_delete_agent(ctx: _Ctx, req: _Request, agent: str) -> None:
    _remove_agent(ctx, _sdk_agent_row(ctx, agent))


@_route("POST", f"{SDK}/agents/<agent>/copy", "Copy an agent (as NAME-copy)", "sdk: agents", body=_EmptyBody,
        body_required=False, response=SdkAgent, status=201, errors=(404,))  # fmt: skip
def _sdk_copy_agent(ctx: _Ctx, req: _Request, agent: str) -> BaseModel:
    m, ts = ctx.store.m, _now_iso()
    copied = ("description", "system_prompt", "capabilities", "provider_id", "model", "tags", "max_iterations",
              "require_approval", "client_tools", "initial_files", "display_name")  # fmt: skip
    with ctx.store.write():
        source = _sdk_agent_row(ctx, agent)
        taken = {r.name for r in m.Agent.select(m.Agent.name).where(m.Agent.name.startswith(source.name))}
        names = (f"{source.name}-copy" + (f"-{i}" if i > 1 else "") for i in itertools.count(1))
        name = next(n for n in names if n not in taken)
        row = m.Agent.create(id=_uuid7(), name=name[:MAX_NAME], created_at=ts, updated_at=ts,
                             **{f: getattr(source, f) for f in copied})  # fmt: skip
    return _sdk_agent(row)


def _sdk_generic_agent(ctx: _Ctx) -> str:
    """The agent of sessions opened without one (created once: no prompt, no capabilities)."""
    m = ctx.store.m
    with ctx.store.write():
        meta = m.Meta.get_or_none(m.Meta.key == "sdk_generic_agent")
        if meta is not None and m.Agent.get_or_none(m.Agent.id == meta.value) is not None:
            return meta.value
        ts = _now_iso()
        agent = m.Agent.create(id=_uuid7(), name=SDK_GENERIC_AGENT, description="Sessions opened with no agent.",
                               system_prompt="", capabilities=[], tags=[], max_iterations=10, created_at=ts,
                               updated_at=ts)  # fmt: skip
        m.Meta.insert(key="sdk_generic_agent", value=agent.id).on_conflict(
            conflict_target=[m.Meta.key], update={m.Meta.value: agent.id}
        ).execute()
    return agent.id


@_route("POST", f"{SDK}/sessions", "Open a session (with an agent, or the built-in generic one)", "sdk: sessions",
        body=SdkSessionCreate, response=SdkSession, status=201, errors=(404, 501))  # fmt: skip
def _sdk_create_session(ctx: _Ctx, req: _Request) -> BaseModel:
    body = req.body
    _sdk_harness(body.harness_id, body.harness_name)
    if body.agent_id is not None:
        agent = _get(ctx.store.m.Agent, body.agent_id, "agent")
    elif body.agent_name is not None:
        agent = _sdk_agent_row(ctx, body.agent_name)
    else:
        agent = _get(ctx.store.m.Agent, _sdk_generic_agent(ctx), "agent")
    capabilities, client_tools = _dedupe([r.ref for r in body.capabilities]), _sdk_tools(body.tools)
    _check_client_tools(ctx, client_tools, [*agent.capabilities, *capabilities], "tools")
    fields = {"title": body.title, "tags": body.tags, "model": body.model_id, "capabilities": capabilities,
              "client_tools": client_tools}  # fmt: skip
    return _sdk_session(_new_session(ctx, agent.id, fields, [f.model_dump() for f in body.initial_files]))


@_route("GET", f"{SDK}/sessions", "List sessions", "sdk: sessions", response=SdkSessionList, query=SdkListQuery)
def _sdk_list_sessions(ctx: _Ctx, req: _Request) -> BaseModel:
    m, search = ctx.store.m, (req.query.search or "").lower()
    rows = m.Session.select().order_by(m.Session.id.desc())
    if req.query.agent_id:
        rows = rows.where(m.Session.agent_id == req.query.agent_id)
    return SdkSessionList(data=[_sdk_session(r) for r in rows if search in (r.title or "").lower()])


@_route("GET", f"{SDK}/sessions/<session_id>", "Get a session", "sdk: sessions", response=SdkSession,
        errors=(404,))  # fmt: skip
def _sdk_get_session(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    return _sdk_session(_get(ctx.store.m.Session, session_id, "session"))


@_route("DELETE", f"{SDK}/sessions/<session_id>", "Delete a session", "sdk: sessions", status=204, errors=(404,))
def _sdk_delete_session(ctx: _Ctx, req: _Request, session_id: str) -> None:
    _remove_session(ctx, _get(ctx.store.m.Session, session_id, "session"))


def _open_calls(m: _Models, session_id: str) -> dict[str, dict] | None:
    """The tool calls (_tool_calls) of the session's unfinished turn; None without one."""
    turn = m.Turn.get_or_none(m.Turn.session_id == session_id, m.Turn.status.in_((TURN_WAITING, TURN_RUNNING)))
    return None if turn is None else _tool_calls(m, session_id, turn.id)


def _sdk_status(ctx: _Ctx, session_id: str) -> str:
    """The session's status once what was just answered takes effect: a turn none of whose
    calls waits any more is active (its worker may not have picked it up yet)."""
    m = ctx.store.m
    session, calls = _get(m.Session, session_id, "session"), _open_calls(m, session_id)
    if calls is None:
        return SDK_STATUSES[session.status]
    waiting = any(c["state"] in ("approval", "client") for c in calls.values())
    return "waitingfortoolresults" if waiting else "active"


def _sdk_cancel(ctx: _Ctx, session_id: str) -> SdkCancelled:
    _need_session(ctx.store.m, session_id)
    if ctx.scheduler.cancel(session_id) is None:
        return SdkCancelled(status="no_op", message="No turn was running")
    return SdkCancelled(status="cancelled", message="Turn cancelled")


@_route("POST", f"{SDK}/sessions/<session_id>/cancel", "Cancel the running turn", "sdk: sessions", body=_EmptyBody,
        body_required=False, response=SdkCancelled, errors=(404,))  # fmt: skip
def _sdk_cancel_session(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    return _sdk_cancel(ctx, session_id)


def _sdk_post_message(ctx: _Ctx, req: _Request, session_id: str) -> Any:
    body = req.body
    parts = [{"type": "text", "text": p.text} for p in body.message.content]
    controls = {"model": body.controls.model_id} if body.controls and body.controls.model_id else None
    status, message = _user_message(ctx, session_id, parts, controls, _idempotency_key(req))
    return status, SdkMessage(**_sdk_message(message))


@_route("POST", f"{SDK}/sessions/<session_id>/messages", "Post a user message (the turn runs in the background)",
        "sdk: messages", body=SdkMessageCreate, response=SdkMessage, status=201, also=(200,),
        headers=(_IDEMPOTENCY,), errors=(404, 409))  # fmt: skip
def _sdk_create_message(ctx: _Ctx, req: _Request, session_id: str) -> Any:
    return _sdk_post_message(ctx, req, session_id)


@_route("GET", f"{SDK}/sessions/<session_id>/messages", "List a session's messages", "sdk: messages",
        response=SdkMessageList, errors=(404,))  # fmt: skip
def _sdk_list_messages(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    m = ctx.store.m
    _need_session(m, session_id)
    rows = m.Message.select().where(m.Message.session_id == session_id).order_by(pw.SQL(CONVERSATION_ORDER))
    return SdkMessageList(data=[_sdk_message(_message_out(r).model_dump()) for r in rows])


@_route("POST", f"{SDK}/sessions/<session_id>/tool-results", "Post client tools' results", "sdk: messages",
        body=SdkToolResults, response=SdkAccepted, errors=(404, 409, 413))  # fmt: skip
def _sdk_tool_results(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    """All or nothing: a result that cannot be taken (404, 409) fails before any is stored."""
    m, posted = ctx.store.m, req.body.tool_results
    if len({p.tool_call_id for p in posted}) < len(posted):
        raise _invalid(["tool_results"], "names a tool call twice")
    _need_session(m, session_id)
    calls = _open_calls(m, session_id) or {}
    waiting = {i for i, call in calls.items() if call["state"] == "client"}
    for one in sorted(posted, key=lambda p: p.tool_call_id in waiting):  # the ones that fail first
        result = one.result if one.error is None else {"error": one.error}
        try:
            _client_result(ctx, session_id, one.tool_call_id, result, one.error is not None)
        except _Conflict:
            status = SDK_STATUSES[_get(m.Session, session_id, "session").status]
            raise _Conflict(SDK_NOT_WAITING.format(status=status)) from None
    return SdkAccepted(accepted=len(req.body.tool_results), status=_sdk_status(ctx, session_id))


@_route("GET", f"{SDK}/capabilities", "List capabilities", "sdk: capabilities", response=SdkCapabilityList)
def _sdk_list_capabilities(ctx: _Ctx, req: _Request) -> BaseModel:
    return SdkCapabilityList(data=[_sdk_capability(c) for c in ctx.capabilities.values()])


def _sdk_capability(capability: Any) -> SdkCapability:
    out = _capability_out(capability)
    return SdkCapability(id=out.id, name=out.name, description=out.description, status=out.status,
                         category=out.category, system_prompt=out.system_prompt, tool_definitions=out.tools,
                         is_mcp=out.category == "mcp")  # fmt: skip


@_route("GET", f"{SDK}/capabilities/<capability_id>", "Get a capability", "sdk: capabilities",
        response=SdkCapability, errors=(404,))  # fmt: skip
def _sdk_get_capability(ctx: _Ctx, req: _Request, capability_id: str) -> BaseModel:
    if capability_id not in ctx.capabilities:
        raise _NotFound(f"capability {capability_id} not found")
    return _sdk_capability(ctx.capabilities[capability_id])


@_route("GET", f"{SDK}/sessions/<session_id>/events", "List a session's events", "sdk: events",
        response=SdkEventList, query=SdkEventsQuery, errors=(404,))  # fmt: skip
def _sdk_list_events(ctx: _Ctx, req: _Request, session_id: str) -> BaseModel:
    _need_session(ctx.store.m, session_id)
    return _sdk_events(ctx, session_id, req.query)


@_route("GET", f"{SDK}/sessions/<session_id>/sse", "Stream a session's events (SSE; never ends by itself)",
        "sdk: events", query=SdkEventsQuery, errors=(404,), stream=True, raw=True)  # fmt: skip
def _sdk_events_stream(ctx: _Ctx, req: _Request, session_id: str) -> bottle.HTTPResponse:
    return _sdk_stream(ctx, req, session_id)


# ---- channels: the SDK's AgentClient, one agent behind a URL -------------------------

CHANNEL = f"{SDK}/channels/<agent_id>"


def _channel_session(ctx: _Ctx, agent_id: str, session_id: str) -> Any:
    """A session of the channel's agent; 404 for any other."""
    m = ctx.store.m
    row = m.Session.get_or_none(m.Session.id == session_id, m.Session.agent_id == agent_id)
    if row is None:
        raise _NotFound(f"session {session_id} not found in this channel")
    return row


@_route("GET", CHANNEL, "The channel's card: its agent", "sdk: channels", response=SdkChannelCard, errors=(404,))
def _channel_card(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    agent = _get(ctx.store.m.Agent, agent_id, "agent")
    return SdkChannelCard(id=agent.id, name=agent.display_name or agent.name, description=agent.description,
                          accepted_input=["text"], credentials=[], conversation_starters=[])  # fmt: skip


@_route("POST", f"{CHANNEL}/sessions", "Open a session with the channel's agent", "sdk: channels",
        body=SessionCreate, body_required=False, response=SdkSession, status=201, errors=(404,))  # fmt: skip
def _channel_create_session(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    return _sdk_session(_new_session(ctx, agent_id, req.body.model_dump()))


@_route("GET", f"{CHANNEL}/sessions", "List the channel's sessions", "sdk: channels",
        response=SdkChannelSessionList, errors=(404,))  # fmt: skip
def _channel_sessions(ctx: _Ctx, req: _Request, agent_id: str) -> BaseModel:
    m = ctx.store.m
    _get(m.Agent, agent_id, "agent")
    rows = m.Session.select().where(m.Session.agent_id == agent_id).order_by(m.Session.id.desc())
    return SdkChannelSessionList(data=[_sdk_session(r) for r in rows], next_page_token=None)


@_route("GET", f"{CHANNEL}/sessions/<session_id>", "Get a session of the channel, with its pending approvals",
        "sdk: channels", response=SdkChannelSession, errors=(404,))  # fmt: skip
def _channel_session_get(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> BaseModel:
    m, row = ctx.store.m, _channel_session(ctx, agent_id, session_id)
    calls = (_open_calls(m, session_id) or {}).values()
    pending = [ToolCallInfo(**c["call"]) for c in calls if c["state"] == "approval"]
    return _sdk_session(row, SdkChannelSession, pending_approvals=pending, pending_questions=[])


@_route("POST", f"{CHANNEL}/sessions/<session_id>/messages", "Post a user message", "sdk: channels",
        body=SdkMessageCreate, response=SdkMessage, status=201, also=(200,), headers=(_IDEMPOTENCY,),
        errors=(404, 409))  # fmt: skip
def _channel_message(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> Any:
    _channel_session(ctx, agent_id, session_id)
    return _sdk_post_message(ctx, req, session_id)


@_route("POST", f"{CHANNEL}/sessions/<session_id>/cancel", "Cancel the running turn", "sdk: channels",
        body=_EmptyBody, body_required=False, response=SdkCancelled, errors=(404,))  # fmt: skip
def _channel_cancel(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> BaseModel:
    _channel_session(ctx, agent_id, session_id)
    return _sdk_cancel(ctx, session_id)


@_route("GET", f"{CHANNEL}/sessions/<session_id>/events", "List a session's events", "sdk: channels",
        response=SdkEventList, query=SdkEventsQuery, errors=(404,))  # fmt: skip
def _channel_events(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> BaseModel:
    _channel_session(ctx, agent_id, session_id)
    return _sdk_events(ctx, session_id, req.query)


@_route("GET", f"{CHANNEL}/sessions/<session_id>/sse", "Stream a session's events (SSE)", "sdk: channels",
        query=SdkEventsQuery, errors=(404,), stream=True, raw=True)  # fmt: skip
def _channel_stream(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> bottle.HTTPResponse:
    _channel_session(ctx, agent_id, session_id)
    return _sdk_stream(ctx, req, session_id)


@_route("POST", f"{CHANNEL}/sessions/<session_id>/tool-approvals", "Approve or deny calls that wait for a person",
        "sdk: channels", body=SdkApprovals, response=SdkAccepted, errors=(404, 409))  # fmt: skip
def _channel_approvals(ctx: _Ctx, req: _Request, agent_id: str, session_id: str) -> BaseModel:
    _channel_session(ctx, agent_id, session_id)
    for decision in req.body.decisions:
        _decide(ctx, session_id, decision.tool_call_id, decision.approved, decision.reason)
    return SdkAccepted(accepted=len(req.body.decisions), status=_sdk_status(ctx, session_id))


# What the SDKs offer that this server does not have: 501 naming the feature (the SDK
# would retry a 404 forever on some routes; nothing here is a 500 either).
SDK_MISSING = {
    "harnesses (only the built-in generic one is here)": ["/harnesses", "/harnesses/<rest:path>",
                                                          "/harness-examples"],
    "the model catalogue (see /v1/llm-providers)": ["/models", "/models/<rest:path>"],
    "budgets": ["/budgets", "/budgets/<rest:path>", "/sessions/<session_id>/budgets",
                "/sessions/<session_id>/budget-check", "/sessions/<session_id>/resume"],
    "workspaces": ["/workspaces", "/workspaces/<rest:path>"],
    "memories": ["/memories", "/memories/<rest:path>"],
    "connections": ["/user/connections", "/user/connections/<rest:path>"],
    "agent versions": ["/agents/<agent_id>/versions", "/agents/<agent_id>/versions/<rest:path>"],
    "agent health checks": ["/agents/<agent_id>/health-checks", "/agents/<agent_id>/health-checks/<rest:path>"],
    "agent statistics": ["/agents/<agent_id>/stats"],
    "agent import, export and analysis": ["/agents/import", "/agents/analyze", "/agents/<agent_id>/export"],
    "pinned sessions": ["/sessions/<session_id>/pin"],
    "session secrets": ["/sessions/<session_id>/storage/secrets"],
    "session export through the SDK (see GET /v1/sessions/{id}/export)": ["/sessions/<session_id>/export"],
    "guardrails": ["/capabilities/guardrails/<rest:path>"],
    "questions to people": ["/channels/<agent_id>/sessions/<session_id>/question-answers"],
    "runtime tokens": ["/channels/<agent_id>/runtime-auth"],
}  # fmt: skip


def _sdk_missing(feature: str) -> Callable[..., Any]:
    def missing(ctx: _Ctx, req: _Request, **params: str) -> None:
        raise _NotImplemented(f"{feature}: not available on this server")

    return missing


def _register_missing() -> None:
    """A 501 route for every method of every path of SDK_MISSING (its body is never read)."""
    for feature, paths in SDK_MISSING.items():
        for path, method in itertools.product(paths, ("GET", "POST", "PUT", "PATCH", "DELETE")):
            _route(method, SDK + path, f"Not here: {feature}", "sdk", in_schema=False, read_body=False)(
                _sdk_missing(feature)
            )


_register_missing()


# =============================================================================
# 14. OpenAPI and docs
# =============================================================================


def _openapi_path(path: str) -> str:
    return re.sub(r"<(\w+)(?::\w+)?>", r"{\1}", path)


# The path parameters that are not UUIDs: what each one is.
_PATH_PARAMETERS = {
    "capability_id": {
        "type": "string",
        "maxLength": MAX_NAME,
        "description": "A capability id (current_time, mcp:NAME).",
    },
    "tool_call_id": {"type": "string", "maxLength": MAX_NAME, "description": "The id the model gave the call."},
    "server_id": {"type": "string", "maxLength": MAX_NAME, "description": "A UUID, or config-NAME for --mcp-config's."},
    "path": {"type": "string", "pattern": r"^[^\\\x00-\x1f]+$", "maxLength": MAX_PATH},
    "agent": {"type": "string", "maxLength": MAX_NAME, "description": "An agent's id, or its name (the newest)."},
}


def _path_parameters(path: str) -> list[dict]:
    return [{"name": name, "in": "path", "required": True,
             "schema": _PATH_PARAMETERS.get(name, {"type": "string", "format": "uuid"})}
            for name in re.findall(r"<(\w+)(?::\w+)?>", path)]  # fmt: skip


def _query_parameters(model: type[BaseModel] | None) -> list[dict]:
    if model is None:
        return []
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    params = []
    for name, prop in schema["properties"].items():
        description = prop.pop("description", "")
        params.append({"name": name, "in": "query", "required": False, "schema": _not_null(prop),
                       "description": description})  # fmt: skip
    return params


def _not_null(prop: dict) -> dict:
    """A query parameter's schema without its null branch: a query string cannot say null."""
    branches = [b for b in prop.get("anyOf", []) if b != {"type": "null"}]
    if len(branches) != 1:
        return prop
    rest = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**rest, **branches[0]}


# What any request can be answered by the server itself, whatever the route.
_ANY_ROUTE_ERRORS = {400, 405, 408, 414, 431, 500, 503}


def _error_statuses(spec: _Route, auth: bool) -> list[int]:
    statuses = {*_ANY_ROUTE_ERRORS, *spec.errors}
    if spec.method in STATE_CHANGING:  # a form's content type (415); a full disk (507)
        statuses |= {415, 507}
    if spec.body is not None or spec.media:
        statuses |= {413, 415}
    if auth and _is_api(spec.path):
        statuses.add(401)
    if not auth:
        statuses.add(403)  # a foreign Host (see _Guard)
    return sorted(statuses)


def _operation(spec: _Route, refs: dict, auth: bool) -> dict:
    op: dict[str, Any] = {
        "summary": spec.summary,
        "operationId": spec.handler.__name__.lstrip("_"),
        "tags": [spec.tag],
        "parameters": _path_parameters(spec.path)
        + _query_parameters(spec.query)
        + [
            {
                "name": h.name,
                "in": "header",
                "required": False,
                "description": h.description,
                "schema": {"type": "string", "maxLength": h.max_length},
            }
            for h in spec.headers
        ],
        "responses": {},
    }
    if spec.body is not None:
        op["requestBody"] = {
            "required": spec.body_required,
            "content": {"application/json": {"schema": refs[(_model(spec.body), "validation")]}},
        }
    elif spec.media:
        body = {"type": "string", "description": "JSON Lines: an object a line"}
        op["requestBody"] = {"required": True, "content": {media: {"schema": body} for media in spec.media}}
    for status in (spec.status, *spec.also):
        if spec.response is None and spec.stream:  # a stream and nothing else
            content = {"text/event-stream": {"schema": {"type": "string", "description": "Server-Sent Events"}}}
            op["responses"][str(status)] = {"description": spec.summary, "content": content}
        elif spec.response is None and spec.text:
            content = {spec.text: {"schema": {"type": "string"}}}
            op["responses"][str(status)] = {"description": spec.summary, "content": content}
        elif spec.response is None:
            op["responses"][str(status)] = {"description": "No content"}
        else:
            content = {"application/json": {"schema": refs[(_model(spec.response), "serialization")]}}
            if spec.stream:
                content["text/event-stream"] = {"schema": {"type": "string", "description": "Server-Sent Events"}}
            op["responses"][str(status)] = {"description": spec.summary, "content": content}
    error_ref = refs[(ErrorBody, "serialization")]
    for status in (s for s in _error_statuses(spec, auth) if s not in spec.also):
        op["responses"][str(status)] = {
            "description": ERROR_CODES[status],
            "content": {"application/json": {"schema": error_ref}},
        }
    if auth and _is_api(spec.path):
        op["security"] = [{"bearer": []}]
    return op


def _build_openapi(auth: bool = False) -> dict:
    """The OpenAPI 3.1 document, built from the route registry and the schemas."""
    routes = [r for r in _ROUTES if r.in_schema]
    models = {(_model(r.body), "validation") for r in routes if r.body} | {
        (_model(r.response), "serialization") for r in routes if r.response
    }
    models.add((ErrorBody, "serialization"))
    from pydantic.json_schema import models_json_schema

    refs, defs = models_json_schema(
        sorted(models, key=lambda x: x[0].__name__), ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict] = {}
    for spec in routes:
        paths.setdefault(_openapi_path(spec.path), {})[spec.method.lower()] = _operation(spec, refs, auth)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Everruns", "version": __version__, "description": "A headless runtime for AI agents."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return _json_schema_keywords(doc)


_BOUNDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}


NO_NUL = r"^[^\x00]*$"  # no text may hold the NUL character (see _refuse_nul): the document says so


def _json_schema_keywords(node: Any) -> Any:
    """The document with pydantic's leftovers made JSON Schema: bounds it could not place
    (ge, le) as minimum/maximum, no `"default": null` where null is not allowed, and the
    NUL rule on every text that has no pattern of its own."""
    if isinstance(node, list):
        return [_json_schema_keywords(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _json_schema_keywords(value) for key, value in node.items()}
    if out.get("type") in ("integer", "number"):
        out = {_BOUNDS.get(key, key): value for key, value in out.items()}
    if out.get("type") == "string" and not out.keys() & {"pattern", "enum", "const", "format"}:
        out["pattern"] = NO_NUL
    if "default" in out and out["default"] is None and not _allows_null(out):
        del out["default"]
    return out


def _allows_null(schema: dict) -> bool:
    if schema.get("type") == "null" or "null" in (schema.get("type") or []):
        return True
    return any(isinstance(s, dict) and _allows_null(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


# Swagger UI's own files come from the `openapi-ui-bundles` package (pinned; see the
# README's "Why this dependency"), so the page works with no internet access and runs
# no third-party code fetched at view time.
_SWAGGER_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Everruns API</title>
<link rel="stylesheet" href="swagger-ui.css"><link rel="icon" href="favicon-32x32.png"></head>
<body><div id="ui"></div>
<script src="swagger-ui-bundle.js"></script>
<script src="init.js"></script>
</body></html>
"""
_SWAGGER_INIT = 'window.ui = SwaggerUIBundle({url: "/api-doc/openapi.json", dom_id: "#ui", deepLinking: true});\n'
_SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# No remote origin; Swagger UI sets inline styles and shows data: images.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _page_file(body: str | bytes, content_type: str, csp: str, cache: bool = False) -> bottle.HTTPResponse:
    """A file of a page (Swagger UI, the console) with its CSP; kept a day by browsers when `cache`."""
    headers = {"Content-Type": content_type, "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer",
               "Cache-Control": "public, max-age=86400" if cache else "no-cache"}  # fmt: skip
    return bottle.HTTPResponse(body, 200, headers)


@functools.cache
def _swagger_file(name: str) -> bytes:
    """One of Swagger UI's files, read once."""
    from openapi_ui_bundles.swagger_ui import static_path

    return (static_path / name).read_bytes()


@_route("GET", "/api-doc/openapi.json", "The OpenAPI document", "docs", raw=True, in_schema=False)
def _openapi(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    return _json_response(200, _openapi_text(bool(ctx.config["api_key"])))


@functools.cache
def _openapi_text(auth: bool) -> str:
    """The OpenAPI document, built on first request (every schema built costs time
    and memory that a server nobody asks for its document never needs)."""
    return _dumps(_build_openapi(auth))


@_route("GET", "/swagger-ui/", "Swagger UI", "docs", raw=True, in_schema=False)
def _swagger(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    return _page_file(_SWAGGER_HTML, "text/html; charset=utf-8", DOCS_CSP)


@_route("GET", "/swagger-ui/<name>", "Swagger UI's files", "docs", raw=True, in_schema=False)
def _swagger_asset(ctx: _Ctx, req: _Request, name: str) -> bottle.HTTPResponse:
    if name == "init.js":
        return _page_file(_SWAGGER_INIT, "text/javascript; charset=utf-8", DOCS_CSP)
    if name not in _SWAGGER_FILES:
        raise _NotFound(f"no such file: {name}")
    return _page_file(_swagger_file(name), _SWAGGER_FILES[name], DOCS_CSP, cache=True)


# =============================================================================
# 15. Several processes on one PostgreSQL database
# =============================================================================
#
# Each process holds a lease, claims the turns it runs, and hears the others through
# PostgreSQL's notifications (one per commit, on NOTIFY_CHANNEL: _Store._notify). What
# they tell each other, one kind per item, handled by _Cluster._on[kind]:
#
#   kind     carries                        sent by                        a process that hears it
#   events   session, first seq, last seq   every commit (_Journal.tx)     reads and publishes them, if it
#                                                                          streams that session
#   delta    session, turn, message, text   _Cluster._share (a turn's      publishes the streamed text to its
#                                           streamed text, coalesced)      streams of that session
#   cancel   session, turn                  _Scheduler._cancel_elsewhere   stops that turn, if it runs it
#   gone     session                        _sessions_going (a delete)     stops its turn, ends its streams
#   mcp      -                              _mcp_written (an API change)   reads the MCP servers again
#   hello    -                              _Cluster._register             counts one more process
#   bye      -                              _Cluster.stop                  counts one less, answers what it owed


HEARTBEAT_S = 5.0  # how often a process renews its lease and looks for dead processes
LEASE_S = 15.0  # a lease not renewed this long is dead (a process whose connection closed: at once)
DELTA_FLUSH_S = 0.05  # streamed text for the other processes' streams is sent at most this often
_NOW_MS = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"  # the database's clock: one for all
_INSTANCES = f"""SELECT i.id, i.heartbeat < {_NOW_MS} - %s AS stale, NOT EXISTS (
    SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND l.classid = (i.lock_key >> 32)::oid AND l.objid = (i.lock_key & 4294967295)::oid) AS unlocked
FROM instance i WHERE i.id <> %s"""  # the other leases: not renewed in time? their lock free (process gone)?


def _lock_key(lease: str) -> int:
    """A lease's liveness lock: a 64-bit advisory key, above the 32-bit keys of the session locks."""
    return int(hashlib.sha256(lease.encode()).hexdigest()[:14], 16) | (1 << 60)


def _event_reader(store: _Store) -> Callable[[str, int], list[tuple[int, str, str]]]:
    """The bus's reader: a session's stored events after a seq (the connection returned after)."""

    def read(session_id: str, after: int) -> list[tuple[int, str, str]]:
        try:
            return list(_stored_events(store.m, session_id, after))
        finally:
            store.release()

    return read


class _Cluster:
    """This process among the processes that serve one PostgreSQL database.

    * A lease: a row of `instance` renewed every HEARTBEAT_S, and an advisory lock
      that the listening connection holds for as long as the process lives. A lease
      not renewed for LEASE_S, or whose lock is free (its process died and its
      connection closed), is dead: any process deletes it, closes the turns it ran as
      INTERRUPTED (tools are never run again) and kicks the owed sessions; each owed
      turn is claimed by one process (_Scheduler._claim, under the session's lock).
    * Commits notify NOTIFY_CHANNEL of what they stored (_Store._notify). The listening
      connection hears the others: stored events of sessions streamed here are read and
      published in seq order, streamed text is published as it comes, and cancels and
      deletes reach the turns that run here.
    """

    def __init__(self, store: _Store, bus: _Bus, scheduler: _Scheduler) -> None:
        self.store, self.bus, self.scheduler = store, bus, scheduler
        self.listener: Any = None  # the listening connection; it holds the lease's lock
        self.peers = 0  # the other live processes, as last heard
        self.due = gevent.event.Event()  # set when streamed text waits to be sent
        self.greenlets: list[Any] = []
        self._reaping: Any = None
        self.on_mcp: Callable[[], None] = lambda: None

    def start(self) -> None:
        """Take a lease, close the turns of dead processes, start the owed ones, listen."""
        self._register()
        self.reap()
        self.greenlets = [gevent.spawn(self._listen), gevent.spawn(self._send_deltas)]

    def stop(self) -> None:
        """Leave (after the scheduler's shutdown): the lease goes, and the others start what is owed."""
        greenlets = [*self.greenlets, *([self._reaping] if self._reaping else [])]
        for greenlet in greenlets:
            _stop_soon(greenlet)
        gevent.joinall(greenlets, timeout=2)
        with contextlib.suppress(pw.DatabaseError), self.store.write():
            self.store.db.execute_sql("DELETE FROM instance WHERE id = %s", (self.store.lease,))
            self.store.outbox.append(["bye"])
        with contextlib.suppress(Exception):
            self.listener.close()

    def _register(self) -> None:
        """Take the lease: listen and hold its lock first, then store it and say hello."""
        store, key = self.store, _lock_key(self.store.lease)
        with pw.__exception_wrapper__:
            listener = pw.PostgresqlDatabase._connect(store.db)
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            listener.execute("SELECT pg_advisory_lock(%s)", (key,))
        self.listener = listener
        with store.write():
            sql = f"INSERT INTO instance (id, lock_key, heartbeat, started_at) VALUES (%s, %s, {_NOW_MS}, %s)"
            store.db.execute_sql(sql, (store.lease, key, _now_iso()))
            store.outbox.append(["hello"])
        store.release()

    def _listen(self) -> None:
        """Hear the other processes; renew the lease between notifications."""
        beat = time.monotonic() + HEARTBEAT_S
        while True:
            try:
                for note in self.listener.notifies(timeout=max(0.0, beat - time.monotonic())):
                    self._heard(note.payload)
                if time.monotonic() >= beat:
                    beat = time.monotonic() + HEARTBEAT_S
                    self._renew()
            except _Stop:
                return
            except Exception as e:  # the connection failed (or the database went away)
                self._take_new_lease(f"its connection failed: {' '.join(str(e).split())}")

    def _heard(self, payload: str) -> None:
        note = json.loads(payload)
        if note["from"] == self.store.lease:
            return
        for kind, *args in note["items"]:
            try:
                self._apply(kind, args)
            except Exception:
                _log.exception("could not apply a notification (%s)", kind)

    def _apply(self, kind: str, args: list) -> None:
        self._on[kind](*args)  # the kinds: the table at the top of this section

    @functools.cached_property
    def _on(self) -> dict[str, Callable[..., None]]:
        return {"events": self._on_events, "delta": functools.partial(self.bus.publish_delta, shared=False),
                "cancel": lambda session_id, turn_id: self.scheduler.halt(session_id, turn_id, _Cancelled),
                "gone": lambda session_id: gevent.spawn(self._gone, session_id), "mcp": lambda: self.on_mcp(),
                "hello": lambda: self._count(self.peers + 1), "bye": self._on_bye}  # fmt: skip

    def _on_events(self, session_id: str, first: int, last: int) -> None:
        if self.bus.watched(session_id) and self.bus.last_seq.get(session_id, 0) < last:
            self.bus.catch_up(session_id)

    def _on_bye(self) -> None:
        self._count(self.peers - 1)
        self._reap_soon()  # what it owed is answered here (or by another: one claims each)

    def _gone(self, session_id: str) -> None:
        self.scheduler.stop(session_id)
        self.bus.close(session_id)
        self.scheduler.forget(session_id)

    def _count(self, peers: int) -> None:
        """Streamed text is shared only while there is another process to stream it."""
        self.peers = max(0, peers)
        self.bus.share = self._share if self.peers else None

    def _share(self, session_id: str, turn_id: str, message_id: str, text: str) -> None:
        self.store.deltas.setdefault((session_id, turn_id, message_id), []).append(text)
        self.due.set()

    def _send_deltas(self) -> None:
        """Streamed text goes with the next commit, or after DELTA_FLUSH_S (coalesced)."""
        try:
            while True:
                self.due.wait()
                gevent.sleep(DELTA_FLUSH_S)
                self.due.clear()
                self.store.send_notes()
        except _Stop:
            return

    def _renew(self) -> None:
        store = self.store
        try:
            with store.write():
                sql = f"UPDATE instance SET heartbeat = {_NOW_MS} WHERE id = %s"
                cursor = store.db.execute_sql(sql, (store.lease,))
            if cursor.rowcount == 0:
                self._take_new_lease("another process found it dead")
            self._reap_soon()
        except pw.DatabaseError as e:
            _log.warning("could not renew this process's lease: %s", e)
        finally:
            store.release()

    def _take_new_lease(self, why: str) -> None:
        """The lease is lost: its turns stop here (another process closes them), a new one is taken."""
        _log.warning("this process lost its lease (%s): its running turns stop and it takes a new one", why)
        for turn in self.scheduler.running():
            turn.halt(_Gone)
        with contextlib.suppress(Exception):
            self.listener.close()
        old, self.store.lease = self.store.lease, _lease_id()
        while True:
            try:
                self._register()
                break
            except pw.DatabaseError as e:
                _log.warning("could not take a new lease (trying again in %g s): %s", HEARTBEAT_S, e)
                gevent.sleep(HEARTBEAT_S)
        with contextlib.suppress(pw.DatabaseError), self.store.write():  # its turns are closed at the next look
            self.store.db.execute_sql("DELETE FROM instance WHERE id = %s", (old,))

    def _reap_soon(self) -> None:
        if self._reaping is None or self._reaping.ready():
            self._reaping = gevent.spawn(self._reap_quietly)

    def _reap_quietly(self) -> None:
        try:
            self.reap()
        except _Stop:
            pass
        except Exception:
            _log.exception("looking for dead processes failed")

    def reap(self) -> None:
        """Delete dead leases, close the turns no live process runs, start the owed ones."""
        store = self.store
        try:
            rows = store.db.execute_sql(_INSTANCES, (int(LEASE_S * 1000), store.lease)).fetchall()
            dead = [lease for lease, stale, unlocked in rows if stale or unlocked]
            self._count(len(rows) - len(dead))
            if dead:
                _log.warning("process lease(s) %s ended: closing their turns", ", ".join(dead))
                with store.write():
                    store.db.execute_sql("DELETE FROM instance WHERE id = ANY(%s)", (dead,))
            self.scheduler.recover()
        finally:
            store.release()


# =============================================================================
# 16. In-process client
# =============================================================================
# app.client (SPEC 14): the API for a program that embeds the server, with no HTTP and
# no port. A call goes through its route's own handler (_ROUTES) with its body validated
# as an HTTP request's is, so validation, storage and errors are the route's: it returns
# the same pydantic models, and raises EverrunsError (.status, .code, .message) where the
# route answers an error.


def _usable_here(ctx: _Ctx) -> None:
    """Refuse a call that cannot work: a process gevent has not patched (every greenlet would
    share one database connection), or another OS thread (a threaded=True tool's)."""
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        raise RuntimeError("app.client needs a gevent-patched process: call gevent.monkey.patch_all() first "
                           "thing in your program, before importing everruns")  # fmt: skip
    if _os_thread() != ctx.thread:
        raise RuntimeError("app.client is used from the thread that created the app (gevent's), not from "
                           "another (a threaded=True tool returns its value instead)")  # fmt: skip


def _call(ctx: _Ctx, method: str, route: str, body: dict | None = None, query: dict | None = None, /,
          **params: str) -> Any:  # fmt: skip
    """What the route `method route` answers, as a model (an error: raised)."""
    _usable_here(ctx)
    spec = next(r for r in _ROUTES if r.method == method and r.path == route)
    if any("\x00" in v for v in params.values()):
        raise _NotFound("no such resource")
    parsed = None
    if spec.body is not None:
        raw = _dumps(pydantic_core.to_jsonable_python({} if body is None else body))  # models it returned, too
        _refuse_nul(raw, ["body"])
        try:
            parsed = spec.body.model_validate_json(raw, context=ctx.validation)
        except ValidationError as e:
            raise _validation_error(e, "body") from None
    try:
        query = spec.query.model_validate(query or {}) if spec.query else None
    except ValidationError as e:
        raise _validation_error(e, "query") from None
    result = _handled(ctx, spec, _Request(parsed, query, {}), params)
    return _unwrapped(result[1] if isinstance(result, tuple) else result)


def _unwrapped(model: Any) -> Any:
    """A model that is one of several shapes (a RootModel: a provider, a file) as its shape."""
    return model.root if isinstance(model, pydantic.RootModel) else model


def _every(ctx: _Ctx, path: str, **params: str) -> list:
    """Every item of a listing, following its pages."""
    items, after = [], None
    while True:
        page = _call(ctx, "GET", path, None, {"limit": PAGE_MAX, "after": after}, **params)
        items.extend(_unwrapped(item) for item in page.data)
        if not page.has_more:
            return items
        after = page.next_after


class _Resources:
    """A resource of the API: list (every item) and get."""

    def __init__(self, ctx: _Ctx, path: str, param: str) -> None:
        self._ctx, self._path, self._one, self._param = ctx, path, f"{path}/<{param}>", param

    def list(self) -> list:
        return _every(self._ctx, self._path)

    def get(self, resource_id: str) -> Any:
        return _call(self._ctx, "GET", self._one, **{self._param: resource_id})


class _WritableResources(_Resources):
    """A resource the API also creates, updates and deletes."""

    def create(self, **fields: Any) -> Any:
        return _call(self._ctx, "POST", self._path, fields)

    def update(self, resource_id: str, **fields: Any) -> Any:
        return _call(self._ctx, "PATCH", self._one, fields, **{self._param: resource_id})

    def delete(self, resource_id: str) -> None:
        _call(self._ctx, "DELETE", self._one, **{self._param: resource_id})


class _EventObjects(_SseFrames):
    """The stream as event models (the in-process client's renderer of _stream)."""

    start = ping = done = None

    def stored(self, seq: int, type_: str, text: str) -> Any:
        return Event.model_validate_json(text).root if self.wanted(type_) else None

    def live(self, item: _Published) -> Any:
        text = item.frame.partition(b"data: ")[2][:-2]  # the event as JSON text (see _sse_frame)
        return Event.model_validate_json(text).root if self.wanted(item.type) else None

    def closing(self, reason: str) -> None:
        self.ended = reason  # slow_client: the reader resumes from what it has (see _SessionHandle._events)

    def join(self, out: list) -> list:
        return out


class _SessionFiles:
    """A session's files: read, write, list, mkdir, delete (FsFile and FsDirectory models)."""

    def __init__(self, ctx: _Ctx, session_id: str) -> None:
        self._ctx, self._id = ctx, session_id

    def _node(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> Any:
        route, params = "/v1/sessions/<session_id>/fs", {"session_id": self._id}
        if path.strip("/"):
            route, params["path"] = route + "/<path:path>", path.lstrip("/")
        elif method != "GET":
            raise _invalid(["path"], "the root directory cannot be written or deleted")
        return _call(self._ctx, method, route, body, query, **params)

    def read(self, path: str) -> Any:
        """A file (its content) or a directory (its entries)."""
        return self._node("GET", path)

    def list(self, path: str = "/") -> list:
        node = self.read(path)
        if not isinstance(node, FsDirectory):
            raise _Conflict(f"{node.path} is a file, not a directory")
        return node.entries

    def write(self, path: str, content: str, encoding: str = "text") -> Any:
        return self._node("PUT", path, {"content": content, "encoding": encoding})

    def mkdir(self, path: str) -> Any:
        return self._node("PUT", path, {"type": "directory"})

    def delete(self, path: str, recursive: bool = False) -> None:
        self._node("DELETE", path, query={"recursive": recursive})


class _SessionHandle:
    """A session of the in-process client (app.client.sessions.create or .get)."""

    def __init__(self, ctx: _Ctx, session: Session) -> None:
        self._ctx, self.id, self.session = ctx, session.id, session
        self.files = _SessionFiles(ctx, session.id)

    def __repr__(self) -> str:
        return f"<session {self.id}>"

    def _at(self, method: str, suffix: str = "", body: dict | None = None, **params: str) -> Any:
        return _call(self._ctx, method, "/v1/sessions/<session_id>" + suffix, body, session_id=self.id, **params)

    def get(self) -> Session:
        """The session as stored now."""
        self.session = self._at("GET")
        return self.session

    def update(self, **fields: Any) -> Session:
        self.session = self._at("PATCH", body=fields)
        return self.session

    def delete(self) -> None:
        self._at("DELETE")

    def send(self, text: str, **controls: Any) -> Message:
        """Post a user message (controls: provider_id, model, temperature, max_iterations);
        the stored message. Its turn runs in the background."""
        return self._at("POST", "/messages", {"content": text, **({"controls": controls} if controls else {})})

    def messages(self) -> list[Message]:
        return _every(self._ctx, "/v1/sessions/<session_id>/messages", session_id=self.id)

    def cancel(self) -> Any:
        return self._at("POST", "/cancel")

    def approve(self, tool_call_id: str, approved: bool = True, reason: str | None = None) -> Session:
        body = {"approved": approved, "reason": reason}
        return self._at("POST", "/tool-calls/<tool_call_id>/approval", body, tool_call_id=tool_call_id)

    def tool_result(self, tool_call_id: str, result: Any, is_error: bool = False) -> Session:
        return self._at("POST", "/tool-results", {"tool_call_id": tool_call_id, "result": result, "is_error": is_error})

    def stream(self, after: int = 0, *, types: str | None = None, until: str | None = None) -> Iterator[Any]:
        """The session's events after seq `after`, stored then live, as the SSE stream carries
        them (message.delta too); until="completed" ends it once the session is settled."""
        try:
            query = EventsQuery.model_validate({"after": after, "types": types, "until": until})
        except ValidationError as e:
            raise _validation_error(e, "query") from None
        self._at("GET")  # a missing session is a 404 now, not at the first event
        return self._events(query)

    def _events(self, query: EventsQuery) -> Iterator[Any]:
        """The stream; a reader too slow for its queue is cut off as an HTTP client is, and
        resumes from the last stored event it got, as an HTTP client does with Last-Event-ID."""
        cursor = query.after or 0
        while True:
            frames = _EventObjects(_type_matcher(query.types))
            frames.ended = None
            for piece in _stream(self._ctx, self.id, cursor, frames, query.until == "completed"):
                for event in piece if isinstance(piece, list) else [piece]:
                    if event is not None:
                        cursor = event.seq if event.seq is not None else cursor
                        yield event
            if frames.ended != "slow_client":
                return

    def ask(self, text: str, timeout: float | None = 60.0, **controls: Any) -> str:
        """Send a message and wait for its turn: the answer's text. A failed or cancelled turn
        raises TurnFailed (its code); no answer within `timeout` s: TimeoutError (the turn
        goes on: cancel() stops it)."""
        _usable_here(self._ctx)
        after = _last_seq(self._ctx.store.m, self.id)  # its events follow: they are read from there
        self._ctx.store.release()
        events = self.stream(after=after)
        expired = None if timeout is None else TimeoutError(f"no answer within {timeout:g} s (the turn goes on; "
                                                            "cancel() stops it)")  # fmt: skip
        try:
            with gevent.Timeout(timeout, expired):
                return self._answer(self.send(text, **controls), events)
        finally:
            events.close()

    def _answer(self, message: Message, events: Iterator[Any]) -> str:
        turn_id, answer = None, ""
        for event in events:
            if event.type == "session.started" and message.id in event.data.input_message_ids:
                turn_id = event.turn_id
            elif turn_id is None or event.turn_id != turn_id:
                continue
            elif event.type == "message.created" and event.data.message.role == "assistant":
                answer = "\n".join(p.text for p in event.data.message.content if p.type == "text")
            elif event.type == "session.completed":
                data = event.data
                if data.status == TURN_COMPLETED:
                    return answer
                if data.status == TURN_CANCELLED:
                    raise TurnFailed("CANCELLED", "the turn was cancelled", turn_id=turn_id, turn_status=data.status)
                raise TurnFailed(data.error.code, data.error.message, turn_id=turn_id, turn_status=data.status)
        raise TurnFailed("STREAM_ENDED", "the session's events ended before its turn did", turn_id=turn_id)


class _Sessions:
    """app.client.sessions: create and get return a session handle."""

    def __init__(self, ctx: _Ctx) -> None:
        self._ctx = ctx

    def create(self, agent_id: str, **fields: Any) -> _SessionHandle:
        session = _call(self._ctx, "POST", "/v1/agents/<agent_id>/sessions", fields, agent_id=agent_id)
        return _SessionHandle(self._ctx, session)

    def get(self, session_id: str) -> _SessionHandle:
        return _SessionHandle(self._ctx, _call(self._ctx, "GET", "/v1/sessions/<session_id>", session_id=session_id))

    def list(self, agent_id: str) -> list[Session]:
        """An agent's sessions, newest first."""
        return _every(self._ctx, "/v1/agents/<agent_id>/sessions", agent_id=agent_id)

    def delete(self, session_id: str) -> None:
        _call(self._ctx, "DELETE", "/v1/sessions/<session_id>", session_id=session_id)


class _Client:
    """The in-process client: providers, agents, capabilities, mcp_servers, sessions."""

    def __init__(self, ctx: _Ctx) -> None:
        self.providers = _WritableResources(ctx, "/v1/llm-providers", "provider_id")
        self.agents = _WritableResources(ctx, "/v1/agents", "agent_id")
        self.capabilities = _Resources(ctx, "/v1/capabilities", "capability_id")
        self.mcp_servers = _WritableResources(ctx, "/v1/mcp-servers", "server_id")
        self.sessions = _Sessions(ctx)


# =============================================================================
# 17. App factory and serving
# =============================================================================


def _seed_env_providers(store: _Store, env: Mapping[str, str]) -> None:
    """Create (once) a provider for OPENAI_API_KEY / ANTHROPIC_API_KEY."""
    m = store.m
    for kind, var, name in (("openai", "OPENAI_API_KEY", "OpenAI"), ("anthropic", "ANTHROPIC_API_KEY", "Anthropic")):
        if not env.get(var):
            continue
        with store.write():
            store.starting()
            if m.Meta.get_or_none(m.Meta.key == f"env_provider:{kind}") is not None:
                continue
            row = store.add_provider(name, kind, api_key=env[var])
            m.Meta.create(key=f"env_provider:{kind}", value=row.id)
            _log.info("created provider %r from %s", name, var)


def _apply_default_provider(store: _Store, wanted: str | None) -> None:
    """Make the provider named by id, name or type the default."""
    if not wanted:
        return
    m = store.m
    with store.write():
        store.starting()
        match = (
            m.Provider.select()
            .where((m.Provider.id == wanted) | (m.Provider.name == wanted) | (m.Provider.provider_type == wanted))
            .order_by(m.Provider.id)
            .first()
        )
        if match is None:
            raise StartupError(f"--default-provider: no provider has the id, name or type {wanted!r}", 2)
        _make_default(m, match.id)


def create_app(db: str = "everruns.db", *, env: Mapping[str, str] | None = None, tools: Iterable[Callable] = (),
               hooks: Mapping[str, Callable | Iterable[Callable]] | None = None,
               **options: Any) -> bottle.Bottle:  # fmt: skip
    """A WSGI application with its own database, and what an embedding program uses
    (SPEC 14): app.tool, app.capability, app.on, app.client.

    ``options`` are the names of SETTINGS (``api_key``, ``sync``, ...), checked as
    the command line checks them (ValueError names a bad one); ``env`` is where
    provider keys are read from (default: ``os.environ``); ``tools`` are functions
    made tools of this app (in the capability "python", or as everruns.tool marked them);
    ``hooks`` maps event types to hooks (a function or several), as app.on: these see the
    events the start stores too (turns a crash interrupted, closed).
    """
    env = os.environ if env is None else env
    config = {**_settings(options), "db": db}
    mcp = _mcp_servers(config["mcp_config"])  # checked before anything is opened
    capabilities = collections.ChainMap({server.id: server for server in mcp}, {}, CAPABILITIES)  # MCP, Python
    for function in tools:  # checked before anything is opened too
        marked = dict(getattr(function, "__everruns_tool__", {"capability": PYTHON_CAPABILITY}))
        _register_tool(capabilities, marked.pop("capability"), _python_tool(function, **marked))
    if config["metrics_auth"] and not config["api_key"]:
        raise StartupError("--metrics-auth needs --api-key: without one there is no key to ask for", 2)
    obs = _Observer(tracing=_tracing(config, env))
    try:
        store = _Store(db, config["sync"], config["secret_key"] or env.get("EVERRUNS_SECRET_KEY"), obs)
    except BaseException:
        obs.close()
        raise
    try:
        store.migrate()
        with store.write():
            store.starting()
            store.secrets.load(store.m)
        _seed_env_providers(store, env)
        _apply_default_provider(store, config["default_provider"] or env.get("EVERRUNS_DEFAULT_PROVIDER"))
    except pw.DatabaseError as e:  # not a SQLite file, corrupted, read-only, locked, ...
        store.close()
        obs.close()
        reason = " ".join(str(e).split())  # one line (the driver's messages may have several)
        raise StartupError(f"--db: {_shown_db(db)} cannot be used as the database: {reason}") from None
    except BaseException:
        store.close()
        obs.close()
        raise
    store.release()
    journal = _Journal(store, _Bus(_event_reader(store) if store.postgres else None), config["check_events"])
    for event_type, wanted in (hooks or {}).items():
        for hook in [wanted] if callable(wanted) else wanted:
            journal.hooks.add(event_type, hook)
    scheduler = _Scheduler(journal, config, capabilities)
    journal.busy = scheduler.busy
    ctx = _Ctx(store=store, config=config, journal=journal, scheduler=scheduler, capabilities=capabilities, mcp=mcp)
    obs.metrics.instance = INSTANCE if store.postgres else None  # several processes: told apart
    obs.metrics.gauges = functools.partial(_gauges, ctx)
    if config["retention_days"]:
        ctx.retention = gevent.spawn(_retention, ctx)
    _sync_mcp(ctx)  # the MCP servers of the API too, before any turn may need them
    ctx.cluster = _Cluster(store, journal.bus, scheduler) if store.postgres else None
    if ctx.cluster is not None:
        ctx.cluster.on_mcp = functools.partial(_sync_mcp, ctx)  # another process changed them
        ctx.cluster.start()  # before the first request: dead processes' turns closed, owed ones started
    else:
        scheduler.recover()  # before the first request: interrupted turns closed, owed ones started
    store.release()
    ctx.log_filter = _RedactingFilter(lambda: (*store.secrets.known, config["api_key"]))
    _log.addFilter(ctx.log_filter)
    logging.getLogger("peewee").addFilter(ctx.no_statements)
    app = _App()
    app.guard = _Guard(config)
    app.add_hook("before_request", _auth_hook(config["api_key"], config["metrics_auth"]))
    app.access_log = config["access_log"]
    for spec in _ROUTES:
        app.route(spec.path, spec.method, _callback(ctx, spec))
    re.purge()  # bottle compiles its routes' combined pattern anew for each route added: 0.6 MB of stale ones
    app.everruns = ctx
    app.client = _Client(ctx)
    app.close = lambda: _close(ctx)
    return app


def _close(ctx: _Ctx) -> None:
    """Give running turns the grace period, interrupt the rest, end the streams, close the database."""
    if ctx.retention is not None:
        ctx.retention.kill(_Stop)
    ctx.scheduler.shutdown(float(ctx.config["shutdown_grace"]))
    ctx.journal.hooks.close(HOOKS_GRACE_S)  # the hooks of the turns' last events
    if ctx.cluster is not None:
        ctx.cluster.stop()
    for server in [*ctx.mcp, *ctx.mcp_api.values()]:  # their programs stop
        server.close()
    ctx.bus.close()
    ctx.store.close()
    ctx.obs.close()  # the spans still queued are sent
    _log.removeFilter(ctx.log_filter)
    logging.getLogger("peewee").removeFilter(ctx.no_statements)


def _require_patched() -> None:
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        raise RuntimeError("serve() needs a gevent-patched process: call gevent.monkey.patch_all() first")
    _check_greenlet_local()


def _is_loopback(host: str) -> bool:
    name = _host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _check_bind(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse to listen beyond this machine without an API key (unless told it is safe)."""
    if not _is_loopback(host) and not api_key and not insecure:
        raise RuntimeError(
            f"refusing to listen on {host} without an API key: anyone who can reach it could use your "
            "providers' keys. Set --api-key (or EVERRUNS_API_KEY), or --insecure on a trusted network."
        )


# ---- the HTTP server ----------------------------------------------------------
# pywsgi with what a server facing the open network needs: a deadline for
# request bytes (a client sending one byte a second is not idle), strict
# framing (no request smuggling behind a proxy), the error envelope on every
# answer it writes itself, one log line for client misbehaviour, and a cap on
# connections that never stops the server from answering.


DRAIN_BYTES = 64 * 1024  # a refused body up to this size is read and dropped: the connection stays open
DRAIN_S_MAX = 5.0  # and it has this long to arrive (or --request-timeout, if shorter)
LINGER_S = 2.0  # a connection closed with part of a body unread drops what still comes this long,
LINGER_BYTES = 16 * 1024 * 1024  # up to this much, so that its client reads the answer (see _Handler._linger)


def _raw_error(error: EverrunsError, *headers: tuple[str, str]) -> bytes:
    """A whole HTTP/1.1 error response with the envelope, closing the connection."""
    body = _error_body(error.status, error.message, error.code).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", f"Content-Type: {JSON_TYPE}",
             f"Content-Length: {len(body)}", "Connection: close", f"X-Request-Id: {_request_id(None)}",
             *(f"{k}: {v}" for k, v in headers)]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # what a header name may be (RFC 9110)


def _check_framing(pairs: list[tuple[str, str]]) -> None:
    """Refuse what two HTTP parsers could read as different requests (400)."""
    lengths = [v for k, v in pairs if k.lower() == "content-length"]
    codings = [v for k, v in pairs if k.lower() == "transfer-encoding"]
    if not all(_TOKEN.fullmatch(k) for k, _ in pairs):
        problem = "a header name that is not a token (white space before the colon?)"
    elif len(lengths) > 1:
        problem = "more than one Content-Length header"
    elif lengths and codings:
        problem = "Content-Length and Transfer-Encoding together"
    elif lengths and not re.fullmatch(r"[0-9]{1,18}", lengths[0].strip()):
        problem = "Content-Length is not a whole number"
    elif codings and (len(codings) > 1 or codings[0].strip().lower() != "chunked"):
        problem = "only Transfer-Encoding: chunked is accepted"
    elif any("\n" in v or "\r" in v for _, v in pairs):
        problem = "folded header lines are not accepted"
    else:
        return
    raise _BadRequest(f"malformed HTTP request: {problem}")


def _client_error(error: BaseException) -> EverrunsError:
    """What to answer a request pywsgi could not read."""
    import http.client

    if isinstance(error, EverrunsError):
        return error
    if isinstance(error, http.client.HTTPException) or "Line too long" in str(error):
        return _HeadersTooLarge("too many request headers, or one too long")
    return _BadRequest("malformed HTTP request")


class _Input(gevent.pywsgi.Input):
    """A request body. What the app left unread is never waited for: the handler
    drops a small rest before it answers, or closes the connection (see
    _Handler.start_response), so that no body is ever read as a request."""

    def _discard(self) -> None:
        pass

    def drop_rest(self, deadline: float) -> bool:
        """Read and drop what the app left of a small body (never asking for a body the
        client holds back for a 100 Continue); False when the connection must close instead."""
        left = (self.content_length or 0) - self.position
        if left <= 0 and not self.chunked_input:
            return True
        if self.chunked_input or left > DRAIN_BYTES or self.socket is not None:  # socket: 100 Continue unsent
            return False
        try:
            with gevent.Timeout(deadline):
                while self.read(16384):
                    pass
        except (gevent.Timeout, OSError, ValueError):
            return False
        return True


class _StrictLines:
    """The request's header lines as http.client reads them, refused unless each ends
    with CRLF and holds no NUL: what two HTTP parsers could read differently."""

    def __init__(self, rfile: Any) -> None:
        self.rfile = rfile

    def readline(self, limit: int = -1) -> bytes:
        line = self.rfile.readline(limit)
        if b"\x00" in line:
            raise _BadRequest("malformed HTTP request: a NUL byte in a header")
        if line and not line.endswith(b"\r\n") and (limit < 0 or len(line) < limit):
            raise _BadRequest("malformed HTTP request: a header line that does not end with CRLF")
        return line


class _Handler(gevent.pywsgi.WSGIHandler):
    """pywsgi's handler with deadlines, strict framing and the error envelope."""

    server: Any

    def handle(self) -> None:
        """Serve the connection; a client gone while an error answer is written is routine."""
        try:
            super().handle()
        except OSError as e:
            _log.debug("connection from %s: %s", self.client_address[0], e)

    def read_requestline(self) -> str:
        """Wait for a request (the idle timeout applies), then start its deadline."""
        self.server.connections.waiting(True)
        self.rfile.peek(1)
        too_slow = _RequestTimeout("the request did not arrive within --request-timeout")
        self._deadline = gevent.Timeout.start_new(self.server.request_timeout, too_slow)
        return super().read_requestline()

    def read_request(self, raw_requestline: str) -> bool:
        """Parse the request line and headers, within the deadline; strictly (see _StrictLines)."""
        try:
            if not raw_requestline.endswith("\r\n") or "\x00" in raw_requestline:
                raise _BadRequest("malformed HTTP request: a request line that does not end with CRLF")
            parsed = super().read_request(raw_requestline)
            if self.request_version != "HTTP/1.1" and "transfer-encoding" in self.headers:
                raise _BadRequest(f"malformed HTTP request: Transfer-Encoding in an {self.request_version} request")
            return parsed
        finally:
            self._deadline.cancel()

    def handle_one_request(self) -> Any:
        """pywsgi's, with the deadline over the request line too and the envelope on its own answers."""
        try:
            result = super().handle_one_request()
        except _RequestTimeout as e:  # still in the request line
            result = self._handle_client_error(e)
        finally:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
        if isinstance(result, tuple) and JSON_TYPE.encode() not in result[1]:  # pywsgi's own, bodiless
            too_long = result[0] == "414"
            error = _UriTooLong("the request line is too long") if too_long else _BadRequest("malformed HTTP request")
            result = (result[0], _raw_error(error))
        return result

    def MessageClass(self, rfile: Any, *args: Any) -> Any:
        """The request headers, refused when their framing is ambiguous."""
        import email.errors

        headers = super().MessageClass(_StrictLines(rfile), *args)
        unreadable = (email.errors.MissingHeaderBodySeparatorDefect, email.errors.FirstHeaderLineIsContinuationDefect)
        if any(isinstance(d, unreadable) for d in getattr(headers, "defects", ())):  # "Content-Length : 12"
            raise _BadRequest("malformed HTTP request: a header line that cannot be read")
        _check_framing(list(getattr(headers, "_headers", ())))
        return headers

    def log_request(self) -> None:
        """Nothing: pywsgi formats a line for every request, which it then drops (its log is off;
        --access-log writes this server's own lines)."""

    def _handle_client_error(self, ex: BaseException) -> tuple[str, bytes]:
        """The answer to a request that could not be read: the envelope, one debug line."""
        error = _client_error(ex)
        _log.debug("bad request from %s: %s", self.client_address[0], ex)
        return str(error.status), _raw_error(error)

    def get_environ(self) -> dict:
        """pywsgi's environ, with a body that is never waited for once the app is done, and the
        connection's socket (a stream watches it for the client leaving)."""
        environ = super().get_environ()
        environ["everruns.socket"] = self.socket
        if environ["wsgi.input"] is self.wsgi_input:
            self.wsgi_input = environ["wsgi.input"] = _Input(
                self.rfile,
                self.content_length,
                socket=self.wsgi_input.socket,
                chunked_input=self.wsgi_input.chunked_input,
            )
        return environ

    def start_response(self, status: str, headers: list, exc_info: Any = None) -> Any:
        """pywsgi's, once what the app left of the body is dropped, or with Connection: close."""
        if not self.wsgi_input.drop_rest(min(self.server.request_timeout, DRAIN_S_MAX)):
            self.close_connection = True
            headers = [*(h for h in headers if h[0].lower() != "connection"), ("Connection", "close")]
        return super().start_response(status, headers, exc_info)

    def handle_one_response(self) -> None:
        """Run the app; close the connection if it left part of the body unread."""
        self.server.connections.waiting(False)
        super().handle_one_response()
        body = self.wsgi_input
        if body.chunked_input or body.position < (body.content_length or 0):
            self.close_connection = True  # the rest of the body was not read
            self._linger()

    def _linger(self) -> None:
        """Before closing a connection whose client may still be sending: end the answer
        (FIN) and drop what arrives, for a bounded time and size. Closed at once, the
        unread bytes would reset the connection, and with it the answer the client has
        not read yet (a 413 lost to a client still sending). The connection may be
        replaced meanwhile, like an idle one, when the server is at its cap."""
        self.server.connections.waiting(True)
        try:
            self.socket.shutdown(socket.SHUT_WR)
            left = LINGER_BYTES
            with gevent.Timeout(LINGER_S, False):
                while left > 0 and (data := self.socket.recv(65536)):
                    left -= len(data)
        except OSError:
            pass

    def _send_error_response_if_possible(self, error_code: int) -> None:
        """pywsgi's late 400/500, in the envelope."""
        if self.response_length:
            self.close_connection = True
            return
        status = 400 if error_code == 400 else 500
        body = _error_body(status, "malformed HTTP request" if status == 400 else "internal server error").encode()
        headers = [("Content-Type", JSON_TYPE), ("Connection", "close"), ("Content-Length", str(len(body)))]
        try:
            self.start_response(f"{status} {HTTPStatus(status).phrase}", headers)
            self.write(body)
        except OSError:
            self.close_connection = True

    def _log_error(self, t: type, v: BaseException, tb: Any) -> None:
        """An error while answering: a vanished client is one debug line, anything else a logged traceback."""
        if isinstance(v, OSError):  # a timed-out or vanished client: routine
            _log.debug("connection from %s: %s", self.client_address[0], v)
        elif not isinstance(v, gevent.GreenletExit):
            _log.error("internal error while answering", exc_info=(t, v, tb))

    def log_error(self, msg: str, *args: Any) -> None:
        """pywsgi's notes about clients: debug lines."""
        _log.debug("pywsgi: " + msg, *args)


class _Connections(gevent.pool.Pool):
    """The server's connections, at most `cap`. At the cap a new connection replaces
    the one that has waited longest for request bytes (an idle keep-alive or a slow
    client); when every one is busy it is answered 503 at once."""

    def __init__(self, cap: int) -> None:
        super().__init__()  # unbounded: the cap is kept here, so accepting never stops
        self.cap = cap
        self._waiting: dict[Any, float] = {}  # greenlet -> since when

    def waiting(self, yes: bool) -> None:
        """The calling connection waits for request bytes (yes) or is being answered."""
        current = gevent.getcurrent()
        if yes:
            self._waiting.setdefault(current, time.monotonic())
        else:
            self._waiting.pop(current, None)

    def spawn(self, func: Callable, handle: Callable, close: Callable, args: tuple) -> Any:
        """Serve a new connection, making room at the cap (see the class)."""
        if len(self) >= self.cap:
            if not self._waiting:
                busy = _ServiceUnavailable("the server is at --max-connections")
                with contextlib.suppress(OSError):
                    args[0].sendall(_raw_error(busy, ("Retry-After", "1")))
                close(*args)
                return None
            oldest = min(self._waiting, key=self._waiting.__getitem__)
            del self._waiting[oldest]
            oldest.kill(block=False)
        greenlet = super().spawn(func, handle, close, args)
        self._waiting[greenlet] = time.monotonic()  # waiting for its first request
        greenlet.rawlink(lambda done: self._waiting.pop(done, None))
        return greenlet


class _Server(gevent.pywsgi.WSGIServer):
    """The WSGI server: TCP_NODELAY, the idle timeout, and the handler above."""

    handler_class = _Handler

    def __init__(self, address: tuple[str, int], app: Any, config: dict) -> None:
        self.connections = _Connections(int(config["max_connections"]))
        self.idle_timeout, self.request_timeout = float(config["idle_timeout"]), float(config["request_timeout"])
        # A backlog as deep as the cap (within the kernel's usual limit): a burst of connections
        # waits there to be accepted instead of having its SYNs dropped and retried a second later.
        backlog = min(max(self.connections.cap, 128), 4096)
        # SERVER_NAME given: pywsgi would otherwise look the address up in reverse DNS at start,
        # in a thread pool that then stays (a thread and its memory, for a name nobody uses).
        super().__init__(address, app, log=None, error_log=_log, spawn=self.connections, backlog=backlog,
                         environ={"SERVER_NAME": address[0]})  # fmt: skip

    def handle(self, sock: Any, address: Any) -> None:
        # Events are small writes: without TCP_NODELAY, Nagle's algorithm
        # holds each one back until the client's delayed ACK (~40 ms).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.idle_timeout)  # a silent client, or one that stops reading, is let go
        super().handle(sock, address)


def serve(
    app: bottle.Bottle, host: str = "127.0.0.1", port: int = 9000, *, ready: Callable[[], None] | None = None
) -> None:
    """Serve one app with gevent until Ctrl-C or SIGTERM, then shut down gracefully.

    Refuses a non-loopback address unless the app has an API key or ``insecure``.
    """
    _require_patched()
    config = app.everruns.config
    _check_bind(host, config["api_key"], config["insecure"])
    if app.guard.hosts is not None:
        app.guard.hosts.add(_host_name(host))
    server = _Server((host, port), app, config)
    stopping = gevent.event.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(sig, stopping.set)
    try:
        server.start()
    except OSError as e:
        app.close()
        raise StartupError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if ready:
        ready()
    _give_back_memory()
    _sd_notify(f"READY=1\nSTATUS=listening on {host}:{port}\nMAINPID={os.getpid()}")
    interval = _watchdog_interval(os.environ)
    watchdog = gevent.spawn(_watchdog, interval) if interval else None
    stopping.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C: stop now (the next start recovers)
        gevent.signal_handler(sig, functools.partial(os._exit, 128 + sig))
    _log.info("shutting down (Ctrl-C again to stop at once)")
    _sd_notify("STOPPING=1")
    server.close()  # no new connections; running requests and streams go on
    app.close()
    server.stop(timeout=1)
    if watchdog is not None:
        watchdog.kill()
    _log.info("stopped")


def _give_back_memory() -> None:
    """Return the heap that starting up freed to the system (glibc keeps it otherwise).

    Without a bytecode cache, compiling this module leaves about 17 MB of freed memory in the
    process: the idle server is then 65 MB instead of 48 (Python 3.11)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to give back this way
        pass


# ---- systemd: readiness and the watchdog through the notification socket (sd_notify(3)),
# for a unit with Type=notify and WatchdogSec= (the README has one); nothing without it.


def _sd_notify(state: str) -> bool:
    """Send systemd one notification (READY=1, WATCHDOG=1, STOPPING=1, ...) when it asked for
    them (NOTIFY_SOCKET: a path, or @ for an abstract socket); whether it was sent."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path.startswith(("/", "@")):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + path[1:] if path.startswith("@") else path)
            s.sendall(state.encode())
    except OSError as e:
        _log.warning("could not notify systemd (%s): %s", path, e)
        return False
    return True


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between watchdog pings: half of WATCHDOG_USEC (sd_watchdog_enabled(3)), when it is
    set for this process; None without a watchdog."""
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def _watchdog(interval: float) -> None:
    """Ping systemd's watchdog while the event loop runs (a blocked loop misses its pings:
    systemd restarts the service)."""
    while True:
        _sd_notify("WATCHDOG=1")
        gevent.sleep(interval)


# =============================================================================
# 18. Console
# =============================================================================

# One page for people: providers, agents, sessions, the live conversation with tool
# cards, cancel, and the session's files. Plain HTML, CSS and JavaScript, no build
# step and nothing from another origin (the CSP says so to the browser too).

_CONSOLE_HTML = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Everruns console</title>
<meta name="everruns-key" content="{key}">
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/console.css">
<script src="/console.js" defer></script>
</head>
<body>
<header>
  <h1>Everruns</h1>
  <nav>
    <button type="button" id="show-chat" aria-pressed="true">Chat</button>
    <button type="button" id="show-providers" aria-pressed="false">Providers</button>
    <button type="button" id="show-key">Key</button>
  </nav>
</header>
<div id="status" role="status" aria-live="polite"></div>
<form id="key-form" hidden>
  <p>This server needs its API key.</p>
  <label>API key <input id="api-key" type="password" autocomplete="off" required></label>
  <button type="submit">Use key</button>
</form>
<main id="chat-view">
  <aside id="sidebar">
    <section>
      <div class="row"><h2>Agents</h2><button type="button" id="new-agent">New agent</button></div>
      <ul id="agents" aria-label="Agents"></ul>
    </section>
    <section id="sessions-section" hidden>
      <div class="row"><h2>Sessions</h2><button type="button" id="new-session">New session</button></div>
      <ul id="sessions" aria-label="Sessions"></ul>
    </section>
  </aside>
  <section id="center">
    <form id="agent-form" hidden>
      <h2 id="agent-form-title">New agent</h2>
      <label>Name <input id="agent-name" required maxlength="256"></label>
      <label>System prompt <textarea id="agent-prompt" rows="3"></textarea></label>
      <fieldset><legend>Capabilities</legend><div id="capabilities"></div></fieldset>
      <label>Provider <select id="agent-provider"></select></label>
      <label>Model <input id="agent-model" list="models" placeholder="the provider's default"></label>
      <datalist id="models"></datalist>
      <fieldset><legend>Fallback providers, in order (when a call cannot reach the provider)</legend>
        <div id="agent-fallbacks"></div></fieldset>
      <label>Tools that need approval
        <input id="agent-approval" placeholder="tool names, comma-separated; * for all"></label>
      <label>Client tools (JSON) <textarea id="agent-client-tools" rows="3" spellcheck="false"
        placeholder='[{"name": "get_location", "description": "Where the user is."}]'></textarea></label>
      <label>Max iterations <input id="agent-iterations" type="number" min="1" max="100"></label>
      <div class="row">
        <button type="submit" id="agent-submit">Create</button>
        <button type="button" id="agent-cancel">Close</button>
        <button type="button" id="delete-agent" class="danger" hidden>Delete agent</button>
      </div>
    </form>
    <div id="conversation" hidden>
      <div class="row" id="session-bar">
        <h2 id="session-title"></h2>
        <button type="button" id="rename-session">Rename</button>
        <button type="button" id="delete-session" class="danger">Delete session</button>
        <button type="button" id="edit-agent">Edit agent</button>
        <span id="session-usage" class="note"></span>
      </div>
      <div id="log" role="log" aria-label="Conversation" aria-live="polite"></div>
      <form id="message-form">
        <label for="message">Message</label>
        <textarea id="message" rows="2" required></textarea>
        <div class="row">
          <button type="submit" id="send">Send</button>
          <button type="button" id="cancel-turn" class="danger" hidden>Cancel turn</button>
        </div>
      </form>
    </div>
    <p id="empty">Pick an agent, or make a new one.</p>
  </section>
  <aside id="files-panel" hidden>
    <div class="row"><h2>Files</h2><button type="button" id="refresh-files">Refresh</button></div>
    <label>Upload file <input type="file" id="upload"></label>
    <ul id="files" aria-label="Files"></ul>
    <pre id="file-view" aria-label="File content" hidden></pre>
  </aside>
</main>
<main id="providers-view" hidden>
  <section>
    <h2>LLM providers</h2>
    <ul id="providers" aria-label="Providers"></ul>
    <pre id="models-view" aria-label="Models" hidden></pre>
    <h2>MCP servers</h2>
    <ul id="mcp-servers" aria-label="MCP servers"></ul>
    <form id="mcp-form" class="row">
      <label>MCP server name <input id="mcp-name" required maxlength="32"></label>
      <label>MCP server URL <input id="mcp-url" required placeholder="https://mcp.example.com/mcp"></label>
      <button type="submit">Add MCP server</button>
    </form>
  </section>
  <form id="provider-form">
    <h2 id="provider-form-title">Add a provider</h2>
    <label>Provider name <input id="provider-name" required></label>
    <label>Type <select id="provider-type">
      <!-- the provider types -->
    </select></label>
    <label>Base URL <input id="provider-url" placeholder="e.g. http://127.0.0.1:11434/v1 for Ollama"></label>
    <label>Default model <input id="provider-model"></label>
    <label>Provider key <input id="provider-key" type="password" autocomplete="off"></label>
    <label id="provider-record-label"><input id="provider-record" type="checkbox"> Record its calls (to replay them
      offline)</label>
    <div class="row">
      <button type="submit" id="provider-submit">Add provider</button>
      <button type="button" id="provider-new" hidden>New provider</button>
    </div>
  </form>
</main>
</body>
</html>
"""

_CONSOLE_HTML = _CONSOLE_HTML.replace(
    "<!-- the provider types -->",
    "\n      ".join(
        f'<option value="{k.type}"{" data-records" if k.type in RECORDING_TYPES else ""}>'
        f"{html.escape(k.label)}</option>"
        for k in PROVIDER_KINDS.values()
    ),
)

_CONSOLE_CSS = r""":root { color-scheme: light dark; --bg: #f7f7f8; --panel: #fff; --text: #1d1d1f; --muted: #6b6b76;
  --line: #dcdce0; --accent: #2f5bd3; --on-accent: #fff; --danger: #b3261e; --user: #e6edff; --tool: #f1f1f4;
  --error: #fdecea; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #151518; --panel: #1f1f24; --text: #ececf1; --muted: #a0a0ab; --line: #34343c; --accent: #8aa8ff;
    --on-accent: #10131c;
    --danger: #ff8a80; --user: #26304d; --tool: #2a2a31; --error: #4a2624; }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 15px/1.45 system-ui, sans-serif; background: var(--bg); color: var(--text); }
header { display: flex; align-items: center; justify-content: space-between; padding: .5rem 1rem;
  border-bottom: 1px solid var(--line); background: var(--panel); }
h1 { font-size: 1.15rem; margin: 0; } h2 { font-size: 1rem; margin: 0; }
nav { display: flex; gap: .4rem; }
button { font: inherit; padding: .35rem .75rem; border: 1px solid var(--line); border-radius: 6px;
  background: var(--panel); color: var(--text); cursor: pointer; }
button[type=submit], button[aria-pressed=true] { background: var(--accent); color: var(--on-accent);
  border-color: var(--accent); }
button.danger { color: var(--danger); border-color: var(--danger); background: transparent; }
input, textarea, select { font: inherit; width: 100%; padding: .4rem; border: 1px solid var(--line);
  border-radius: 6px; background: var(--bg); color: var(--text); }
label { display: block; margin: .4rem 0; color: var(--muted); }
label > input, label > textarea, label > select { margin-top: .2rem; color: var(--text); }
fieldset { border: 1px solid var(--line); border-radius: 6px; }
fieldset label { display: inline-flex; gap: .3rem; align-items: center; margin-right: .8rem; color: var(--text); }
fieldset input { width: auto; }
.row { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; margin: .4rem 0; }
.row h2 { flex: 1; }
main { display: grid; grid-template-columns: 15rem 1fr 16rem; gap: 1rem; padding: 1rem; }
#providers-view { grid-template-columns: 1fr 22rem; }
aside, #center, #providers-view > * { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: .75rem; min-width: 0; }
ul { list-style: none; margin: .3rem 0; padding: 0; }
li { display: flex; gap: .3rem; align-items: center; }
li > button.pick { flex: 1; text-align: left; border: 0; background: transparent; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
li > button.pick[aria-current=true] { background: var(--user); }
#log { height: 55vh; overflow-y: auto; display: flex; flex-direction: column; gap: .5rem; padding: .3rem; }
.msg { max-width: 85%; padding: .5rem .7rem; border-radius: 10px; white-space: pre-wrap; overflow-wrap: anywhere; }
.msg.user { align-self: flex-end; background: var(--user); }
.msg.assistant { align-self: flex-start; border: 1px solid var(--line); white-space: normal; }
.msg.thinking { color: var(--muted); font-style: italic; }
.msg.assistant ul, .trace ol { list-style: disc; padding-left: 1.3rem; } .msg.assistant ol { padding-left: 1.3rem; }
.msg.assistant ol, .trace ol { list-style: decimal; } .msg.assistant li, .trace li { display: list-item; }
.msg.assistant code { font-family: ui-monospace, monospace; background: var(--bg); padding: 0 .2rem; }
.trace { font-size: .9rem; } .trace pre { margin: .2rem 0 .5rem; }
.msg.assistant > :first-child { margin-top: 0; } .msg.assistant > :last-child { margin-bottom: 0; }
.msg.assistant pre { position: relative; padding: .5rem; overflow-x: auto; white-space: pre; }
.msg.assistant pre button { position: absolute; top: .2rem; right: .2rem; font-size: .75rem; }
.msg.assistant table { border-collapse: collapse; } .msg.assistant th, .msg.assistant td {
  border: 1px solid var(--line); padding: .2rem .4rem; }
.msg.assistant blockquote { margin-left: 0; padding-left: .6rem; border-left: 3px solid var(--line); }
.card { align-self: stretch; background: var(--tool); border-left: 4px solid var(--accent); border-radius: 6px;
  padding: .4rem .6rem; }
.card.error { border-left-color: var(--danger); background: var(--error); }
.card pre, #file-view, #models-view { margin: .2rem 0; white-space: pre-wrap; overflow-wrap: anywhere;
  font: 13px/1.4 ui-monospace, monospace; }
.note { color: var(--muted); font-size: .9em; }
.decide { display: flex; gap: .5rem; align-items: center; margin-top: .3rem; }
.note.failed { color: var(--danger); }
#status { padding: 0 1rem; color: var(--danger); min-height: 1.2em; }
#key-form { max-width: 24rem; margin: 1rem auto; }
@media (max-width: 900px) {
  main, #providers-view { grid-template-columns: 1fr; padding: .5rem; }
  #log { height: 45vh; }
  main:has(#conversation:not([hidden])) > #center { order: -1; }  /* an open session first: Message on screen */
}
"""

_CONSOLE_JS = r""""use strict";
// The Everruns console: plain JavaScript over the HTTP API. Everything a model, a
// tool or a person wrote is put on the page as text (text nodes), never as HTML: an
// answer's Markdown is built as DOM nodes (markdown, below).

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("everruns-key") || "", agents: [], agent: null, session: null,
  providers: [], capabilities: [], seq: 0, stream: null, running: false, texts: {} };

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") node.className = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);  // strings become text nodes
  return node;
}

function say(text) { $("status").textContent = text || ""; }

async function api(method, path, body) {
  const headers = {};
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) { askKey(); throw new Error("this server needs its API key"); }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.error ? data.error.message : `${response.status}`);
  return data;
}

async function all(path) {
  let items = [], after = "";
  for (;;) {
    const page = await api("GET", `${path}${path.includes("?") ? "&" : "?"}limit=100${after}`);
    items = items.concat(page.data);
    if (!page.has_more) return items;
    after = `&after=${encodeURIComponent(page.next_after)}`;
  }
}

function guard(fn) {
  return async (event) => {
    if (event && event.preventDefault) event.preventDefault();
    try { say(""); await fn(event); } catch (error) { say(error.message); }
  };
}

// ---- the API key ----------------------------------------------------------

function askKey() { $("key-form").hidden = false; $("api-key").focus(); }

$("key-form").addEventListener("submit", guard(async () => {
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("everruns-key", state.key);
  $("key-form").hidden = true;
  await start();
}));
$("show-key").addEventListener("click", askKey);

// ---- views ----------------------------------------------------------------

function view(name) {
  $("chat-view").hidden = name !== "chat";
  $("providers-view").hidden = name !== "providers";
  $("show-chat").setAttribute("aria-pressed", String(name === "chat"));
  $("show-providers").setAttribute("aria-pressed", String(name === "providers"));
}
$("show-chat").addEventListener("click", () => view("chat"));
$("show-providers").addEventListener("click", guard(async () => { view("providers"); await loadProviders(); }));

// ---- providers -------------------------------------------------------------

async function loadProviders() {
  state.providers = await all("/v1/llm-providers");
  const list = $("providers");
  list.replaceChildren(...state.providers.map((p) => el("li", {},
    el("span", { class: "pick" },
      `${p.name} (${p.provider_type}, ${p.default_model})${p.is_default ? " — default" : ""}`),
    p.is_default ? "" : el("button", { type: "button", onclick: guard(async () => {
      await api("PATCH", `/v1/llm-providers/${p.id}`, { is_default: true });
      await loadProviders();
    }) }, "Make default"),
    el("button", { type: "button", onclick: guard(async () => {
      const models = await all(`/v1/llm-providers/${p.id}/models`);
      $("models-view").hidden = false;
      $("models-view").textContent = `${p.name}: ${models.map((m) => m.id).join(", ") || "(none)"}`;
    }) }, "List models"),
    el("button", { type: "button", "aria-label": `Edit ${p.name}`, onclick: () => providerForm(p) }, "Edit"),
    p.settings.record ? el("button", { type: "button", "aria-label": `Replay ${p.name}`, onclick: guard(async () => {
      await api("POST", "/v1/llm-providers", { name: `${p.name} (replay)`, provider_type: "replay",
        settings: { source_provider_id: p.id, speed: 1 } });
      await loadProviders();
    }) }, "Make a replay") : "",
    el("button", { type: "button", class: "danger", "aria-label": `Delete ${p.name}`, onclick: guard(async () => {
      if (!confirm(`Delete the provider ${p.name}?`)) return;
      await api("DELETE", `/v1/llm-providers/${p.id}`);
      if ($("provider-form").dataset.editing === p.id) providerForm(null);
      await loadProviders();
    }) }, "Delete"))));
  $("agent-provider").replaceChildren(el("option", { value: "" }, "The default provider"),
    ...state.providers.map((p) => el("option", { value: p.id }, p.name)));
  loadMcpServers().catch(() => {});  // the page never waits on them
}

// MCP servers: their status as the API says it (it never waits on one that is starting).
async function loadMcpServers() {
  const servers = await all("/v1/mcp-servers");
  $("mcp-servers").replaceChildren(...servers.map((m) => el("li", {},
    el("span", { class: "pick" }, `${m.name} (${m.transport}, ${m.status.replace("_", " ")}, ${m.tools_count} tools)` +
      (m.error ? `: ${m.error}` : "")),
    m.transport === "http" ? el("button", { type: "button", class: "danger", "aria-label": `Remove ${m.name}`,
      onclick: guard(async () => { await api("DELETE", `/v1/mcp-servers/${m.id}`); await loadMcpServers(); }) },
    "Remove") : "")));
}

$("mcp-form").addEventListener("submit", guard(async () => {
  await api("POST", "/v1/mcp-servers", { name: $("mcp-name").value, url: $("mcp-url").value });
  $("mcp-form").reset();
  state.capabilities = [];  // the agent form lists its capability next time
  await loadMcpServers();
}));

// The form adds a provider, or edits one (its key is kept unless a new one is typed).
function providerForm(provider) {
  const form = $("provider-form");
  form.reset();
  form.dataset.editing = provider ? provider.id : "";
  $("provider-form-title").textContent = provider ? `Edit ${provider.name}` : "Add a provider";
  $("provider-submit").textContent = provider ? "Save" : "Add provider";
  $("provider-new").hidden = !provider;
  $("provider-type").disabled = Boolean(provider);
  form.provider = provider;
  recordable();
  if (!provider) return;
  $("provider-name").value = provider.name;
  $("provider-type").value = provider.provider_type;
  $("provider-url").value = provider.base_url || "";
  $("provider-model").value = provider.default_model || "";
  $("provider-key").placeholder = provider.api_key_set ? "(kept unless you type a new one)" : "";
  $("provider-record").checked = Boolean(provider.settings.record);
  recordable();
  $("provider-name").focus();
}

// Recording (SPEC 18) is a setting of some types (their options are marked data-records).
function recordable() {
  $("provider-record-label").hidden = !("records" in $("provider-type").selectedOptions[0].dataset);
}
$("provider-type").addEventListener("change", recordable);

$("provider-new").addEventListener("click", () => providerForm(null));
$("provider-form").addEventListener("submit", guard(async () => {
  const editing = $("provider-form").dataset.editing;
  const body = { name: $("provider-name").value };
  if (!editing) body.provider_type = $("provider-type").value;
  if ($("provider-url").value || editing) body.base_url = $("provider-url").value || null;
  if ($("provider-model").value) body.default_model = $("provider-model").value;
  if ($("provider-key").value) body.api_key = $("provider-key").value;
  const record = !$("provider-record-label").hidden && $("provider-record").checked;
  const settings = editing ? $("provider-form").provider.settings : {};
  if (!$("provider-record-label").hidden && record !== Boolean(settings.record)) {
    body.settings = { ...settings, record };  // a masked header value keeps the stored one
  }
  await api(editing ? "PATCH" : "POST", editing ? `/v1/llm-providers/${editing}` : "/v1/llm-providers", body);
  providerForm(null);
  await loadProviders();
}));

// ---- agents ----------------------------------------------------------------

async function loadAgents() {
  state.agents = await all("/v1/agents");
  $("agents").replaceChildren(...state.agents.map((a) => el("li", {},
    el("button", { type: "button", class: "pick", "aria-current": String(state.agent && state.agent.id === a.id),
      onclick: guard(() => pickAgent(a)) }, a.name))));
}

async function agentForm(agent) {
  if (!state.capabilities.length) state.capabilities = await all("/v1/capabilities");
  $("agent-form").hidden = false;
  $("agent-form-title").textContent = agent ? `Edit ${agent.name}` : "New agent";
  $("agent-submit").textContent = agent ? "Save" : "Create";
  $("delete-agent").hidden = !agent;
  $("agent-name").value = agent ? agent.name : "";
  $("agent-prompt").value = agent ? agent.system_prompt : "";
  $("agent-provider").value = agent && agent.provider_id ? agent.provider_id : "";
  $("agent-model").value = agent && agent.model ? agent.model : "";
  $("agent-approval").value = agent ? agent.require_approval.join(", ") : "";
  $("agent-client-tools").value = agent && agent.client_tools.length ? JSON.stringify(agent.client_tools, null, 2) : "";
  $("agent-iterations").value = agent ? agent.max_iterations : "";
  const fallbacks = agent ? agent.fallback_provider_ids : [];
  $("agent-fallbacks").replaceChildren(...Array.from({ length: Math.max(3, fallbacks.length) }, (_, i) => {
    const pick = el("select", { "aria-label": `Fallback ${i + 1}` }, el("option", { value: "" }, "(none)"),
      ...state.providers.map((p) => el("option", { value: p.id }, p.name)));
    pick.value = fallbacks[i] || "";
    return pick;
  }));
  $("capabilities").replaceChildren(...state.capabilities.map((c) => el("label", { title: c.description },
    el("input", Object.assign({ type: "checkbox", value: c.id },
      agent && agent.capabilities.includes(c.id) ? { checked: "" } : {})), c.id)));
  $("agent-form").dataset.editing = agent ? agent.id : "";
  $("agent-name").focus();
}

$("new-agent").addEventListener("click", guard(() => agentForm(null)));
$("edit-agent").addEventListener("click", guard(() => agentForm(state.agent)));
$("agent-cancel").addEventListener("click", () => { $("agent-form").hidden = true; });
$("agent-provider").addEventListener("change", guard(async () => {
  const id = $("agent-provider").value;
  const provider = id ? state.providers.find((p) => p.id === id) : state.providers.find((p) => p.is_default);
  if (!provider) return;
  const models = await all(`/v1/llm-providers/${provider.id}/models`).catch(() => []);
  $("models").replaceChildren(...models.map((m) => el("option", { value: m.id })));
}));

$("agent-form").addEventListener("submit", guard(async () => {
  const body = { name: $("agent-name").value, system_prompt: $("agent-prompt").value,
    capabilities: [...$("capabilities").querySelectorAll("input:checked")].map((box) => box.value),
    provider_id: $("agent-provider").value || null, model: $("agent-model").value || null,
    require_approval: $("agent-approval").value.split(",").map((name) => name.trim()).filter(Boolean),
    client_tools: JSON.parse($("agent-client-tools").value.trim() || "[]"),
    fallback_provider_ids: [...new Set([...$("agent-fallbacks").querySelectorAll("select")].map((s) => s.value)
      .filter(Boolean))] };
  if ($("agent-iterations").value) body.max_iterations = Number($("agent-iterations").value);
  const editing = $("agent-form").dataset.editing;
  const agent = editing ? await api("PATCH", `/v1/agents/${editing}`, body) : await api("POST", "/v1/agents", body);
  $("agent-form").hidden = true;
  await loadAgents();
  await pickAgent(agent);
}));

$("delete-agent").addEventListener("click", guard(async () => {
  if (!confirm(`Delete ${state.agent.name} and all its sessions?`)) return;
  await api("DELETE", `/v1/agents/${state.agent.id}`);
  state.agent = null; closeSession();
  $("agent-form").hidden = true; $("sessions-section").hidden = true;
  await loadAgents();
}));

async function pickAgent(agent) {
  state.agent = agent;
  $("sessions-section").hidden = false;
  await loadAgents();
  const sessions = await loadSessions();
  if (sessions.length) await openSession(sessions[0]); else closeSession();
}

// ---- sessions ----------------------------------------------------------------

async function loadSessions() {
  const sessions = await all(`/v1/agents/${state.agent.id}/sessions`);
  $("sessions").replaceChildren(...sessions.map((s) => el("li", {},
    el("button", { type: "button", class: "pick", "aria-current": String(state.session && state.session.id === s.id),
      onclick: guard(() => openSession(s)) }, s.title || `Session ${s.created_at.slice(0, 16).replace("T", " ")}`))));
  return sessions;
}

$("new-session").addEventListener("click", guard(async () => {
  const session = await api("POST", `/v1/agents/${state.agent.id}/sessions`, {});
  await openSession(session);
}));

$("rename-session").addEventListener("click", guard(async () => {
  const title = prompt("New title", state.session.title || "");
  if (title === null) return;
  state.session = await api("PATCH", `/v1/sessions/${state.session.id}`, { title });
  $("session-title").textContent = title || "Untitled session"; await loadSessions();
}));

$("delete-session").addEventListener("click", guard(async () => {
  if (!confirm("Delete this session, its messages and files?")) return;
  await api("DELETE", `/v1/sessions/${state.session.id}`);
  closeSession(); await loadSessions();
}));

function closeSession() {
  if (state.stream) state.stream.abort();
  state.session = null; state.stream = null;
  $("conversation").hidden = true; $("files-panel").hidden = true;
  $("empty").hidden = false;
}

async function openSession(session) {
  closeSession();
  state.session = session; state.seq = 0; state.texts = {};
  $("empty").hidden = true; $("conversation").hidden = false; $("files-panel").hidden = false;
  $("session-title").textContent = session.title || "Untitled session";
  $("log").replaceChildren();
  running(session.status !== "idle");  // running, or waiting for a person or the client
  follow(session.id);  // first: nothing below may keep the live view from starting
  await loadSessions();
  await loadFiles();
  await sessionUsage();
}

// ---- the conversation: a fetch-based SSE reader that resumes from the last seq ----

async function follow(sessionId) {
  const controller = new AbortController();
  state.stream = controller;
  const current = () => state.stream === controller && !controller.signal.aborted;
  while (current()) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (state.key) headers.Authorization = `Bearer ${state.key}`;
      const response = await fetch(`/v1/sessions/${sessionId}/events?after=${state.seq}`,
        { headers, signal: controller.signal });
      if (response.status === 401) { askKey(); return; }
      if (response.status === 404) { say("This session was deleted."); return; }
      if (!response.ok) throw new Error(`events: ${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || !current()) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:"))
            .map((l) => l.slice(5).trimStart()).join("\n");
          if (data) show(JSON.parse(data));
        }
      }
    } catch {
      if (controller.signal.aborted) return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));  // dropped: resume after the last seq
  }
}

// ---- Markdown, built as DOM nodes -------------------------------------------
// CommonMark's common subset and GitHub tables. Every piece of the text becomes a text
// node or an element made here; links only for http(s), opened with noopener.

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const TABLE_RULE = /^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$/;
const LIST_ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;

function inline(text) {
  const out = [];
  const pattern = new RegExp(["(`+)([\\s\\S]*?)\\1", "\\*\\*([^*]+)\\*\\*", "__([^_]+)__", "\\*([^*\\s][^*]*)\\*",
    "_([^_\\s][^_]*)_", "\\[([^\\]]+)\\]\\(([^)\\s]+)\\)"].join("|"), "g");  // code, strong, em, link
  let at = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > at) out.push(text.slice(at, m.index));
    if (m[1]) out.push(el("code", {}, m[2]));
    else if (m[3] || m[4]) out.push(el("strong", {}, ...inline(m[3] || m[4])));
    else if (m[5] || m[6]) out.push(el("em", {}, ...inline(m[5] || m[6])));
    else if (/^https?:\/\//i.test(m[8])) {
      out.push(el("a", { href: m[8], target: "_blank", rel: "noopener noreferrer" }, ...inline(m[7])));
    } else out.push(m[0]);  // any other link (javascript:, data:, ...) stays text
    at = m.index + m[0].length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function cells(line) {
  return line.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function codeBlock(code, language) {
  const copy = el("button", { type: "button", onclick: () => navigator.clipboard.writeText(code) }, "Copy");
  return el("pre", {}, copy, el("code", language ? { "data-language": language } : {}, code));
}

function markdown(text) {
  const lines = text.split("\n"), out = document.createDocumentFragment();
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      out.append(codeBlock(body.join("\n"), fence[2]));
      i++;
    } else if (/^\s*#{1,6}\s/.test(line)) {
      const level = line.trim().match(/^#+/)[0].length;
      out.append(el(`h${level}`, {}, ...inline(line.trim().slice(level).trim())));
      i++;
    } else if (line.includes("|") && i + 1 < lines.length && TABLE_RULE.test(lines[i + 1])) {
      const head = el("tr", {}, ...cells(line).map((c) => el("th", {}, ...inline(c))));
      const rows = [];
      for (i += 2; i < lines.length && lines[i].includes("|"); i++) {
        rows.push(el("tr", {}, ...cells(lines[i]).map((c) => el("td", {}, ...inline(c)))));
      }
      out.append(el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
    } else if (LIST_ITEM.test(line)) {
      const ordered = /^\s*\d/.test(line), items = [];
      for (; i < lines.length && LIST_ITEM.test(lines[i]); i++) {
        items.push(el("li", {}, ...inline(lines[i].match(LIST_ITEM)[2])));
      }
      out.append(el(ordered ? "ol" : "ul", {}, ...items));
    } else if (/^\s*>/.test(line)) {
      const quoted = [];
      for (; i < lines.length && /^\s*>/.test(lines[i]); i++) quoted.push(lines[i].replace(/^\s*>\s?/, ""));
      out.append(el("blockquote", {}, markdown(quoted.join("\n"))));
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      out.append(el("hr"));
      i++;
    } else if (line.trim()) {
      const paragraph = [];
      for (; i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !/^\s*#{1,6}\s/.test(lines[i]) &&
             !LIST_ITEM.test(lines[i]); i++) paragraph.push(lines[i]);
      const parts = [];
      paragraph.forEach((l, n) => parts.push(...(n ? [el("br")] : []), ...inline(l)));
      out.append(el("p", {}, ...parts));
    } else i++;
  }
  return out;
}

// ---- the trace of a turn: its model calls and tool calls, from the stored events ----

function tokens(usage) {
  return usage ? `${usage.input_tokens} in, ${usage.output_tokens} out` : "tokens unknown";
}

function modelCall(message) {
  const latency = message.latency_ms;
  const timing = latency ? `first token ${latency.first_token === null ? "-" : `${latency.first_token} ms`}, ` +
    `${latency.total} ms` : "timing unknown";
  const provider = (state.providers.find((p) => p.id === message.provider_id) || {}).name || message.provider_id;
  return el("li", { class: "model-call" }, el("strong", {}, "Model call"),
    ` ${message.model || "?"} (${provider || "no provider"}): ${tokens(message.usage)} tokens; ${timing}` +
    (message.incomplete ? " (cancelled: incomplete)" : ""));
}

async function trace(turnId, box) {
  if (!box.hidden) { box.hidden = true; return; }
  const events = (await all(`/v1/sessions/${state.session.id}/events?format=json`)).filter((e) => e.turn_id === turnId);
  const decided = {}, items = [];
  for (const e of events) if (e.type === "tool.approval_resolved") decided[e.data.tool_call_id] = e.data.approved;
  for (const e of events) {
    if (e.type === "provider.fallback") {
      const name = (id) => (state.providers.find((p) => p.id === id) || {}).name || id;
      items.push(el("li", { class: "compaction" }, el("strong", {}, "Provider fallback"),
        ` ${name(e.data.from_provider_id)} failed (${e.data.reason}: ${e.data.message}); ` +
        `${name(e.data.to_provider_id)} took the call`));
    }
    if (e.type === "context.compacted") {
      items.push(el("li", { class: "compaction" }, el("strong", {}, "Context compacted"),
        ` ${e.data.turn_ids.length} earlier turns summarised, about ${e.data.tokens_before} → ` +
        `${e.data.tokens_after} tokens`, el("pre", {}, e.data.summary)));
    }
    if (e.type === "message.created" && e.data.message.role === "assistant") items.push(modelCall(e.data.message));
    if (e.type === "tool.result") {
      const approval = e.data.tool_call_id in decided ? (decided[e.data.tool_call_id] ? ", approved" : ", denied") : "";
      const call = events.find((c) => c.type === "tool.call" && c.data.tool_call.id === e.data.tool_call_id);
      items.push(el("li", { class: "tool-call" }, el("strong", {}, "Tool call"),
        ` ${e.data.name} ${JSON.stringify(call ? call.data.tool_call.arguments : {})}: ${e.data.duration_ms} ms` +
        `${approval}${e.data.is_error ? ", error" : ""}`, el("pre", {}, JSON.stringify(e.data.result, null, 2))));
    }
  }
  const end = events.find((e) => e.type === "session.completed");
  const traced = end && end.data.trace_id ? [el("div", { class: "trace-id note" }, "OpenTelemetry trace ",
    el("code", {}, end.data.trace_id))] : [];
  box.replaceChildren(...traced, el("ol", {}, ...items));
  box.hidden = false;
  box.scrollIntoView({ block: "nearest" });
}

async function sessionUsage() {  // and its title, which its first message may have given it
  const session = await api("GET", `/v1/sessions/${state.session.id}`);
  if (!state.session || state.session.id !== session.id) return;  // another session was opened meanwhile
  $("session-usage").textContent = `Tokens: ${tokens(session.usage)}`;
  if (session.title && session.title !== state.session.title) {
    state.session = session;
    $("session-title").textContent = session.title;
    await loadSessions();
  }
}

// A call of a client tool: the page can be the client (a JSON result, Send result).
function clientResult(call) {
  const result = el("textarea", { rows: "2", spellcheck: "false", "aria-label": `Result of ${call.name}` });
  const send = guard(async () => {
    let value;
    try { value = JSON.parse(result.value); } catch { value = result.value; }  // not JSON: sent as text
    await api("POST", `/v1/sessions/${state.session.id}/tool-results`, { tool_call_id: call.id, result: value });
  });
  return el("form", { class: "client-result", onsubmit: (event) => { event.preventDefault(); send(); } },
    el("div", { class: "note" }, "Waiting for the client's result: answer it here (JSON)"), result,
    el("button", { type: "submit" }, "Send result"));
}

function written(node, role, text) {
  if (role === "assistant") node.replaceChildren(markdown(text)); else node.textContent = text;
}

function bubble(id, role) {
  let node = document.querySelector(`[data-message="${CSS.escape(id)}"]`);
  if (!node) {
    node = el("div", { class: `msg ${role}`, "data-message": id });
    $("log").append(node);
  }
  return node;
}

function scrolled() { $("log").scrollTop = $("log").scrollHeight; }

function show(event) {
  if (!state.session || event.session_id !== state.session.id) return;  // a stream of a session left behind
  if (event.seq) state.seq = event.seq;
  const data = event.data;
  const answering = ["message.delta", "tool.call", "session.completed", "tool.approval_requested"];
  if (answering.includes(event.type) || (event.type === "message.created" && data.message.role === "assistant")) {
    thinking(false);
  } else if (event.type === "session.started" || event.type === "tool.result") {
    thinking(true);
  } else if (document.querySelector("#log .thinking")) {
    thinking(true);  // it stays last
  }
  if (event.type === "message.delta") {
    state.texts[data.message_id] = (state.texts[data.message_id] || "") + data.delta;
    written(bubble(data.message_id, "assistant"), "assistant", state.texts[data.message_id]);
  } else if (event.type === "message.created") {
    const message = data.message;
    const text = message.content.filter((p) => p.type === "text").map((p) => p.text).join("\n");
    if (message.role !== "tool" && text) written(bubble(message.id, message.role), message.role, text);
  } else if (event.type === "tool.call") {
    const call = data.tool_call;
    $("log").append(el("div", { class: "card", "data-call": call.id },
      el("strong", {}, `Tool: ${call.name}`), el("pre", {}, JSON.stringify(call.arguments, null, 2))));
    if (call.executor === "client") card(call.id).append(clientResult(call));
  } else if (event.type === "tool.approval_requested") {
    const call = data.tool_call;
    const decide = (approved) => guard(async () => {
      await api("POST", `/v1/sessions/${state.session.id}/tool-calls/${encodeURIComponent(call.id)}/approval`,
        { approved, reason: approved ? null : "denied in the console" });
    });
    card(call.id).append(el("div", { class: "decide" }, el("span", { class: "note" }, "Run this tool?"),
      el("button", { type: "button", onclick: decide(true) }, "Approve"),
      el("button", { type: "button", onclick: decide(false) }, "Deny")));
  } else if (event.type === "tool.approval_resolved") {
    const asked = card(data.tool_call_id).querySelector(".decide");
    if (asked) asked.replaceChildren(el("span", { class: "note" }, data.approved ? "Approved" : "Denied"));
  } else if (event.type === "tool.result") {
    const card = document.querySelector(`[data-call="${CSS.escape(data.tool_call_id)}"]`) ||
      $("log").appendChild(el("div", { class: "card" }, el("strong", {}, `Tool: ${data.name}`)));
    if (data.is_error) card.classList.add("error");
    const asked = card.querySelector(".client-result");
    if (asked) asked.remove();
    card.append(el("div", { class: "note" }, data.is_error ? "Error" : "Result"),
      el("pre", {}, JSON.stringify(data.result, null, 2)));
  } else if (event.type === "session.started") {
    running(true);
  } else if (event.type === "session.completed") {
    running(false);
    if (data.status !== "completed") {
      const why = data.error ? `: ${data.error.message}` : "";
      $("log").append(el("div", { class: `note ${data.status}` }, `Turn ${data.status}${why}`));
    }
    const box = el("div", { class: "trace", "data-trace": data.turn_id, hidden: "" });
    $("log").append(el("div", { class: "turn-end" },
      el("button", { type: "button", onclick: guard(() => trace(data.turn_id, box)) }, "Trace"), box));
    loadFiles().catch(() => {});
    sessionUsage().catch(() => {});
  }
  scrolled();
}

function card(callId) {
  return document.querySelector(`[data-call="${CSS.escape(callId)}"]`) ||
    $("log").appendChild(el("div", { class: "card", "data-call": callId }));
}

function running(yes) {
  state.running = yes;
  $("cancel-turn").hidden = !yes;
}

// Between Send (or a tool's result) and the model's first token: something shows.
function thinking(on) {
  const shown = document.querySelector("#log .thinking");
  if (!on) { if (shown) shown.remove(); return; }
  $("log").append(shown || el("div", { class: "msg assistant thinking", role: "status" }, "Thinking…"));
}

$("message-form").addEventListener("submit", guard(async () => {
  const text = $("message").value;
  if (!text.trim()) return;
  $("message").value = "";
  thinking(true);  // before the turn's first event can come
  try {
    await api("POST", `/v1/sessions/${state.session.id}/messages`, { content: text });
  } catch (error) {
    thinking(false);
    throw error;
  }
}));
$("message").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("message-form").requestSubmit(); }
});
$("cancel-turn").addEventListener("click", guard(async () => {
  await api("POST", `/v1/sessions/${state.session.id}/cancel`, {});
}));

// ---- files -------------------------------------------------------------------

async function loadFiles(path = "") {
  if (!state.session) return;
  const base = `/v1/sessions/${state.session.id}/fs`;
  const rows = [];
  const walk = async (dir) => {
    const node = await api("GET", dir ? `${base}/${dir}` : base);
    for (const entry of node.entries) {
      if (entry.type === "directory") await walk(encodePath(entry.path).slice(1)); else rows.push(entry);
    }
  };
  await walk(path);
  $("files").replaceChildren(...rows.map((f) => el("li", {},
    el("button", { type: "button", class: "pick", onclick: guard(async () => {
      const file = await api("GET", `${base}${encodePath(f.path)}`);
      $("file-view").hidden = false;
      $("file-view").textContent = file.encoding === "text" ? file.content : `(binary, ${file.size_bytes} bytes)`;
    }) }, `${f.path} (${f.size_bytes} B)`),
    el("button", { type: "button", class: "danger", "aria-label": `Delete ${f.path}`, onclick: guard(async () => {
      await api("DELETE", `${base}${encodePath(f.path)}`); $("file-view").hidden = true; await loadFiles();
    }) }, "Delete"))));
}

function encodePath(path) { return path.split("/").map(encodeURIComponent).join("/"); }

$("refresh-files").addEventListener("click", guard(() => loadFiles()));
$("upload").addEventListener("change", guard(async () => {
  const file = $("upload").files[0];
  if (!file) return;
  const bytes = new Uint8Array(await file.arrayBuffer());
  let body;
  try {
    body = { content: new TextDecoder("utf-8", { fatal: true }).decode(bytes), encoding: "text" };
  } catch {  // not UTF-8 text: sent as base64
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    body = { content: btoa(binary), encoding: "base64" };
  }
  await api("PUT", `/v1/sessions/${state.session.id}/fs/${encodeURIComponent(file.name)}`, body);
  $("upload").value = "";
  await loadFiles();
}));

// ---- start ---------------------------------------------------------------------

async function start() {
  state.capabilities = await all("/v1/capabilities");
  await loadProviders();
  await loadAgents();
  if (state.agents.length && !state.agent) await pickAgent(state.agents[0]);
  document.body.dataset.ready = "yes";  // for people nothing changes; tests wait for it
}

if (document.querySelector('meta[name="everruns-key"]').content === "required" && !state.key) askKey();
else start().catch((error) => say(error.message));
"""

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


@_route("GET", "/", "The console", "console", raw=True, in_schema=False)
def _console(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    needed = "required" if ctx.config["api_key"] else "none"  # ask for the key before the first call, not after a 401
    return _page_file(_CONSOLE_HTML.replace("{key}", needed), "text/html; charset=utf-8", CONSOLE_CSP)


@_route("GET", "/console.css", "The console's style sheet", "console", raw=True, in_schema=False)
def _console_css(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    return _page_file(_CONSOLE_CSS, "text/css; charset=utf-8", CONSOLE_CSP)


@_route("GET", "/console.js", "The console's script", "console", raw=True, in_schema=False)
def _console_js(ctx: _Ctx, req: _Request) -> bottle.HTTPResponse:
    return _page_file(_CONSOLE_JS, "text/javascript; charset=utf-8", CONSOLE_CSP)


# =============================================================================
# 19. CLI
# =============================================================================


class _Parser(argparse.ArgumentParser):
    """argparse, whose errors are one line (not the usage block) and exit 2."""

    def error(self, message: str) -> Any:
        self.exit(2, f"everruns: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="everruns",
        description="Everruns: a headless runtime for AI agents (REST API + live events).",
        epilog="Subcommands: `everruns serve` (the default: these options), `everruns chat [AGENT]` "
        "(a terminal chat with an agent; see `everruns chat --help`) and `everruns backup DEST` (a copy of "
        "the SQLite database, even while a server runs on it; see `everruns backup --help`).",
    )
    parser.add_argument("--version", action="version", version=f"everruns {__version__}")
    for s in SETTINGS:
        help_ = f"{s.help} Env: {s.env}. Default: {s.default}."
        if s.type is _flag:  # a switch: present means on
            parser.add_argument(s.flag, dest=s.name, action="store_const", const=True, default=None, help=help_)
        else:
            parser.add_argument(s.flag, dest=s.name, type=s.type, choices=s.choices, default=None, help=help_)
    return parser


def settings_table() -> str:
    """The README's configuration table, in Markdown, from SETTINGS."""
    rows = ["| Flag | Environment variable | Default | Meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = "unset" if s.default is None else f"`{s.default}`"
        rows.append(f"| `{s.flag}` | `{s.env}` | {default} | {s.help} |")
    return "\n".join(rows)


def _resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """Each setting from its flag, else its environment variable, else its default; all checked."""
    given = {s.name: getattr(args, s.name) for s in SETTINGS}
    for s in SETTINGS:
        if given[s.name] is None and env.get(s.env):
            given[s.name] = env[s.env]
    return _settings(given)


# ---- the terminal chat -------------------------------------------------------
# `everruns chat` is a client of the HTTP API like any other: it never touches
# the database, so it works the same against a server on another machine.

CHAT_AGENT = "Assistant"
CHAT_URL = "http://127.0.0.1:9000"


class _ChatError(Exception):
    """The chat cannot go on; one line for the person using it."""


class _ApiClient:
    """A small client of the API: JSON calls and the event stream."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url, self.headers = url.rstrip("/"), {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _open(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        import urllib.error
        import urllib.request

        data = None if body is None else _dumps(body).encode()
        headers = {**self.headers, **({"Content-Type": "application/json"} if data is not None else {})}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode(errors="replace")[:200] or e.reason
            raise _ChatError(f"{method} {path}: {e.code} {message}") from None
        except OSError as e:
            raise _ChatError(f"cannot reach {self.url}: {getattr(e, 'reason', None) or e}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON call; its answer (None for 204)."""
        with self._open(method, path, body) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def events(self, session_id: str, after: int) -> Iterator[dict]:
        """The session's events after a seq, live, until the session is settled."""
        path = f"/v1/sessions/{session_id}/events?until=completed&after={after}"
        with self._open("GET", path, timeout=60) as response:
            data: list[str] = []
            for raw in response:
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []


def _shown(result: Any) -> str:
    """A tool result as one short line: {"result": 5} is 5."""
    if isinstance(result, dict) and len(result) == 1:
        result = next(iter(result.values()))
    text = result if isinstance(result, str) else _dumps(result)
    return text if len(text) <= 200 else text[:197] + "..."


class _Lines:
    """What the person types: a terminal's lines as asked for, or piped input read ahead
    by a greenlet of its own (so a turn that waits knows when the input has ended)."""

    def __init__(self, source: Any, terminal: bool) -> None:
        self.terminal, self.ended = terminal, gevent.event.Event()
        self.waiting: Any = gevent.queue.Queue()
        if not terminal:
            gevent.spawn(self._read_ahead, source)

    def _read_ahead(self, source: Any) -> None:
        if hasattr(source, "fileno"):  # read without blocking the other greenlets (a pipe that stays open)
            from gevent.fileobject import FileObjectPosix

            source = FileObjectPosix(source.fileno(), "r", close=False, encoding="utf-8", errors="replace")
        for line in source:
            self.waiting.put(line.rstrip("\n"))
        self.waiting.put(None)
        self.ended.set()

    def next(self, prompt: str) -> str | None:
        """The next line (None at the end of the input)."""
        return _read_line(prompt) if self.terminal else self.waiting.get()


CHAT_HELP = "/new: a new session, /exit or Ctrl-D: quit, /help: this line; //text sends /text"


class _Chat:
    """One person chatting with one agent: sessions, turns, and what is printed; the
    person answers an approval from the next line."""

    def __init__(self, api: _ApiClient, out: Any, lines: _Lines | None = None) -> None:
        self.api, self.out, self.lines_in = api, out, lines or _Lines((), True)
        self.agent: dict = {}
        self.session_id, self.seq, self.streamed, self.midline = "", 0, {}, False
        self.gave_up = False  # a turn was cancelled because the input ended while it waited
        self.watcher: Any = None  # piped input: cancels a turn that waits for a client once the input ends

    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()
        self.midline = bool(text) and not end

    def note(self, text: str) -> None:
        """A line of its own, after a streamed answer that has not ended its line."""
        self.say(("\n" if self.midline else "") + text)

    def open(self, agent: str | None, new: bool) -> None:
        """Find the agent (by id or name; "Assistant" is created if missing) and its session."""
        self.agent = self._agent(agent)
        sessions = self.api.call("GET", f"/v1/agents/{self.agent['id']}/sessions?limit=1")["data"]
        if new or not sessions:
            self.new_session()
        else:
            self.session_id, self.seq = sessions[0]["id"], self._last_seq(sessions[0]["id"])

    def _agent(self, wanted: str | None) -> dict:
        after, name = "", wanted or CHAT_AGENT
        while True:
            page = self.api.call("GET", f"/v1/agents?limit=100{after}")
            for agent in page["data"]:
                if name in (agent["id"], agent["name"]):
                    return agent
            if not page["has_more"]:
                break
            after = f"&after={page['next_after']}"
        if wanted is not None:
            raise _ChatError(f"no agent named {wanted!r}")
        return self.api.call("POST", "/v1/agents", {"name": CHAT_AGENT, "capabilities": list(CAPABILITIES)[:4]})

    def _last_seq(self, session_id: str) -> int:
        after = 0
        while True:
            page = self.api.call("GET", f"/v1/sessions/{session_id}/events?format=json&limit=100&after={after}")
            after = page["data"][-1]["seq"] if page["data"] else after
            if not page["has_more"]:
                return after

    def new_session(self) -> None:
        self.session_id, self.seq = self.api.call("POST", f"/v1/agents/{self.agent['id']}/sessions", {})["id"], 0

    def turn(self, text: str) -> str:
        """Send one message and print the turn as it happens; its status."""
        self.api.call("POST", f"/v1/sessions/{self.session_id}/messages", {"content": text})
        status, cancelled, drops = "", False, 0
        try:
            while not status:  # a dropped stream is read again from the last seq
                status, cancelled, drops = self._follow(status, cancelled, drops)
        finally:
            if self.watcher is not None:
                self.watcher.kill()
                self.watcher = None
        return status

    def _follow(self, status: str, cancelled: bool, drops: int) -> tuple[str, bool, int]:
        """Read the turn's events until it ends (or the stream breaks off)."""
        import http.client

        try:
            for event in self.api.events(self.session_id, self.seq):
                status = self._show(event) or status
        except KeyboardInterrupt:  # Ctrl-C: cancel the turn, then read how it ended
            if cancelled:
                raise
            cancelled = True
            self.api.call("POST", f"/v1/sessions/{self.session_id}/cancel", {})
        except (OSError, http.client.HTTPException, ValueError):
            pass
        drops += not status
        if drops > 5:
            raise _ChatError("the event stream keeps breaking off")
        return status, cancelled, drops

    def _input_ends(self) -> None:
        """Piped input: a turn still waiting for a client's result when the input ends is cancelled."""
        self.lines_in.ended.wait()
        session = self.api.call("GET", f"/v1/sessions/{self.session_id}")
        if session["status"] == "waiting":
            self._give_up("the turn waits for a client result and the input has ended")

    def _give_up(self, why: str) -> None:
        self.note(f"✗ {why}: the turn is cancelled")
        self.gave_up = True
        self.api.call("POST", f"/v1/sessions/{self.session_id}/cancel", {})

    def _decide(self, call: dict) -> None:
        """Ask the person about a call that waits for approval; the next line answers."""
        arguments = json.dumps(call["arguments"], ensure_ascii=False)
        self.say(("\n" if self.midline else "") + f"approve {call['name']} {arguments}? [y/N] ", end="")
        answer = self.lines_in.next("")
        if not self.lines_in.terminal:  # what a terminal shows as it is typed
            self.say("" if answer is None else answer)
        if answer is None:
            return self._give_up("no answer to the approval before the end of the input")
        approved = answer.strip().lower() in ("y", "yes")
        body = {"approved": approved, "reason": None if approved else "denied in the chat"}
        self.api.call("POST", f"/v1/sessions/{self.session_id}/tool-calls/{call['id']}/approval", body)

    def _show(self, event: dict) -> str:
        """Print one event; the turn's status once it has ended."""
        self.seq, kind, data = event["seq"] or self.seq, event["type"], event["data"]
        if kind == "message.delta":
            self.streamed[data["message_id"]] = self.streamed.get(data["message_id"], "") + data["delta"]
            self.say(data["delta"], end="")
        elif kind == "message.created" and data["message"]["role"] == "assistant":
            text = "\n".join(p["text"] for p in data["message"]["content"] if p["type"] == "text")
            seen = self.streamed.pop(data["message"]["id"], "")
            if text:
                self.say(text[len(seen) :] if text.startswith(seen) else text)
        elif kind == "tool.call":
            call = data["tool_call"]
            self.say(f"→ {call['name']} {json.dumps(call['arguments'], ensure_ascii=False)}")
            if call.get("executor") == "client":
                answer = _dumps({"tool_call_id": call["id"], "result": "..."})
                self.say(f"  the turn waits for a client result: POST /v1/sessions/{self.session_id}/tool-results "
                         f"{answer}")  # fmt: skip
                if not self.lines_in.terminal and self.watcher is None:
                    self.watcher = gevent.spawn(self._input_ends)
        elif kind == "tool.approval_requested":
            self._decide(data["tool_call"])
        elif kind == "tool.result":
            self.say(f"← {'✗ ' if data['is_error'] else ''}{_shown(data['result'])}")
        elif kind == "provider.fallback":
            self.note(f"(the provider failed: {data['reason']}; its fallback {data['to_provider_id']} answers)")
        elif kind == "context.compacted":
            self.note(f"(the {len(data['turn_ids'])} earliest turns now sent as a summary)")
        elif kind == "session.completed":
            if data["status"] == "failed":
                self.note(f"✗ the turn failed: {data['error']['message']} ({data['error']['code']})")
            elif data["status"] == "cancelled":
                self.note("(cancelled)")
            return data["status"]
        return ""

    def interactive(self) -> int:
        """The prompt loop: Ctrl-D or /exit quits, /new starts a new session."""
        self.say(f"Chatting with {self.agent['name']} ({CHAT_HELP})")
        while True:
            try:
                text = self.lines_in.next("you> ")
            except KeyboardInterrupt:
                self.say()
                continue
            if text is None or self.command(text) == "exit":
                self.say()
                return 0

    def lines(self) -> int:
        """One message per line (standard input is not a terminal); 1 if a turn failed or
        the input ended while a turn waited for an answer."""
        failed = False
        while (text := self.lines_in.next("")) is not None:
            status = self.command(text)
            failed = failed or status == "failed" or self.gave_up
            if status == "exit" or self.gave_up:
                break
        return 1 if failed else 0

    def command(self, text: str) -> str:
        """A line: a command (/new, /exit, /help; //text is the message /text) or a message."""
        line = text.strip()
        if line in ("/exit", "/new", "/help"):
            if line == "/new":
                self.new_session()
                self.say("(a new session)")
            elif line == "/help":
                self.say(CHAT_HELP)
            return line[1:]
        if line.startswith("/") and not line.startswith("//"):
            self.say(f"unknown command {line.split()[0]} ({CHAT_HELP})")
            return ""
        return self.turn(text[text.index("/") + 1 :] if line.startswith("//") else text) if line else ""


def _read_line(prompt: str) -> str | None:
    """A line from the terminal, letting other greenlets run meanwhile (an in-process server); None at EOF."""
    from gevent import monkey

    sys.stdout.write(prompt)
    sys.stdout.flush()
    if monkey.is_module_patched("select"):
        import select

        select.select([sys.stdin], [], [])
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _chat_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="everruns chat", description="Chat with an agent in the terminal, over the HTTP API.")
    parser.add_argument("agent", nargs="?", help=f"An agent's name or id (default: {CHAT_AGENT}, created if missing).")
    parser.add_argument("--url", help=f"The server (env: EVERRUNS_URL; default: {CHAT_URL}, or the port "
                        "EVERRUNS_PORT names: where `everruns` with the same environment listens).")  # fmt: skip
    parser.add_argument("--api-key", help="The server's API key (env: EVERRUNS_API_KEY).")
    parser.add_argument("--new", action="store_true", help="Start a new session (default: continue the newest).")
    return parser


def _server_in_process(url: str) -> Callable[[], None]:
    """Serve the default database in this process, as `python everruns.py` would; a function to stop it."""
    _require_patched()
    config = _resolve_settings(_parser().parse_args([]), os.environ)
    db, port = config.pop("db"), int(url.rsplit(":", 1)[1])
    app = create_app(db, **config)
    server = _Server(("127.0.0.1", port), app, config)
    try:
        server.start()
    except OSError as e:
        app.close()
        raise _ChatError(f"nothing answers at {url}, and a server cannot start here: {e.strerror or e}") from None
    print(f"everruns: no server at {url}; running one in this process (database {db})", file=sys.stderr)

    def stop() -> None:
        server.close()
        app.close()
        server.stop(timeout=1)

    return stop


def _chat(argv: list[str]) -> int:
    """`everruns chat`: see _chat_parser."""
    args = _chat_parser().parse_args(argv)
    gevent.get_hub().NOT_ERROR += (KeyboardInterrupt,)  # Ctrl-C cancels a turn: not an error to print
    # Ctrl-C lands in the main greenlet whichever one runs when it comes (Python raises it in the
    # greenlet running then: the reader of the input, say, which would swallow it).
    gevent.signal_handler(signal.SIGINT, functools.partial(gevent.kill, gevent.getcurrent(), KeyboardInterrupt))
    port = os.environ.get("EVERRUNS_PORT", "").strip()
    url = args.url or os.environ.get("EVERRUNS_URL") or (f"http://127.0.0.1:{port}" if port.isdigit() else CHAT_URL)
    api = _ApiClient(url, args.api_key or os.environ.get("EVERRUNS_API_KEY"))
    stop = None
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")
    try:
        try:
            api.call("GET", "/health")
        except _ChatError:
            if args.url or os.environ.get("EVERRUNS_URL"):
                raise
            stop = _server_in_process(url)
        chat = _Chat(api, sys.stdout, _Lines(sys.stdin, sys.stdin.isatty()))
        chat.open(args.agent, args.new)
        return chat.interactive() if sys.stdin.isatty() else chat.lines()
    except (_ChatError, StartupError, ValueError) as e:
        print(f"everruns chat: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1
    except KeyboardInterrupt:
        return 130
    finally:
        if stop:
            stop()


# ---- backup (SPEC 18): a consistent copy of a SQLite database, while a server runs on it ------
# SQLite's online backup, a step at a time. A backup that another connection writes under
# starts again at its next step (with 20 sessions talking it may never end): the copy is read
# in one read transaction instead, which in WAL mode sees the database as it was when it began
# and holds up no writer. The source is opened read-only and its `-lock` is left alone (it is
# the running server's); the copy is written beside DEST, checked, synced, then renamed.

BACKUP_STEP_PAGES = 256  # pages copied per step (1 MiB of 4 KiB pages)
BACKUP_PAUSE_S = 0.002  # between steps: the disk is shared with the server


class _BackupError(Exception):
    """The backup cannot be made: one line, and the exit status (2: refused as asked)."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _db_setting() -> Setting:
    return next(s for s in SETTINGS if s.name == "db")


def _backup_parser() -> argparse.ArgumentParser:
    db = _db_setting()
    parser = _Parser(prog="everruns backup", description="Copy the SQLite database to DEST, consistently, even "
                     "while a server runs on it (SQLite's online backup). A server started on the copy has "
                     "everything (keys at rest need the same --secret-key).")  # fmt: skip
    parser.add_argument("dest", metavar="DEST", help="The copy to write: a new file (an existing one is refused).")
    parser.add_argument("--db", help=f"The database, found as `everruns` finds it (env: {db.env}; default: "
                        f"{db.default}).")  # fmt: skip
    return parser


def _backup_checked(db: str, dest: str) -> None:
    """Refuse, in one line, a backup that cannot be made as asked."""
    if _is_postgres(db):
        raise _BackupError(f"{_shown_db(db)} is a PostgreSQL database: back it up with pg_dump")
    if "://" in db:  # (not echoed: a URL may hold a password)
        raise _BackupError(f"--db: {db.split('://', 1)[0]}:// is not a SQLite file")
    if db == ":memory:" or not os.path.isfile(db):
        raise _BackupError(f"the database {db} does not exist (give --db, or {_db_setting().env})")
    if os.path.lexists(dest) or os.path.lexists(dest + "-wal"):
        raise _BackupError(f"{dest} exists: give a new file (a backup never overwrites one)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        raise _BackupError(f"the folder of {dest} does not exist")


def _backup_copy(db: str, path: str) -> int:
    """Copy the database into the new file at `path` (see above); the copy's schema version."""
    import sqlite3
    from urllib.parse import quote

    source = sqlite3.connect(f"file:{quote(os.path.abspath(db))}?mode=ro", uri=True, isolation_level=None)
    copy = sqlite3.connect(path, isolation_level=None)
    try:
        source.execute("PRAGMA busy_timeout = 5000")
        source.execute("BEGIN")
        source.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # the snapshot is taken here
        source.backup(copy, pages=BACKUP_STEP_PAGES, progress=lambda *_: time.sleep(BACKUP_PAUSE_S))
        source.execute("ROLLBACK")
        check = copy.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise _BackupError(f"the copy does not pass SQLite's check ({check})", 1)
        return copy.execute("PRAGMA user_version").fetchone()[0]
    finally:
        copy.close()
        source.close()


def _backup(argv: list[str]) -> int:
    """`everruns backup DEST [--db PATH]`: see _backup_parser."""
    import sqlite3
    import tempfile

    args = _backup_parser().parse_args(argv)
    setting = _db_setting()
    db, dest = args.db or os.environ.get(setting.env) or setting.default, args.dest
    folder, path = os.path.dirname(os.path.abspath(dest)), None
    try:
        _backup_checked(db, dest)
        fd, path = tempfile.mkstemp(prefix=f".{os.path.basename(dest)}.", suffix=".tmp", dir=folder)
        os.close(fd)
        version = _backup_copy(db, path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(path, dest)
        path = None
        directory = os.open(folder, os.O_RDONLY)  # the rename, durable too
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except _BackupError as e:
        print(f"everruns backup: {e}", file=sys.stderr)
        return e.status
    except sqlite3.Error as e:
        print(f"everruns backup: {db} cannot be copied: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"everruns backup: {e.filename or dest}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if path is not None:
            with contextlib.suppress(OSError):
                os.remove(path)
    size = os.path.getsize(dest)
    print(f"everruns backup: {db} copied to {dest} ({size / 1_048_576:.1f} MB, schema version {version})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the server (``serve``, the default), the terminal chat (``chat``) or a backup (``backup``);
    ``--help`` lists the options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["chat"]:
        return _chat(argv[1:])
    if argv[:1] == ["backup"]:
        return _backup(argv[1:])
    args = _parser().parse_args(argv[1:] if argv[:1] == ["serve"] else argv)
    try:
        config = _resolve_settings(args, os.environ)
    except ValueError as e:
        print(f"everruns: {e}", file=sys.stderr)
        return 2
    host, port, db = config["host"], config["port"], config.pop("db")
    db_password = _db_password(db)  # a secret too
    json_lines = config["log_format"] == "json"
    logging.basicConfig(level=config["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # every log line, whoever writes it
        handler.addFilter(_RedactingFilter(lambda: (config["api_key"], config["secret_key"], db_password)))
        handler.addFilter(_LogIds())
        if json_lines:
            handler.setFormatter(_JsonLines())
    say = _log.error if json_lines else lambda message: print(f"everruns: {message}", file=sys.stderr)
    try:
        _check_bind(host, config["api_key"], config["insecure"])
    except RuntimeError as e:
        say(e)
        return 2
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

    def ready() -> None:
        if json_lines:  # one line, like every other
            _log.info("Everruns %s listening on %s (console %s/, API %s/v1/, docs %s/swagger-ui/; database %s)",
                      __version__, url, url, url, url, _shown_db(db))  # fmt: skip
            return
        print(f"Everruns {__version__} listening on {url}", flush=True)
        print(f"  Console: {url}/", flush=True)
        print(f"  API:     {url}/v1/   database: {_shown_db(db)}", flush=True)
        print(f"  Docs:    {url}/swagger-ui/  ({url}/api-doc/openapi.json)", flush=True)

    try:
        _require_patched()
        app = create_app(db, **config)
        for handler in logging.getLogger().handlers:
            handler.addFilter(app.everruns.log_filter)
        serve(app, host, port, ready=ready)
    except StartupError as e:
        say(e)
        return e.status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
