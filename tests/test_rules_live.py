"""Rules end to end: real clients through a running proxy, rules edited while it runs, and the CLI.

Every decision here is made by a real `airlock run` process on the wire: a refused request must
never reach the upstream, a let-through one must, and both must be in the log.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import requests

from store import Log

from .support import AIRLOCK, Airlock, Upstream, entries_now, plain_upstream, wait_for
from .support.outcomes import settled

LOOPBACK = "version: 1\negress:\n  allow: [127.0.0.1]\n"

ALLOW_ALL = LOOPBACK + "rules: []\n"

DENY_POST_X = LOOPBACK + textwrap.dedent(
    """\
    rules:
      - id: no-x-posts
        match: {method: POST, path: /x}
        action: deny
        message: Posting to /x is switched off.
    """
)
# `action: dney` sits on line 7, its value at column 13.
BROKEN = DENY_POST_X.replace("action: deny", "action: dney")
BROKEN_AT = "7:13: rules[0].action: 'dney' is not one of allow, deny, hold, log"

DENY_POST_Y = DENY_POST_X.replace("no-x-posts", "no-y-posts").replace("/x", "/y")


# ---- helpers --------------------------------------------------------------------------------


def post(a: Airlock, up: Upstream, path: str, **kw: Any) -> requests.Response:
    """POST through the proxy to the upstream."""
    return requests.post(f"{up.url}{path}", proxies=a.proxies, timeout=10, **kw)


def get(a: Airlock, up: Upstream, path: str, **kw: Any) -> requests.Response:
    """GET through the proxy to the upstream."""
    return requests.get(f"{up.url}{path}", proxies=a.proxies, timeout=10, **kw)


def assert_refused(
    r: requests.Response, rule: str, error: str = "denied", status: int = 403
) -> dict[str, Any]:
    """A refusal (403, or 503 for a held action) naming `rule` in its header and JSON body;
    returns the body."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["X-Airlock-Rule"] == rule
    body: dict[str, Any] = r.json()
    assert (body["error"], body["rule"]) == (error, rule)
    assert isinstance(body["action_id"], int)
    return body


def rules_state(a: Airlock) -> dict[str, Any]:
    """GET /v1/rules on the control API."""
    r = requests.get(f"{a.control}/v1/rules", headers={"Authorization": f"Bearer {a.token}"}, timeout=10)
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()
    return state


def reload_rules(a: Airlock) -> requests.Response:
    """POST /v1/rules/reload on the control API."""
    return requests.post(
        f"{a.control}/v1/rules/reload", headers={"Authorization": f"Bearer {a.token}"}, timeout=10
    )


def rules_entries(a: Airlock) -> list[dict[str, Any]]:
    """The data of every `rules` entry in the log, oldest first (read while the proxy runs)."""
    log = Log.open(a.data / "log", readonly=True)
    try:
        return [e.data for e in log.entries() if e.kind == "rules"]
    finally:
        log._env.close()


def logged(a: Airlock, entries: int) -> list[dict[str, Any]]:
    """`airlock log --json` once no action is pending (outcomes land just after the client has
    its response), checked to hold `entries` entries."""
    actions = settled(a)
    assert entries_now(a) == entries
    return actions


def until_refused(send: Callable[[], requests.Response], what: str) -> list[int]:
    """Send until one request is refused (the watcher polls every second); every status seen."""
    statuses: list[int] = []

    def refused() -> bool:
        statuses.append(send().status_code)
        return statuses[-1] == 403

    wait_for(refused, what, timeout=10)
    return statuses


# A rule file padded to a fixed size, so an edit can keep the file's size, inode and mtime: the
# file watcher (which compares exactly those) cannot see it, and only SIGHUP or the control API
# can make the proxy load it.
PADDED = 640


def padded(text: str) -> str:
    """`text` with a trailing comment that brings it to PADDED characters."""
    assert len(text) < PADDED - 4, "rule text too long for PADDED"
    return text + "#" + "x" * (PADDED - len(text) - 2) + "\n"


def edit_keeping_mtime(path: Path, text: str) -> None:
    """Rewrite a file in place with the same size, inode and mtime (as `cp -p` or rsync -t can)."""
    before = path.stat()
    content = padded(text).encode()
    assert len(content) == before.st_size, "write the first version with padded() too"
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )


def explain(*args: str) -> subprocess.CompletedProcess[str]:
    """`airlock rules explain ARGS` (it reads rule files only: no data dir, no proxy)."""
    return subprocess.run([AIRLOCK, "rules", "explain", *args], capture_output=True, text=True, timeout=60)


# ---- match fields on the wire ---------------------------------------------------------------


def test_a_deny_on_a_json_body_field_stops_the_request_before_the_upstream(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(
        rules=LOOPBACK
        + textwrap.dedent(
            """\
            rules:
              - id: no-force-push
                match: {method: POST, body: {properties: {force: {const: true}}, required: [force]}}
                action: deny
                message: Force pushes are for people; push without force or ask an operator.
            """
        )
    )
    r = post(a, upstream, "/push", json={"force": True, "ref": "main"})
    body = assert_refused(r, "no-force-push")
    assert body["message"] == "Force pushes are for people; push without force or ask an operator."
    assert upstream.effects() == []

    r = post(a, upstream, "/push", json={"force": False, "ref": "main"})
    assert r.status_code == 200 and r.json()["path"] == "/push"
    [seen] = upstream.effects()
    assert json.loads(seen.body) == {"force": False, "ref": "main"}

    # A body that lacks the field does not match the schema; a form body is read too.
    assert post(a, upstream, "/push", data=b"note=force").status_code == 200
    assert post(a, upstream, "/push", json={"ref": "main"}).status_code == 200
    assert len(upstream.effects("POST")) == 3
    assert_refused(post(a, upstream, "/push", data=b"force=true"), "no-force-push")
    assert len(upstream.effects("POST")) == 3

    # 1 rules entry, 1 for each refusal, 2 (intent, outcome) for each of the three that passed.
    denied, passed, *_, form = logged(a, 1 + 2 + 3 * 2)
    assert (form["state"], form["rule"]) == ("denied", "no-force-push")
    assert (denied["id"], denied["state"], denied["rule"], denied["status"]) == (
        body["action_id"],
        "denied",
        "no-force-push",
        None,
    )
    assert (passed["state"], passed["status"], passed["rule"]) == ("committed", 200, None)


def test_text_query_and_header_rules_match_as_documented(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(
        rules=LOOPBACK
        + textwrap.dedent(
            """\
            rules:
              - id: no-drop-table
                match: {text: '(?i)drop\\s+table'}
                action: deny
                message: No dropping tables.
              - id: confirm-means-confirm
                match: {query: {confirm: "no"}}
                action: deny
              - id: not-in-prod
                match: {headers: {X-Env: "prod*"}}
                action: deny
                message: Nothing against production.
            """
        )
    )
    r = post(a, upstream, "/sql", data=b"select 1;\n  DROP \t table users;")
    assert assert_refused(r, "no-drop-table")["message"] == "No dropping tables."
    assert post(a, upstream, "/sql", data=b"select * from drop_tables").status_code == 200

    r = get(a, upstream, "/apply?confirm=no")
    assert "confirm-means-confirm" in assert_refused(r, "confirm-means-confirm")["message"]
    assert get(a, upstream, "/apply?confirm=yes").status_code == 200
    assert get(a, upstream, "/apply").status_code == 200

    # The rule says X-Env; the header name matches in any case, the value by glob.
    for name in ("x-env", "X-ENV"):
        r = get(a, upstream, "/deploy", headers={name: "production"})
        assert assert_refused(r, "not-in-prod")["message"] == "Nothing against production."
    assert get(a, upstream, "/deploy", headers={"X-Env": "staging"}).status_code == 200
    assert get(a, upstream, "/deploy", headers={"X-Env-Prod": "prod"}).status_code == 200

    assert [(s.method, s.path) for s in upstream.effects()] == [
        ("POST", "/sql"),
        ("GET", "/apply?confirm=yes"),
        ("GET", "/apply"),
        ("GET", "/deploy"),
        ("GET", "/deploy"),
    ]
    assert upstream.effects("POST")[0].body == b"select * from drop_tables"
    # 1 rules entry, 4 refusals, 5 let through.
    actions = logged(a, 1 + 4 + 5 * 2)
    assert [(x["state"], x["rule"]) for x in actions if x["state"] == "denied"] == [
        ("denied", "no-drop-table"),
        ("denied", "confirm-means-confirm"),
        ("denied", "not-in-prod"),
        ("denied", "not-in-prod"),
    ]


# ---- egress ---------------------------------------------------------------------------------


def test_egress_report_lets_an_unlisted_host_through_and_logs_it(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules="version: 1\negress:\n  action: report\n  allow: [api.example.com]\n")
    r = post(a, upstream, "/report-me", data=b"x")
    assert r.status_code == 200 and r.json()["path"] == "/report-me"
    assert [s.path for s in upstream.effects()] == ["/report-me"]
    [x] = logged(a, 1 + 2)
    assert (x["host"], x["rule"], x["state"], x["status"], x["verdict"]) == (
        "127.0.0.1",
        "egress",
        "committed",
        200,
        "log",
    )


def test_egress_enforce_refuses_the_same_request(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules="version: 1\negress:\n  action: enforce\n  allow: [api.example.com]\n")
    body = assert_refused(post(a, upstream, "/report-me", data=b"x"), "egress", "egress_denied")
    assert f"127.0.0.1:{upstream.port} is a bare IP address, not on the egress allowlist" in body["message"]
    assert upstream.effects() == []
    [x] = logged(a, 1 + 1)
    assert (x["id"], x["rule"], x["state"]) == (body["action_id"], "egress", "denied")


def test_egress_host_with_port_allows_only_that_port(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=f'version: 1\negress:\n  allow: ["127.0.0.1:{upstream.port}"]\n')
    with plain_upstream() as other:
        assert post(a, upstream, "/mine", data=b"x").status_code == 200
        body = assert_refused(post(a, other, "/theirs", data=b"x"), "egress", "egress_denied")
        assert f"127.0.0.1:{other.port}" in body["message"]
        assert other.effects() == []
    assert [s.path for s in upstream.effects()] == ["/mine"]
    allowed, refused = logged(a, 1 + 2 + 1)
    assert (allowed["url"], allowed["state"]) == (f"{upstream.url}/mine", "committed")
    assert (refused["url"], refused["state"], refused["rule"]) == (f"{other.url}/theirs", "denied", "egress")


# ---- defaults -------------------------------------------------------------------------------


def test_defaults_hold_keeps_destructive_actions_from_running_and_says_why(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=LOOPBACK + "hold: {wait: 0s}\ndefaults:\n  destructive: hold\n")
    r = requests.delete(f"{upstream.url}/items/1", proxies=a.proxies, timeout=10)
    body = assert_refused(r, "defaults.destructive", "held", 503)
    assert r.headers["Retry-After"].isdigit()
    assert "holds this action until voters approve it" in body["message"]
    assert "has not run" in body["message"] and f"airlock approve {body['action_id']}" in body["message"]
    assert get(a, upstream, "/items/1").status_code == 200
    assert post(a, upstream, "/items", data=b"x").status_code == 200
    assert [s.method for s in upstream.effects()] == ["GET", "POST"]
    held, *_ = logged(a, 1 + 1 + 2 * 2)
    assert (held["id"], held["state"], held["rule"], held["method"]) == (
        body["action_id"],
        "held",
        "defaults.destructive",
        "DELETE",
    )


# ---- live reload ----------------------------------------------------------------------------


def test_a_live_edit_changes_the_next_decision_without_a_restart(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=ALLOW_ALL)
    pid = a.proc.pid  # type: ignore[union-attr]
    assert post(a, upstream, "/x", data=b"first").status_code == 200

    a.rules.write_text(DENY_POST_X)
    statuses = until_refused(lambda: post(a, upstream, "/x", data=b"again"), "POST /x is refused")
    # Until the reload took effect requests went through; none was refused and then let through.
    passed = len(statuses) - 1
    assert statuses == [200] * passed + [403]
    for _ in range(3):
        assert_refused(post(a, upstream, "/x", data=b"later"), "no-x-posts")
    assert len(upstream.effects("POST")) == 1 + passed
    assert all(s.body != b"later" for s in upstream.effects())
    assert get(a, upstream, "/x").status_code == 200  # the rule is for POST only
    assert a.proc is not None and a.proc.pid == pid and a.proc.poll() is None  # the same process

    wait_for(lambda: len(rules_entries(a)) == 2, "the reload is in the log")
    start, changed = rules_entries(a)
    assert (start["reason"], changed["reason"]) == ("start", "file changed")
    assert (start["rules"], changed["rules"]) == (0, 1)
    assert start["digest"] != changed["digest"]
    assert changed["sources"] == [str(a.rules)]
    state = rules_state(a)
    assert (state["digest"], state["rules"], state["last_error"]) == (changed["digest"], 1, None)
    # Each action records the digest of the rules that decided it.
    denied = [x for x in settled(a) if x["state"] == "denied"]
    shown = json.loads(a.cli("show", str(denied[0]["id"]), "--json").stdout)
    assert shown["entries"][0]["data"]["rules"] == changed["digest"]


def test_a_broken_edit_keeps_the_old_rules_until_it_is_fixed(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=DENY_POST_X)
    first = rules_state(a)
    assert (first["rules"], first["last_error"]) == (1, None)
    assert_refused(post(a, upstream, "/x", data=b"1"), "no-x-posts")

    a.rules.write_text(BROKEN)
    wait_for(lambda: rules_state(a)["last_error"] is not None, "the failed reload is reported")
    state = rules_state(a)
    assert state["last_error"] == f"{a.rules}:{BROKEN_AT}"
    assert (state["digest"], state["rules"]) == (first["digest"], 1)
    assert_refused(post(a, upstream, "/x", data=b"2"), "no-x-posts")
    assert post(a, upstream, "/y", data=b"3").status_code == 200

    check = subprocess.run(
        [AIRLOCK, "rules", "check", str(a.rules)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1
    assert check.stderr.strip() == f"invalid: {a.rules}:{BROKEN_AT}"
    assert len(rules_entries(a)) == 1  # a failed load writes no rules entry

    a.rules.write_text(DENY_POST_Y)
    wait_for(lambda: rules_state(a)["last_error"] is None, "the fixed file is loaded")
    assert post(a, upstream, "/x", data=b"4").status_code == 200
    assert_refused(post(a, upstream, "/y", data=b"5"), "no-y-posts")
    assert [s.body for s in upstream.effects("POST")] == [b"3", b"4"]
    wait_for(lambda: len(rules_entries(a)) == 2, "the fixed rules are in the log")
    assert rules_entries(a)[1]["digest"] == rules_state(a)["digest"] != first["digest"]


def test_the_watcher_sees_an_edit_that_keeps_size_and_mtime(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=padded(ALLOW_ALL))
    assert post(a, upstream, "/x", data=b"before").status_code == 200
    edit_keeping_mtime(a.rules, DENY_POST_X)
    until_refused(lambda: post(a, upstream, "/x", data=b"poll"), "the watcher brings in the deny")
    wait_for(lambda: len(rules_entries(a)) == 2, "the reload is in the log")
    assert [e["reason"] for e in rules_entries(a)] == ["start", "file changed"]


def test_sighup_reloads_the_rules(make_airlock: Callable[..., Airlock], upstream: Upstream) -> None:
    a = make_airlock(rules=ALLOW_ALL, extra=("--rules-poll", "0"))
    a.rules.write_text(DENY_POST_X)
    # With the watcher off, the old rules decide until the proxy is told.
    assert post(a, upstream, "/x", data=b"before").status_code == 200

    a.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    statuses = until_refused(lambda: post(a, upstream, "/x", data=b"poll"), "SIGHUP brings in the deny")
    assert len(upstream.effects("POST")) == 1 + len(statuses) - 1
    wait_for(lambda: len(rules_entries(a)) == 2, "the SIGHUP reload is in the log")
    assert [e["reason"] for e in rules_entries(a)] == ["start", "SIGHUP"]
    assert a.proc is not None and a.proc.poll() is None


def test_the_control_api_reloads_and_refuses_invalid_rules(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=ALLOW_ALL, extra=("--rules-poll", "0"))
    start = rules_state(a)
    a.rules.write_text(DENY_POST_X)
    assert post(a, upstream, "/x", data=b"1").status_code == 200

    r = reload_rules(a)
    assert r.status_code == 200, r.text
    loaded = r.json()
    assert loaded["digest"] != start["digest"]
    assert (loaded["rules"], loaded["last_error"], loaded["sources"]) == (1, None, [str(a.rules)])
    assert_refused(post(a, upstream, "/x", data=b"2"), "no-x-posts")  # at once: no polling

    a.rules.write_text(BROKEN)
    r = reload_rules(a)
    assert r.status_code == 422, r.text
    refused = r.json()
    assert refused["error"] == "invalid_rules"
    assert refused["message"] == f"{a.rules}:{BROKEN_AT}; the previous rules stay in force"
    assert (refused["digest"], refused["rules"]) == (loaded["digest"], 1)
    assert refused["last_error"] == f"{a.rules}:{BROKEN_AT}"
    assert rules_state(a)["last_error"] == refused["last_error"]
    assert_refused(post(a, upstream, "/x", data=b"3"), "no-x-posts")
    assert post(a, upstream, "/y", data=b"4").status_code == 200
    assert [s.body for s in upstream.effects("POST")] == [b"1", b"4"]
    assert [e["reason"] for e in rules_entries(a)] == ["start", "control API"]
    assert rules_entries(a)[1]["digest"] == loaded["digest"]


def test_a_rules_directory_applies_every_file_and_rejects_duplicate_ids(
    make_airlock: Callable[..., Airlock], upstream: Upstream, tmp_path: Path
) -> None:
    d = tmp_path / "rules.d"
    d.mkdir()
    (d / "10-egress.yaml").write_text(
        LOOPBACK
        + "rules:\n  - {id: no-deletes, match: {method: DELETE}, action: deny, message: Never delete.}\n"
    )
    (d / "20-posts.yaml").write_text(
        "version: 1\nrules:\n  - {id: no-x-posts, match: {method: POST, path: /x}, action: deny}\n"
    )
    (d / "notes.txt").write_text("not a rule file")
    # The fixture's own --rules comes first on the command line; the last one given wins.
    a = make_airlock(rules=ALLOW_ALL, extra=("--rules", str(d)))
    state = rules_state(a)
    assert state["sources"] == [str(d / "10-egress.yaml"), str(d / "20-posts.yaml")]
    assert state["rules"] == 2

    assert_refused(requests.delete(f"{upstream.url}/a", proxies=a.proxies, timeout=10), "no-deletes")
    assert_refused(post(a, upstream, "/x", data=b"x"), "no-x-posts")
    assert post(a, upstream, "/y", data=b"y").status_code == 200
    assert [s.path for s in upstream.effects()] == ["/y"]

    dup = d / "30-dup.yaml"
    dup.write_text("version: 1\nrules:\n  - {id: no-deletes, match: {method: PUT}, action: deny}\n")
    r = reload_rules(a)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid_rules"
    assert body["message"].startswith(f"{dup}:3:")
    assert f"'no-deletes' is already defined in {d / '10-egress.yaml'}" in body["message"]
    assert (body["digest"], body["rules"], body["sources"]) == (state["digest"], 2, state["sources"])
    assert requests.put(f"{upstream.url}/p", data=b"p", proxies=a.proxies, timeout=10).status_code == 200
    assert_refused(requests.delete(f"{upstream.url}/a", proxies=a.proxies, timeout=10), "no-deletes")
    assert [s.path for s in upstream.effects()] == ["/y", "/p"]

    dup.unlink()
    r = reload_rules(a)
    assert r.status_code == 200 and r.json()["last_error"] is None
    assert r.json()["digest"] == state["digest"]


# ---- airlock rules explain ------------------------------------------------------------------


EXPLAIN_RULES = LOOPBACK + textwrap.dedent(
    """\
    rules:
      - id: no-item-deletes
        match: {method: DELETE, path: "/items/*"}
        action: deny
        message: Deleting items is not allowed; archive the item instead.
      - id: mail-stays-inside
        match: {tool: send_email, not: {args: {properties: {to: {pattern: "@example\\\\.com$"}}}}}
        action: deny
        message: Mail goes to example.com addresses only.
    """
)


def test_rules_explain_shows_the_matching_rule_and_the_decision(tmp_path: Path) -> None:
    rules = tmp_path / "explain.yaml"
    rules.write_text(EXPLAIN_RULES)
    url = "http://127.0.0.1:8080/items/7"

    out = explain("--rules", str(rules), "--method", "DELETE", "--url", url)
    assert out.returncode == 0, out.stderr
    assert "no-item-deletes  deny" in out.stdout
    assert "decision: deny by no-item-deletes: refused" in out.stdout
    assert "message to the agent: Deleting items is not allowed; archive the item instead." in out.stdout

    out = explain("--rules", str(rules), "--method", "DELETE", "--url", url, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [m["id"] for m in doc["matched"]] == ["no-item-deletes"]
    assert doc["decision"]["verdict"] == "deny" and doc["decision"]["refused"] is True
    assert doc["egress"] == "allowed"
    assert doc["action"]["url"] == url and doc["action"]["effect"] == "destructive"

    out = explain("--rules", str(rules), "--url", "http://api.github.com/items/7", "--json")
    doc = json.loads(out.stdout)
    assert (doc["egress"], doc["matched"], doc["decision"]["rule"]) == ("refused", [], "egress")


@pytest.mark.parametrize(
    ("to", "verdict", "matched"),
    [("x@evil.test", "deny", ["mail-stays-inside"]), ("a@example.com", "allow", [])],
)
def test_rules_explain_decides_a_tool_call_on_its_arguments(
    tmp_path: Path, to: str, verdict: str, matched: list[str]
) -> None:
    rules = tmp_path / "explain.yaml"
    rules.write_text(EXPLAIN_RULES)
    out = explain(
        "--rules",
        str(rules),
        "--method",
        "POST",
        "--url",
        "http://127.0.0.1:9000/mcp",
        "--tool",
        "send_email",
        "--args",
        json.dumps({"to": to, "subject": "hi"}),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert [m["id"] for m in doc["matched"]] == matched
    assert doc["decision"]["verdict"] == verdict
    assert doc["action"]["tool"] == "send_email" and doc["action"]["args"]["to"] == to


def test_rules_explain_with_args_that_are_not_json_is_one_line_exit_2(tmp_path: Path) -> None:
    rules = tmp_path / "explain.yaml"
    rules.write_text(EXPLAIN_RULES)
    out = explain(
        "--rules", str(rules), "--url", "http://127.0.0.1/mcp", "--tool", "send_email", "--args", "{to"
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert out.stderr.startswith("airlock rules explain: error: --args is not JSON")
    assert "Traceback" not in out.stderr


# ---- rule evasion: product bugs -------------------------------------------------------------


def test_a_repeated_query_parameter_cannot_hide_a_denied_value(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(
        rules=LOOPBACK + 'rules:\n  - {id: no-unconfirmed, match: {query: {confirm: "no"}}, action: deny}\n'
    )
    assert_refused(get(a, upstream, "/apply?confirm=yes&confirm=no"), "no-unconfirmed")  # holds today
    assert_refused(get(a, upstream, "/apply?confirm=no&confirm=yes"), "no-unconfirmed")
    assert upstream.effects() == []


def test_a_percent_encoded_path_cannot_escape_a_path_rule(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(
        rules=LOOPBACK
        + 'rules:\n  - {id: no-item-deletes, match: {method: DELETE, path: "/items/*"}, action: deny}\n'
    )
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=10)
    try:
        conn.request("DELETE", f"{upstream.url}/%69tems/7")  # sent as is: requests would too
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 403, f"let through; the upstream saw {[unquote(s.path) for s in upstream.effects()]}"
    assert upstream.effects() == []


def test_rules_explain_shows_the_dedup_key_and_the_storm_breaker(tmp_path: Path) -> None:
    rules = tmp_path / "dedup.yaml"
    rules.write_text(
        "version: 1\negress: {allow: [api.test]}\nrules:\n"
        "  - id: by-token\n    match: {method: POST}\n"
        '    dedup: {key: "{host} {body.token}", scope: all, on_conflict: reject}\n'
        "    storm: {failures: 3, window: 1m}\n"
    )
    args = ("--rules", str(rules), "--method", "POST", "--url", "https://api.test/x")
    out = explain(*args, "--body", '{"token": "t-1"}')
    assert out.returncode == 0, out.stderr
    assert "by-token  (none: sets dedup, storm)" in out.stdout
    assert "dedup: rule by-token, key api.test t-1, scope all agents, on_conflict reject" in out.stdout
    assert "storm: rule by-token, failures 3, window 60s" in out.stdout
    doc = json.loads(explain(*args, "--body", "{}", "--json").stdout)
    assert doc["repeats"]["dedup"]["key"].startswith("(none: a field of the template is missing)")
    assert doc["decision"]["verdict"] == "allow"
