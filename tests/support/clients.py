"""Real clients run as processes, with no proxy settings leaking in from the environment."""

from __future__ import annotations

import os
import signal
import subprocess


def environ_without_proxy() -> dict[str, str]:
    """The test process environment with no proxy variables (for subprocess clients)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real curl with `args` and no proxy variables from the environment."""
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, timeout=30, env=environ_without_proxy()
    )


def interruptible() -> None:
    """A `preexec_fn` that gives a child Ctrl-C's default handling, as in a terminal: a test
    run started in the background (SIGINT ignored, which children inherit) would otherwise
    start children that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
