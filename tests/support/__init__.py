"""What the tests share. This face: a recording upstream, a real `airlock run`, test CAs, real
clients, and waiting on a condition. Modules for fewer tests: `actions` (Actions built by hand),
`logfiles` (the log's LMDB files as an attacker opens them), `namespaces` and `capture` (network
namespaces, links and the capture world), `mcp_http`, `mcp_stdio` and `notes` (the notes MCP server
in scripts/, SDK sessions, `airlock mcp` by hand, expected answers). Fixtures built on these live
in tests/conftest.py; no test module imports another."""

from .airlock import AIRLOCK, RULES, Airlock, entries_now, hold_and_crash, settle, started_airlock
from .ca import UpstreamCA, pem_of_key, self_signed_ca
from .clients import curl, environ_without_proxy, interruptible
from .upstream import Seen, Upstream, free_port, plain_upstream, recording_handler, running, serving
from .waiting import wait_for

__all__ = [
    "AIRLOCK",
    "RULES",
    "Airlock",
    "Seen",
    "Upstream",
    "UpstreamCA",
    "curl",
    "entries_now",
    "environ_without_proxy",
    "free_port",
    "hold_and_crash",
    "interruptible",
    "pem_of_key",
    "plain_upstream",
    "recording_handler",
    "running",
    "self_signed_ca",
    "serving",
    "settle",
    "started_airlock",
    "wait_for",
]
