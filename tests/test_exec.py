"""`airlock exec` with the clients agents run: the command's environment points every client that
reads proxy variables at the running proxy and its CA (by an absolute path), exec refuses in one
line when that proxy is not there, and the clients that ignore proxy variables are shown to.

Each request goes through a real `airlock run` to a recording server on loopback; the tests check
what the server received and what the log holds. Node 24 comes from the npm registry (`make test`
installs it into .node24/): the system node here may be older."""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.routing.confine import FRESH
from proxy.routing.environ import CA_VARS

from .support import AIRLOCK, Airlock, Upstream, UpstreamCA, capture, free_port, running, wait_for
from .support.namespaces import Processes, Traces, add_link, exec_isolated, netns_unsupported, quiet, scrub

ROOT = Path(__file__).resolve().parent.parent
NODE24_GLOB = ".node24/node_modules/node-linux-*/bin/node"

Run = subprocess.CompletedProcess[str]

# Where the clients agents run read their CA from: OpenSSL, requests, curl, Node, the AWS SDKs, git.
COMMON_CA_VARS = {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"}
COMMON_CA_VARS |= {"AWS_CA_BUNDLE", "GIT_SSL_CAINFO"}


# ---- the proxy, the upstreams, and exec ------------------------------------------------------


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Upstream, Path]]:
    """A plain and an HTTPS recording server, and the CA of the HTTPS one's certificate."""
    ca = UpstreamCA.create(tmp_path_factory.mktemp("upstream-ca"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(ca.server_cert, ca.server_key)
    with (
        running(Upstream(free_port(), "http")) as plain,
        running(Upstream(free_port(), "https"), tls) as secure,
    ):
        yield plain, secure, ca.cert


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, upstreams: tuple[Upstream, Upstream, Path]
) -> Iterator[Airlock]:
    """One `airlock run` for the module, trusting the HTTPS upstream's CA. Tests tell their
    requests apart by path."""
    root = tmp_path_factory.mktemp("exec")
    (root / "rules.yaml").write_text("version: 1\negress:\n  allow: [localhost, 127.0.0.1]\n")
    a = Airlock(
        data=root / "data",
        rules=root / "rules.yaml",
        port=free_port(),
        control_port=free_port(),
        extra=("--upstream-ca", str(upstreams[2])),
        output=root / "airlock.out",
    ).start()
    yield a
    a.stop()


@pytest.fixture
def plain(upstreams: tuple[Upstream, Upstream, Path]) -> Upstream:
    """The plain HTTP recording server."""
    return upstreams[0]


@pytest.fixture
def secure(upstreams: tuple[Upstream, Upstream, Path]) -> Upstream:
    """The HTTPS recording server."""
    return upstreams[1]


def airlock_cmd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run `airlock ARGS` as its own process (in `cwd`, if given)."""
    return subprocess.run([AIRLOCK, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def exec_via(a: Airlock, *cmd: str, data: str | None = None, cwd: Path | None = None) -> Run:
    """`airlock exec -- CMD` towards `a` (its data dir as `data` says, from `cwd`)."""
    where = ["--data", data or str(a.data), "--listen", f"127.0.0.1:{a.port}"]
    return airlock_cmd("exec", *where, "--", *cmd, env=dict(os.environ), cwd=cwd)


def in_parallel(*calls: Callable[[], Run]) -> list[Run]:
    """Run independent commands side by side (each one spends most of its time starting)."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


def one_line_error(proc: Run) -> str:
    """Assert `proc` failed with status 2 and one line on stderr, no traceback; return that line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def logged(a: Airlock, url: str) -> dict[str, Any]:
    """The log's action for `url`, once its outcome is written (just after the client's answer)."""

    def found() -> dict[str, Any] | None:
        return next((x for x in a.log() if x["url"] == url and x["state"] != "pending"), None)

    wait_for(lambda: found() is not None, f"the log holds {url}")
    entry = found()
    assert entry is not None
    return entry


def not_logged(a: Airlock, *urls: str) -> None:
    """None of `urls` is in the log (called after their requests were answered, so a request that
    went through the proxy would be there: the intent is written before forwarding)."""
    assert not {x["url"] for x in a.log()} & set(urls)


def received(up: Upstream, path: str) -> list[str]:
    """The methods of the requests `up` received at `path`."""
    return [s.method for s in up.effects() if s.path == path]


# ---- the environment -------------------------------------------------------------------------


def test_exec_points_the_command_at_the_proxy(proxy: Airlock, tmp_path: Path) -> None:
    """Every proxy variable names the proxy; every CA variable, the proxy's own CA by an absolute
    path (a relative --data, and a command that changes directory, still find it); Node 24 is
    told to use the proxy variables; NO_PROXY is gone."""
    env = {**os.environ, "NO_PROXY": "example.com", "no_proxy": "example.com", "KEEP_ME": "yes"}
    relative = os.path.relpath(proxy.data, tmp_path)
    dump = "import os, json; os.chdir('/'); print(json.dumps(dict(os.environ)))"
    where = ["--data", relative, "--listen", f"127.0.0.1:{proxy.port}"]
    proc = airlock_cmd("exec", *where, "--", sys.executable, "-c", dump, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc
    seen = json.loads(proc.stdout)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert seen[var] == f"http://127.0.0.1:{proxy.port}", var
    cert = (proxy.data / "ca" / "mitmproxy-ca-cert.pem").resolve()
    assert set(CA_VARS) >= COMMON_CA_VARS
    for var in CA_VARS:  # and every less common one exec knows of
        assert seen[var] == str(cert), var
        assert Path(seen[var]).is_absolute() and Path(seen[var]).is_file(), var
    assert seen["NODE_USE_ENV_PROXY"] == "1"
    assert "NO_PROXY" not in seen and "no_proxy" not in seen
    assert seen["KEEP_ME"] == "yes"


def test_exec_passes_on_the_exit_status(proxy: Airlock) -> None:
    seven, missing = in_parallel(
        lambda: exec_via(proxy, sys.executable, "-c", "raise SystemExit(7)"),
        lambda: exec_via(proxy, "no-such-command-airlock-test"),
    )
    assert seven.returncode == 7, seven
    assert missing.returncode == 127, missing
    assert "no-such-command-airlock-test" in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


# ---- clients that read the proxy variables -----------------------------------------------------


def test_exec_routes_curl_and_requests_through_the_proxy(proxy: Airlock, plain: Upstream) -> None:
    script = (
        "import requests, sys; "
        f"r = requests.post('{plain.url}/via-requests', data=b'body'); "
        "print(r.json()['path']); sys.exit(r.status_code != 200)"
    )
    curl, py = in_parallel(
        lambda: exec_via(proxy, "curl", "-sS", f"{plain.url}/via-exec"),
        lambda: exec_via(proxy, sys.executable, "-c", script),
    )
    assert curl.returncode == 0 and json.loads(curl.stdout)["path"] == "/via-exec", curl
    assert py.returncode == 0 and py.stdout.strip() == "/via-requests", py
    assert logged(proxy, f"{plain.url}/via-exec")["state"] == "committed"
    assert logged(proxy, f"{plain.url}/via-requests")["method"] == "POST"
    assert received(plain, "/via-exec") == ["GET"] and received(plain, "/via-requests") == ["POST"]


HTTPS_CLIENTS = {
    # curl, after the shell has left the directory exec was started in.
    "curl": lambda url: ["sh", "-c", f"cd / && curl -sS -X POST --data-binary x {url}"],
    # requests and httpx read REQUESTS_CA_BUNDLE and SSL_CERT_FILE after a chdir.
    "requests": lambda url: [
        sys.executable,
        "-c",
        f"import os, requests; os.chdir('/'); print(requests.post('{url}', data=b'x').text)",
    ],
    "httpx": lambda url: [
        sys.executable,
        "-c",
        f"import os, httpx; os.chdir('/'); print(httpx.post('{url}', content=b'x').text)",
    ],
}


def test_exec_over_https_from_a_relative_data_dir_and_another_directory(
    proxy: Airlock, secure: Upstream, tmp_path: Path
) -> None:
    """exec started in one directory with a relative --data, the command moving to `/` before its
    request: the CA variables still name the proxy's CA, so HTTPS is intercepted and logged."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    relative = os.path.relpath(proxy.data, elsewhere)
    assert not Path(relative).is_absolute() and not (Path("/") / relative / "ca").exists()
    url = {name: f"https://localhost:{secure.port}/https-{name}" for name in HTTPS_CLIENTS}
    runs = in_parallel(
        *(
            lambda name=name, client=client: exec_via(proxy, *client(url[name]), data=relative, cwd=elsewhere)
            for name, client in HTTPS_CLIENTS.items()
        )
    )
    for name, run in zip(HTTPS_CLIENTS, runs, strict=True):
        assert run.returncode == 0, (name, run.stderr)
        assert json.loads(run.stdout)["path"] == f"/https-{name}", (name, run.stdout)
        assert received(secure, f"/https-{name}") == ["POST"], name
        entry = logged(proxy, url[name])
        assert (entry["method"], entry["state"], entry["status"]) == ("POST", "committed", 200), name


# ---- no proxy to talk to -----------------------------------------------------------------------


def test_exec_without_its_proxy_says_so_in_one_line_and_runs_nothing(
    make_airlock: Callable[..., Airlock], proxy: Airlock, tmp_path: Path
) -> None:
    """A data dir with no CA (new, or never used by `airlock run`), a CA with nothing listening (a
    wrong --listen, a proxy that was stopped, an --isolate with no --transparent listener): one
    line naming what is missing and the flag to change, exit 2, and the command never runs."""
    stopped = make_airlock(data=tmp_path / "stopped-data")
    stopped.stop()
    idle = free_port()
    bare = tmp_path / "bare"
    bare.mkdir(mode=0o755)
    marker = tmp_path / "ran"
    cmd = ["--", "touch", str(marker)]
    here = f"127.0.0.1:{proxy.port}"
    cases = {
        "a new data dir": (
            ["--data", str(tmp_path / "new"), "--listen", here],
            f"no proxy CA in {tmp_path / 'new' / 'ca'}",
            "--data",
        ),
        "a data dir without a CA": (
            ["--data", str(bare), "--listen", here],
            f"no proxy CA in {bare}",
            "--data",
        ),
        "nothing on --listen": (
            ["--data", str(proxy.data), "--listen", f"127.0.0.1:{idle}"],
            f"no proxy is listening on 127.0.0.1:{idle}",
            "--listen",
        ),
        "a stopped proxy": (
            ["--data", str(stopped.data), "--listen", f"127.0.0.1:{stopped.port}"],
            f"no proxy is listening on 127.0.0.1:{stopped.port}",
            "--listen",
        ),
        "nothing on --transparent": (
            ["--data", str(proxy.data), "--isolate", "--transparent", f"127.0.0.1:{idle}"],
            f"no proxy is listening on 127.0.0.1:{idle}",
            "--transparent",
        ),
    }
    runs = in_parallel(*(lambda args=args: airlock_cmd("exec", *args, *cmd) for args, _, _ in cases.values()))
    for (name, (_, says, flag)), run in zip(cases.items(), runs, strict=True):
        line = one_line_error(run)
        assert line.startswith("airlock exec: "), (name, line)
        assert says in line and flag in line, (name, line)
    assert not marker.exists()
    # exec reads the data dir and nothing more: no CA on the side, no directory made or changed.
    assert not (tmp_path / "new").exists() and not (bare / "ca").exists()
    assert bare.stat().st_mode & 0o777 == 0o755


# ---- Node's built-in fetch and http --------------------------------------------------------------

NODE_FETCH = """
fetch(process.argv[1], {method: "POST", body: "x"})
  .then(async (r) => console.log(JSON.stringify(await r.json())))
  .catch((e) => { console.error(String(e.cause || e)); process.exit(1); });
"""
NODE_HTTP = """
const http = require(process.argv[1].startsWith("https:") ? "https" : "http");
const req = http.request(process.argv[1], {method: "POST"}, (r) => {
  let body = ""; r.on("data", (c) => body += c); r.on("end", () => console.log(body));
});
req.on("error", (e) => { console.error(String(e)); process.exit(1); });
req.end("x");
"""
NODE_CLIENTS = {"fetch": NODE_FETCH, "http": NODE_HTTP}


def node24() -> str:
    """The Node 24 binary `make test` installs from the npm registry, or a skip saying why not."""
    found = sorted(ROOT.glob(NODE24_GLOB))
    if not found:
        pytest.skip(f"no Node 24 in {ROOT / '.node24'}: `make test` installs it from the npm registry")
    return str(found[0])


def node_major(node: str) -> int:
    """The major version of the `node` binary."""
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=True)
    match = re.fullmatch(r"v(\d+)\.\d+\.\d+", out.stdout.strip())
    assert match, out.stdout
    return int(match[1])


@pytest.mark.parametrize("client", list(NODE_CLIENTS))
def test_node24_uses_the_proxy_under_exec_because_of_node_use_env_proxy(
    proxy: Airlock, plain: Upstream, secure: Upstream, client: str
) -> None:
    """Node 24's built-in fetch and http, no flags, no libraries: under exec they go through the
    proxy (HTTPS too, trusting the proxy's CA from NODE_EXTRA_CA_CERTS). The control: the same
    command under exec with NODE_USE_ENV_PROXY removed connects directly, unlogged."""
    node = node24()
    assert node_major(node) == 24
    script = NODE_CLIENTS[client]
    via = {
        "http": f"{plain.url}/node24-{client}",
        "https": f"https://localhost:{secure.port}/node24-{client}",
        "direct": f"{plain.url}/node24-{client}-direct",
    }
    proxied, tls, direct = in_parallel(
        lambda: exec_via(proxy, node, "-e", script, via["http"]),
        lambda: exec_via(proxy, node, "-e", script, via["https"]),
        lambda: exec_via(proxy, "env", "-u", "NODE_USE_ENV_PROXY", node, "-e", script, via["direct"]),
    )
    for run, url in ((proxied, via["http"]), (tls, via["https"]), (direct, via["direct"])):
        assert run.returncode == 0, (url, run.stderr)
        assert json.loads(run.stdout)["path"] == urlsplit(url).path, url
    for up, url in ((plain, via["http"]), (secure, via["https"])):
        assert received(up, f"/node24-{client}") == ["POST"], url
        entry = logged(proxy, url)
        assert (entry["method"], entry["state"], entry["status"]) == ("POST", "committed", 200), url
    assert received(plain, f"/node24-{client}-direct") == ["POST"]
    not_logged(proxy, via["direct"])


def test_older_node_fetch_ignores_the_proxy_variables(proxy: Airlock, plain: Upstream) -> None:
    """Node before 24 (before 22.21 in the 22 line) has no NODE_USE_ENV_PROXY: its fetch connects
    directly even under exec, which is why the docs send such clients to --isolate or capture."""
    node = shutil.which("node")
    if node is None or node_major(node) >= 22:
        pytest.skip("this needs a node older than 22 (the system's node is newer or missing)")
    run = exec_via(proxy, node, "-e", NODE_FETCH, f"{plain.url}/old-node-fetch")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["path"] == "/old-node-fetch"
    assert received(plain, "/old-node-fetch") == ["POST"]
    not_logged(proxy, f"{plain.url}/old-node-fetch")


# ---- aiohttp: proxy variables only with trust_env ---------------------------------------------

AIOHTTP = """
import asyncio, sys
import aiohttp

async def main(url, trust_env):
    async with aiohttp.ClientSession(trust_env=trust_env) as s, s.post(url, data=b"x") as r:
        print(await r.text())

asyncio.run(main(sys.argv[1], sys.argv[2] == "trust"))
"""


def test_aiohttp_ignores_the_proxy_variables_without_trust_env(proxy: Airlock, plain: Upstream) -> None:
    """aiohttp's ClientSession reads HTTP_PROXY only with trust_env=True; without it the request
    goes straight to the server under exec, and the log never sees it."""
    url = {mode: f"{plain.url}/aiohttp-{mode}" for mode in ("trust", "default")}
    runs = in_parallel(*(lambda m=m: exec_via(proxy, sys.executable, "-c", AIOHTTP, url[m], m) for m in url))
    for mode, run in zip(url, runs, strict=True):
        assert run.returncode == 0, (mode, run.stderr)
        assert json.loads(run.stdout)["path"] == f"/aiohttp-{mode}"
        assert received(plain, f"/aiohttp-{mode}") == ["POST"], mode
    assert logged(proxy, url["trust"])["state"] == "committed"
    not_logged(proxy, url["default"])


# ---- --isolate catches the clients that ignore proxy variables ---------------------------------

NODE_GET = """
fetch(process.argv[1])
  .then(async (r) => console.log(JSON.stringify({status: r.status, body: await r.json()})))
  .catch((e) => { console.error(String(e.cause || e)); process.exit(1); });
"""


@pytest.fixture
def host_address() -> Iterator[str]:
    """10.79.X.1 on a link of the host namespace (removed afterwards): an upstream off loopback,
    which is never captured."""
    name = f"exe{secrets.token_hex(3)}"
    used = quiet("ip", "-4", "-o", "addr")
    x = next(x for x in random.sample(range(1, 255), 254) if f" 10.79.{x}." not in used)
    try:
        add_link([], name, f"10.79.{x}.1/24")
        yield f"10.79.{x}.1"
    finally:
        quiet("ip", "link", "del", name)


def hidden(path: str) -> bool:
    """True for a file under a directory `exec --isolate` replaces with an empty one."""
    return any(Path(path).resolve().is_relative_to(fresh) for fresh, _ in FRESH)


def isolated(a: Airlock, transparent: int, cmd: list[str]) -> Run:
    """`airlock exec --isolate -- cmd` towards `a`'s transparent listener; it leaves nothing behind."""
    before = Traces.now([])
    args = [AIRLOCK, "exec", "--data", str(a.data), "--isolate", "--transparent", f"127.0.0.1:{transparent}"]
    link, done = exec_isolated([*args, "--", *cmd], [], timeout=60)
    left = Traces.now([]).added_since(before)
    scrub([], link)
    assert left == {}, f"airlock exec --isolate left behind {left}"
    return done


@pytest.mark.skipif(netns_unsupported() is not None, reason=netns_unsupported() or "")
def test_isolate_catches_clients_that_ignore_the_proxy_variables(
    host_address: str, processes: Processes, make_airlock: Callable[..., Airlock]
) -> None:
    """What plain exec cannot route (Node's fetch without NODE_USE_ENV_PROXY, curl told to ignore
    the proxy) goes through Airlock under --isolate: its connection is captured, decided and logged,
    and one to a port the rules do not allow is refused."""
    nodes = {"node": shutil.which("node"), "node24": next(map(str, sorted(ROOT.glob(NODE24_GLOB))), None)}
    # The confined command gets empty /tmp, /run... of its own: a Node 24 installed in a checkout
    # under one of them (a clone in /tmp) cannot be run there.
    clients = {
        name: [node, "-e", NODE_GET] for name, node in nodes.items() if node is not None and not hidden(node)
    }
    clients["curl"] = capture.curl_args("")[:-1]
    allowed, other = free_port(), free_port()
    server = capture.serve(processes, [], "http", host_address, allowed)
    refused = capture.serve(processes, [], "http", host_address, other)
    transparent = free_port()
    rules = f"version: 1\negress:\n  allow: [{{host: {host_address}, ports: [{allowed}]}}]\n"
    a = make_airlock(rules=rules, extra=("--transparent", f"127.0.0.1:{transparent}"))
    for name, client in clients.items():
        done = isolated(a, transparent, [*client, f"http://{host_address}:{allowed}/isolated-{name}"])
        assert done.returncode == 0, (name, done.stderr)
        if name == "curl":
            reply = capture.reply_of(done)
            status, body = reply.status, reply.json()
        else:
            answer = json.loads(done.stdout)
            status, body = answer["status"], answer["body"]
        assert (status, body) == (200, {"port": allowed, "path": f"/isolated-{name}"}), name
    assert [s["path"] for s in server.seen()] == [f"/isolated-{name}" for name in clients]
    node = next(iter(clients))
    denied = isolated(a, transparent, [*clients[node], f"http://{host_address}:{other}/refused"])
    assert json.loads(denied.stdout)["status"] == 403, denied
    assert refused.seen() == []
    actions = capture.logged(a, len(clients) + 1)
    for name, entry in zip(clients, actions, strict=False):
        url = f"http://{host_address}:{allowed}/isolated-{name}"
        assert (entry["url"], entry["state"], entry["status"]) == (url, "committed", 200), name
    assert (actions[-1]["host"], actions[-1]["state"]) == (host_address, "denied")
