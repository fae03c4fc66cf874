"""The one secret masker: a token never reaches a log line, an error hint or `hpclab logs`."""

from __future__ import annotations

MASK = "********"
_SECRETS: set[str] = set()


def register(secret: str) -> None:
    """A secret that every later redact() call masks (the logging formatter uses it)."""
    if secret:
        _SECRETS.add(secret)


def redact(text: str, *secrets: str) -> str:
    """`text` with every registered secret, and each of `secrets`, replaced by the mask."""
    for secret in (*_SECRETS, *secrets):
        if secret:
            text = text.replace(secret, MASK)
    return text
