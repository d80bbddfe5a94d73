"""What a held-then-approved action costs the log: durable commits per step, against a plain write.

Usage: ``.venv/bin/python bench/holds.py [--actions N]``

One `airlock run` (its rules hold every DELETE, `wait: 0s`, so the agent is answered at once)
and a loopback upstream. Each step is done for N actions, one at a time (so no two share a
commit), and the proxy's own count of fsync'd commits (`airlock_log_commit_seconds_count` on
/metrics) is read before and after:

  write     a POST: its intent (the outcome shares a later commit)
  hold      a DELETE, held: its intent in state held
  vote      an approval through the control API, which completes the quorum: the vote, then
            the decision
  run       the same DELETE sent again: the execute entry (the outcome shares a later commit)

It prints commits per action for each step and the ratio to a plain write. A measurement, not a
test: it exits 0 once it has measured.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

AIRLOCK = str(Path(sys.executable).parent / "airlock")
RULES = "version: 1\negress: {allow: [127.0.0.1]}\nhold: {wait: 0s}\ndefaults: {destructive: hold}\n"


class _Ok(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _airlock(root: Path) -> Iterator[tuple[str, str, Path]]:
    (root / "rules.yaml").write_text(RULES)
    port, control = _free_port(), _free_port()
    cmd = [AIRLOCK, "run", "--data", str(root / "data"), "--rules", str(root / "rules.yaml")]
    cmd += ["--listen", f"127.0.0.1:{port}", "--control", f"127.0.0.1:{control}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{control}/healthz", timeout=1).ok:
                    break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{control}", root / "data"
    finally:
        proc.terminate()
        proc.wait(15)


def _commits(control: str, token: str) -> float:
    text = requests.get(f"{control}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("airlock_log_commit_seconds_count"))
    return float(line.split()[-1])


def _per_action(control: str, token: str, n: int, step: Callable[[int], None]) -> float:
    time.sleep(0.1)  # lazily committed outcomes of the step before land first
    before = _commits(control, token)
    for i in range(n):
        step(i)
    time.sleep(0.1)
    return (_commits(control, token) - before) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=50, help="actions per step (default 50)")
    n = parser.parse_args().actions
    with (
        tempfile.TemporaryDirectory() as tmp,
        _upstream() as up,
        _airlock(Path(tmp)) as (proxy, control, data),
    ):
        token = (data / "control.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        via = {"http": proxy}
        held: list[int] = []

        def write(i: int) -> None:
            requests.post(f"{up}/w{i}", data=b"x", proxies=via, timeout=30).raise_for_status()

        def hold(i: int) -> None:
            r = requests.delete(f"{up}/d{i}", proxies=via, timeout=30)
            assert r.status_code == 503, r.text
            held.append(r.json()["action_id"])

        def vote(i: int) -> None:
            body = {"vote": "approve", "voter": "bench", "reason": "measured"}
            r = requests.post(f"{control}/v1/actions/{held[i]}/votes", json=body, headers=auth, timeout=30)
            assert r.ok and r.json()["decision"] is not None, r.text

        def run(i: int) -> None:
            assert requests.delete(f"{up}/d{i}", proxies=via, timeout=30).status_code == 200

        figures = {
            name: _per_action(control, token, n, step)
            for name, step in (("write", write), ("hold", hold), ("vote", vote), ("run", run))
        }
    base = figures["write"]
    print(f"durable commits per action ({n} actions per step, one at a time)")
    print(f"{'step':<8}{'commits':>9}{'vs write':>10}")
    for name, value in figures.items():
        print(f"{name:<8}{value:>9.2f}{value / base:>9.2f}x")
    total = figures["hold"] + figures["vote"] + figures["run"]
    print(f"held, approved and run: {total:.2f} commits ({total / base:.2f}x a plain write)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
