"""The MCP tests' stdio side: one test's files for `airlock mcp` in front of the notes server, and
`airlock mcp` driven by hand with newline-delimited JSON-RPC."""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mcp import StdioServerParameters

from .airlock import AIRLOCK
from .mcp_http import NOTES_SERVER

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "airlock-tests", "version": "0"},
    },
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


@dataclass
class Setup:
    """One test's files: the notes server's effects, airlock's data, rules and stderr."""

    root: Path

    @property
    def server(self) -> Path:
        """The notes server's script."""
        return NOTES_SERVER

    @property
    def effects(self) -> Path:
        """One line per write or delete that ran on the server."""
        return self.root / "effects"

    @property
    def data(self) -> Path:
        """Airlock's data dir."""
        return self.root / "data"

    @property
    def rules(self) -> Path:
        """Airlock's rules file."""
        return self.root / "rules.yaml"

    @property
    def stderr(self) -> Path:
        """Where airlock's stderr goes."""
        return self.root / "airlock.stderr"

    def effect_lines(self) -> list[str]:
        """The writes and deletes that ran on the server."""
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def airlock_command(self, *server_args: str) -> list[str]:
        """`airlock mcp` in front of the notes server."""
        return [
            AIRLOCK,
            "mcp",
            "--data",
            str(self.data),
            "--rules",
            str(self.rules),
            "--",
            sys.executable,
            str(self.server),
            str(self.effects),
            *server_args,
        ]

    def params(self) -> StdioServerParameters:
        """The host's view: it spawns airlock, not the server."""
        cmd = self.airlock_command()
        return StdioServerParameters(command=cmd[0], args=cmd[1:])

    def cli(self, *args: str) -> str:
        """`airlock ARGS` against this data dir; its output."""
        proc = subprocess.run(
            [AIRLOCK, *args, "--data", str(self.data)], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def log(self) -> list[dict[str, Any]]:
        """`airlock log --json`: every action, oldest first."""
        return [json.loads(line) for line in self.cli("log", "--json", "--all").splitlines()]

    def show(self, action_id: int) -> dict[str, Any]:
        """`airlock show ID --json`: the action and every entry about it."""
        return dict(json.loads(self.cli("show", str(action_id), "--json")))


def write_rules(s: Setup, body: str) -> None:
    """`body` (YAML after the version line) as the run's rules file."""
    s.rules.write_text("version: 1\n" + body)


class Host:
    """`airlock mcp` driven by hand: newline-delimited JSON-RPC on its stdin and stdout, its
    stderr in a file."""

    def __init__(self, cmd: list[str], stderr: Path):
        self.stderr_path = stderr
        self._err = stderr.open("wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, out: IO[bytes]) -> None:
        for line in out:
            self._lines.put(line)
        self._lines.put(None)

    def send_raw(self, line: bytes) -> None:
        """`line` as it is, then a newline."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        """`message` as one line of JSON."""
        self.send_raw(json.dumps(message).encode())

    def recv(self, timeout: float = 20) -> dict[str, Any]:
        """The next message airlock writes."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message from airlock within {timeout} s") from None
        if line is None:
            raise AssertionError(f"airlock closed its output; stderr: {self.stderr()}")
        return dict(json.loads(line))

    def response(self, message_id: Any, timeout: float = 20) -> dict[str, Any]:
        """The response to request `message_id` (server notifications in between are skipped)."""
        while True:
            m = self.recv(timeout)
            if "method" not in m and m.get("id") == message_id:
                return m

    def initialize(self) -> None:
        """The MCP handshake, as a host starts a session."""
        self.send(INITIALIZE)
        assert self.response(1)["result"]["serverInfo"]["name"] == "notes"
        self.send(INITIALIZED)

    def stderr(self) -> str:
        """What airlock wrote to stderr so far."""
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self, timeout: float = 20) -> int:
        """End the host's input, as a host does; airlock's exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Make sure the process is gone (SIGTERM reaches the child through airlock)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        self._err.close()
