"""The adapters that read more into an HTTP request than HTTP: an AWS API call, a Kubernetes API
request, a call to a model. The proxy and `airlock rules explain` both read every request through
`classified`."""

from __future__ import annotations

from rules import Action, Ruleset

from . import aws, kube, llm


def classified(action: Action, ruleset: Ruleset) -> Action:
    """The action as the cloud API it calls reads it, or unchanged when it calls none."""
    if action.protocol != "http":
        return action
    read = aws.classified(action, declared=ruleset.aws_endpoint)
    # A Bedrock runtime call is an AWS call that calls a model: the llm reading keeps its
    # service, operation and region. A model endpoint the rules name reads `/api/v1/...` as its
    # own API, not as Kubernetes would.
    read = llm.classified(read, declared=ruleset.llm_endpoint)
    return read if read is not action else kube.classified(action)
