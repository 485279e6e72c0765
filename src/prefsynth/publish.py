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
disk and into Prefect results), and no message, log line, result or uploaded file carries it. Token, endpoint,
timeouts, retries and error lines are `prefsynth.hub`'s, shared with the adapter push of the train stage.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prefsynth import hub
from prefsynth.constants import CONFIG_NAMES, DEFAULT_HUB, DROPPED_DIR
from prefsynth.errors import UserError, one_line

log = logging.getLogger(__name__)

REPO_TYPE = "dataset"
SPLIT_SUFFIXES = tuple(f"-{c}" for c in CONFIG_NAMES)  # --split_repos: <repo>-paired, <repo>-unpaired
_VERSION_TAG = re.compile(r"v(\d+)")
_CLIENT = hub.ClientSettings()  # the client defaults (retries, timeout, Xet) are hub's


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
        default=_CLIENT.max_retries,
        metadata={"help": "retries of a failed step on HTTP 5xx/429, dropped connections and timeouts"},
    )  # per step (repo creation, commit, tag); 0 = one attempt
    retry_wait: float = field(
        default=_CLIENT.retry_wait,
        metadata={"help": "seconds before the first retry; doubles each retry (max 60)"},
    )  # a 429's Retry-After wins when longer
    timeout: float = field(
        default=_CLIENT.timeout,
        metadata={"help": "seconds one HTTP call may wait for the server before it is retried"},
    )  # huggingface_hub waits forever by default; a stalled upload must fail and be retried instead
    xet: bool = field(
        default=_CLIENT.xet,
        metadata={"help": "upload through Xet storage when hf_xet is installed (else plain LFS)"},
    )  # plain LFS works on every Hub-compatible server; Xet dedups big files on huggingface.co
    commit_message: str = field(
        default="", metadata={"help": "commit title; empty: 'prefsynth: publish <configs>'"}
    )  # empty = generated
    include_dropped: bool = field(
        default=False, metadata={"help": "also upload dropped/ (the rows the filters removed, with reasons)"}
    )  # off: the rows are for reading locally; a repo gets what its configs hold

    def validate(self) -> None:
        """Offline checks (repo id, endpoint URL): lets a pipeline fail before hours of generation, not after."""
        hub.check_repo_id(self.repo_id, SPLIT_SUFFIXES if self.split_repos else ())
        hub.resolve_endpoint(self.endpoint)

    def client_settings(self) -> hub.ClientSettings:
        return hub.ClientSettings(self.max_retries, self.retry_wait, self.timeout, self.xet)


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
    endpoint: str = DEFAULT_HUB  # Hub the repo lives on

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
        raise UserError(f"README.md front matter is not valid YAML: {one_line(e)}") from None
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


def _scan(folder: Path, include_dropped: bool = False) -> tuple[dict[str, Path], list[str], dict | None, str]:
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
        if rel.parts[0] == DROPPED_DIR and not include_dropped:
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
    files, configs, meta, body = _scan(folder, cfg.include_dropped)
    if not cfg.split_repos:
        return [_Target(cfg.repo_id, configs, dict(files))]
    out = []
    for c in configs:
        chosen: dict[str, Path | bytes] = {p: f for p, f in files.items()
                                           if p.startswith(f"{c}/") or p == f"{DROPPED_DIR}/{c}.parquet"}
        chosen["README.md"] = _card_for(meta, body, c)
        out.append(_Target(f"{cfg.repo_id}-{c}", [c], chosen))
    return out


def _is_stale(path: str) -> bool:
    """Remote files a new version removes when they are not in the folder: data under a config folder (a stray
    shard would be read by `load_dataset`), dropped rows and top-level plots. Anything else a person added stays."""
    return path.split("/", 1)[0] in (*CONFIG_NAMES, DROPPED_DIR) or ("/" not in path and path.endswith(".png"))


# ---------------------------------------------------------------------------------------------------------- publish


def publish(folder: Path, cfg: PublishConfig) -> list[PublishResult]:
    """Publish the dataset folder built by the build stage. One result per repo (two with `split_repos`).

    Each repo is updated by one atomic commit; with `split_repos` the two repos are two commits, published one after
    the other (the paired repo first), so a failure can leave the first updated and the second not.
    """
    cfg.validate()  # local checks first: no network for an id or a folder that cannot be published
    targets = _targets(Path(folder), cfg)
    endpoint = hub.resolve_endpoint(cfg.endpoint)
    hub.require_online("publish")
    token = hub.get_token()
    try:
        with hub.connect(endpoint, token, cfg.client_settings(), cfg.repo_id, REPO_TYPE) as client:
            results = [_publish_one(client, t, cfg) for t in targets]
    except UserError as e:
        raise UserError(one_line(e, secret=token)) from None
    for r in results:
        state = "new commit" if r.committed else "unchanged"
        log.info("published %s at %s (%s, %s)", r.repo_id, r.revision, r.tag or "untagged", state)
    return results


def _publish_one(client: hub.Client, target: _Target, cfg: PublishConfig) -> PublishResult:
    api, endpoint, repo_id = client.api, client.endpoint, target.repo_id
    base: str | None = None  # the head before our commit, once known

    def step(fn, what: str, extra_status: tuple[int, ...] = ()):
        return client.step(fn, what, repo_id, action=f"publishing {repo_id}", extra_status=extra_status,
                           state=lambda: _repo_state(api, repo_id, base))

    step(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=cfg.private, exist_ok=True), "creating repo")
    info = step(lambda: _dataset_info(api, repo_id, endpoint), "reading repo")
    base = info.sha
    if info.private is not None and bool(info.private) != cfg.private:
        log.warning("%s already exists and is %s; its visibility is left as it is", repo_id,
                    "private" if info.private else "public")

    def commit() -> str:
        # Re-read the head on every attempt: after a lost commit answer the head may already hold our content.
        head = _dataset_info(api, repo_id, endpoint)
        return _commit(api, target, head, cfg)

    revision = step(commit, "committing", extra_status=(412,))  # 412: the branch moved under us, recompute
    committed = revision != base
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
