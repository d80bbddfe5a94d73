"""Refusals name each special-purpose range for what it is, and egress lets an address go with
a decision that equals ALLOWED by value."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from rules import ALLOWED, EGRESS_RULE, Action, Decision, Effect, Hold, Ruleset, Verdict, non_public


@pytest.fixture
def names_only(tmp_path: Path) -> Ruleset:
    """Rules whose egress allowlist has names only: every non-public address is refused."""
    path = tmp_path / "rules.yaml"
    path.write_text("version: 1\negress:\n  allow: ['*.test']\n")
    return Ruleset.load(path)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("192.0.2.10", "a documentation address"),  # TEST-NET-1
        ("198.51.100.7", "a documentation address"),  # TEST-NET-2
        ("203.0.113.99", "a documentation address"),  # TEST-NET-3
        ("2001:db8::1", "a documentation address"),
        ("10.0.0.1", "a private address"),
        ("172.31.255.1", "a private address"),
        ("192.168.0.1", "a private address"),
        ("fd12:3456::1", "a unique local address"),
        ("127.0.0.2", "a loopback address"),
        ("::1", "a loopback address"),
        ("169.254.3.4", "a link-local address"),
        ("fe80::2", "a link-local address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("100.100.1.1", "a carrier-grade NAT address"),
        ("198.18.0.1", "a benchmarking address"),
        ("0.0.0.0", "an unspecified address"),
        ("0.1.2.3", "a this-network address"),
        ("255.255.255.255", "a broadcast address"),
        ("240.0.0.1", "a reserved address"),
        ("239.1.1.1", "a multicast address"),
        ("192.0.0.8", "an IETF protocol assignment address"),
        ("100::1", "a discard-only address"),
        ("2002::1", "a 6to4 address"),
        ("::ffff:192.0.2.1", "a documentation address"),  # IPv4-mapped: the IPv4 address it carries
    ],
)
def test_a_refusal_names_the_range_of_the_address(
    names_only: Ruleset, address: str, words: str | None
) -> None:
    refusal = names_only.address_refusal("svc.test", ipaddress.ip_address(address), 443)
    if words is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.startswith(f"svc.test resolves to {address}, {words}; add a range such as ")


def test_documentation_ranges_are_not_called_private() -> None:
    for address in ("192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8:1::1"):
        assert non_public(ipaddress.ip_address(address)) == "documentation"


def test_a_documentation_address_is_refused_through_the_ruleset(names_only: Ruleset) -> None:
    address = ipaddress.ip_address("198.51.100.20")
    action = Action("POST", "http", "docs.test", 80, "/", Effect.WRITE, addresses=(address,))
    decision = names_only.decide(action)[1]
    assert decision.refused and decision.rule == EGRESS_RULE
    assert "docs.test resolves to 198.51.100.20, a documentation address" in decision.message


def test_allowed_is_a_value_not_an_identity(names_only: Ruleset) -> None:
    assert Decision(Verdict.ALLOW) == ALLOWED and not ALLOWED.refused
    public = [ipaddress.ip_address("93.184.216.34")]
    # A decision built anywhere equal to ALLOWED is handed back unchanged and equal to it.
    _, passed = names_only.check_address(Decision(Verdict.ALLOW), "api.test", 443, public)
    assert passed == ALLOWED
    # Egress lets a public address go: nothing to say, so the default decides (allowed).
    action = Action("GET", "http", "api.test", 443, "/", Effect.READ, addresses=tuple(public))
    assert names_only.egress_decision(action) is None
    assert names_only.decide(action)[1] == ALLOWED
    _, refused = names_only.check_address(ALLOWED, "api.test", 443, [ipaddress.ip_address("10.0.0.1")])
    assert refused != ALLOWED and refused.refused and refused.error == "egress_denied"


def test_a_held_action_is_neither_refused_nor_let_through_and_carries_its_hold(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\negress: {allow: ['*']}\nhold: {wait: 5s}\nrules:\n"
        "  - {id: wait, match: {method: PUT}, action: hold}\n"
        "  - {id: two, match: {method: POST}, action: hold, hold: {quorum: 2, voters: [a, b], timeout: 1m}}\n"
    )
    rules = Ruleset.load(path)
    decision = rules.decide(Action("PUT", "http", "a.test", 80, "/", Effect.WRITE))[1]
    assert (decision.verdict, decision.error, decision.refused) == (Verdict.HOLD, "held", False)
    assert decision.hold == Hold(wait=5.0)  # the file's own default
    decision = rules.decide(Action("POST", "http", "a.test", 80, "/", Effect.WRITE))[1]
    assert decision.hold == Hold(quorum=2, voters=("a", "b"), timeout=60.0)
    assert decision.hold.may_vote("a") and not decision.hold.may_vote("c")
