"""The adapters that read more into an HTTP request than HTTP: an AWS API call, a Kubernetes API
request. The proxy and `airlock rules explain` both read every request through `classified`."""

from __future__ import annotations

from rules import Action, Ruleset

from . import aws, kube


def classified(action: Action, ruleset: Ruleset) -> Action:
    """The action as the cloud API it calls reads it, or unchanged when it calls none."""
    if action.protocol != "http":
        return action
    read = aws.classified(action, declared=ruleset.aws_endpoint)
    return read if read is not action else kube.classified(action)
