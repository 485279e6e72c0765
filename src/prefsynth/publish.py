"""Publish stage: upload a built dataset folder to a Hugging Face Hub dataset repo, as one commit per repo.

What a publish does, per target repo:
1. create the dataset repo if it does not exist (private unless asked otherwise);
2. read the branch head, then commit the folder's files (and delete stale files under `paired/`, `unpaired/` and
   top-level plots) in ONE `create_commit` against that head (`parent_commit`), so the Hub either moves `main` to
   the complete new version or leaves it where it was;
3. tag the new head `v<N>` (one more than the highest `v<int>` tag) and return the commit sha to pin.

Unchanged content makes no commit: the Hub's preupload answer carries the oid of every file already there, and
`huggingface_hub` drops unchanged files and skips an empty commit. That same check makes retries safe: when a commit
call loses its answer (connection dropped after the Hub applied it), the retry finds the content already at the
head and commits nothing, so one publish never makes two commits.

The token comes from HF_TOKEN or the stored login (`hf auth login`), never from the config (configs are saved to
disk and into Prefect results), and no message, log line, result or uploaded file carries it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from prefsynth.errors import UserError

log = logging.getLogger(__name__)

CONFIG_NAMES = ("paired", "unpaired")
DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPE = "dataset"
_VERSION_TAG = re.compile(r"v(\d+)")
# Hub rules for a namespace or a repo name: letters, digits, "-", "_", ".", not starting or ending with "-" or ".",
# no "--" or "..", at most 96 characters.
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_MAX_WAIT_S = 60.0

T = TypeVar("T")


@dataclass
class PublishConfig:
    repo_id: str = field(
        default="", metadata={"help": "Hub dataset repo as namespace/name (required to publish)", "alias": "repo"}
    )  # namespace/name; required when publishing
    private: bool = field(
        default=True, metadata={"help": "create the repo private (ignored when it already exists)"}
    )  # only applies when publish creates the repo
    split_repos: bool = field(
        default=False,
        metadata={"help": "publish paired and unpaired to <repo>-paired and <repo>-unpaired instead of one repo"},
    )  # default: one repo with two configs
    endpoint: str | None = field(
        default=None, metadata={"help": "Hub URL; unset: $HF_ENDPOINT, else https://huggingface.co"}
    )  # default: HF_ENDPOINT env, else https://huggingface.co
    max_retries: int = field(
        default=5, metadata={"help": "retries of a failed step on HTTP 5xx/429, dropped connections and timeouts"}
    )  # per step (repo creation, commit, tag); 0 = one attempt
    retry_wait: float = field(
        default=2.0, metadata={"help": "seconds before the first retry; doubles each retry (max 60)"}
    )  # a 429's Retry-After wins when longer
    timeout: float = field(
        default=120.0, metadata={"help": "seconds one HTTP call may wait for the server before it is retried"}
    )  # huggingface_hub waits forever by default; a stalled upload must fail and be retried instead
    xet: bool = field(
        default=False, metadata={"help": "upload through Xet storage when hf_xet is installed (else plain LFS)"}
    )  # plain LFS works on every Hub-compatible server; Xet dedups big files on huggingface.co
    commit_message: str = field(
        default="", metadata={"help": "commit title; empty: 'prefsynth: publish <configs>'"}
    )  # empty = generated

    def validate(self) -> None:
        """Offline checks (repo id, endpoint URL): lets a pipeline fail before hours of generation, not after."""
        _check_repo_id(self.repo_id, self.split_repos)
        _resolve_endpoint(self)


@dataclass
class PublishResult:
    repo_id: str  # namespace/name of the dataset repo
    revision: str  # commit sha of the published content: pin training with revision=<this>
    tag: str | None  # version tag on that commit (v1, v2, ...)
    committed: bool  # False when the content was already there (no new commit)
    url: str  # dataset page
    configs: list[str] = field(default_factory=list)  # configs in this repo ("paired", "unpaired")
    files: int = 0  # files in the published version (besides .gitattributes)
    private: bool = True  # the repo's visibility as found after publishing
    endpoint: str = DEFAULT_ENDPOINT  # Hub the repo lives on

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------- folder


@dataclass
class _Target:
    repo_id: str
    configs: list[str]
    files: dict[str, Path | bytes]  # path in repo -> local file (or generated bytes for a filtered card)


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?(.*)", re.S | re.M)


def _split_card(text: str) -> tuple[dict | None, str]:
    """(front matter, body) of a dataset card; (None, text) when it has no front matter."""
    if not text.startswith("---"):
        return None, text
    m = _FRONT_MATTER.match(text)
    if m is None:
        raise UserError("README.md starts a YAML front matter block (---) but never closes it")
    try:
        meta = yaml.safe_load(m[1]) or {}
    except yaml.YAMLError as e:
        raise UserError(f"README.md front matter is not valid YAML: {_one_line(str(e))}") from None
    if not isinstance(meta, dict):
        raise UserError("README.md front matter must be a YAML mapping")
    return meta, m[2]


def _card_paths(entry: dict) -> list[str]:
    files = entry.get("data_files")
    out: list[str] = []
    for item in files if isinstance(files, list) else [files]:
        paths = item.get("path") if isinstance(item, dict) else item
        out += [p for p in (paths if isinstance(paths, list) else [paths]) if isinstance(p, str)]
    return out


def _scan(folder: Path) -> tuple[dict[str, Path], list[str], dict | None, str]:
    """Files to upload, configs present, and the card. Raises UserError when the folder is not a built dataset."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"dataset folder {folder} does not exist: run the build stage first or pass --out")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        # hidden files (locks, caches) and leftovers of an interrupted atomic write are not part of the dataset
        if any(part.startswith(".") for part in rel.parts) or ".tmp-" in path.name or ".old-" in path.name:
            continue
        if path.is_file():
            files[rel.as_posix()] = path
    if "README.md" not in files:
        raise UserError(f"{folder} has no README.md dataset card: run the build stage first")
    configs = [c for c in CONFIG_NAMES if any(p.startswith(f"{c}/") and p.endswith(".parquet") for p in files)]
    if not configs:
        raise UserError(f"{folder} holds neither paired/ nor unpaired/ parquet files: run the build stage first")
    meta, body = _split_card(files["README.md"].read_text(encoding="utf-8"))
    listed = meta.get("configs") if meta else None
    if isinstance(listed, list):
        names = {e.get("config_name", "default") for e in listed if isinstance(e, dict)}
        for c in configs:
            if c not in names:
                raise UserError(f"README.md lists no '{c}' config although {folder}/{c}/ exists: rebuild the card")
        for entry in listed:  # a config the card promises but the folder lacks would fail in load_dataset
            if not isinstance(entry, dict):
                continue
            for pattern in _card_paths(entry):
                hit = any(re.fullmatch(_glob_re(pattern), p) for p in files)
                if not hit:
                    raise UserError(f"README.md points config '{entry.get('config_name')}' at {pattern}, "
                                    f"which is missing from {folder}")
    return files, configs, meta, body


def _glob_re(pattern: str) -> str:
    # data_files patterns are fsspec globs: "*" stays inside a folder, "**" crosses folders
    out = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace("\0", ".*")
    return out.replace(r"\?", "[^/]")


def _card_for(meta: dict | None, body: str, config: str) -> bytes:
    """The card of a single-config repo: `configs:` (and `dataset_info:` when listed per config) keep only it."""
    if meta is None:
        return body.encode("utf-8")
    meta = dict(meta)
    for key in ("configs", "dataset_info"):
        if isinstance(meta.get(key), list):
            meta[key] = [e for e in meta[key] if not isinstance(e, dict) or e.get("config_name") == config]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n{body}".encode()


def _targets(folder: Path, cfg: PublishConfig) -> list[_Target]:
    files, configs, meta, body = _scan(folder)
    if not cfg.split_repos:
        return [_Target(cfg.repo_id, configs, dict(files))]
    out = []
    for c in configs:
        chosen: dict[str, Path | bytes] = {p: f for p, f in files.items() if p.startswith(f"{c}/")}
        chosen["README.md"] = _card_for(meta, body, c)
        out.append(_Target(f"{cfg.repo_id}-{c}", [c], chosen))
    return out


def _is_stale(path: str) -> bool:
    """Remote files a new version removes when they are not in the folder: data under a config folder (a stray
    shard would be read by `load_dataset`) and top-level plots. Anything else a person added stays."""
    return path.split("/", 1)[0] in CONFIG_NAMES or ("/" not in path and path.endswith(".png"))


# ---------------------------------------------------------------------------------------------------------- checks


def _check_repo_id(repo_id: str, split: bool) -> None:
    if not repo_id:
        raise UserError("no repo given: pass --repo namespace/name (e.g. your-user/neurips-prefs)")
    parts = repo_id.split("/")
    suffixes = ("-paired", "-unpaired") if split else ("",)
    ok = len(parts) == 2 and all(
        _NAME.fullmatch(p) and "--" not in p and ".." not in p and not p.endswith(".git") for p in parts
    )
    ok = ok and all(_NAME.fullmatch(parts[1] + s) for s in suffixes)
    if not ok:
        raise UserError(
            f"malformed repo id {repo_id!r}: use namespace/name with letters, digits, '-', '_' or '.' "
            f"(at most 96 characters per part{', including the -paired/-unpaired suffix' if split else ''})"
        )


def _resolve_endpoint(cfg: PublishConfig) -> str:
    endpoint = (cfg.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", endpoint):
        raise UserError(f"Hub endpoint {endpoint!r} is not an http(s) URL")
    return endpoint


def _get_token() -> str:
    from huggingface_hub import get_token

    try:
        token = get_token()
    except Exception as e:  # noqa: BLE001 - e.g. a configured OIDC exchange failing: say so in one line
        raise UserError(f"could not obtain a Hugging Face token: {_one_line(str(e))}") from None
    if not token:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)")
    return token


# ---------------------------------------------------------------------------------------------------------- errors


def _one_line(text: str, secret: str | None = None, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    if secret:
        text = text.replace(secret, "***")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _http_status(exc: BaseException) -> int | None:
    from huggingface_hub.errors import HfHubHTTPError

    for e in _chain(exc):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            return e.response.status_code
    return None


def _transport_error(exc: BaseException) -> BaseException | None:
    import httpx2

    for e in _chain(exc):
        if isinstance(e, httpx2.TransportError | ConnectionError | TimeoutError):
            return e
    return None


def _retry_after(exc: BaseException) -> float | None:
    from huggingface_hub.errors import HfHubHTTPError

    for e in _chain(exc):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            value = e.response.headers.get("Retry-After", "")
            return float(value) if value.strip().replace(".", "", 1).isdigit() else None
    return None


def _describe(exc: BaseException, endpoint: str) -> str:
    """One readable clause for a failure (no URLs with query strings, no headers)."""
    import httpx2

    status = _http_status(exc)
    if status is not None:
        server = next((getattr(e, "server_message", None) for e in _chain(exc) if getattr(e, "server_message", None)),
                      None)
        return f"{endpoint} answered HTTP {status}" + (f" ({server})" if server else "")
    err = _transport_error(exc)
    if isinstance(err, httpx2.ConnectError | ConnectionRefusedError):
        return f"cannot connect to {endpoint} ({_one_line(str(err), limit=120) or 'connection refused'})"
    if isinstance(err, httpx2.TimeoutException | TimeoutError):
        return f"{endpoint} did not answer in time"
    if err is not None:
        return f"the connection to {endpoint} broke ({_one_line(str(err), limit=120) or type(err).__name__})"
    return _one_line(f"{type(exc).__name__}: {exc}")


def _is_transient(exc: BaseException, extra_status: tuple[int, ...] = ()) -> bool:
    status = _http_status(exc)
    if status is not None:
        return status in _RETRY_STATUS or status in extra_status
    return _transport_error(exc) is not None


class _Exhausted(Exception):
    def __init__(self, last: BaseException, attempts: int):
        super().__init__(str(last))
        self.last, self.attempts = last, attempts

    @property
    def after(self) -> str:
        return f"after {self.attempts} attempt{'s' if self.attempts != 1 else ''}"


def _retry(fn: Callable[[], T], cfg: PublishConfig, what: str, extra_status: tuple[int, ...] = (),
           secret: str | None = None) -> T:
    """Run `fn`, retrying transient failures with exponential backoff. Non-transient errors propagate at once."""
    attempts = max(0, cfg.max_retries) + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            if not _is_transient(exc, extra_status):
                raise
            if attempt == attempts:
                raise _Exhausted(exc, attempts) from exc
            wait = min(_MAX_WAIT_S, cfg.retry_wait * 2 ** (attempt - 1))
            if (after := _retry_after(exc)) is not None:
                wait = max(wait, min(after, 300.0))
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what,
                        _one_line(_describe(exc, "the Hub"), secret), attempt, attempts - 1, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _user_error(exc: BaseException, endpoint: str, repo_id: str, token: str) -> UserError | None:
    """Map a non-transient client error to the one line a user needs; None for errors that are bugs."""
    from huggingface_hub.errors import RepositoryNotFoundError

    status = _http_status(exc)
    if any(isinstance(e, ValueError) and "Invalid metadata in README.md" in str(e) for e in _chain(exc)):
        msg = f"the Hub rejected README.md's metadata: {exc}"
    elif status == 401 and not any(isinstance(e, RepositoryNotFoundError) for e in _chain(exc)):
        msg = f"{endpoint} rejected the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`"
    elif status == 403:
        msg = (f"the token may not write to dataset repo {repo_id} on {endpoint} (HTTP 403): "
               f"use a token with write access to that namespace")
    elif status is not None:
        msg = f"publishing {repo_id} failed: {_describe(exc, endpoint)}"
    elif _transport_error(exc) is not None:
        msg = f"publishing {repo_id} failed: {_describe(exc, endpoint)}"
    else:
        return None
    return UserError(_one_line(msg, token))


# ---------------------------------------------------------------------------------------------------------- client

_CLIENT_LOCK = threading.Lock()


@contextlib.contextmanager
def _client_settings(cfg: PublishConfig) -> Iterator[None]:
    """Per-call timeouts and the Xet switch for huggingface_hub, restored afterwards.

    huggingface_hub's shared httpx client has no timeout, so a stalled upload would hang forever; and it reads
    HF_HUB_DISABLE_XET once at import. Both are process-wide, hence the lock (publishes in one process run one at a
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
            client.timeout = httpx2.Timeout(cfg.timeout, connect=min(cfg.timeout, 30.0))
            return client

        constants.HF_HUB_DISABLE_XET = old_xet or not cfg.xet
        set_client_factory(factory)
        try:
            yield
        finally:
            constants.HF_HUB_DISABLE_XET = old_xet
            set_client_factory(previous)


# ---------------------------------------------------------------------------------------------------------- publish


def publish(folder: Path, cfg: PublishConfig) -> list[PublishResult]:
    """Publish the dataset folder built by the build stage. One result per repo (two with `split_repos`).

    Each repo is updated by one atomic commit; with `split_repos` the two repos are two commits, published one after
    the other (the paired repo first), so a failure can leave the first updated and the second not.
    """
    cfg.validate()  # local checks first: no network for an id or a folder that cannot be published
    targets = _targets(Path(folder), cfg)
    endpoint = _resolve_endpoint(cfg)

    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: unset it to publish")
    token = _get_token()
    try:
        with _client_settings(cfg):
            api = HfApi(endpoint=endpoint, token=token, library_name="prefsynth")
            _check_token(api, cfg, endpoint, token)
            results = [_publish_one(api, t, cfg, endpoint, token) for t in targets]
    except UserError as e:
        raise UserError(_one_line(str(e), token)) from None
    for r in results:
        state = "new commit" if r.committed else "unchanged"
        log.info("published %s at %s (%s, %s)", r.repo_id, r.revision, r.tag or "untagged", state)
    return results


def _check_token(api: Any, cfg: PublishConfig, endpoint: str, token: str) -> None:
    # First contact with the endpoint: a refused connection here is more often a wrong URL than a blip, so the
    # user hears about it after a few seconds rather than after the full backoff.
    first = replace(cfg, max_retries=min(cfg.max_retries, 2))
    try:
        me = _retry(lambda: api.whoami(), first, "checking the token", secret=token)
    except _Exhausted as e:
        raise UserError(f"cannot publish: {_describe(e.last, endpoint)} {e.after}") from None
    except Exception as e:  # noqa: BLE001
        if _http_status(e) == 401:
            raise UserError(
                f"{endpoint} rejected the token (HTTP 401): set a valid HF_TOKEN or run `hf auth login`"
            ) from None
        if (err := _user_error(e, endpoint, cfg.repo_id, token)) is not None:
            raise err from None
        if isinstance(e, ValueError):  # a 200 that is not JSON: some other web server
            raise UserError(f"{endpoint} does not answer like a Hugging Face Hub (check --endpoint / HF_ENDPOINT)"
                            ) from None
        raise
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise UserError("the Hugging Face token is read-only: publishing needs a token with write access")


def _publish_one(api: Any, target: _Target, cfg: PublishConfig, endpoint: str, token: str) -> PublishResult:
    repo_id = target.repo_id
    state: dict[str, Any] = {"base": None}

    def step(fn: Callable[[], T], what: str, extra_status: tuple[int, ...] = ()) -> T:
        try:
            return _retry(fn, cfg, f"{what} ({repo_id})", extra_status, secret=token)
        except _Exhausted as e:
            raise UserError(
                f"publishing {repo_id} failed: {_describe(e.last, endpoint)} {e.after}; "
                f"{_repo_state(api, repo_id, state['base'])}"
            ) from None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001
            if (err := _user_error(e, endpoint, repo_id, token)) is not None:
                raise err from None
            raise

    step(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=cfg.private, exist_ok=True), "creating repo")
    info = step(lambda: _dataset_info(api, repo_id, endpoint), "reading repo")
    state["base"] = info.sha
    if info.private is not None and bool(info.private) != cfg.private:
        log.warning("%s already exists and is %s; its visibility is left as it is", repo_id,
                    "private" if info.private else "public")

    def commit() -> str:
        # Re-read the head on every attempt: after a lost commit answer the head may already hold our content.
        head = _dataset_info(api, repo_id, endpoint)
        return _commit(api, target, head, cfg)

    revision = step(commit, "committing", extra_status=(412,))  # 412: the branch moved under us, recompute
    committed = revision != state["base"]
    tag = step(lambda: _ensure_tag(api, repo_id, revision), "tagging", extra_status=(409,))  # 409: lost race
    final = _dataset_info(api, repo_id, endpoint) if committed else info
    return PublishResult(
        repo_id=repo_id,
        revision=revision,
        tag=tag,
        committed=committed,
        url=f"{endpoint}/datasets/{repo_id}",
        configs=list(target.configs),
        files=len(target.files),
        private=bool(final.private),
        endpoint=endpoint,
    )


def _dataset_info(api: Any, repo_id: str, endpoint: str) -> Any:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.dataset_info(repo_id, revision="main")
    except RepositoryNotFoundError:
        pass
    # create_repo(exist_ok=True) succeeded, yet no dataset repo: the name is taken by another repo type.
    for other in ("model", "space"):
        try:
            api.repo_info(repo_id, repo_type=other)
        except RepositoryNotFoundError:
            continue
        raise UserError(f"{repo_id} exists on {endpoint} as a {other} repo, not a dataset repo: choose another --repo")
    raise UserError(f"dataset repo {repo_id} could not be created or read on {endpoint}: check the namespace and "
                    f"that the token may create repos there")


def _commit(api: Any, target: _Target, head: Any, cfg: PublishConfig) -> str:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    # Fresh operation objects per attempt: huggingface_hub mutates them and refuses to reuse committed ones.
    ops: list[Any] = [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=src if isinstance(src, bytes) else str(src))
        for path, src in sorted(target.files.items())
    ]
    remote = {s.rfilename for s in (head.siblings or [])}
    ops += [CommitOperationDelete(path_in_repo=p) for p in sorted(remote - target.files.keys()) if _is_stale(p)]
    title = cfg.commit_message or f"prefsynth: publish {', '.join(target.configs)}"
    info = api.create_commit(
        target.repo_id,
        ops,
        repo_type=REPO_TYPE,
        revision="main",
        commit_message=title,
        commit_description=f"{len(target.files)} files, configs: {', '.join(target.configs)}",
        parent_commit=head.sha,  # the Hub refuses (412) if main moved since we looked: no silent overwrite
    )
    return info.oid


def _ensure_tag(api: Any, repo_id: str, revision: str) -> str:
    """The highest v<N> tag on `revision`, creating v<max+1> when it has none (also repairs a run that died between
    its commit and its tag)."""
    refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    versions = {int(m[1]): t.target_commit for t in refs.tags if (m := _VERSION_TAG.fullmatch(t.name))}
    mine = [n for n, sha in versions.items() if sha == revision]
    if mine:
        return f"v{max(mine)}"
    tag = f"v{max(versions, default=0) + 1}"
    api.create_tag(repo_id, tag=tag, revision=revision, repo_type=REPO_TYPE, tag_message="prefsynth publish")
    return tag


def _repo_state(api: Any, repo_id: str, base: str | None) -> str:
    """Where the repo stands after a failed publish, for the error line (best effort, one quick call)."""
    if base is None:
        return "nothing was committed"
    try:
        head = api.dataset_info(repo_id, revision="main").sha
    except Exception:  # noqa: BLE001 - the Hub is failing: we cannot tell, but one commit is all or nothing
        return f"the repo is either unchanged at {base[:12]} or fully at the new version: run publish again"
    if head == base:
        return f"the repo is unchanged at {base[:12]}"
    return f"the repo moved to {head[:12]} (a complete commit): run publish again to confirm and tag it"
