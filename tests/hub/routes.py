"""What the loopback Hub answers on each route (a mixin of the request handler: see `handler.py`)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from hub.model import REPO_TYPES, Commit, Entry, Repo, git_blob_sha, lfs_pointer, tree_shas

if TYPE_CHECKING:
    from hub.server import HubServer

_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}



class Routes:
    """The Hub's API, one method per route; `Handler` provides the HTTP plumbing, auth and the route table."""

    hub: HubServer
    query: dict[str, list[str]]

    def _whoami(self) -> None:
        role = self._auth(required=True)
        self._json(
            200,
            {
                "type": "user",
                "id": "0" * 24,
                "name": self.hub.user,
                "fullname": "Test User",
                "isPro": False,
                "orgs": [{"name": o, "type": "org"} for o in self.hub.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": role}},
            },
        )

    def _validate_yaml(self, body: bytes) -> None:
        self._auth()
        content = json.loads(body or b"{}").get("content", "")
        errors = []
        if content.startswith("---"):
            try:
                import yaml

                block = content.split("---", 2)[1]
                meta = yaml.safe_load(block)
                if meta is not None and not isinstance(meta, dict):
                    errors.append({"message": "metadata must be a mapping"})
            except Exception as e:  # noqa: BLE001 - any YAML error is a validation error
                errors.append({"message": f"invalid YAML: {e}"})
        if errors:
            return self._json(400, {"errors": errors, "warnings": []})
        self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self, body: bytes) -> None:
        self._auth(write=True)
        hub = self.hub
        req = json.loads(body or b"{}")
        repo_type = req.get("type") or "model"
        name, org = req.get("name", ""), req.get("organization") or hub.user
        if repo_type not in REPO_TYPES or not _NAME_RE.match(name) or "--" in name or ".." in name:
            raise HubError(400, "Invalid repository name or type")
        if org not in (hub.user, *hub.orgs):
            raise HubError(403, f"You don't have the rights to create a {repo_type} under the namespace {org}")
        repo_id = f"{org}/{name}"
        visibility = req.get("visibility")
        private = visibility != "public" if visibility else bool(req.get("private", False))
        with hub._lock:
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            url = f"{hub.endpoint}/{prefix}{repo_id}"
            if (repo_type, repo_id) in hub.repos:
                # The Hub's 409 carries the repo URL; huggingface_hub's create_repo(exist_ok=True) reads it.
                raise HubError(409, f"You already created this {repo_type} repo", extra={"url": url})
            if not hub.types_share_names:
                for other in REPO_TYPES:
                    if (other, repo_id) in hub.repos:
                        other_url = f"{hub.endpoint}/{'' if other == 'model' else other + 's/'}{repo_id}"
                        raise HubError(409, f"A {other} repo named {repo_id} already exists", extra={"url": other_url})
            hub._create(repo_type, repo_id, private)
        self._json(200, {"url": url, "name": repo_id, "id": "0" * 24})

    def _entry_json(self, path: str, e: Entry, expand: bool = False, commit: Commit | None = None) -> dict:
        out: dict = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
        if e.lfs_sha256:
            out["lfs"] = {"oid": e.lfs_sha256, "size": e.size, "pointerSize": e.pointer_size}
        if expand and commit is not None:
            out["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
        return out

    def _repo_info(self, repo_type: str, repo_id: str, rev: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_rev(repo, rev)
        card = None
        readme = commit.tree.get("README.md")
        if readme is not None:
            text = repo.read(readme).decode(errors="replace")
            if text.startswith("---"):
                try:
                    import yaml

                    card = yaml.safe_load(text.split("---", 2)[1])
                except Exception:  # noqa: BLE001
                    card = None
        siblings = []
        for path, e in sorted(commit.tree.items()):
            s: dict = {"rfilename": path, "size": e.size, "blobId": e.oid}
            if e.lfs_sha256:
                s["lfs"] = {"sha256": e.lfs_sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(s)
        info = {
            "_id": "0" * 24,
            "id": repo.id,
            "author": repo.id.split("/")[0],
            "sha": commit.sha,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "createdAt": repo.created_at,
            "lastModified": commit.date,
            "usedStorage": sum(e.size for e in commit.tree.values()),
        }
        if isinstance(card, dict):
            info["cardData"] = card
        self._json(200, info)

    def _preupload(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._get_repo(repo_type, repo_id, write=True)
        commit = self._get_rev(repo, rev)
        req = json.loads(body or b"{}")
        files = []
        for f in req.get("files", []):
            path, size = f["path"], int(f["size"])
            sample = base64.b64decode(f.get("sample", ""))
            lfs = self.hub._is_lfs(repo, path, size, sample)
            item = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            existing = commit.tree.get(path)
            if existing is not None:
                # The Hub answers the sha256 for LFS files and the git blob id for regular ones.
                item["oid"] = existing.lfs_sha256 or existing.oid
            files.append(item)
        self._json(200, {"files": files, "commitOid": commit.sha})

    def _commit(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        hub = self.hub
        repo = self._get_repo(repo_type, repo_id, write=True)
        branch = unquote(rev)
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "first line of a commit must be its header")
        header = lines[0]["value"]
        with hub._lock:  # one commit at a time per server, like the Hub's per-branch lock
            head = repo.branches[branch]
            parent_req = header.get("parentCommit")
            if parent_req and not head.startswith(parent_req):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].tree)
            for line in lines[1:]:
                key, val = line["key"], line["value"]
                path = val.get("path", "")
                if key == "file":
                    data = base64.b64decode(val["content"])
                    tree[path] = Entry(oid=git_blob_sha(data), size=len(data), content=data)
                elif key == "lfsFile":
                    oid = val["oid"]
                    if oid not in repo.lfs:
                        raise HubError(
                            422, "Your push was rejected because an LFS pointer pointed to a file that does not exist"
                        )
                    size = len(repo.lfs[oid])
                    ptr = lfs_pointer(oid, size)
                    tree[path] = Entry(oid=git_blob_sha(ptr), size=size, lfs_sha256=oid, pointer_size=len(ptr))
                elif key == "deletedFile":
                    if path not in tree:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del tree[path]
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    gone = [p for p in tree if p.startswith(prefix)]
                    if not gone:
                        raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                    for p in gone:
                        del tree[p]
                else:
                    raise HubError(400, f"unknown commit operation {key}")
            # An operation list that changes nothing still makes a commit, as on the Hub: the client must avoid it.
            commit = hub._add_commit(repo, head, tree, header.get("summary", ""), header.get("description", ""))
            hub.commit_count += 1
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(
            200,
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": f"{hub.endpoint}/{prefix}{repo.id}/commit/{commit.sha}",
                "pullRequestUrl": None,
            },
        )

    def _listing(self, repo: Repo, commit: Commit, base: str, recursive: bool, expand: bool) -> list[dict]:
        base = base.strip("/")
        prefix = f"{base}/" if base else ""
        dirs = tree_shas(commit.tree)
        out, seen = [], set()
        for path, e in sorted(commit.tree.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            if len(rest) == 1:
                out.append(self._entry_json(path, e, expand, commit))
                continue
            # folders on the way down
            depth = len(rest) - 1 if recursive else 1
            for i in range(1, depth + 1):
                folder = prefix + "/".join(rest[:i])
                if folder not in seen:
                    seen.add(folder)
                    out.append({"type": "directory", "oid": dirs[folder], "size": 0, "path": folder})
            if recursive:
                out.append(self._entry_json(path, e, expand, commit))
        return out

    def _tree(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_rev(repo, rev)
        path = unquote(path).strip("/")
        if path and not any(p.startswith(path + "/") for p in commit.tree):
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self.query.get("expand", ["false"])[0].lower() in ("1", "true")
        self._json(200, self._listing(repo, commit, path, recursive, expand))

    def _paths_info(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_rev(repo, rev)
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            req = json.loads(body or b"{}")
            paths, expand = req.get("paths", []), bool(req.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        dirs = tree_shas(commit.tree)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit.tree:
                out.append(self._entry_json(p, commit.tree[p], expand, commit))
            elif p in dirs:
                out.append({"type": "directory", "oid": dirs[p], "size": 0, "path": p})
        self._json(200, out)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        self._json(
            200,
            {
                "branches": [
                    {"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()
                ],
                "converts": [],
                "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()],
                "pullRequests": [],
            },
        )

    def _tag(self, repo_type: str, repo_id: str, rev: str, body: bytes) -> None:
        repo = self._get_repo(repo_type, repo_id, write=True)
        commit = self._get_rev(repo, rev)
        tag = json.loads(body or b"{}").get("tag", "")
        if not tag or not re.fullmatch(r"[A-Za-z0-9._-]+", tag):
            raise HubError(400, "Invalid tag name")
        with self.hub._lock:
            if tag in repo.tags or tag in repo.branches:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.sha
        self._json(200, {})

    def _commits(self, repo_type: str, repo_id: str, rev: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        sha: str | None = self._get_rev(repo, rev).sha
        out = []
        while sha:
            c = repo.commits[sha]
            out.append({"id": c.sha, "title": c.title, "message": c.message, "authors": [{"user": "hub-test"}],
                        "date": c.date})
            sha = c.parent
        self._json(200, out)

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> None:
        repo = self._get_repo(repo_type, repo_id, write=True)
        req = json.loads(body or b"{}")
        if req.get("operation") != "upload":
            raise HubError(400, "only uploads are supported by this server")
        if "basic" not in req.get("transfers", ["basic"]):
            raise HubError(400, "only the basic transfer is supported by this server")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        objects = []
        for obj in req.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            item: dict = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs:
                sig = self.hub.sign(f"{repo_type}:{repo.id}", oid)
                item["actions"] = {
                    # Like a presigned S3 URL: no Authorization header is sent with the PUT.
                    "upload": {"href": f"{self.hub.endpoint}/_lfs/{repo_type}/{repo.id}/{oid}?sig={sig}", "header": {}},
                    "verify": {"href": f"{self.hub.endpoint}/{prefix}{repo.id}.git/info/lfs/objects/verify",
                               "header": {}},
                }
            objects.append(item)
        self._json(200, {"transfer": "basic", "objects": objects}, ctype="application/vnd.git-lfs+json")

    def _lfs_put(self, repo_type: str, repo_id: str, oid: str, body: bytes) -> None:
        sig = self.query.get("sig", [""])[0]
        if not hmac.compare_digest(sig, self.hub.sign(f"{repo_type}:{repo_id}", oid)):
            raise HubError(403, "bad signature")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "content does not match its sha256")
        repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        with self.hub._lock:
            repo.lfs[oid] = body
        self._send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _lfs_verify(self, repo_type: str, repo_id: str, body: bytes) -> None:
        repo = self._get_repo(repo_type, repo_id, write=True)
        req = json.loads(body or b"{}")
        data = repo.lfs.get(req.get("oid", ""))
        if data is None or len(data) != int(req.get("size", -1)):
            raise HubError(404, "object not found")
        self._json(200, {})

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        repo = self._get_repo(repo_type, repo_id)
        commit = self._get_rev(repo, rev)
        entry = commit.tree.get(path)
        if entry is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        data = repo.read(entry)
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes", "ETag": f'"{entry.oid}"'}
        if entry.lfs_sha256:
            headers["X-Linked-Etag"] = f'"{entry.lfs_sha256}"'
            headers["X-Linked-Size"] = str(entry.size)
        status = 200
        rng = self.headers.get("Range")
        if rng:
            mm = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if mm:
                start = int(mm[1]) if mm[1] else max(0, len(data) - int(mm[2] or 0))
                end = int(mm[2]) if (mm[1] and mm[2]) else len(data) - 1
                end = min(end, len(data) - 1)
                if start >= len(data):
                    raise HubError(416, "Requested range not satisfiable",
                                   headers={"Content-Range": f"bytes */{len(data)}"})
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start : end + 1], 206
        self._send(status, data, headers, ctype="application/octet-stream")

