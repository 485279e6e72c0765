"""Errors a user can cause, and how any message becomes the one line a user reads."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment (bad file, bad template, missing token...).

    The CLI turns it into one line on stderr and exit code 2. The message must be a single, self-contained line:
    it is all the user will see.
    """

    exit_code = 2


def one_line(text: object, limit: int = 300, secret: str | None = None) -> str:
    """`text` on one line (whitespace collapsed), a secret masked, cut to `limit` characters."""
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exception_line(e: BaseException, limit: int = 300) -> str:
    """The most informative line of an exception message (pydantic puts a URL on the last line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
    pick = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else type(e).__name__)
    return pick[:limit]
