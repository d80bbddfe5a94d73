"""Egress by address: names reach only public addresses, ranges open the rest, and the connection
goes to exactly the address that was checked.

Unit tests on the address classes, on the Ruleset's address checks and on the Egress addon with a
scripted resolver (DNS rebinding), then a real `airlock run` with real clients and a real upstream.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import tflow

from proxy.plane import egress as egress_module
from proxy.plane.egress import Egress, Resolver
from rules import ALLOWED as PASSED
from rules import EGRESS_RULE, Action, Address, Decision, Effect, Ruleset, Verdict, non_public

from .support import Airlock, Upstream, curl, settle

PUBLIC = "93.184.216.34"  # a global unicast address; nothing here ever connects to it


def ip(text: str) -> Address:
    """`text` as an IP address."""
    return ipaddress.ip_address(text)


# ---- which addresses are public -------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),  # AWS, GCP, Azure instance metadata
        ("fd00:ec2::254", "cloud metadata"),  # AWS instance metadata over IPv6
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("::ffff:10.0.0.1", "private"),  # IPv4-mapped: counts as the IPv4 address it carries
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64: the IPv4 address behind the gateway
        ("64:ff9b::808:808", None),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("192.0.2.1", "documentation"),  # TEST-NET-1
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("2606:4700::1111", None),
    ],
)
def test_non_public_names_the_kind_of_address(address: str, kind: str | None) -> None:
    assert non_public(ip(address)) == kind


# ---- the Ruleset's address checks -----------------------------------------------------------


def ruleset(tmp_path: Path, egress: str) -> Ruleset:
    """A Ruleset loaded from a YAML file whose `egress:` section is `egress` (YAML, indented)."""
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\negress:\n" + textwrap.indent(textwrap.dedent(egress), "  "))
    return Ruleset.load(path)


def test_an_allowed_name_reaches_its_public_address(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "allow: [api.example.com]")
    assert rules.egress_allows("api.example.com", 443)
    assert rules.address_refusal("api.example.com", ip(PUBLIC), 443) is None
    assert rules.check_address(PASSED, "api.example.com", 443, [ip(PUBLIC)]) == (ip(PUBLIC), PASSED)


def test_an_allowed_name_resolving_to_loopback_is_refused(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "allow: [localhost]")
    assert rules.egress_allows("localhost", 80)  # the name itself is on the allowlist
    allowed, decision = rules.check_address(PASSED, "localhost", 80, [ip("127.0.0.1")])
    assert allowed is None
    assert (decision.verdict, decision.rule, decision.error) == (Verdict.DENY, EGRESS_RULE, "egress_denied")
    assert "localhost resolves to 127.0.0.1, a loopback address" in decision.message
    assert "127.0.0.1/32" in decision.message  # says which range would open it

    _, v6 = rules.check_address(PASSED, "localhost", 80, [ip("::1")])
    assert v6.refused and "localhost resolves to ::1, a loopback address" in v6.message
    assert "::1/128" in v6.message


def test_a_range_entry_allows_a_private_address(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "allow: [db.internal, 10.0.0.0/8]")
    assert rules.range_allows(ip("10.1.2.3"), 5432)
    assert rules.check_address(PASSED, "db.internal", 5432, [ip("10.1.2.3")]) == (ip("10.1.2.3"), PASSED)
    assert rules.egress_allows("10.1.2.3", 80)  # and the bare address too
    # Only the range: another private network stays closed.
    allowed, decision = rules.check_address(PASSED, "db.internal", 5432, [ip("172.16.5.4")])
    assert allowed is None and "172.16.5.4, a private address" in decision.message


def test_a_ported_range_allows_only_its_ports(tmp_path: Path) -> None:
    rules = ruleset(
        tmp_path,
        """\
        allow:
          - pg.internal
          - {host: 192.168.0.0/16, ports: [5432]}
        """,
    )
    assert rules.range_allows(ip("192.168.1.1"), 5432)
    assert not rules.range_allows(ip("192.168.1.1"), 80)
    assert rules.egress_allows("192.168.1.1", 5432)
    assert not rules.egress_allows("192.168.1.1", 80)
    assert rules.check_address(PASSED, "pg.internal", 5432, [ip("192.168.1.1")])[0] == ip("192.168.1.1")
    allowed, decision = rules.check_address(PASSED, "pg.internal", 80, [ip("192.168.1.1")])
    assert allowed is None and decision.refused
    assert "pg.internal resolves to 192.168.1.1, a private address" in decision.message


def test_of_several_addresses_the_first_allowed_one_is_picked(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "allow: [multi.example, 10.0.0.0/8]")
    addresses = [ip("127.0.0.1"), ip("10.1.2.3"), ip(PUBLIC)]
    assert rules.check_address(PASSED, "multi.example", 443, addresses) == (ip("10.1.2.3"), PASSED)
    assert rules.check_address(PASSED, "multi.example", 443, addresses[::-1])[0] == ip(PUBLIC)
    # None allowed: the refusal names every address that was refused.
    allowed, decision = rules.check_address(PASSED, "multi.example", 443, [ip("127.0.0.1"), ip("fe80::1")])
    assert allowed is None
    assert "127.0.0.1, a loopback address" in decision.message
    assert "fe80::1, a link-local address" in decision.message


def test_bare_ip_addresses_need_a_range_even_with_a_star_glob(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, 'allow: ["*"]')
    assert rules.egress_allows("anything.example", 443)
    for bare in ("169.254.169.254", "8.8.8.8", "[::1]", "::ffff:10.0.0.1"):
        assert not rules.egress_allows(bare, 80), bare
    refusal = rules.egress_refusal("169.254.169.254", 80)
    assert refusal is not None and "bare IP address" in refusal and "169.254.169.254/32" in refusal
    # Even a public address given bare is refused without a range.
    allowed, decision = rules.check_address(PASSED, "8.8.8.8", 53, [ip("8.8.8.8")])
    assert allowed is None and decision.refused and "bare IP address" in decision.message
    # A name the glob allows still reaches only public addresses.
    _, metadata = rules.check_address(PASSED, "evil.example", 80, [ip("169.254.169.254")])
    assert metadata.refused and "a cloud metadata address" in metadata.message

    ranged = ruleset(tmp_path, 'allow: ["*", 8.8.8.0/24]')
    assert ranged.egress_allows("8.8.8.8", 53)
    assert ranged.check_address(PASSED, "8.8.8.8", 53, [ip("8.8.8.8")]) == (ip("8.8.8.8"), PASSED)


def test_report_mode_logs_what_it_would_refuse(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "action: report\nallow: [localhost]")
    allowed, decision = rules.check_address(PASSED, "localhost", 80, [ip("127.0.0.1")])
    assert allowed == ip("127.0.0.1")  # the connection goes ahead
    assert (decision.verdict, decision.rule) == (Verdict.LOG, EGRESS_RULE)
    assert not decision.refused
    assert decision.message.startswith("report only: localhost resolves to 127.0.0.1, a loopback")


def test_a_refused_decision_stays_refused(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, "allow: [localhost, 127.0.0.0/8]")
    denied = Decision(Verdict.DENY, "some-rule", "no", "denied")
    # An allowed address does not lift a refusal made before.
    assert rules.check_address(denied, "localhost", 80, [ip("127.0.0.1")])[1] == denied


# ---- DNS rebinding --------------------------------------------------------------------------


def hook_data(host: str, port: int) -> server_hooks.ServerConnectionHookData:
    """What mitmproxy hands server_connect for a new connection to host:port."""
    return server_hooks.ServerConnectionHookData(
        client=tflow.tclient_conn(), server=connection.Server(address=(host, port))
    )


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """The Resolver's monotonic clock, as a value the test moves: clock[0] += seconds."""
    now = [1000.0]
    monkeypatch.setattr(egress_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    yield now


async def decided(egress: Egress, rules: Ruleset, host: str, port: int) -> Decision:
    """How the gate decides a GET to host:port: resolved first, then the rules."""
    action = Action("GET", "http", host, port, "/", Effect.READ)
    return rules.evaluate(await egress.resolved(action))


def test_dns_rebinding_connects_to_the_checked_address_only(tmp_path: Path, clock: list[float]) -> None:
    rules = ruleset(tmp_path, "allow: [rebind.test]")
    # The scripted lookup stands in for a DNS server that changes its answer: public while the
    # gate checks the name, loopback a moment later when the connection would be opened.
    script = iter([[PUBLIC], ["127.0.0.1"]])
    asked: list[str] = []

    async def scripted(host: str) -> list[str]:
        asked.append(host)
        return next(script)

    egress = Egress(lambda: rules, Resolver(ttl=30, lookup=scripted))

    async def go() -> None:
        assert await decided(egress, rules, "rebind.test", 80) == PASSED

        first = hook_data("rebind.test", 80)
        await egress.server_connect(first)
        assert first.server.error is None
        assert first.server.address == (PUBLIC, 80)  # the address checked, not a new answer
        assert first.server.sni == "rebind.test"
        assert asked == ["rebind.test"]  # the DNS server was not asked again
        egress.server_connected(first)
        assert first.server.address == ("rebind.test", 80)  # named by its host again, for reuse

        clock[0] += 31  # the answer expires: the next connection asks again and gets loopback
        second = hook_data("rebind.test", 80)
        await egress.server_connect(second)
        assert asked == ["rebind.test", "rebind.test"]
        error = second.server.error
        assert error is not None and error.startswith("airlock refused the connection")
        assert "rebind.test resolves to 127.0.0.1, a loopback address" in error
        assert second.server.address == ("rebind.test", 80)  # never pointed at loopback
        # And the gate's check, which sees the same cached answer, refuses now too.
        refused = await decided(egress, rules, "rebind.test", 80)
        assert refused.refused and refused.error == "egress_denied"

    asyncio.run(go())


def test_an_answer_is_kept_for_its_ttl_only(tmp_path: Path, clock: list[float]) -> None:
    rules = ruleset(tmp_path, "allow: [rebind.test]")
    asked: list[str] = []

    async def scripted(host: str) -> list[str]:
        asked.append(host)
        return [PUBLIC] if len(asked) == 1 else ["10.9.8.7"]

    resolver = Resolver(ttl=5, lookup=scripted)
    egress = Egress(lambda: rules, resolver)

    async def go() -> None:
        assert await resolver.addresses("REBIND.test") == [ip(PUBLIC)]
        clock[0] += 4.9
        assert await resolver.addresses("rebind.test") == [ip(PUBLIC)]  # names fold case
        assert len(asked) == 1
        clock[0] += 0.2
        refused = await decided(egress, rules, "rebind.test", 443)
        assert refused.refused and "10.9.8.7, a private address" in refused.message
        assert len(asked) == 2

    asyncio.run(go())


# ---- on the wire ----------------------------------------------------------------------------

NAME_ONLY = "version: 1\negress:\n  allow: [localhost]\n"
WITH_LOOPBACK = 'version: 1\negress:\n  allow: [localhost, 127.0.0.0/8, "::1"]\n'
STAR = 'version: 1\negress:\n  allow: ["*"]\n'


def localhost_addresses() -> list[str]:
    """What this machine's resolver gives for localhost (127.0.0.1, ::1 or both)."""
    infos = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def assert_egress_refused(r: requests.Response) -> dict[str, Any]:
    """A 403 egress_denied from the proxy; returns the JSON body."""
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.headers["X-Airlock-Rule"] == EGRESS_RULE
    body: dict[str, Any] = r.json()
    assert (body["error"], body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert isinstance(body["action_id"], int)
    return body


def assert_names_loopback(message: str) -> None:
    """The refusal names localhost, every address it resolves to, and why."""
    for address in localhost_addresses():
        assert f"localhost resolves to {address}, a loopback address" in message, message


def connect(a: Airlock, target: str) -> tuple[socket.socket, bytes, bytes]:
    """Send CONNECT `target` to the proxy; the open socket, the answer's head and its body."""
    s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head, body = read_answer(s)
    return s, head, body


def read_answer(s: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP answer from `s`: its head and its Content-Length body."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"connection closed after {head + body!r}"
        body += chunk
    return head, body


def test_a_name_resolving_to_loopback_is_refused_until_a_range_allows_it(
    make_airlock: Callable[..., Airlock], upstream: Upstream, tmp_path: Path
) -> None:
    url = f"http://localhost:{upstream.port}/x"
    a = make_airlock(rules=NAME_ONLY)
    r = requests.get(url, proxies=a.proxies, timeout=10)
    body = assert_egress_refused(r)
    assert_names_loopback(body["message"])
    assert upstream.effects() == []
    [logged] = a.log()
    assert (logged["id"], logged["state"], logged["rule"], logged["host"]) == (
        body["action_id"],
        "denied",
        EGRESS_RULE,
        "localhost",
    )
    assert logged["status"] is None
    a.stop()

    b = make_airlock(rules=WITH_LOOPBACK, data=tmp_path / "data-ranges")
    r = requests.get(url, proxies=b.proxies, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/x"
    [seen] = upstream.effects()
    assert (seen.method, seen.path, seen.headers["host"]) == ("GET", "/x", f"localhost:{upstream.port}")
    settle(b, 1 + 2)  # the rules entry, the intent and the outcome
    [passed] = b.log()
    assert (passed["state"], passed["status"], passed["host"]) == ("committed", 200, "localhost")


def test_a_websocket_upgrade_to_loopback_is_refused(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=NAME_ONLY)
    r = requests.get(
        f"http://localhost:{upstream.port}/socket",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
        proxies=a.proxies,
        timeout=10,
    )
    body = assert_egress_refused(r)
    assert_names_loopback(body["message"])
    assert upstream.effects() == []
    [logged] = a.log()
    assert (logged["id"], logged["state"], logged["rule"]) == (body["action_id"], "denied", EGRESS_RULE)
    assert logged["url"] == f"http://localhost:{upstream.port}/socket"


def test_the_metadata_address_is_refused_as_a_bare_ip_even_with_a_star(
    make_airlock: Callable[..., Airlock],
) -> None:
    a = make_airlock(rules=STAR)
    # The refusal comes before any connection: no network is needed, and none is reached.
    r = requests.get("http://169.254.169.254/latest/meta-data/", proxies=a.proxies, timeout=10)
    body = assert_egress_refused(r)
    assert "169.254.169.254" in body["message"] and "bare IP address" in body["message"]

    out = curl("--cacert", str(a.ca_cert), "-x", a.proxy, "https://169.254.169.254/")
    assert out.returncode != 0 and "403" in out.stderr, (out.returncode, out.stderr)

    s, head, raw = connect(a, "169.254.169.254:443")
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    refused = json.loads(raw)
    assert (refused["error"], refused["rule"]) == ("egress_denied", EGRESS_RULE)
    assert "169.254.169.254:443 is a bare IP address" in refused["message"]

    denied = a.log("--state", "denied")
    assert [(x["method"], x["rule"], x["status"]) for x in denied] == [
        ("GET", EGRESS_RULE, None),
        ("CONNECT", EGRESS_RULE, None),
        ("CONNECT", EGRESS_RULE, None),
    ]
    assert {x["host"] for x in denied} == {"169.254.169.254"}
    assert len(a.log()) == 3  # nothing else: no attempt, no failure


def test_a_tunnel_to_a_name_resolving_to_loopback_is_refused_at_connect(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=NAME_ONLY)
    target = f"localhost:{upstream.port}"
    s, head, raw = connect(a, target)
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head
    body = json.loads(raw)
    assert (body["error"], body["rule"]) == ("egress_denied", EGRESS_RULE)
    assert_names_loopback(body["message"])

    # curl through a tunnel (-p) to the same place: refused at CONNECT as well.
    out = curl("-p", "-x", a.proxy, f"http://{target}/through")
    assert out.returncode != 0 and "403" in out.stderr, (out.returncode, out.stderr)
    assert upstream.effects() == []
    denied = a.log("--state", "denied")
    assert [(x["method"], x["rule"], x["url"]) for x in denied] == [
        ("CONNECT", EGRESS_RULE, f"tcp://{target}"),
    ] * 2
    assert denied[0]["id"] == body["action_id"]


def test_a_tunnel_to_loopback_opens_when_a_range_allows_it(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=WITH_LOOPBACK)
    target = f"localhost:{upstream.port}"
    s, head, _ = connect(a, target)
    with s:
        assert head.startswith(b"HTTP/1.1 200"), head
        assert b"connection established" in head.lower()
        # The tunnel carries a request that reaches the upstream.
        s.sendall(f"GET /tunneled HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        answer, payload = read_answer(s)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(payload)["path"] == "/tunneled"

    out = curl("-p", "-x", a.proxy, f"http://{target}/through")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["path"] == "/through"
    assert [s.path for s in upstream.effects()] == ["/tunneled", "/through"]
    assert a.log("--state", "denied") == []


def test_http2_requests_in_a_tunnel_meet_the_same_gate(
    make_airlock: Callable[..., Airlock], tls_upstream: Upstream, upstream_ca: Any
) -> None:
    # curl negotiates HTTP/2 with the proxy inside the tunnel; each stream is a request the gate
    # decides and logs, like an HTTP/1.1 one.
    a = make_airlock(extra=("--upstream-ca", str(upstream_ca.cert)))
    base = f"https://localhost:{tls_upstream.port}"
    common = ("--http2", "--cacert", str(a.ca_cert), "-x", a.proxy, "-w", "\n%{http_version} %{http_code}")
    ok = curl(*common, f"{base}/h2")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.endswith("\n2 200") and json.loads(ok.stdout.rsplit("\n", 1)[0])["path"] == "/h2"
    denied = curl(*common, "-X", "DELETE", f"{base}/items/7")
    assert denied.stdout.endswith("\n2 403"), denied.stdout
    assert json.loads(denied.stdout.rsplit("\n", 1)[0])["rule"] == "no-item-deletes"
    assert [s.path for s in tls_upstream.effects()] == ["/h2"]
    settle(a, 1 + 2 + 1)  # the rules, the read's intent and outcome, the refusal
    assert [(x["url"], x["state"]) for x in a.log()] == [
        (f"{base}/h2", "committed"),
        (f"{base}/items/7", "denied"),
    ]
