"""The cheap first looks of redaction never skip a credential: what each look relies on holds."""

from __future__ import annotations

import json

import pytest

from proxy.core import redact

# One token of every shape, as agents send them.
TOKENS = [
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
    "Bearer 9f8e7d6c5b4a3928",
    "BEARER abcdefgh12345678",
    "Basic dXNlcjpwYXNzd29yZA==",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAIOSFODNN7EXAMPLE",
    "ghp_" + "a1" * 18,
    "github_pat_" + "b2" * 18,
    "glpat-" + "c3" * 10,
    "xoxb-1234567890-abcdef",
    "https://hooks.slack.com/services/T000/B000/XXXX",
    "sk_live_" + "d4" * 8,
    "whsec_" + "e5" * 8,
    "sk-proj-" + "f6" * 12,
    "AIza" + "g7" * 17 + "h",
    "123456789:AA" + "i8" * 16 + "j",
    "https://user:hunter2@db.example/x",
]


@pytest.mark.parametrize("token", TOKENS)
def test_every_shape_that_matches_a_token_occurs_in_it(token: str) -> None:
    matched = [shape for shape in redact.SHAPES if shape.pattern.search(token)]
    assert matched, token
    for shape in matched:
        assert shape.occurs(token), (token, shape.pattern.pattern)
    look = redact.Look.at(f"prefix {token} suffix")
    assert set(matched) <= set(look.shapes)
    assert redact.REDACTED in redact.text(token)


def test_every_credential_name_holds_a_stem() -> None:
    # Look.at and the JSON walk skip texts with no stem: a word that makes a field name a
    # credential's must hold one (`code` is one only in queries, forms and headers).
    words = [*redact.names._SECRET_WORDS, *redact.names._SECRET_ENDINGS, *redact.names._KEY_WORDS]
    for word in words:
        assert any(stem in word.replace("_", "") for stem in redact.shapes._STEMS), word


def test_the_short_look_finds_every_anchor_and_stem() -> None:
    for needle in [*(a for s in redact.SHAPES for a in s.anchors), *redact.shapes._STEMS]:
        assert redact.shapes._ANY.search(f"x {needle} y".lower()), needle


@pytest.mark.parametrize(
    ("doc", "redacted"),
    [
        ({"max_tokens": 100, "messages": [{"content": "a" * 400}]}, False),
        ({"max_tokens": 100, "note": "token=abc " + "a" * 400}, True),
        ({"api key": "abc", "pad": "a" * 400}, True),
        ({'a"tokenizer': 1, "pad": 'b\\"' * 300, 'c"token': "d"}, True),
        ({'a"tokenizer': 1, "pad": 'b\\"' * 300}, False),
        ({"session_count": 3, "nested": [{"password": "x"}], "pad": "c" * 400}, True),
    ],
)
def test_a_json_body_holding_credential_words_is_walked_when_a_field_may_be_one(
    doc: dict[str, object], redacted: bool
) -> None:
    raw = json.dumps(doc).encode()
    assert (redact.body(raw, "application/json") != raw) is redacted


def test_a_repeated_key_still_hides_nothing() -> None:
    raw = b'{"password": "first", "pad": "' + b"d" * 400 + b'", "password": "second"}'
    out = redact.body(raw, "application/json")
    assert b"first" not in out and b"second" not in out
