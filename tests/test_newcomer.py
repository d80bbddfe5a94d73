"""What a first run trips on, run for real with the `airlock` command: an upstream URL with a base
path (plain HTTP here; an MCP SDK client in test_mcp.py), several internal CAs, a
command group given no command, a --data that is a file, and bad values for every command's
inputs: each a clear line and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.cli import build_parser

from .support import AIRLOCK, Airlock, Upstream, UpstreamCA, free_port, pem_of_key, running, self_signed_ca

Run = subprocess.CompletedProcess[str]
ROOT = Path(__file__).resolve().parent.parent

BASE_RULES = """\
version: 1
egress:
  allow: [127.0.0.1]
rules:
  - id: no-item-deletes
    match: {method: DELETE, path: "/api/items/*"}
    action: deny
    message: Deleting items is not allowed.
"""


def airlock_cmd(*args: str) -> Run:
    """Run `airlock ARGS` as its own process."""
    return subprocess.run([AIRLOCK, *args], capture_output=True, text=True, timeout=60)


def one_line_error(proc: Run) -> str:
    """Assert `proc` failed with status 2, one line on stderr and nothing on stdout; return the line."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


# ---- a base path in an upstream URL ----------------------------------------------------------


def test_a_base_path_goes_before_every_path_the_listener_is_asked_for(
    make_airlock: Callable[..., Airlock], upstream: Upstream
) -> None:
    api, slash = free_port(), free_port()
    a = make_airlock(
        rules=BASE_RULES,
        upstreams={"api": (upstream.url + "/api", api), "v2": (upstream.url + "/v2/", slash)},
    )
    at = f"http://127.0.0.1:{api}"
    assert requests.get(f"{at}/", timeout=10).json()["path"] == "/api"
    assert requests.get(f"{at}/x/y?q=1", timeout=10).json()["path"] == "/api/x/y?q=1"
    assert requests.post(f"{at}/items", json={"n": 1}, timeout=10).json()["path"] == "/api/items"
    denied = requests.delete(f"{at}/items/7", timeout=10)
    assert denied.status_code == 403 and "Deleting items is not allowed." in denied.text
    assert requests.get(f"http://127.0.0.1:{slash}/", timeout=10).json()["path"] == "/v2/"
    assert requests.get(f"http://127.0.0.1:{slash}/z", timeout=10).json()["path"] == "/v2/z"

    assert [(s.method, s.path) for s in upstream.effects()] == [
        ("GET", "/api"),
        ("GET", "/api/x/y?q=1"),
        ("POST", "/api/items"),
        ("GET", "/v2/"),
        ("GET", "/v2/z"),
    ]
    logged = [(x["method"], urlsplit(x["url"]).path, x["upstream"], x["state"]) for x in a.log()]
    assert logged == [
        ("GET", "/api", "api", "committed"),
        ("GET", "/api/x/y", "api", "committed"),
        ("POST", "/api/items", "api", "committed"),
        ("DELETE", "/api/items/7", "api", "denied"),
        ("GET", "/v2/", "v2", "committed"),
        ("GET", "/v2/z", "v2", "committed"),
    ]
    assert a.log("--state", "denied")[0]["rule"] == "no-item-deletes"


# ---- several internal CAs ----------------------------------------------------------------------


def internal_ca(directory: Path, name: str) -> UpstreamCA:
    """A CA named `name` (internal CAs have names of their own) and a certificate it signed for
    127.0.0.1, as PEM files in `directory`."""
    ca_key, ca = self_signed_ca(name)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir()
    made = UpstreamCA(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    made.cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    made.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    made.server_key.write_bytes(pem_of_key(key))
    return made


@pytest.fixture
def two_internal(tmp_path: Path) -> Iterator[tuple[UpstreamCA, Upstream, UpstreamCA, Upstream]]:
    """Two HTTPS upstreams, each with a certificate from an internal CA of its own."""
    cas = [internal_ca(tmp_path / name, f"{name} internal CA") for name in ("billing", "tools")]
    with ExitStack() as stack:
        ups = []
        for ca in cas:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(ca.server_cert, ca.server_key)
            ups.append(stack.enter_context(running(Upstream(free_port(), "https"), ctx)))
        yield cas[0], ups[0], cas[1], ups[1]


def _get(a: Airlock, up: Upstream) -> int:
    r = requests.get(f"{up.url}/hello", proxies=a.proxies, verify=str(a.ca_cert), timeout=15)
    return r.status_code


@pytest.mark.parametrize("given", ["files", "directory"])
def test_upstream_ca_given_twice_or_as_a_directory_trusts_both(
    make_airlock: Callable[..., Airlock],
    two_internal: tuple[UpstreamCA, Upstream, UpstreamCA, Upstream],
    tmp_path: Path,
    given: str,
) -> None:
    one, up_one, two, up_two = two_internal
    if given == "files":
        flags: tuple[str, ...] = ("--upstream-ca", str(one.cert), "--upstream-ca", str(two.cert))
    else:
        both = tmp_path / "cas"
        both.mkdir()
        shutil.copy(one.cert, both / "one.pem")
        shutil.copy(two.cert, both / "two.crt")
        (both / "README").write_text("not a certificate: not read")
        flags = ("--upstream-ca", str(both))
    a = make_airlock(extra=flags)
    assert (_get(a, up_one), _get(a, up_two)) == (200, 200)
    assert [s.path for s in up_one.effects()] == ["/hello"]
    assert [s.path for s in up_two.effects()] == ["/hello"]
    assert [x["state"] for x in a.log()] == ["committed", "committed"]


def test_an_upstream_signed_by_a_ca_not_given_is_not_reached(
    make_airlock: Callable[..., Airlock], two_internal: tuple[UpstreamCA, Upstream, UpstreamCA, Upstream]
) -> None:
    one, up_one, _, up_two = two_internal
    a = make_airlock(extra=("--upstream-ca", str(one.cert)))
    assert _get(a, up_one) == 200
    assert _get(a, up_two) == 502
    assert up_two.effects() == []


# ---- command groups, the data dir, bad values ---------------------------------------------------


def groups(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and every parser under it that takes a command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield parser
            for sub in dict.fromkeys(action.choices.values()):
                yield from groups(sub)


@pytest.mark.parametrize("prog", [g.prog for g in groups(build_parser())])
def test_a_command_group_without_a_command_prints_its_usage_and_names_them(prog: str) -> None:
    proc = airlock_cmd(*prog.split()[1:])
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    usage, error = proc.stderr.strip().splitlines()
    assert usage.startswith(f"usage: {prog} ")
    assert error.startswith(f"{prog}: error: a command is needed: ") and f"(see {prog} --help)" in error
    assert error.split(": ")[-1].split(" (")[0].split(", ")  # the commands, by name
    assert "  " not in error


def test_an_option_before_the_command_says_where_it_goes() -> None:
    line = one_line_error(airlock_cmd("--data", "here", "log"))
    assert (
        line
        == "airlock: error: --data goes after the command: airlock COMMAND --data ... (see airlock --help)"
    )


def test_data_that_is_a_file_says_a_directory_is_needed(tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    for cmd in (
        ["run", "--listen", f"127.0.0.1:{free_port()}", "--control", f"127.0.0.1:{free_port()}"],
        ["log"],
        ["show", "1"],
        ["verify"],
        ["resolve", "1", "--executed"],
        ["ca"],
        ["exec", "--", "true"],
        ["mcp", "--", "true"],
    ):
        line = one_line_error(airlock_cmd(cmd[0], "--data", str(file), *cmd[1:]))
        assert line == (
            f"airlock {cmd[0]}: error: data dir {file} is a file; --data needs a directory "
            "(created if missing): pick another path"
        )
    line = one_line_error(airlock_cmd("ca", "--data", str(file / "sub")))
    assert f"data dir {file}/sub is under {file}, which is a file" in line
    assert file.read_text() == "not a directory"


BAD: dict[str, tuple[list[str], str]] = {
    "upstream-credentials": (["run", "--upstream", "t=http://u:p@127.0.0.1:9@9001"], "carries credentials"),
    "upstream-port": (["run", "--upstream", "t=http://127.0.0.1:99999/mcp@9001"], "from 1 to 65535"),
    "upstream-host": (["run", "--upstream", "t=http://a b/@9001"], "is not HOST or HOST:PORT"),
    "upstream-query": (["run", "--upstream", "t=http://h/mcp?x=1@9001"], "has a query or fragment"),
    "upstream-listen-port-0": (["run", "--upstream", "t=http://h@0"], "is not NAME=URL@PORT"),
    "upstream-named-twice": (
        ["run", "--upstream", "t=http://a@{p1}", "--upstream", "t=http://b@{p2}"],
        "--upstream names must differ (the log names upstreams by them): t",
    ),
    "upstream-ca-missing": (["run", "--upstream-ca", "{tmp}/none.pem"], "no such file or directory"),
    "upstream-ca-not-pem": (["run", "--upstream-ca", "{tmp}/junk.pem"], "no PEM certificate in it"),
    "upstream-ca-empty-dir": (["run", "--upstream-ca", "{tmp}/empty"], "no *.pem, *.crt or *.cer files"),
    "capture-dns": (["capture", "--uid", "1000", "--port", "8082", "--dns", "resolver"], "not an IP address"),
    "show-id": (["show", "seven"], "argument id: invalid int value: 'seven'"),
    "log-state": (["log", "--state", "done"], "argument --state: invalid choice: 'done'"),
    "verify-expect": (["verify", "--expect", "12"], "--expect '12' is not SEQ:HASH"),
    "resolve-how": (["resolve", "1"], "--executed --not-executed is required"),
    "explain-url": (["rules", "explain"], "--url"),
    "explain-args": (["rules", "explain", "--url", "http://h/", "--tool", "t", "--args", "{{"], "not JSON"),
    "mcp-command": (["mcp"], "needs a command"),
    "exec-command": (["exec"], "needs a command"),
    "exec-listen": (["exec", "--listen", "here", "--", "true"], "'here' is not HOST:PORT"),
    "capture-uid": (["capture", "--uid", "me", "--port", "8082"], "'me' is not a numeric user ID"),
    "run-agent-empty": (["run", "--agent", ""], "argument --agent: '' is not an agent name"),
    "explain-url-scheme": (["rules", "explain", "--url", "ftp://h/x"], "is not an http:// or https:// URL"),
    "flag-of-another-command": (
        ["log", "--listen", "127.0.0.1:1"],
        "airlock log: error: unrecognized arguments: --listen 127.0.0.1:1 (see airlock log --help)",
    ),
    "flag-of-another-group-command": (
        ["rules", "check", "--data", "d"],
        "airlock rules check: error: unrecognized arguments: --data (see airlock rules check --help)",
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_value_is_one_clear_line(name: str, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    (tmp_path / "empty").mkdir()
    args, expect = BAD[name]
    filled = [a.format(tmp=tmp_path, p1=free_port(), p2=free_port()) for a in args]
    if filled[0] in ("run", "log", "show", "verify", "resolve", "mcp", "exec"):
        filled[1:1] = ["--data", str(tmp_path / "data")]
    if filled[0] == "run":
        filled += ["--listen", f"127.0.0.1:{free_port()}", "--control", f"127.0.0.1:{free_port()}"]
    line = one_line_error(airlock_cmd(*filled))
    assert line.startswith(f"airlock {filled[0]}"), line
    assert expect.format(tmp=tmp_path) in line, line


def test_make_says_where_the_command_is() -> None:
    if not (ROOT / ".venv" / "bin" / "airlock").exists():
        pytest.skip("no .venv here: these tests run from another environment")
    # -o: the installed environment counts as up to date, so make installs nothing here.
    proc = subprocess.run(
        ["make", "-s", "--no-print-directory", "-o", ".venv/.installed-run", "run", "ARGS=--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stderr
        == "airlock is not on PATH: run it as .venv/bin/airlock (or 'source .venv/bin/activate' first)\n"
    )
    assert proc.stdout.startswith("usage: airlock run")


def test_make_run_installs_what_running_needs_and_make_test_the_toolchain(tmp_path: Path) -> None:
    """On a fresh clone (no .venv), `make run` installs the project alone; `make test` adds the
    test extras (clients, emulators, linters). Dry runs: nothing is installed here."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)

    def planned(target: str) -> str:
        proc = subprocess.run(
            ["make", "-n", "--no-print-directory", target],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    run = planned("run")
    assert "pip install --quiet -e .\n" in run and "[test]" not in run
    assert "pip install --quiet -e '.[test]'" in planned("test")


def test_a_listener_that_cannot_start_names_its_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        base = ["run", "--data", str(tmp_path / "data"), "--control", f"127.0.0.1:{free_port()}"]
        cases = {
            "--listen": [f"--listen=127.0.0.1:{busy}"],
            "--upstream": [f"--listen=127.0.0.1:{free_port()}", f"--upstream=t=http://127.0.0.1:9@{busy}"],
            # 192.0.2.1 is a documentation address (RFC 5737): no interface here has it.
            "--transparent": [f"--listen=127.0.0.1:{free_port()}", f"--transparent=192.0.2.1:{free_port()}"],
        }
        for flag, args in cases.items():
            line = one_line_error(airlock_cmd(*base, *args))
            assert line.startswith("airlock run: error: cannot start "), line
            assert line.endswith(f"; pick another address or port with {flag}"), line
            if flag != "--transparent":
                assert f"127.0.0.1:{busy}: Address already in use;" in line, line
