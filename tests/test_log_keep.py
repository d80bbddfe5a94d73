"""What the log keeps of each action: request bodies by effect (`--body-limit [EFFECT=]SIZE`),
an MCP call's arguments once, and idempotency keys only until they expire."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

from .support import Airlock, Upstream, wait_for
from .support.airlock import AIRLOCK, RULES
from .support.mcp_http import NotesServer, call, connect, note, run
from .support.notes import rules, settled_calls


def intent(a: Airlock, action_id: int) -> dict[str, Any]:
    """The action's first entry as `airlock show --json` prints it."""
    shown = json.loads(a.cli("show", str(action_id), "--json").stdout)
    entry: dict[str, Any] = shown["entries"][0]
    assert entry["kind"] == "intent"
    return entry


def kept_body(a: Airlock, path: str) -> dict[str, Any]:
    """The body its intent kept of the action on `path`."""
    [action] = [x for x in a.log() if x["url"].endswith(path)]
    body: dict[str, Any] = intent(a, action["id"])["data"]["action"]["body"]
    return body


def send(a: Airlock, method: str, url: str, body: bytes) -> None:
    requests.request(method, url, data=body, proxies=a.proxies, timeout=30)


# ---- request bodies, by effect ------------------------------------------------------------------


def test_reads_keep_no_body_by_default_and_writes_keep_up_to_the_limit(
    airlock: Airlock, upstream: Upstream
) -> None:
    read_body, write_body = b'{"query": "read-body-marker"}', b"w" * (100 * 1024)
    send(airlock, "GET", f"{upstream.url}/search", read_body)
    send(airlock, "POST", f"{upstream.url}/notes", write_body)
    assert upstream.effects("GET")[0].body == read_body  # the upstream got the body whole

    read = kept_body(airlock, "/search")
    assert read == {
        "size": len(read_body),
        "sha256": hashlib.sha256(read_body).hexdigest(),
        "truncated": True,
    }
    write = kept_body(airlock, "/notes")
    assert write["text"] == "w" * (64 * 1024) and write["truncated"] is True  # the default 64KiB
    assert write["size"] == len(write_body)
    assert write["sha256"] == hashlib.sha256(write_body).hexdigest()
    assert "read-body-marker" not in airlock.cli("show", "1").stdout


def test_a_limit_per_effect(make_airlock: Callable[..., Airlock], upstream: Upstream) -> None:
    a = make_airlock(
        extra=("--body-limit", "read=4", "--body-limit", "8", "--body-limit", "destructive=1MiB")
    )
    body = b"0123456789" * 3
    send(a, "GET", f"{upstream.url}/lookup", body)
    send(a, "PUT", f"{upstream.url}/notes/1", body)
    send(a, "DELETE", f"{upstream.url}/items/1", body)  # denied by the test rules: logged all the same
    assert kept_body(a, "/lookup")["text"] == "0123"
    assert kept_body(a, "/notes/1")["text"] == "01234567"
    deleted = kept_body(a, "/items/1")
    assert deleted["text"] == body.decode() and "truncated" not in deleted


def test_a_malformed_body_limit_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    for value, said in [
        (
            "huge=1MiB",
            "'huge=1MiB': 'huge' is not an effect; give SIZE or EFFECT=SIZE with EFFECT one of "
            "read, inference, write, destructive (e.g. read=0, destructive=1MiB)",
        ),
        ("read=lots", "'read=lots' is not SIZE or EFFECT=SIZE (e.g. 64KiB, read=0, destructive=1MiB)"),
        ("12 parsecs", "'12 parsecs' is not SIZE or EFFECT=SIZE (e.g. 64KiB, read=0, destructive=1MiB)"),
    ]:
        proc = subprocess.run(
            [
                AIRLOCK,
                "run",
                "--data",
                str(tmp_path / "data"),
                "--rules",
                str(tmp_path / "rules.yaml"),
                "--body-limit",
                value,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [
            f"airlock run: error: argument --body-limit: {said} (see airlock run --help)"
        ]
    assert not (tmp_path / "data").exists()


# ---- MCP arguments, once -------------------------------------------------------------------------


def test_an_mcp_calls_arguments_are_stored_once_and_still_shown(
    notes_server: Callable[[str], NotesServer], make_airlock: Callable[..., Airlock]
) -> None:
    server = notes_server("json")
    a = make_airlock(rules=rules())
    small, large = note(), note()
    short_text = "short-marker-" + note()
    long_text = "long-marker-" + note() + "-" + "y" * 3000

    async def go() -> None:
        async with connect("json", server.url, a.proxy) as s:
            await call(s, "write_note", name=small, text=short_text)
            await call(s, "write_note", name=large, text=long_text)

    run(go())
    calls = {x["args"].get("name", "big"): x for x in settled_calls(a, 2)}

    # Small arguments: in the action's summary (the listing), once.
    listed = calls[small]
    assert listed["args"] == {"name": small, "text": short_text}
    entry = intent(a, listed["id"])
    assert json.dumps(entry).count(short_text) == 1
    assert (
        entry["data"]["action"]["body"]["kept_as"] == "args" and "text" not in entry["data"]["action"]["body"]
    )
    assert short_text in a.cli("show", str(listed["id"])).stdout

    # Large arguments: in the intent's data, once; the listing says how large they are.
    [big] = [x for x in calls.values() if x["args"].get("truncated")]
    assert big["args"] == {
        "truncated": True,
        "size": len(json.dumps({"name": large, "text": long_text}, separators=(",", ":"))),
    }
    entry = intent(a, big["id"])
    assert entry["data"]["action"]["args"] == {"name": large, "text": long_text}
    assert json.dumps(entry).count("long-marker-") == 1
    assert long_text in a.cli("show", str(big["id"])).stdout


# ---- expired idempotency keys, swept ------------------------------------------------------------

SHORT_KEYS = (
    RULES
    + """\
  - id: reports-once
    match: {method: POST, path: "/big/*"}
    dedup: {key: "{path}", ttl: 1s}
"""
)


def test_expired_keys_are_deleted_with_their_replies_and_verify_still_passes(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    a = make_airlock(rules=SHORT_KEYS)
    paths = [f"/big/{3000 + n}" for n in range(5)]
    for path in paths:
        r = requests.post(
            f"{upstream.url}{path}",
            data=b"{}",
            headers={"Content-Type": "application/json"},
            proxies=a.proxies,
            timeout=30,
        )
        assert r.status_code == 200 and r.content == b"x" * int(path.split("/")[2])
    # The reply is stored for replays (base64 in the key's record).
    replay = requests.post(f"{upstream.url}{paths[0]}", data=b"{}", proxies=a.proxies, timeout=30)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    reply_bytes = base64.b64encode(b"x" * 3000)[:2000]
    a.stop()
    data_mdb = a.data / "log" / "data.mdb"
    assert reply_bytes in data_mdb.read_bytes()

    expires = time.time() + 1
    wait_for(lambda: time.time() > expires, "the keys' TTL passes", timeout=30)
    a.start()  # the sweep runs at start, then every minute
    wait_for(lambda: "deleted 5 expired idempotency key(s)" in a.output.read_text(), "the sweep")  # type: ignore[union-attr]
    a.stop()
    assert reply_bytes not in live_bytes(a)
    assert a.cli("verify").stdout.startswith("ok: ")
    # The key is free again: the same request goes upstream once more.
    a.start()
    before = len(upstream.effects("POST"))
    requests.post(f"{upstream.url}{paths[0]}", data=b"{}", proxies=a.proxies, timeout=30)
    assert len(upstream.effects("POST")) == before + 1


def live_bytes(a: Airlock) -> bytes:
    """The bytes of the log's live pages: a compacting copy (LMDB leaves freed pages as they were
    until it reuses them)."""
    import lmdb

    copy = a.data.parent / "compact"
    copy.mkdir()
    env = lmdb.open(str(a.data / "log"), readonly=True, lock=False, max_dbs=16)
    try:
        env.copy(str(copy), compact=True)
    finally:
        env.close()
    return (copy / "data.mdb").read_bytes()


# ---- the Helm chart -----------------------------------------------------------------------------


def test_the_charts_body_limits_become_flags_the_cli_takes() -> None:
    import helm_python as helm
    import yaml

    from proxy.cli import build_parser
    from proxy.core.records import BodyPolicy
    from rules import Effect

    chart_dir = Path(__file__).resolve().parent.parent / "helm" / "airlock"
    with helm.Chart.load(chart_dir) as chart:
        values = {"airlock": {"bodyLimits": ["read=0", "1MiB", "destructive=4MiB"]}}
        manifests = chart.render(values, name="planner", namespace="agents", is_install=True)
    [deployment] = [
        doc
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc and doc["kind"] == "Deployment"
    ]
    pod = deployment["spec"]["template"]["spec"]
    [airlock] = [
        c for c in pod["containers"] + pod.get("initContainers", []) if c.get("args", [""])[0] == "run"
    ]
    policy = build_parser().parse_args(airlock["args"]).body_limit
    assert policy == BodyPolicy().with_limit(Effect.READ, 0).with_limit(None, 1 << 20).with_limit(
        Effect.DESTRUCTIVE, 4 << 20
    )
