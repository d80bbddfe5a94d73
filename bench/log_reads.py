"""What reading the log costs as it grows: `airlock log` (the newest 20), `log --agent X -n 50`,
`log --state denied`, `show`, `--follow` while idle, filling the attribute index once, and
`verify` (linear, for contrast), on logs of each size given.

Usage: ``.venv/bin/python bench/log_reads.py [--sizes 10000,100000] [--rounds 5] [--keep DIR]``

Each log is built through the store (store.Log, the writer the proxy uses, in batches of
group commits): per action an intent (agent `agent-0`..`agent-9`, three hosts, every 7th denied
by a rule) and, for the others, an outcome: two entries an action, like a forwarded request.
Each read is timed in-process (median of `--rounds`) and as the real `airlock` command (wall
time, Python start included), and the ratio of the largest size to the smallest is printed: a
read that does not grow with the log stays near 1. A measurement, never a test: it exits 0.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store import ActionRef, Log, Query, Record, State, attrs

AIRLOCK = str(Path(sys.executable).parent / "airlock")
BATCH = 2000


def build(
    data: Path, actions: int, checkpoint: Callable[[], Record] | None = None, every: int = 1000
) -> None:
    """A data dir whose log holds `actions` actions, written through the store; with
    `checkpoint`, the record it makes is appended after every `every` entries, as the proxy's
    --checkpoint-every does."""
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = Log.open(data / "log", max_size=64 << 30)
    log.start()
    written = 0

    def append(record: Record) -> None:
        nonlocal written
        log.append_soon(record)
        written += 1
        if checkpoint is not None and written % every == 0:
            log.append_soon(checkpoint())

    for start in range(1, actions + 1, BATCH):
        refs: list[tuple[ActionRef, bool]] = []
        for i in range(start, min(start + BATCH, actions + 1)):
            ref, denied = ActionRef(), i % 7 == 0
            refs.append((ref, denied))
            append(
                Record(
                    kind="intent",
                    action=ref,
                    state=State.DENIED if denied else State.PENDING,
                    new_action=True,
                    data={"action": {"method": "POST", "url": f"https://h{i % 3}.test/things/{i}"}},
                    summary={
                        "agent": f"agent-{i % 10}",
                        "method": "POST",
                        "url": f"https://h{i % 3}.test/things/{i}",
                        "host": f"h{i % 3}.test",
                        "effect": "write",
                        "rule": "no-things" if denied else None,
                        "status": None,
                    },
                )
            )
        log.append_blocking(Record(kind="note"))
        for ref, denied in refs:
            if not denied:
                append(Record(kind="outcome", action=ref, state=State.COMMITTED, summary={"status": 200}))
        log.append_blocking(Record(kind="note"))
    log.close()


def median_ms(read: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        read()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def cli_ms(data: Path, rounds: int, *args: str) -> float:
    def run() -> None:
        subprocess.run([AIRLOCK, *args, "--data", str(data)], check=True, capture_output=True)

    return median_ms(run, rounds)


def follow_idle_cpu(data: Path, seconds: float) -> float:
    """CPU seconds an idle `airlock log --follow` uses over `seconds` (its start excluded)."""
    proc = subprocess.Popen(
        [AIRLOCK, "log", "--follow", "-n", "1", "--data", str(data)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # its listing is printed: it is following now
    tasks = Path(f"/proc/{proc.pid}/task")

    def cpu() -> float:
        # schedstat: nanoseconds on a CPU, per thread (finer than the clock ticks of /proc/PID/stat).
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir()) / 1e9

    before = cpu()
    time.sleep(seconds)
    used = cpu() - before
    proc.terminate()
    proc.wait()
    return used


def fill_seconds(path: Path) -> float:
    """How long a writer of this version takes to fill the attribute index of a log without one."""
    env = lmdb.open(str(path), max_dbs=16, map_size=64 << 30)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(b"attrs", txn=txn), delete=True)
        txn.delete(b"attrs", db=env.open_db(b"meta", txn=txn))
    env.close()
    log = Log.open(path, max_size=64 << 30)
    began = time.perf_counter()
    log.start()
    took = time.perf_counter() - began
    log.close()
    return took


def measure(data: Path, size: int, rounds: int, idle: float) -> dict[str, float]:
    """Every figure for the log in `data`, which holds `size` actions."""
    log = Log.open(data / "log", readonly=True)
    middle = size // 2
    out = {
        "log (newest 20), in-process ms": median_ms(lambda: log.newest(Query()), rounds),
        "log --agent agent-3 -n 50, in-process ms": median_ms(
            lambda: log.newest(Query(agent="agent-3", limit=50)), rounds
        ),
        "log --state denied, in-process ms": median_ms(lambda: log.newest(Query(state="denied")), rounds),
        "show (middle action), in-process ms": median_ms(lambda: log.action_entries(middle), rounds),
        "verify (linear), in-process ms": median_ms(log.verify, 1),
    }
    log.close()
    env = lmdb.open(str(data / "log"), max_dbs=16, readonly=True, lock=False)
    with env.begin() as txn:
        dbs = {name: env.open_db(name, txn=txn) for name in (b"actions", b"meta", b"attrs")}
        out["verify's attribute index check, in-process ms"] = median_ms(
            lambda: attrs.disagreement(txn, dbs), 1
        )
    env.close()
    out |= {
        "airlock log, wall ms": cli_ms(data, rounds, "log"),
        "airlock log --agent agent-3 -n 50, wall ms": cli_ms(
            data, rounds, "log", "--agent", "agent-3", "-n", "50"
        ),
        "airlock show ID, wall ms": cli_ms(data, rounds, "show", str(middle)),
        "airlock --help (Python start), wall ms": cli_ms(data, rounds, "--help"),
        f"idle log --follow, CPU ms over {idle:g} s": 1000 * follow_idle_cpu(data, idle),
        "filling the attribute index once, ms": 1000 * fill_seconds(data / "log"),
        "log file, MiB": (data / "log" / "data.mdb").stat().st_size / (1 << 20),
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="actions per log, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to watch an idle --follow")
    parser.add_argument("--keep", type=Path, help="build the logs here and keep them")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = args.keep or Path(tempfile.mkdtemp(prefix="airlock-bench-reads-"))
    rows: dict[str, dict[int, float]] = {}
    for size in sizes:
        data = root / f"data-{size}"
        if not (data / "log" / "data.mdb").exists():
            began = time.perf_counter()
            build(data, size)
            print(f"built {size} actions in {time.perf_counter() - began:.1f} s", flush=True)
        for name, value in measure(data, size, args.rounds, args.idle).items():
            rows.setdefault(name, {})[size] = value

    small, large = sizes[0], sizes[-1]
    width = max(len(name) for name in rows)
    print(f"\n{'':<{width}}  " + "  ".join(f"{s:>10}" for s in sizes) + f"  {f'{large}/{small}':>10}")
    for name, by_size in rows.items():
        cells = "  ".join(f"{by_size[s]:>10.2f}" for s in sizes)
        ratio = by_size[large] / by_size[small] if by_size[small] else float("nan")
        print(f"{name:<{width}}  {cells}  {ratio:>10.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"\npeak RSS of this script: {peak} MiB; logs in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
