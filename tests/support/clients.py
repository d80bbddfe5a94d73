"""Real clients run as processes, with no proxy settings leaking in from the environment."""

from __future__ import annotations

import os
import subprocess


def environ_without_proxy() -> dict[str, str]:
    """The test process environment with no proxy variables (for subprocess clients)."""
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real curl with `args` and no proxy variables from the environment."""
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, text=True, timeout=30, env=environ_without_proxy()
    )
