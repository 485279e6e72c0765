"""The Hugging Face Hub client shared by publish (dataset repos) and train (adapter model repos).

One place decides, for every upload:
- where it goes: `--endpoint`, else $HF_ENDPOINT, else huggingface.co (`resolve_endpoint`), and whether a repo id is
  one the Hub accepts (`check_repo_id`);
- with which token: HF_TOKEN or the stored login (`hf auth login`), never a config field (configs are saved to disk
  and into Prefect results); no message, log line or result carries it (`one_line(..., secret=token)`);
- how the client behaves: per-call timeouts and the Xet switch (`client_settings`), checked token (`connect`);
- what happens on failure: transient failures (HTTP 408/429/5xx, dropped connections, timeouts) are retried with
  exponential backoff, honouring Retry-After (`retry`); everything else, and a retry budget spent, becomes the one
  line a user can act on (`Client.step`, `user_error`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

from prefsynth.constants import DEFAULT_HUB
from prefsynth.errors import UserError, one_line

log = logging.getLogger("prefsynth.publish")  # retry lines keep the logger name the log output has always shown

# Hub rules for a namespace or a repo name: letters, digits, "-", "_", ".", not starting or ending with "-" or ".",
# no "--" or "..", at most 96 characters.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
MAX_WAIT_S = 60.0  # longest backoff between two attempts
MAX_RETRY_AFTER_S = 300.0  # longest Retry-After a server may ask for

T = TypeVar("T")


@dataclass(frozen=True)
class ClientSettings:
    max_retries: int = 5  # per step (repo creation, commit, tag); 0 = one attempt
    retry_wait: float = 2.0  # seconds before the first retry; doubles each retry (max 60); a longer Retry-After wins
    timeout: float = 120.0  # seconds one HTTP call may wait for the server (huggingface_hub waits forever)
    xet: bool = False  # upload through Xet storage when hf_xet is installed (else plain LFS)


# ---------------------------------------------------------------------------------------------------------- where


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_local(path: str) -> bool:
    """Whether a dataset argument names a local folder rather than a Hub repo namespace/name: it exists, or starts
    like a path, or is not shaped like a repo id."""
    return Path(path).expanduser().exists() or path.startswith((".", "/", "~")) or not _REPO_ID.fullmatch(path)


def download_dataset(repo_id: str, endpoint: str, allow_patterns: list[str], revision: str | None = None) -> Path:
    """A dataset repo's files (those matching `allow_patterns`) at `revision`, through the Hub cache; every way it
    can fail is one UserError line."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    at = f"@{revision}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, endpoint=endpoint,
                                      allow_patterns=allow_patterns))
    except RevisionNotFoundError:
        raise UserError(f"dataset {repo_id} on {endpoint} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise UserError(f"dataset repo {repo_id} not found on {endpoint} (or the token may not read it), and "
                        f"there is no local folder of that name") from None
    except LocalEntryNotFoundError:
        raise UserError(f"dataset {repo_id}{at} is not in the local Hugging Face cache and {endpoint} cannot be "
                        f"reached (offline?)") from None
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"downloading dataset {repo_id}{at} failed: {describe(e, endpoint)}") from None


def check_repo_id(repo_id: str, suffixes: tuple[str, ...] = ()) -> None:
    """A UserError unless `repo_id` is namespace/name by the Hub's rules, also with each of `suffixes` appended."""
    if not repo_id:
        raise UserError("no repo given: pass --repo namespace/name (e.g. your-user/neurips-prefs)")
    parts = repo_id.split("/")
    ok = len(parts) == 2 and all(
        _NAME.fullmatch(p) and "--" not in p and ".." not in p and not p.endswith(".git") for p in parts
    )
    ok = ok and all(_NAME.fullmatch(parts[1] + s) for s in suffixes)
    if not ok:
        including = f", including the {'/'.join(suffixes)} suffix" if suffixes else ""
        raise UserError(
            f"malformed repo id {repo_id!r}: use namespace/name with letters, digits, '-', '_' or '.' "
            f"(at most 96 characters per part{including})"
        )


def resolve_endpoint(endpoint: str | None) -> str:
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB).strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", endpoint):
        raise UserError(f"Hub endpoint {endpoint!r} is not an http(s) URL")
    return endpoint


def require_online(action: str) -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise UserError(f"HF_HUB_OFFLINE is set: unset it to {action}")


def get_token() -> str:
    from huggingface_hub import get_token as hf_token

    try:
        token = hf_token()
    except Exception as e:  # noqa: BLE001 - e.g. a configured OIDC exchange failing: say so in one line
        raise UserError(f"could not obtain a Hugging Face token: {one_line(e)}") from None
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


# ---------------------------------------------------------------------------------------------------------- errors


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def http_status(exc: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    for e in causes(exc):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            return e.response.status_code
    return None


def transport_error(exc: BaseException) -> BaseException | None:
    import httpx2

    for e in causes(exc):
        if isinstance(e, httpx2.TransportError | ConnectionError | TimeoutError):
            return e
    return None


def retry_after(exc: BaseException) -> float | None:
    from huggingface_hub.errors import HfHubHTTPError

    for e in causes(exc):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            value = e.response.headers.get("Retry-After", "")
            return float(value) if value.strip().replace(".", "", 1).isdigit() else None
    return None


def describe(exc: BaseException, endpoint: str) -> str:
    """One readable clause for a failure (no URLs with query strings, no headers)."""
    import httpx2

    status = http_status(exc)
    if status is not None:
        server = next((getattr(e, "server_message", None) for e in causes(exc) if getattr(e, "server_message", None)),
                      None)
        return f"{endpoint} answered HTTP {status}" + (f" ({server})" if server else "")
    err = transport_error(exc)
    if isinstance(err, httpx2.ConnectError | ConnectionRefusedError):
        return f"cannot connect to {endpoint} ({one_line(err, limit=120) or 'connection refused'})"
    if isinstance(err, httpx2.TimeoutException | TimeoutError):
        return f"{endpoint} did not answer in time"
    if err is not None:
        return f"the connection to {endpoint} broke ({one_line(err, limit=120) or type(err).__name__})"
    return one_line(f"{type(exc).__name__}: {exc}")


def is_transient(exc: BaseException, extra_status: tuple[int, ...] = ()) -> bool:
    status = http_status(exc)
    if status is not None:
        return status in RETRY_STATUS or status in extra_status
    return transport_error(exc) is not None


def user_error(exc: BaseException, endpoint: str, repo_id: str, token: str,
               repo_type: str = "dataset") -> UserError | None:
    """Map a non-transient client error to the one line a user needs; None for errors that are bugs."""
    from huggingface_hub.errors import RepositoryNotFoundError

    status = http_status(exc)
    if any(isinstance(e, ValueError) and "Invalid metadata in README.md" in str(e) for e in causes(exc)):
        msg = f"the Hub rejected README.md's metadata: {exc}"
    elif status == 401 and not any(isinstance(e, RepositoryNotFoundError) for e in causes(exc)):
        msg = f"{endpoint} rejected the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`"
    elif status == 403:
        msg = (f"the token may not write to {repo_type} repo {repo_id} on {endpoint} (HTTP 403): "
               f"use a token with write access to that namespace")
    elif status is not None or transport_error(exc) is not None:
        msg = f"publishing {repo_id} failed: {describe(exc, endpoint)}"
    else:
        return None
    return UserError(one_line(msg, secret=token))


# ---------------------------------------------------------------------------------------------------------- retry


class Exhausted(Exception):
    """Every attempt failed transiently; `last` is the last failure."""

    def __init__(self, last: BaseException, attempts: int):
        super().__init__(str(last))
        self.last, self.attempts = last, attempts

    @property
    def after(self) -> str:
        return f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"


def retry(fn: Callable[[], T], settings: ClientSettings, what: str, extra_status: tuple[int, ...] = (),
          secret: str | None = None) -> T:
    """Run `fn`, retrying transient failures with exponential backoff. Non-transient errors propagate at once."""
    # Hand-written: huggingface_hub's http_backoff retries one HTTP request, a step here is a whole client call
    # (a commit is preupload + LFS + commit, re-reading the head per attempt); tenacity is not installed.
    attempts = max(0, settings.max_retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            if not is_transient(exc, extra_status):
                raise
            if attempt == attempts:
                raise Exhausted(exc, attempts) from exc
            wait = min(MAX_WAIT_S, settings.retry_wait * 2 ** (attempt - 1))
            if (after := retry_after(exc)) is not None:
                wait = max(wait, min(after, MAX_RETRY_AFTER_S))
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what,
                        one_line(describe(exc, "the Hub"), secret=secret), attempt, attempts - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------- client

_CLIENT_LOCK = threading.Lock()


@contextlib.contextmanager
def client_settings(settings: ClientSettings) -> Iterator[None]:
    """Per-call timeouts and the Xet switch for huggingface_hub, restored afterwards.

    huggingface_hub's shared httpx client has no timeout, so a stalled upload would hang forever; and it reads
    HF_HUB_DISABLE_XET once at import. Both are process-wide, hence the lock (uploads in one process run one at a
    time) and the restore. A factory the user installed is wrapped, not replaced.
    """
    import httpx2
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    with _CLIENT_LOCK:
        previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
        old_xet = constants.HF_HUB_DISABLE_XET

        def factory():
            client = previous()
            client.timeout = httpx2.Timeout(settings.timeout, connect=min(settings.timeout, 30.0))
            return client

        constants.HF_HUB_DISABLE_XET = old_xet or not settings.xet
        set_client_factory(factory)
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = old_xet
            set_client_factory(previous)


class Client:
    """`HfApi` on one endpoint with one token, and the way every call to it is made: `step`."""

    def __init__(self, endpoint: str, token: str, settings: ClientSettings, repo_type: str):
        from huggingface_hub import HfApi

        self.endpoint, self.token, self.settings, self.repo_type = endpoint, token, settings, repo_type
        self.api = HfApi(endpoint=endpoint, token=token, library_name="prefsynth")

    def step(self, fn: Callable[[], T], what: str, repo_id: str, *, action: str, extra_status: tuple[int, ...] = (),
             state: Callable[[], str] | None = None, note: str | None = None) -> T:
        """Run one Hub operation on `repo_id` with retries. A spent retry budget becomes "<action> failed: <why>
        after N attempts[; <state()>]"; a client error a user can fix becomes its one line; `note` (e.g. where the
        local copy is) ends both. Other errors (bugs) propagate."""
        tail = f"; {note}" if note else ""
        try:
            return retry(fn, self.settings, f"{what} ({repo_id})", extra_status, secret=self.token)
        except Exhausted as e:
            where = f"; {state()}" if state is not None else ""
            raise UserError(f"{action} failed: {describe(e.last, self.endpoint)} {e.after}{where}{tail}") from None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            if (err := user_error(e, self.endpoint, repo_id, self.token, self.repo_type)) is not None:
                raise UserError(f"{err}{tail}") from None
            raise

    def check_token(self, repo_id: str) -> None:
        """The token works on this endpoint and may write (a read-only token fails here, before any upload)."""
        # First contact with the endpoint: a refused connection here is more often a wrong URL than a blip, so the
        # user hears about it after a few seconds rather than after the full backoff.
        first = replace(self.settings, max_retries=min(self.settings.max_retries, 2))
        endpoint, token = self.endpoint, self.token
        try:
            me = retry(lambda: self.api.whoami(), first, "checking the token", secret=token)
        except Exhausted as e:
            raise UserError(f"cannot publish: {describe(e.last, endpoint)} {e.after}") from None
        except Exception as e:  # noqa: BLE001
            if http_status(e) == 401:
                raise UserError(
                    f"{endpoint} rejected the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`"
                ) from None
            if (err := user_error(e, endpoint, repo_id, token)) is not None:
                raise err from None
            if isinstance(e, ValueError):  # a 200 that is not JSON: some other web server
                raise UserError(f"{endpoint} does not answer like a Hugging Face Hub (check --endpoint / HF_ENDPOINT)"
                                ) from None
            raise
        role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise UserError("the Hugging Face token is read-only: publishing needs a token with write access")


@contextlib.contextmanager
def connect(endpoint: str, token: str, settings: ClientSettings, repo_id: str, repo_type: str) -> Iterator[Client]:
    """A client with `settings` applied and its token checked, for uploads to `repo_id`'s namespace."""
    with client_settings(settings):
        client = Client(endpoint, token, settings, repo_type)
        client.check_token(repo_id)
        yield client
