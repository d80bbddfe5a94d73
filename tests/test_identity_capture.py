"""Who a captured connection is: `airlock run --agent-uid UID=NAME` names the agent of every
connection `airlock capture --uid UID` redirects, by the UID owning the client's socket. Real
namespaces, iptables, `airlock run` with a transparent listener, and curl as the agent's user."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .support import AIRLOCK, Airlock
from .support.capture import (
    CONTROL,
    LISTEN,
    NOBODY,
    PA,
    TRANSPARENT,
    UPSTREAM_IP,
    curl_args,
    logged,
    reply_of,
    serve,
    started,
)
from .support.namespaces import Netns, Processes, netns_unsupported

pytestmark = pytest.mark.skipif(netns_unsupported() is not None, reason=netns_unsupported() or "")

RULES = f"version: 1\negress:\n  allow: [allowed.test, {{host: {UPSTREAM_IP}, ports: [{PA}]}}]\n"


def test_a_captured_uid_is_the_agent_its_mapping_names(
    netns: Netns, processes: Processes, tmp_path: Path
) -> None:
    ns = netns
    upstream = serve(processes, ns.exec(), "http", UPSTREAM_IP, PA)
    (tmp_path / "rules.yaml").write_text(RULES)
    a = Airlock(
        data=tmp_path / "data",
        rules=tmp_path / "rules.yaml",
        port=LISTEN,
        control_port=CONTROL,
        extra=("--transparent", f"127.0.0.1:{TRANSPARENT}", "--agent-uid", f"{NOBODY}=captured-bot"),
    )
    proc = processes.start(ns.exec(*a.command()), "airlock")
    healthz = f"http://127.0.0.1:{CONTROL}/healthz"
    started(
        proc,
        lambda: ns.run("curl", "-sf", "-m", "2", healthz).returncode == 0,
        "airlock answers",
        str(processes.root / "airlock.out"),
    )
    installed = ns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT))
    assert installed.returncode == 0, installed.stderr

    ok = reply_of(ns.run(*curl_args(f"http://allowed.test:{PA}/mine"), uid=NOBODY))
    assert ok.status == 200, ok
    # A captured agent that calls itself another name is recorded as a claim.
    claim = ["-H", "X-Airlock-Agent: admin"]
    as_agent = reply_of(ns.run(*curl_args(f"http://allowed.test:{PA}/as-admin"), *claim, uid=NOBODY))
    assert as_agent.status == 200, as_agent
    assert [s["path"] for s in upstream.seen()] == ["/mine", "/as-admin"]

    mine, as_agent_logged = logged(a, 2)
    assert (mine["agent"], mine["state"]) == ("captured-bot", "committed")
    assert as_agent_logged["agent"] == "admin"
    shown = json.loads(a.cli("show", str(as_agent_logged["id"]), "--json").stdout)
    assert shown["entries"][0]["data"]["action"]["configured_agent"] == "captured-bot"
