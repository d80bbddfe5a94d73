"""Redaction: credentials are replaced before anything about a request is written.

Two tests find a credential. Its NAME: a header, query parameter, form or multipart field, JSON
field or tool argument whose name has a word such as token, secret, password, key, auth,
credential, session, signature or cookie in it (`Api-Key`, `X-Vault-Token`, `refresh_token`,
`clientSecret`). Its VALUE: anything with the shape of a well-known token (AWS key ids, bearer
and basic credentials, JWTs, PEM private keys, GitHub, GitLab, Slack, Stripe, OpenAI, Anthropic
and Google keys, `user:password@` in URLs), wherever it appears in a string the log keeps.

A service may also name fields that hold secrets whatever they are called (an AWS model's
sensitive members): `named` replaces those, given their names.

A bare `key` or `code` is a credential in a query string, a form or a header (`?key=` is how
Google takes API keys, `code` is an OAuth grant), not as a JSON field, where it usually names
a record (DynamoDB's `Key`) or a program: there only the value shapes apply.
"""

from .bodies import body
from .named import named
from .names import REDACTED, SECRET_HEADERS, secret_name
from .shapes import EVERYTHING, NOTHING, SHAPES, Look, Shape, text
from .values import Redactor, query, url, walk

__all__ = [
    "EVERYTHING",
    "NOTHING",
    "REDACTED",
    "SECRET_HEADERS",
    "SHAPES",
    "Look",
    "Redactor",
    "Shape",
    "body",
    "named",
    "query",
    "secret_name",
    "text",
    "url",
    "walk",
]
