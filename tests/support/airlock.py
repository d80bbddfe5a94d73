"""A real `airlock run` process: its command line, start and stop, its CLI and its log."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from .upstream import Upstream, free_port
from .waiting import wait_for

AIRLOCK = str(Path(sys.executable).parent / "airlock")

RULES = """\
version: 1
egress:
  allow: [localhost, 127.0.0.1]
secrets:
  headers: [X-Service-Token]
rules:
  - id: no-item-deletes
    description: items are never deleted by agents
    match: {method: DELETE, path: "/items/*"}
    action: deny
    message: Deleting items is not allowed; archive the item instead.
"""


@dataclass
class Airlock:
    """A running `airlock run` process and the ways to reach it."""

    data: Path
    rules: Path
    port: int
    control_port: int
    proc: subprocess.Popen[bytes] | None = None
    upstreams: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (url, port)
    extra: tuple[str, ...] = ()
    output: Path | None = None

    @property
    def proxy(self) -> str:
        """The forward proxy URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxies(self) -> dict[str, str]:
        """`proxies=` for requests."""
        return {"http": self.proxy, "https": self.proxy}

    @property
    def control(self) -> str:
        """The control API base URL."""
        return f"http://127.0.0.1:{self.control_port}"

    @property
    def ca_cert(self) -> Path:
        """The interception CA certificate clients must trust."""
        return self.data / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def token(self) -> str:
        """The control API token."""
        return (self.data / "control.token").read_text().strip()

    def command(self) -> list[str]:
        """The `airlock run` command line."""
        cmd = [
            AIRLOCK,
            "run",
            "--data",
            str(self.data),
            "--rules",
            str(self.rules),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--control",
            f"127.0.0.1:{self.control_port}",
        ]
        for name, (url, port) in self.upstreams.items():
            cmd += ["--upstream", f"{name}={url}@{port}"]
        return cmd + list(self.extra)

    def start(self) -> Airlock:
        """Start the process and wait until the proxy and the control API answer."""
        assert self.output is not None
        out = self.output.open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"airlock exited {self.proc.returncode}: {self.output.read_text()}")
            try:
                if requests.get(f"{self.control}/healthz", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"airlock did not become ready: {self.output.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process (SIGKILL simulates a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run an `airlock` subcommand against this data dir."""
        proc = subprocess.run(
            [AIRLOCK, *args, "--data", str(self.data)], capture_output=True, text=True, timeout=60
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"airlock {args} exited {proc.returncode}: {proc.stderr}")
        return proc

    def log(self, *args: str) -> list[dict[str, Any]]:
        """`airlock log --json --all` as a list of actions."""
        out = self.cli("log", "--json", "--all", *args).stdout
        return [json.loads(line) for line in out.splitlines()]


def started_airlock(root: Path, rules: str = RULES) -> Airlock:
    """An `airlock run` with its rules, data and output under `root`."""
    (root / "rules.yaml").write_text(rules)
    return Airlock(
        data=root / "data",
        rules=root / "rules.yaml",
        port=free_port(),
        control_port=free_port(),
        output=root / "airlock.out",
    ).start()


def entries_now(a: Airlock) -> int:
    """How many entries the log holds, as the control API's /healthz reports."""
    return int(requests.get(f"{a.control}/healthz", timeout=5).json()["entries"])


def settle(a: Airlock, entries: int) -> None:
    """Wait until the log holds `entries` entries (outcomes are written just after the client has
    its response)."""
    wait_for(lambda: entries_now(a) == entries, f"the log holds {entries} entries")


def hold_and_crash(a: Airlock, up: Upstream, paths: list[str]) -> dict[str, int]:
    """POST each /hold path through the proxy, wait until the upstream holds them all, SIGKILL the
    proxy and start it again on the same data dir: the actions are in_doubt. Returns path -> id."""

    def send(path: str) -> None:
        with suppress(requests.RequestException):  # the proxy is killed under it
            requests.post(f"{up.url}{path}", data=b"payload", proxies=a.proxies, timeout=30)

    threads = [threading.Thread(target=send, args=(p,), daemon=True) for p in paths]
    for t in threads:
        t.start()
    wait_for(lambda: {s.path for s in up.effects()} >= set(paths), "the upstream holds every request")
    a.stop(signal.SIGKILL)
    for t in threads:
        t.join(30)
    a.start()
    found = {str(x["url"]).removeprefix(up.url): int(x["id"]) for x in a.log("--state", "in_doubt")}
    assert set(found) == set(paths), found
    return found
