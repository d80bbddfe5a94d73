"""`airlock mcp -- CMD ARGS...`: an MCP server on stdio, with Airlock between it and the host.

The host (an IDE, a desktop app, an agent framework) spawns `airlock mcp -- npx some-server`
instead of the server. Airlock launches the server as its child and passes newline-delimited
JSON-RPC between the host's pipes and the child's, through the same rules and the same log as
the proxy: a refused call is answered here and never written to the child. The child's stderr
passes straight through, and its exit code becomes Airlock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.core.admission import Admission
from proxy.core.keys import DedupPolicy
from proxy.core.records import BodyPolicy
from proxy.core.reload import RulesReloader
from proxy.errors import StartupError
from proxy.ops.datadir import DataDir
from proxy.ops.keysweep import schedule_sweep
from proxy.ops.upkeep import Upkeep
from rules import Action, Effect, Ruleset
from store import Log

from . import messages as mcp
from .toolcalls import ToolCalls

logger = logging.getLogger("airlock")

CHANNEL = "stdio"
INTERNAL = "airlock could not decide or log this message; it was not passed on"
LINE_LIMIT = 64 << 20  # the longest JSON-RPC line passed either way


@dataclass(frozen=True)
class StdioConfig:
    """What `airlock mcp` was asked to run, and how."""

    command: list[str]
    data: Path
    rules: Path
    agent: str
    rules_poll: float = 1.0
    body_limit: int = 64 * 1024
    name: str | None = None  # the server's name in the log; default: its command's file name


def base_action(cfg: StdioConfig) -> Action:
    """The action every message of this server starts from: the server is named as the operator
    named it, or by its command (an upstream the operator chose, so egress does not apply)."""
    name = cfg.name or Path(cfg.command[0]).name
    return Action(
        method="POST",
        scheme="stdio",
        host="stdio",
        port=0,
        path=f"/{name}",
        effect=Effect.READ,
        protocol="mcp",
        agent=cfg.agent,
        upstream=name,
    )


class Bridge:
    """The two pumps between the host's pipes and the child's."""

    def __init__(self, calls: ToolCalls, base: Action, child: asyncio.subprocess.Process):
        self.calls = calls
        self.base = base
        self.server = f"stdio:{base.upstream}"
        self.child = child

    @staticmethod
    def emit(data: bytes) -> None:
        """Write whole lines to the host."""
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    def answer(self, messages: Any) -> None:
        """Answer the host directly, as one JSON line."""
        self.emit(json.dumps(messages, separators=(",", ":")).encode() + b"\n")

    async def host_to_child(self, reader: asyncio.StreamReader) -> None:
        """Decide each message the host sends; pass on what may go, answer the rest."""
        assert self.child.stdin is not None
        while line := await reader.readline():
            if not line.strip():
                continue
            try:
                messages = mcp.messages(line)
            except mcp.NotJsonRpc as e:
                self.answer(mcp.rpc_error(None, mcp.INVALID_REQUEST, f"{e} (airlock)"))
                continue
            if messages is None:
                try:
                    json.loads(line)
                except ValueError:
                    self.answer(mcp.rpc_error(None, mcp.PARSE_ERROR, "not JSON (airlock)"))
                else:
                    self.answer(
                        mcp.rpc_error(None, mcp.INVALID_REQUEST, "not a JSON-RPC 2.0 message (airlock)")
                    )
                continue
            try:
                answers = await self.calls.send(messages, self.base, channel=CHANNEL, server=self.server)
            except Exception:
                # Fail closed: the message is not passed on, and the host hears why.
                logger.exception("airlock: could not decide or log a message; it was not passed on")
                ids = [m["id"] for m in messages if mcp.is_request(m)]
                self.answer(
                    [mcp.rpc_error(i, mcp.INTERNAL_ERROR, INTERNAL) for i in ids]
                    if len(ids) > 1
                    else mcp.rpc_error(ids[0] if ids else None, mcp.INTERNAL_ERROR, INTERNAL)
                )
                continue
            if answers is None:
                self.child.stdin.write(line if line.endswith(b"\n") else line + b"\n")
                await self.child.stdin.drain()
            elif answers:
                self.answer(answers if line.lstrip().startswith(b"[") else answers[0])
        self.child.stdin.close()

    async def child_to_host(self) -> None:
        """Pass on what the child says, completing the calls it answers."""
        assert self.child.stdout is not None
        while line := await self.child.stdout.readline():
            try:
                parsed = json.loads(line)
            except ValueError:
                self.emit(line)  # not ours to judge: the host sees what the server wrote
                continue
            items = parsed if isinstance(parsed, list) else [parsed]
            raw = line.strip() if not isinstance(parsed, list) else None
            out = [
                self.calls.receive(m, raw, channel=CHANNEL, server=self.server, base=self.base) for m in items
            ]
            if all(a is b for a, b in zip(out, items, strict=True)):
                self.emit(line if line.endswith(b"\n") else line + b"\n")
            else:
                self.answer(out if isinstance(parsed, list) else out[0])
        self.calls.close(CHANNEL, "the server closed its output before answering")


def _stdin_reader() -> asyncio.StreamReader:
    """The host's stdin as a stream, read by a thread: stdin may be a pipe, a file or
    /dev/null, and the event loop can only watch pipes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)

    def pump() -> None:
        try:
            while chunk := os.read(sys.stdin.fileno(), 1 << 16):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except (OSError, ValueError):
            pass
        with contextlib.suppress(RuntimeError):  # the loop may be gone at exit
            loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="airlock mcp stdin", daemon=True).start()
    return reader


async def serve_stdio(cfg: StdioConfig) -> int:
    """Run the child behind the gate until it exits; return its exit code."""
    data = DataDir(cfg.data)
    data.prepare()
    ruleset = Ruleset.load(cfg.rules)
    log = Log.open(data.log)
    log.start()
    chores = Upkeep()
    schedule_sweep(chores, log)  # its keys expire too when no proxy shares the log
    chores.start()
    try:
        admission = Admission(log, ruleset, bodies=BodyPolicy(cfg.body_limit), policy=DedupPolicy())
        reloader = RulesReloader(cfg.rules, log, admission.use_rules, ruleset)
        await reloader.record("mcp start")
        try:
            child = await asyncio.create_subprocess_exec(
                *cfg.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except FileNotFoundError as e:
            raise StartupError(f"command not found: {cfg.command[0]}") from e
        except PermissionError as e:
            raise StartupError(f"permission denied: {cfg.command[0]}") from e
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _forward, child, sig)
        bridge = Bridge(ToolCalls(admission), base_action(cfg), child)
        tasks = [
            asyncio.create_task(bridge.host_to_child(_stdin_reader())),
            asyncio.create_task(bridge.child_to_host()),
            asyncio.create_task(admission.holds.keep_expiring(), name="end holds past their timeout"),
        ]
        if cfg.rules_poll > 0:
            tasks.append(asyncio.create_task(reloader.watch(cfg.rules_poll)))
        code = await child.wait()
        await tasks[1]  # everything the child wrote has been passed on
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        return code if code >= 0 else 128 - code
    finally:
        chores.stop()  # before the log closes: the sweep writes it
        log.close()


def _forward(child: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, sig)
