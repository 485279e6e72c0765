"""Upload the output folder to a Hub model repo in one commit, through the same Hub client as publish."""

from __future__ import annotations

from pathlib import Path

from prefsynth import hub
from prefsynth.train.config import TrainConfig

REPO_TYPE = "model"


def push(folder: Path, cfg: TrainConfig) -> dict:
    """Create the model repo if needed and commit the folder's files (hidden ones excepted) on top of `main`."""
    from huggingface_hub import CommitOperationAdd

    repo_id = cfg.push_to or ""
    hub.check_repo_id(repo_id)
    endpoint = hub.resolve_endpoint(cfg.endpoint)
    hub.require_online("push the adapter")
    token = hub.get_token()
    files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}

    with hub.connect(endpoint, token, hub.ClientSettings(), repo_id, REPO_TYPE) as client:
        api = client.api

        def step(fn, what: str, extra_status: tuple[int, ...] = ()):
            return client.step(fn, what, repo_id, action=f"pushing to {repo_id}", extra_status=extra_status,
                               note=f"the adapter is saved in {folder}")

        step(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=cfg.private, exist_ok=True),
             "creating repo")

        def commit() -> str:
            head = api.model_info(repo_id, revision="main")
            ops = [CommitOperationAdd(path_in_repo=k, path_or_fileobj=str(v)) for k, v in files.items()]
            info = api.create_commit(repo_id, ops, repo_type=REPO_TYPE, revision="main", parent_commit=head.sha,
                                     commit_message=f"prefsynth: {cfg.mode.upper()} adapter")
            return info.oid

        revision = step(commit, "committing", extra_status=(412,))  # 412: the branch moved under us
    return {"repo_id": repo_id, "revision": revision, "url": f"{endpoint}/{repo_id}", "files": len(files)}
