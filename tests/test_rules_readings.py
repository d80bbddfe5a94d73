"""Every reading counts: deny and hold rules match any reading of a request that a common upstream
could make (method overrides, form and multipart fields, decoded bodies, path variants, agent
claims); allow rules only every reading; an unreadable body refuses a mutating action that such
a rule must read. Requests are built by the HTTP adapter from mitmproxy requests, as on the wire.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import zlib
from pathlib import Path

import brotli  # type: ignore[import-untyped]
import pytest
from mitmproxy import http

from proxy.plane.adapters.encoding import MAX_LAYERS, decode
from proxy.plane.adapters.http import from_request
from rules import Action, Effect, Ruleset, Verdict, readings_of
from rules.paths import path_readings

RULES = """\
version: 1
egress: {allow: ["*"]}
defaults: {destructive: hold}
rules:
  - {id: no-deletes, match: {method: DELETE, path: "/prod/*"}, action: deny, message: ask a human}
  - {id: no-force, match: {body: {required: [force]}}, action: deny}
  - {id: no-force-true, match: {body: {properties: {force: {const: true}}, required: [force]}}, action: hold}
  - {id: no-drop, match: {text: "(?i)drop\\\\s+table"}, action: deny}
  - {id: no-admin, match: {path: "/admin/*"}, action: deny}
  - {id: no-bad-bot, match: {agent: bad-bot}, action: deny}
  - {id: reports-are-fine, match: {method: GET, path: "/reports/*"}, action: allow}
  - {id: no-send, match: {tool: send_*}, action: deny}
"""


@pytest.fixture(scope="module")
def ruleset(tmp_path_factory: pytest.TempPathFactory) -> Ruleset:
    f = tmp_path_factory.mktemp("rules") / "r.yaml"
    f.write_text(RULES)
    return Ruleset.load(f)


def request(
    method: str = "POST",
    path: str = "/x",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    agent: str = "agent",
) -> Action:
    fields = [(k.encode(), v.encode("latin-1")) for k, v in (headers or {}).items()]
    req = http.Request.make(method, f"https://api.example.com{path}")
    req.headers = http.Headers(fields)
    req.raw_content = body  # the bytes as sent, whatever Content-Encoding says
    return from_request(req, agent=agent)


def decided(ruleset: Ruleset, action: Action) -> tuple[str | None, str]:
    decision = ruleset.evaluate(action)
    return decision.rule, decision.error


# ---- 1. method overrides ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/prod/db", {"X-HTTP-Method-Override": "DELETE"}, b""),
        ("/prod/db", {"X-HTTP-Method": "delete"}, b""),
        ("/prod/db", {"X-Method-Override": "DELETE"}, b""),
        ("/prod/db?_method=DELETE", {}, b""),
        ("/prod/db", {"Content-Type": "application/x-www-form-urlencoded"}, b"_method=DELETE&x=1"),
        ("/prod/db", {"Content-Type": "multipart/form-data; boundary=XX"}, b""),
    ],
)
def test_a_method_override_is_a_reading_of_the_method(
    ruleset: Ruleset, path: str, headers: dict[str, str], body: bytes
) -> None:
    if "multipart" in headers.get("Content-Type", ""):
        body = b'--XX\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--XX--\r\n'
    action = request("POST", path, body, headers)
    assert action.effect is Effect.DESTRUCTIVE  # the stricter of POST and DELETE
    assert "DELETE" in readings_of(action).methods
    assert decided(ruleset, action) == ("no-deletes", "denied")
    explained = ruleset.explain(action)
    assert "method DELETE" in explained.reason and "override" in explained.reason


def test_an_override_elsewhere_falls_to_the_destructive_default(ruleset: Ruleset) -> None:
    action = request("POST", "/orders/7", headers={"X-HTTP-Method-Override": "DELETE"})
    assert decided(ruleset, action) == ("defaults.destructive", "held")


def test_an_override_does_not_earn_an_allow(ruleset: Ruleset) -> None:
    # reports-are-fine allows GETs; a POST that says it is a GET is still a POST to a server that
    # ignores the header: allow rules hold only under every reading.
    plain = request("GET", "/reports/1")
    assert ruleset.evaluate(plain).rule == "reports-are-fine"
    posing = request("POST", "/reports/1", headers={"X-HTTP-Method-Override": "GET"})
    assert ruleset.evaluate(posing).rule is None
    assert posing.effect is Effect.WRITE


# ---- 2. body fields in any encoding ----------------------------------------------------------

MULTIPART = (
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
    b"--b0undary\r\n"
    b'Content-Disposition: form-data; name="force"\r\n\r\ntrue\r\n'
    b"--b0undary--\r\n"
)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"force": true}', "application/json"),
        (b"force=true", "application/x-www-form-urlencoded"),
        (b"note=x&force=true", ""),  # a query-string body without a content type
        (b"force=true", "text/plain"),  # ... or with a wrong one
        (MULTIPART, "multipart/form-data; boundary=b0undary"),
        (MULTIPART.replace(b"\r\n", b"\n"), 'multipart/form-data; boundary="b0undary"'),
    ],
)
def test_body_rules_read_json_forms_and_multipart(ruleset: Ruleset, body: bytes, content_type: str) -> None:
    action = request("POST", "/x", body, {"Content-Type": content_type} if content_type else {})
    # no-force (deny) beats no-force-true (hold): both match, a form's "true" typed as true
    matched = {r.id for r in ruleset.explain(action).matched}
    assert {"no-force", "no-force-true"} <= matched
    assert decided(ruleset, action) == ("no-force", "denied")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"force[]=1", "application/x-www-form-urlencoded"),
        (b"force[on]=1&x=2", "application/x-www-form-urlencoded"),
        (
            b'--B\r\nContent-Disposition: form-data; name="force[]"\r\n\r\n1\r\n--B--\r\n',
            "multipart/form-data; boundary=B",
        ),
    ],
)
def test_bracketed_field_names_are_read_as_nested_fields(
    ruleset: Ruleset, body: bytes, content_type: str
) -> None:
    # PHP, Rails and Express read force[]=1 as force: ["1"]: the field is there.
    action = request("POST", "/x", body, {"Content-Type": content_type})
    assert decided(ruleset, action) == ("no-force", "denied")


def test_a_field_named_otherwise_does_not_match(ruleset: Ruleset) -> None:
    for body in (b"note=force", b'{"note": "force"}'):
        assert ruleset.evaluate(request("POST", "/x", body)).verdict is Verdict.ALLOW


def test_a_large_file_part_is_not_read_as_a_field(ruleset: Ruleset) -> None:
    part = b"force=true " * 1000
    body = (
        b'--B\r\nContent-Disposition: form-data; name="upload"; filename="a.txt"\r\n\r\n'
        + part
        + b"\r\n--B--\r\n"
    )
    action = request("POST", "/x", body, {"Content-Type": "multipart/form-data; boundary=B"})
    assert ruleset.evaluate(action).verdict is Verdict.ALLOW


# ---- 3. parser differentials -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"force": true, "n": ' + b"9" * 5000 + b"}", "4300 digits"),
        (b'{"force": true, "note": "caf\xe9"}', "UTF-8"),
        (b'{"force": true} {"x": 1}', "Extra data"),
        (b'{"force": true,}', "not JSON"),
        (b"[" * 100 + b"]" * 100, "nests deeper"),
        (b"[" * 5000 + b"]" * 5000, "nests deeper"),
    ],
)
def test_json_that_parsers_read_differently_is_refused(ruleset: Ruleset, body: bytes, why: str) -> None:
    action = request("POST", "/x", body, {"Content-Type": "application/json"})
    decision = ruleset.evaluate(action)
    assert decision.refused and decision.error == "ambiguous_body"
    assert decision.rule in {"no-force", "no-force-true", "no-drop", "no-send"}
    assert why in decision.message and "not forwarded" in decision.message


def test_an_ambiguous_body_is_not_refused_for_a_read(ruleset: Ruleset) -> None:
    action = request("GET", "/x", b'{"force": true,}', {"Content-Type": "application/json"})
    assert ruleset.evaluate(action).verdict is Verdict.ALLOW


def test_a_byte_order_mark_is_read_past(ruleset: Ruleset) -> None:
    action = request("POST", "/x", b'\xef\xbb\xbf{"force": true}', {"Content-Type": "application/json"})
    assert decided(ruleset, action) == ("no-force", "denied")


def test_duplicate_keys_are_read_both_ways(ruleset: Ruleset) -> None:
    # Python (and JSON.parse) keep the last; first-wins parsers keep the first.
    for body in (b'{"force": true, "force": false}', b'{"force": false, "force": true}'):
        action = request("POST", "/x", body, {"Content-Type": "application/json"})
        assert {True, False} <= {d["force"] for d in readings_of(action).documents}
        assert ruleset.explain(action).decision.rule == "no-force"
        matched = {r.id for r in ruleset.explain(action).matched}
        assert "no-force-true" in matched


def test_duplicate_keys_make_a_tool_name_ambiguous(ruleset: Ruleset) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"send_mail","name":"read"}}'
    action = request("POST", "/mcp", body, {"Content-Type": "application/json"})
    as_mcp = dataclasses.replace(action, protocol="mcp", tool="read", args={})
    decision = ruleset.evaluate(as_mcp)
    assert decision.error == "ambiguous_body" and "repeats a key" in decision.message


# ---- 4. encodings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("gzip, gzip", lambda b: gzip.compress(gzip.compress(b))),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_text_rules_read_the_decoded_body(ruleset: Ruleset, encoding: str, encode: object) -> None:
    assert callable(encode)
    body = encode(b'{"sql": "DROP TABLE users"}')
    action = request("POST", "/x", body, {"Content-Encoding": encoding, "Content-Type": "application/json"})
    assert action.body == b'{"sql": "DROP TABLE users"}'
    assert decided(ruleset, action) == ("no-drop", "denied")


@pytest.mark.parametrize(
    ("text", "content_type"),
    [
        ('{"sql": "DROP TABLE users"}'.encode("utf-16"), "application/json"),  # BOM
        ('{"sql": "DROP TABLE users"}'.encode("utf-16-le"), "application/json; charset=utf-16le"),
        ('{"sql": "DROP TABLE users"}'.encode("utf-32"), "text/plain"),
        ("sql=DROP+TABLE+users".encode("utf-16"), "application/x-www-form-urlencoded"),
        (b'{"sql": "DROP\\u0020TABLE users"}', "application/json"),  # a JSON escape
        (b"sql=DROP%20TABLE%20users", "application/x-www-form-urlencoded"),  # a form escape
        (b"DROP TABLE users", "text/plain; charset=latin-1"),  # the raw bytes too
    ],
)
def test_text_rules_read_every_decoding(ruleset: Ruleset, text: bytes, content_type: str) -> None:
    action = request("POST", "/x", text, {"Content-Type": content_type})
    assert decided(ruleset, action) == ("no-drop", "denied")


def zlib_bomb(size: int, wbits: int) -> bytes:
    """`size` zero bytes compressed a chunk at a time (never held whole)."""
    z = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return b"".join(z.compress(bytes(1 << 20)) for _ in range(size >> 20)) + z.flush()


@pytest.mark.parametrize(
    ("encoding", "body", "why"),
    [
        ("compress", b"anything", "cannot decode"),
        ("gzip, gzip, gzip, gzip", b"anything", f"more than {MAX_LAYERS}"),
        ("gzip", gzip.compress(b"x" * 100, mtime=0)[:-12], "ends early"),
        ("gzip", zlib_bomb(32 << 20, 16 + zlib.MAX_WBITS), "expands past"),
        ("deflate", zlib_bomb(32 << 20, zlib.MAX_WBITS), "expands past"),
    ],
)
def test_a_body_that_cannot_be_decoded_is_refused(
    ruleset: Ruleset, encoding: str, body: bytes, why: str
) -> None:
    action = request("PUT", "/x", body, {"Content-Encoding": encoding})
    assert action.body == body and action.body_problem is not None  # kept as sent, not expanded
    decision = ruleset.evaluate(action)
    assert decision.error == "ambiguous_body" and why in decision.message


def test_decoding_stops_at_the_limit() -> None:
    bomb = zlib_bomb(8 << 20, 16 + zlib.MAX_WBITS)
    decoded = decode(bomb, "gzip", limit=1 << 20)
    assert decoded.body == bomb and decoded.problem is not None and "1048576" in decoded.problem


# ---- 5. paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/PROD/db",
        "/Prod/db",
        "/prod;jsessionid=1/db",
        "/x/..;/prod/db",
        "/prod\\db",
        "/x/%252e%252e/prod/db",
        "/prod%2fdb",
        "/x/..%2fprod/db",
        "/x/..%3b/prod/db",
    ],
)
def test_a_path_rule_matches_every_resolution_of_the_path(ruleset: Ruleset, path: str) -> None:
    assert decided(ruleset, request("DELETE", path)) == ("no-deletes", "denied")


@pytest.mark.parametrize("header", ["X-Original-URL", "X-Rewrite-URL"])
def test_a_path_named_by_a_rewrite_header_is_a_reading(ruleset: Ruleset, header: str) -> None:
    action = request("DELETE", "/public/x", headers={header: "/prod/db?x=1"})
    assert decided(ruleset, action) == ("no-deletes", "denied")


@pytest.mark.parametrize("path", ["/PROD/db", "/prod;v=1/db", "/x/..;/prod/db", "/prod\\db"])
def test_the_explanation_names_the_path_reading(ruleset: Ruleset, path: str) -> None:
    assert "matches the path as other servers resolve it" in ruleset.explain(request("DELETE", path)).reason


def test_path_readings_start_with_the_standard_one() -> None:
    assert path_readings("/a/./b//c/") == ("/a/b/c/",)
    readings = path_readings("/a/..;/prod/x")
    assert readings[0] == "/a/..;/prod/x" and "/prod/x" in readings


def test_an_odd_path_does_not_earn_an_allow(ruleset: Ruleset) -> None:
    assert ruleset.evaluate(request("GET", "/reports/1")).rule == "reports-are-fine"
    # Tomcat reads /reports/..;/admin/x as /admin/x: the allow does not hold, the deny does.
    assert ruleset.evaluate(request("GET", "/reports/..;/admin/x")).rule == "no-admin"
    assert ruleset.evaluate(request("GET", "/REPORTS/1")).rule is None


# ---- 6. the agent header is a claim ----------------------------------------------------------


def test_a_claimed_name_does_not_escape_a_deny_on_the_configured_agent(ruleset: Ruleset) -> None:
    action = request("GET", "/x", headers={"X-Airlock-Agent": "good-bot"}, agent="bad-bot")
    assert action.agent == "good-bot" and action.agent_claimed and action.configured_agent == "bad-bot"
    assert decided(ruleset, action) == ("no-bad-bot", "denied")
    assert "configured agent bad-bot" in ruleset.explain(action).reason


def test_claiming_a_denied_name_is_denied_too(ruleset: Ruleset) -> None:
    action = request("GET", "/x", headers={"X-Airlock-Agent": "bad-bot"}, agent="good-bot")
    assert decided(ruleset, action) == ("no-bad-bot", "denied")


def test_a_rule_can_require_an_agent_that_did_not_name_itself(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text(
        "version: 1\negress: {allow: ['*']}\ndefaults: {write: deny}\nrules:\n"
        "  - {id: deployer, match: {agent: deployer, agent_claimed: false}, action: allow}\n"
        "  - {id: no-claims-on-prod, match: {agent_claimed: true, path: /prod/*}, action: deny}\n"
    )
    rules = Ruleset.load(f)
    assert rules.evaluate(request("POST", agent="deployer")).rule == "deployer"
    claimed = request("POST", headers={"X-Airlock-Agent": "deployer"}, agent="agent")
    assert rules.evaluate(claimed).verdict is Verdict.DENY  # no allow for a claim
    same = request("POST", headers={"X-Airlock-Agent": "deployer"}, agent="deployer")
    assert not same.agent_claimed and rules.evaluate(same).rule == "deployer"
    assert (
        rules.evaluate(request("GET", "/prod/x", headers={"X-Airlock-Agent": "x"})).rule
        == "no-claims-on-prod"
    )
    assert rules.evaluate(request("GET", "/prod/x")).verdict is Verdict.ALLOW


def test_readings_are_computed_once_per_action(ruleset: Ruleset) -> None:
    action = request("POST", "/x", json.dumps({"a": 1}).encode(), {"Content-Type": "application/json"})
    ruleset.evaluate(action)
    first = readings_of(action)
    ruleset.evaluate(action)
    assert readings_of(action) is first


def test_text_rules_read_json_strings_with_escapes_resolved(ruleset: Ruleset) -> None:
    for body in (b'{"q": "DROP\\tTABLE x"}', b'{"q": "DROP\\nTABLE"}', b'{"q": ["x", "drop\\u00a0table"]}'):
        action = request("POST", "/x", body, {"Content-Type": "application/json"})
        assert decided(ruleset, action) == ("no-drop", "denied"), body


@pytest.mark.parametrize(
    "body",
    [
        b'{"force": true, "ratio": NaN}',  # Python reads NaN and Infinity; JSON.parse refuses them
        b'{"force": true, "ratio": -Infinity}',
        b'\n\t {"force": true}\r\n',
        '{"force": true}'.encode("utf-16"),
        '{"force": true}'.encode("utf-32-le"),
    ],
)
def test_json_that_python_reads_is_matched_as_python_reads_it(ruleset: Ruleset, body: bytes) -> None:
    action = request("POST", "/x", body, {"Content-Type": "application/json"})
    assert decided(ruleset, action) == ("no-force", "denied")


def test_reading_a_long_odd_body_stays_linear(ruleset: Ruleset) -> None:
    # Shapes that make a backtracking pattern quadratic: the decision must still come back.
    for body in (b"a=1&" + b"b" * 200_000 + b" !", b"a=" + b"&x" * 100_000 + b" !", b"[" * 300_000):
        assert ruleset.evaluate(request("POST", "/x", body)).verdict in (Verdict.ALLOW, Verdict.DENY)


@pytest.mark.parametrize("charset", ["cp037", "utf-16", "rot13", "base64", "no-such-charset"])
def test_a_declared_charset_is_one_reading_not_the_only_one(ruleset: Ruleset, charset: str) -> None:
    # Most servers ignore a form's charset: the bytes as UTF-8 still count.
    for body, content_type in (
        (b"force=true", "application/x-www-form-urlencoded"),
        (b"DROP TABLE x", "text/plain"),
    ):
        action = request("POST", "/x", body, {"Content-Type": f"{content_type}; charset={charset}"})
        assert ruleset.evaluate(action).refused, (charset, body)


def test_deeply_bracketed_field_names_are_capped(ruleset: Ruleset) -> None:
    body = b"force" + b"[x]" * 5000 + b"=1"
    action = request("POST", "/x", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert decided(ruleset, action) == ("no-force", "denied")


def test_a_json_method_field_is_an_override_too(ruleset: Ruleset) -> None:
    # Laravel reads _method from a JSON body as from a form.
    action = request("POST", "/prod/db", b'{"_method": "DELETE"}', {"Content-Type": "application/json"})
    assert action.effect is Effect.DESTRUCTIVE and decided(ruleset, action) == ("no-deletes", "denied")
