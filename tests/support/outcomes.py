"""Waiting for actions to reach their final state: conditions that entries written later (an
outcome lands just after the client has its response) cannot overtake, unlike a count taken
while they may still arrive."""

from __future__ import annotations

from typing import Any

import requests

from .airlock import Airlock
from .waiting import wait_for


def shown(a: Airlock, action_id: int) -> dict[str, Any]:
    """One action and its entries, as the control API shows them."""
    r = requests.get(
        f"{a.control}/v1/actions/{action_id}", headers={"Authorization": f"Bearer {a.token}"}, timeout=10
    )
    r.raise_for_status()
    return dict(r.json())


def final(a: Airlock, action_id: int) -> dict[str, Any]:
    """The action and its entries once it is no longer pending."""

    def done() -> bool:
        return shown(a, action_id)["action"]["state"] != "pending"

    wait_for(done, f"action {action_id} has its outcome")
    return shown(a, action_id)


def pending(a: Airlock) -> list[dict[str, Any]]:
    """The actions whose outcome is not written yet."""
    r = requests.get(
        f"{a.control}/v1/actions",
        params={"state": "pending"},
        headers={"Authorization": f"Bearer {a.token}"},
        timeout=10,
    )
    r.raise_for_status()
    return list(r.json()["actions"])


def settled(a: Airlock) -> list[dict[str, Any]]:
    """Every action in the log (`airlock log --json`), once none is pending: call it when every
    request the test sent has had its response."""
    wait_for(lambda: pending(a) == [], "no action is pending")
    return a.log()
