"""A request to a model API becomes an `llm` Action with the effect `inference`.

Only where the host reads requests as the provider does (the provider's own host, Bedrock's
runtime endpoints, or a host the rules name under `llm: endpoints`) and only for a plain POST
of a model API: a path shape alone never lowers a request's effect on an arbitrary host, and a
request an upstream could read another way (a method-override header, a path that resolves
otherwise on some server) keeps its method's effect. The model and whether the answer streams
are read from the JSON body (`model`, `"stream": true`), or from the path where the API puts
them there (Gemini, Bedrock). A body whose duplicate keys name two models is read both ways:
the other model rides in `others` and is decided too.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from rules import Action, Effect, Inference, readings_of

from ..aws.hosts import own_endpoint
from .shapes import BEDROCK_ENDPOINT, Shape, bedrock_shape, declared_shape, own_host, own_shape

PROTOCOL = "llm"
AWS = "aws"
# Bedrock's runtime: its signing name, and its endpoint prefix (an unsigned request to its host).
BEDROCK_SERVICES = frozenset({"bedrock", "bedrock-runtime"})

Declared = Callable[[str, int], bool]  # does the rule set name host:port as a model endpoint?


def classified(action: Action, *, declared: Declared) -> Action:
    """The action read as a model call (protocol llm, effect inference, its `inference`), or
    the same action object when it is not one."""
    shape = _shape(action, declared)
    if shape is None:
        return action
    readings = [_inference(shape, doc) for doc in readings_of(action).documents if isinstance(doc, dict)]
    first = readings[0] if readings else Inference(shape.provider, shape.api, shape.model, shape.stream)
    others = tuple(
        dataclasses.replace(action, protocol=PROTOCOL, effect=Effect.INFERENCE, inference=other, others=())
        for other in dict.fromkeys(readings[1:])
        if other != first
    )
    return dataclasses.replace(
        action,
        protocol=PROTOCOL,
        effect=Effect.INFERENCE,
        inference=first,
        others=action.others + others,
    )


def _shape(action: Action, declared: Declared) -> Shape | None:
    """The model API the request calls, when its host reads it as one and nothing about the
    request lets an upstream read it as something else."""
    if action.method != "POST" or action.effect not in (Effect.READ, Effect.WRITE):
        return None
    readings = readings_of(action)
    if readings.methods != ("POST",):
        return None
    if action.protocol == AWS:
        if action.service not in BEDROCK_SERVICES:
            return None
        if not (own_endpoint(action.host, BEDROCK_ENDPOINT) or declared(action.host, action.port)):
            return None
        return bedrock_shape(action.operation, action.path)
    if action.protocol != "http":
        return None
    if own_host(action.host):
        read: Callable[[str], Shape | None] = functools.partial(own_shape, action.host)
    elif declared(action.host, action.port):
        read = declared_shape
    else:
        return None
    shapes = {read(path) for path in readings.paths}
    # Every way a server could resolve the path must name the same API: a path that some
    # server resolves to another endpoint keeps the method's effect.
    return shapes.pop() if len(shapes) == 1 else None


def _inference(shape: Shape, doc: dict[str, Any]) -> Inference:
    """The model call one reading of the JSON body asks for."""
    model = shape.model
    if model is None and isinstance(doc.get("model"), str):
        model = doc["model"]
    stream = shape.stream or doc.get("stream") is True
    return Inference(shape.provider, shape.api, model, stream)
