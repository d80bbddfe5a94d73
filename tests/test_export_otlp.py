"""Shipping the log to an OpenTelemetry collector (`airlock run --otlp-endpoint`) and writing a
window of it out (`airlock export`).

The collector is a real OTLP/HTTP receiver on loopback that decodes each request with
OpenTelemetry's own protobuf classes; traffic is real requests through a real `airlock run`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from .support import AIRLOCK, Airlock, Upstream, entries_now, free_port, wait_for
from .support.mcp_stdio import Host, Setup, write_rules

Record = dict[str, Any]  # one log record as received: its attributes, body, severity and resource


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


def records_of(request: ExportLogsServiceRequest) -> list[Record]:
    """Every log record of a decoded ExportLogsServiceRequest, flattened."""
    out = []
    for rl in request.resource_logs:
        resource = {kv.key: _value(kv.value) for kv in rl.resource.attributes}
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                attrs = {kv.key: _value(kv.value) for kv in lr.attributes}
                out.append(
                    attrs
                    | {
                        "_body": _value(lr.body),
                        "_time": lr.time_unix_nano,
                        "_severity": lr.severity_text,
                        "_event": lr.event_name,
                        "_resource": resource,
                    }
                )
    return out


class Collector:
    """An OTLP/HTTP logs receiver on loopback: what it was sent, decoded; it can go down and come
    back on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        """What `--otlp-endpoint` is given (no path: airlock adds /v1/logs)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Collector:
        """Listen and answer until `stop`."""
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/logs" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                request = ExportLogsServiceRequest()
                request.ParseFromString(body)
                with collector.lock:
                    collector.records.extend(records_of(request))
                answer = ExportLogsServiceResponse().SerializeToString()
                # No connection outlives its request: a stopped collector takes nothing more.
                self.close_connection = True
                self.send_response(200)
                self.send_header("Connection", "close")
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop answering and close the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def seqs(self) -> list[int]:
        """`airlock.seq` of every record received, in the order received."""
        with self.lock:
            return [int(r["airlock.seq"]) for r in self.records]

    def by_seq(self) -> dict[int, Record]:
        """Each record received, by its entry number."""
        with self.lock:
            return {int(r["airlock.seq"]): r for r in self.records}


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector().start()
    yield c
    c.stop()


def exported(a: Airlock | Setup, *args: str) -> str:
    """`airlock export ARGS` against the data dir; its output."""
    proc = subprocess.run(
        [AIRLOCK, "export", "--data", str(a.data), *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def entries(a: Airlock | Setup, *args: str) -> list[dict[str, Any]]:
    """`airlock export` (JSON lines): the log's entries."""
    return [json.loads(line) for line in exported(a, *args).splitlines()]


def otlp_records(a: Airlock | Setup, *args: str) -> list[Record]:
    """`airlock export --format otlp`, each line parsed as OTLP/JSON by protobuf's own parser."""
    lines = exported(a, "--format", "otlp", *args).splitlines()
    return [r for line in lines for r in records_of(Parse(line, ExportLogsServiceRequest()))]


def shipped_all(c: Collector, a: Airlock) -> Callable[[], bool]:
    return lambda: (head := entries_now(a)) > 0 and set(c.seqs()) >= set(range(1, head + 1))


def traffic(a: Airlock, up: Upstream, n: int, tag: str) -> None:
    """`n` GETs and a POST through the proxy, and a DELETE the rules deny."""
    for i in range(n):
        assert requests.get(f"{up.url}/items/{tag}{i}", proxies=a.proxies, timeout=10).status_code == 200
    assert requests.post(f"{up.url}/items", json={"tag": tag}, proxies=a.proxies, timeout=10).ok
    assert requests.delete(f"{up.url}/items/{tag}", proxies=a.proxies, timeout=10).status_code == 403


def metric(a: Airlock, name: str) -> float:
    text = requests.get(
        f"{a.control}/metrics", headers={"Authorization": f"Bearer {a.token}"}, timeout=10
    ).text
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found is not None, f"{name} is not in /metrics"
    return float(found[1])


def assert_once_each(c: Collector, a: Airlock) -> None:
    """The collector holds every entry of the log once, as the log holds it."""
    counts = Counter(c.seqs())
    assert [seq for seq, n in counts.items() if n > 1] == []
    log = entries(a)
    assert sorted(counts) == [e["seq"] for e in log]
    got = c.by_seq()
    assert [got[e["seq"]]["airlock.hash"] for e in log] == [e["hash"] for e in log]
    assert [got[e["seq"]]["airlock.prev"] for e in log] == [e["prev"] for e in log]


# ---- shipping ---------------------------------------------------------------------------------


def test_every_entry_reaches_the_collector_once_across_a_restart_of_airlock(
    make_airlock: Callable[..., Airlock], upstream: Upstream, collector: Collector
) -> None:
    a = make_airlock(extra=("--otlp-endpoint", collector.url))
    traffic(a, upstream, 3, "a")
    wait_for(shipped_all(collector, a), "the collector has every entry", timeout=60)
    a.stop()
    before = len(collector.seqs())

    a.start()
    traffic(a, upstream, 2, "b")
    wait_for(shipped_all(collector, a), "the collector has every entry after the restart", timeout=60)
    assert len(collector.seqs()) > before
    assert_once_each(collector, a)
    assert "shipping the log to" in (a.output.read_text() if a.output else "")


def test_entries_made_while_the_collector_is_down_arrive_once_when_it_is_back(
    make_airlock: Callable[..., Airlock], upstream: Upstream, collector: Collector
) -> None:
    a = make_airlock(extra=("--otlp-endpoint", collector.url))
    traffic(a, upstream, 2, "a")
    wait_for(shipped_all(collector, a), "the collector has every entry", timeout=60)
    shipped_before = metric(a, "airlock_export_shipped_entries_total")
    assert metric(a, "airlock_export_lag_entries") == 0

    collector.stop()
    traffic(a, upstream, 3, "down")
    wait_for(lambda: metric(a, "airlock_export_failures_total") >= 1, "an export has failed", timeout=60)
    assert metric(a, "airlock_export_lag_entries") > 0
    # The proxy went on deciding and forwarding while nothing could be shipped.
    assert len(upstream.effects("GET")) == 5

    collector.start()
    wait_for(shipped_all(collector, a), "the collector has the entries made while it was down", timeout=90)
    assert_once_each(collector, a)
    wait_for(lambda: metric(a, "airlock_export_lag_entries") == 0, "the lag is back to 0")
    assert metric(a, "airlock_export_shipped_entries_total") == entries_now(a)
    assert shipped_before < entries_now(a)


def test_records_carry_the_entry_under_opentelemetrys_names(
    make_airlock: Callable[..., Airlock], upstream: Upstream, collector: Collector
) -> None:
    a = make_airlock(extra=("--otlp-endpoint", collector.url))
    traffic(a, upstream, 1, "x")
    secret = {"X-Service-Token": "svc-secret-123"}
    assert requests.get(f"{upstream.url}/?token=svc-secret-123", headers=secret, proxies=a.proxies).ok
    wait_for(shipped_all(collector, a), "the collector has every entry", timeout=60)
    log = {e["seq"]: e for e in entries(a)}
    got = collector.by_seq()

    get = next(r for r in got.values() if r.get("url.full") == f"{upstream.url}/items/x0")
    assert get["http.request.method"] == "GET"
    assert get["server.address"] == "127.0.0.1"
    assert get["server.port"] == upstream.port
    assert get["airlock.kind"] == "intent" and get["airlock.state"] == "pending"
    assert get["airlock.decision"] == "allow" and get["airlock.agent"] == "anonymous"
    assert get["airlock.effect"] == "read" and get["airlock.protocol"] == "http"
    entry = log[get["airlock.seq"]]
    assert get["airlock.action"] == entry["action"]
    assert get["_time"] == round(entry["ts"] * 1e9)
    assert get["_event"] == "airlock.intent" and get["_severity"] == "INFO"
    assert get["_body"].startswith(f"intent {entry['action']}: GET {upstream.url}/items/x0: allow")
    assert get["_resource"]["service.name"] == "airlock"

    outcome = next(
        r for r in got.values() if r["airlock.kind"] == "outcome" and r["airlock.action"] == entry["action"]
    )
    assert outcome["http.response.status_code"] == 200 and outcome["airlock.state"] == "committed"

    denied = next(r for r in got.values() if r.get("http.request.method") == "DELETE")
    assert denied["airlock.rule"] == "no-item-deletes" and denied["airlock.decision"] == "deny"
    assert denied["airlock.state"] == "denied" and denied["_severity"] == "WARN"

    # Neither headers nor bodies are shipped, and a credential never (the log does not hold it).
    assert not [
        k for r in got.values() for k in r if not k.startswith("_") and ("header" in k or "body" in k)
    ]
    assert "svc-secret-123" not in repr(got)
    assert_semantic_names(got.values())


def test_a_tool_call_is_an_execute_tool_record(setup: Setup, hosts: Callable[..., Host]) -> None:
    write_rules(setup, "rules: []\n")
    host = hosts(setup.airlock_command(), setup.stderr)
    host.initialize()
    call = {"name": "write_note", "arguments": {"name": "n1", "text": "hello", "password": "hunter2-xyzzy"}}
    host.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": call})
    assert host.response(7)["result"]["isError"] is False
    assert host.close() == 0

    records = otlp_records(setup)
    intent = next(r for r in records if r.get("mcp.method.name") == "tools/call")
    assert intent["gen_ai.operation.name"] == "execute_tool"
    assert intent["gen_ai.tool.name"] == "write_note"
    assert intent["gen_ai.tool.call.id"] == str(intent["airlock.action"])
    assert intent["airlock.protocol"] == "mcp"
    assert "hunter2-xyzzy" not in json.dumps(records)
    assert [r["airlock.seq"] for r in records] == [e["seq"] for e in entries(setup)]
    assert_semantic_names(records)


def assert_semantic_names(records: Any) -> None:
    """Every attribute not under `airlock.` is a name of OpenTelemetry's semantic conventions."""
    names: set[str] = set()
    # The stable names and those still in development (GenAI, MCP), as the semconv package has them.
    for package in ("opentelemetry.semconv.attributes", "opentelemetry.semconv._incubating.attributes"):
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            names |= {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    used = {k for r in records for k in r if not k.startswith(("airlock.", "_"))}
    assert used, "no attribute named after the conventions"
    assert used <= names, used - names


# ---- export -----------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_export_writes_exactly_the_entries_of_a_window(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock()
    for tag in ("a", "b", "c"):
        traffic(a, upstream, 2, tag)
    wait_for(lambda: entries_now(a) == len(entries(a)) and entries_now(a) >= 20, "the outcomes are written")
    log = entries(a)
    # Window edges halfway between entries at least a millisecond apart.
    gaps = [i for i in range(1, len(log)) if log[i]["ts"] - log[i - 1]["ts"] > 0.002]
    first, last = gaps[1], gaps[-2] - 1
    assert first < last
    since = _iso((log[first - 1]["ts"] + log[first]["ts"]) / 2)
    until = _iso((log[last]["ts"] + log[last + 1]["ts"]) / 2)
    window = log[first : last + 1]

    assert entries(a, "--since", since, "--until", until) == window
    assert [r["airlock.seq"] for r in otlp_records(a, "--since", since, "--until", until)] == [
        e["seq"] for e in window
    ]
    assert entries(a, "--since", since) == log[first:]
    assert entries(a, "--until", until) == log[: last + 1]
    # Relative ages: everything is younger than an hour, nothing older.
    assert entries(a, "--since", "1h") == log
    assert entries(a, "--until", "1h") == []

    # The lines are the entries as `airlock show --json` prints them.
    action = next(e["action"] for e in window if e["action"] is not None)
    shown = json.loads(a.cli("show", str(action), "--json").stdout)["entries"]
    assert [e for e in log if e["action"] == action] == shown


def test_a_bad_since_or_endpoint_is_one_line(tmp_path: Path) -> None:
    bad_since = subprocess.run(
        [AIRLOCK, "export", "--data", str(tmp_path / "data"), "--since", "yesterday"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_since.returncode == 2
    assert bad_since.stderr.splitlines() == [
        "airlock export: error: --since 'yesterday' is neither a time (ISO 8601, e.g. "
        "2026-11-30T14:00:00Z) nor an age (a number and s, m, h, d or w, e.g. 2h or 7d)"
    ]
    for endpoint in ("collector:4318", "ftp://collector", "http://user:secret@collector:4318"):
        run = subprocess.run(
            [AIRLOCK, "run", "--data", str(tmp_path / "data"), "--otlp-endpoint", endpoint],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2
        assert len(run.stderr.splitlines()) == 1 and "--otlp-endpoint" in run.stderr, run.stderr
        assert "secret" not in run.stderr or "credentials" in run.stderr
    assert not (tmp_path / "data").exists()


def test_reading_the_log_loads_no_opentelemetry(tmp_path: Path) -> None:
    from store import Log

    Log.open(tmp_path / "data" / "log").close()
    data = str(tmp_path / "data")
    probe = (
        "import json, sys\n"
        "import proxy.mcp.stdio\n"
        "from proxy.cli import main\n"
        f"assert main(['log', '--data', {data!r}]) == 0\n"
        f"assert main(['export', '--data', {data!r}]) == 0\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('opentelemetry'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.splitlines()[-1]) == []
