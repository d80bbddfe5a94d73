"""Capture without proxy variables: `airlock capture` (iptables rules for one UID) and
`airlock exec --isolate` (a network namespace whose only way out is airlock).

Everything is real: network namespaces, links, iptables rules, `airlock run` with a transparent
listener, curl as the agent's user, and upstream servers on non-loopback addresses (loopback is
never captured). Each test makes its own namespaces, links and processes under unique names and
removes them all afterwards, whether it passes or not.
"""

from __future__ import annotations

import random
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from proxy.routing.isolate import Link
from rules import EGRESS_RULE

from .support import AIRLOCK, Airlock, free_port, wait_for
from .support.capture import (
    NOBODY,
    PA,
    PB,
    PU,
    TRANSPARENT,
    UPSTREAM_IP,
    curl_args,
    logged,
    reply_of,
    serve,
    start_airlock,
)
from .support.namespaces import (
    NETNS_ETC,
    Netns,
    Processes,
    Traces,
    add_link,
    exec_isolated,
    mentioning,
    netns_unsupported,
    quiet,
    scrub,
)

pytestmark = pytest.mark.skipif(netns_unsupported() is not None, reason=netns_unsupported() or "")

# ---- processes, namespaces and links ---------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tidy_etc_netns() -> Iterator[None]:
    # `ip netns exec` reads /etc/netns/<ns>; remove the directory afterwards if this module made it.
    existed = NETNS_ETC.exists()
    yield
    if not existed:
        with suppress(OSError):
            NETNS_ETC.rmdir()


@pytest.fixture
def host_address() -> Iterator[str]:
    """10.78.X.1 on a link of the host namespace (removed afterwards)."""
    name = f"alt{secrets.token_hex(3)}"
    used = quiet("ip", "-4", "-o", "addr")
    x = next(x for x in random.sample(range(1, 255), 254) if f" 10.78.{x}." not in used)
    try:
        add_link([], name, f"10.78.{x}.1/24")
        yield f"10.78.{x}.1"
    finally:
        quiet("ip", "link", "del", name)


# ---- servers and clients ---------------------------------------------------------------------


def send_udp(ns: Netns, port: int, text: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """One datagram to 10.77.0.1:port from inside the namespace (bash's /dev/udp)."""
    return ns.run("bash", "-c", f"printf %s {text} > /dev/udp/{UPSTREAM_IP}/{port}", uid=uid)


def datagram(text: str, host: str, port: int) -> list[str]:
    """A python command that sends one UDP datagram."""
    send = f"socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{text}', ('{host}', {port}))"
    return [sys.executable, "-c", f"import socket; {send}"]


# ---- airlock capture -------------------------------------------------------------------------


def test_capture_sends_one_users_traffic_through_airlock(
    netns: Netns, processes: Processes, tmp_path: Path
) -> None:
    ns = netns
    allowed = serve(processes, ns.exec(), "http", UPSTREAM_IP, PA)
    forgotten = serve(processes, ns.exec(), "http", UPSTREAM_IP, PB)
    other_udp = serve(processes, ns.exec(), "udp", UPSTREAM_IP, PU)
    resolver = serve(processes, ns.exec(), "udp", UPSTREAM_IP, 53)  # stands in for the nameserver
    rules = f"version: 1\negress:\n  allow: [allowed.test, {{host: {UPSTREAM_IP}, ports: [{PA}]}}]\n"
    a = start_airlock(processes, ns, tmp_path, rules)

    installed = ns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT))
    assert installed.returncode == 0, installed.stderr
    assert mentioning(ns.exec(), f"AIRLOCK-{NOBODY}")

    # No proxy variables, and curl told to ignore any: the connection is captured all the same.
    ok = reply_of(ns.run(*curl_args(f"http://allowed.test:{PA}/ok"), uid=NOBODY))
    assert ok.status == 200, ok
    assert ok.json() == {"port": PA, "path": "/ok"}
    assert allowed.seen() == [{"path": "/ok", "host": f"allowed.test:{PA}"}]

    # A name off the allowlist, at an address that only root may reach directly.
    denied = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/secret"), uid=NOBODY))
    assert denied.status == 403, denied
    body = denied.json()
    assert (body["error"], body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert "forgotten.test" in body["message"] and "not on the egress allowlist" in body["message"]

    # The bare address, with no name at all.
    raw = reply_of(ns.run(*curl_args(f"http://{UPSTREAM_IP}:{PB}/raw"), uid=NOBODY))
    assert raw.status == 403, raw
    raw_body = raw.json()
    assert (raw_body["error"], raw_body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert "bare IP address" in raw_body["message"]
    assert forgotten.seen() == []

    first, second, third = logged(a, 3)
    assert (first["method"], first["url"], first["host"]) == (
        "GET",
        f"http://allowed.test:{PA}/ok",
        "allowed.test",
    )
    assert (first["state"], first["status"]) == ("committed", 200)
    assert (second["host"], second["state"], second["rule"]) == ("forgotten.test", "denied", EGRESS_RULE)
    assert second["id"] == body["action_id"]
    assert (third["host"], third["state"], third["rule"]) == (UPSTREAM_IP, "denied", EGRESS_RULE)
    assert third["id"] == raw_body["action_id"]

    # UDP: only DNS to the nameserver of resolv.conf leaves; root's datagram, sent last, shows the
    # listener was there to receive the agent's.
    send_udp(ns, PU, "from-agent", uid=NOBODY)
    dns = send_udp(ns, 53, "query", uid=NOBODY)
    assert dns.returncode == 0, dns.stderr
    assert send_udp(ns, PU, "from-root").returncode == 0
    wait_for(lambda: resolver.seen() == [{"data": "query"}], "the resolver has the agent's datagram")
    wait_for(lambda: other_udp.seen() != [], "root's datagram arrives")
    assert other_udp.seen() == [{"data": "from-root"}]

    # Root is not captured: its connection goes straight to the forgotten endpoint, unlogged.
    direct = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/direct")))
    assert direct.status == 200
    assert forgotten.seen() == [{"path": "/direct", "host": f"forgotten.test:{PB}"}]
    assert len(a.log()) == 3

    removed = ns.run(AIRLOCK, "capture", "--uid", str(NOBODY), "--port", str(TRANSPARENT), "--remove")
    assert removed.returncode == 0, removed.stderr
    assert mentioning(ns.exec(), "AIRLOCK") == []
    # And the agent is on its own again.
    after = reply_of(ns.run(*curl_args(f"http://forgotten.test:{PB}/after"), uid=NOBODY))
    assert after.status == 200
    assert [s["path"] for s in forgotten.seen()] == ["/direct", "/after"]
    assert len(a.log()) == 3


# ---- airlock exec --isolate ------------------------------------------------------------------


def isolated(
    a: Airlock, cmd: list[str], prefix: list[str] | None = None
) -> tuple[Link, subprocess.CompletedProcess[str]]:
    """Run `airlock exec --isolate -- cmd` towards `a`'s transparent listener (inside another
    namespace when `prefix` says so) and check that it left nothing behind."""
    prefix = prefix or []
    before = Traces.now(prefix)
    transparent = a.extra[a.extra.index("--transparent") + 1]
    args = [*prefix, AIRLOCK, "exec", "--data", str(a.data), "--isolate", "--transparent", transparent]
    args += ["--", *cmd]
    link, done = exec_isolated(args, prefix, timeout=30)  # `ip netns exec` execs airlock
    left = Traces.now(prefix).added_since(before)
    scrub(prefix, link)
    assert left == {}, f"airlock exec --isolate left behind {left}"
    return link, done


def test_exec_isolate_reaches_only_airlock(
    host_address: str, processes: Processes, make_airlock: Callable[..., Airlock]
) -> None:
    pa, pb, pu = free_port(), free_port(), free_port()
    allowed = serve(processes, [], "http", host_address, pa)
    other = serve(processes, [], "http", host_address, pb)
    sink = serve(processes, [], "udp", host_address, pu)
    transparent = free_port()
    rules = f"version: 1\negress:\n  allow: [{{host: {host_address}, ports: [{pa}]}}]\n"
    a = make_airlock(rules=rules, extra=("--transparent", f"127.0.0.1:{transparent}"))

    _, done = isolated(a, curl_args(f"http://{host_address}:{pa}/ok"))
    ok = reply_of(done)
    assert ok.status == 200 and ok.json() == {"port": pa, "path": "/ok"}
    assert allowed.seen() == [{"path": "/ok", "host": f"{host_address}:{pa}"}]

    _, done = isolated(a, curl_args(f"http://{host_address}:{pb}/no"))
    denied = reply_of(done)
    assert denied.status == 403, denied
    assert (denied.json()["error"], denied.json()["rule"]) == ("egress_denied", EGRESS_RULE)
    assert other.seen() == []

    ok_entry, denied_entry = logged(a, 2)
    assert (ok_entry["url"], ok_entry["state"], ok_entry["status"]) == (
        f"http://{host_address}:{pa}/ok",
        "committed",
        200,
    )
    assert (denied_entry["host"], denied_entry["state"], denied_entry["rule"]) == (
        host_address,
        "denied",
        EGRESS_RULE,
    )
    assert denied_entry["id"] == denied.json()["action_id"]

    # UDP anywhere but the DNS relay goes nowhere; the host's own datagram, sent after, arrives.
    # (bash, not this interpreter: the command runs as nobody, who may not read root's home)
    _, done = isolated(a, ["bash", "-c", f"printf isolated > /dev/udp/{host_address}/{pu}"])
    assert done.returncode == 0, done.stderr
    subprocess.run(datagram("host", host_address, pu), check=True, timeout=10)
    wait_for(lambda: sink.seen() != [], "the host's datagram arrives")
    assert sink.seen() == [{"data": "host"}]

    # No capabilities inside: the namespace's network cannot be changed.
    _, done = isolated(a, ["ip", "link", "set", "lo", "down"])
    assert done.returncode != 0
    assert "not permitted" in done.stderr.lower(), done.stderr

    link, done = isolated(a, ["cat", "/etc/resolv.conf"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"nameserver {link.host_ip}\n"

    _, done = isolated(a, ["sh", "-c", "exit 7"])
    assert done.returncode == 7
    assert len(a.log()) == 2


def test_exec_isolate_resolves_names_through_the_dns_relay(
    netns: Netns, processes: Processes, tmp_path: Path
) -> None:
    # Inside a test namespace, /etc/resolv.conf names a fake resolver the test controls, so the
    # relay (which asks the first nameserver of resolv.conf) can be followed end to end.
    ns = netns
    upstream = serve(processes, ns.exec(), "http", UPSTREAM_IP, PA)
    resolver = serve(processes, ns.exec(), "dns", UPSTREAM_IP, 53, answer=UPSTREAM_IP)
    rules = f"version: 1\negress:\n  allow: [viadns.test, {{host: {UPSTREAM_IP}, ports: [{PA}]}}]\n"
    a = start_airlock(processes, ns, tmp_path, rules)

    # viadns.test is in no hosts file: the isolated curl can learn its address only by DNS.
    link, done = isolated(a, curl_args(f"http://viadns.test:{PA}/dns"), prefix=ns.exec())
    ok = reply_of(done)
    assert ok.status == 200 and ok.json() == {"port": PA, "path": "/dns"}
    assert upstream.seen() == [{"path": "/dns", "host": f"viadns.test:{PA}"}]
    assert {"name": "viadns.test"} in resolver.seen()
    [entry] = logged(a, 1)
    assert (entry["host"], entry["state"], entry["status"]) == ("viadns.test", "committed", 200)

    # The isolated command's resolver is the relay on the host end of its link.
    assert link.host_ip.startswith("169.254.")
    _, done = isolated(a, ["cat", "/etc/resolv.conf"], prefix=ns.exec())
    assert done.stdout.startswith("nameserver 169.254.")
