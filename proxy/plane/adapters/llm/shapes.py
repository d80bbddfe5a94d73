"""Which model API a request's host and path name.

A provider's own host serves only its own APIs, at their exact paths. A host the rules name
under `llm: endpoints` (an OpenAI-compatible server, a gateway, a local model) may serve any of
the shapes, under any path prefix (`/openai/v1/chat/completions`, `/api/v1/messages`): there
the provider is read from the shape. Everything else on those hosts (files, batches,
fine-tuning, stored responses) is no model call.

Token counts (Anthropic's `/v1/messages/count_tokens`, Gemini's `:countTokens`, OpenAI's
`/v1/responses/input_tokens`) are model calls too: they carry the prompt out as a generation
does and change nothing, so rules on provider and model decide them alike; their answers report
no usage, so they cost no budget. Embeddings are not read here: they stay the POST they are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

ANTHROPIC = "anthropic"
OPENAI = "openai"
GEMINI = "gemini"
BEDROCK = "bedrock"
COMPATIBLE = "openai-compatible"

# The APIs, as `Inference.api` names them.
MESSAGES = "messages"
COUNT_TOKENS = "count_tokens"  # Anthropic's token count: a model call that generates nothing
CHAT = "chat.completions"
COMPLETIONS = "completions"
RESPONSES = "responses"
INPUT_TOKENS = "responses.input_tokens"  # OpenAI's token count for a Responses request
GENERATE = "generateContent"
COUNT_GEMINI = "countTokens"
CONVERSE = "converse"
INVOKE = "invoke"

OWN_HOSTS = {
    "api.anthropic.com": ANTHROPIC,
    "api.openai.com": OPENAI,
    "generativelanguage.googleapis.com": GEMINI,
}

# The exact paths each provider's own host serves its model APIs at.
OWN_PATHS = {
    ANTHROPIC: {
        "/v1/messages": MESSAGES,
        "/v1/messages/count_tokens": COUNT_TOKENS,
        "/v1/chat/completions": CHAT,  # Anthropic's OpenAI-compatible endpoint
    },
    OPENAI: {
        "/v1/chat/completions": CHAT,
        "/v1/completions": COMPLETIONS,
        "/v1/responses": RESPONSES,
        "/v1/responses/input_tokens": INPUT_TOKENS,
    },
    GEMINI: {
        "/v1beta/openai/chat/completions": CHAT,  # Gemini's OpenAI-compatible endpoint
        "/v1/openai/chat/completions": CHAT,
    },
}

# Path endings a declared endpoint may serve, after any prefix, with the provider they name.
DECLARED_ENDINGS = (
    ("/chat/completions", COMPATIBLE, CHAT),
    ("/completions", COMPATIBLE, COMPLETIONS),
    ("/responses", COMPATIBLE, RESPONSES),
    ("/messages", ANTHROPIC, MESSAGES),
    ("/messages/count_tokens", ANTHROPIC, COUNT_TOKENS),
)

# Collections whose endpoints end like a model API's but store things: OpenAI's Assistants
# (`/v1/threads/ID/messages`), as gateways that serve OpenAI's whole API also do.
NOT_MODEL_CALLS = frozenset({"threads", "assistants", "batches"})

# Gemini's methods on a model: `/v1beta/models/gemini-2.0-flash:generateContent`, tuned models
# too. The API version is Gemini's own on its host (v1, v1beta, v1alpha); a declared endpoint
# may put anything in front.
GEMINI_METHODS = {
    "generateContent": (GENERATE, False),
    "streamGenerateContent": (GENERATE, True),
    "countTokens": (COUNT_GEMINI, False),
}
_GEMINI_OWN = re.compile(r"/v1(?:alpha|beta)?/((?:tuned)?[mM]odels/[^/:]+):([A-Za-z]+)")
_GEMINI_ANY = re.compile(r"(?:/.*)?/((?:tuned)?[mM]odels/[^/:]+):([A-Za-z]+)")

# Bedrock's runtime operations that call a model, by the name the AWS model gives them.
BEDROCK_OPERATIONS = {
    "Converse": (CONVERSE, False),
    "ConverseStream": (CONVERSE, True),
    "InvokeModel": (INVOKE, False),
    "InvokeModelWithResponseStream": (INVOKE, True),
}
BEDROCK_ENDPOINT = "bedrock-runtime"  # its endpoint prefix: bedrock-runtime.REGION.amazonaws.com
_BEDROCK_MODEL = re.compile(r"/model/(.+)/(?:converse|converse-stream|invoke|invoke-with-response-stream)")


@dataclass(frozen=True)
class Shape:
    """The model API a path names: its provider and API, and what the path itself says of the
    model and of streaming (Gemini names both there)."""

    provider: str
    api: str
    model: str | None = None
    stream: bool = False


def own_host(host: str) -> bool:
    """True for a provider's own API host: it serves only that provider's APIs."""
    return host.lower().rstrip(".") in OWN_HOSTS


def own_shape(host: str, path: str) -> Shape | None:
    """The model API a provider's own host serves at this path, or None (not a provider's host,
    or one of its other endpoints)."""
    provider = OWN_HOSTS.get(host.lower().rstrip("."))
    if provider is None:
        return None
    if (api := OWN_PATHS[provider].get(path)) is not None:
        return Shape(provider, api)
    if provider == GEMINI:
        return _gemini(_GEMINI_OWN.fullmatch(path))
    return None


def declared_shape(path: str) -> Shape | None:
    """The model API a path names on a host the rules declare as a model endpoint, or None."""
    gemini = _gemini(_GEMINI_ANY.fullmatch(path))
    if gemini is not None:
        return gemini
    shape = None
    for ending, provider, api in DECLARED_ENDINGS:
        # The longest ending that fits wins: `/chat/completions` before `/completions`.
        if path.endswith(ending) and (shape is None or len(ending) > len(shape[0])):
            shape = (ending, provider, api)
    if shape is None:
        return None
    prefix = path[: -len(shape[0])].split("/")
    if NOT_MODEL_CALLS & set(prefix):
        return None  # `/v1/threads/ID/messages` adds a message to a stored thread
    # Azure OpenAI names the model's deployment in the path, not the body.
    deployment = prefix[prefix.index("deployments") + 1] if "deployments" in prefix[:-1] else None
    return Shape(shape[1], shape[2], deployment or None)


def _gemini(match: re.Match[str] | None) -> Shape | None:
    if match is None or match.group(2) not in GEMINI_METHODS:
        return None
    resource, method = match.group(1), match.group(2)
    api, stream = GEMINI_METHODS[method]
    model = resource.split("/", 1)[1] if resource.lower().startswith("models/") else resource
    return Shape(GEMINI, api, model, stream)


def bedrock_shape(operation: str | None, path: str) -> Shape | None:
    """The model API a Bedrock runtime operation calls, with the model id from its path."""
    if operation not in BEDROCK_OPERATIONS:
        return None
    api, stream = BEDROCK_OPERATIONS[operation]
    match = _BEDROCK_MODEL.fullmatch(path)
    return Shape(BEDROCK, api, unquote(match.group(1)) if match else None, stream)
