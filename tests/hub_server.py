"""A small loopback server that speaks the Hugging Face Hub's HTTP protocol, for tests.

It checks that prefsynth drives the *real* `huggingface_hub` and `datasets` clients correctly (which calls, in which
order, what they do on errors). It is not the Hub: it has no Xet storage, no pagination, no gating, no rate limits
of its own, and its repo-type rules are simpler (see `types_share_names`). What it does model faithfully, because
publish depends on it:

- repos with a type, a private flag and an initial commit holding `.gitattributes` (as the Hub's create does);
- commits with a parent chain and real git object ids (blob/tree/commit sha1, LFS pointer blobs), so shas change
  exactly when content changes and an empty commit is visible as a commit with its parent's tree;
- preupload answers carrying each existing file's `oid` (git blob sha1, or sha256 for LFS files), which is what
  lets the client skip unchanged files and empty commits;
- the LFS batch API ("basic" transfer), a presigned-style PUT target without auth, and the verify call;
- `parentCommit` checks (412 when the branch moved), tags and refs, commit history, tree / paths-info listings,
  and `resolve` downloads with `X-Repo-Commit`, `ETag`/`X-Linked-Etag` and byte ranges;
- bearer-token auth: 401 for a missing or unknown token, 403 for writes with a read-only token.

Fault injection: `fail_next`, `drop_next` (close the connection without answering, before or after the request
took effect) and `stall_next` (answer late). Every request is recorded in `requests`; requests no route knows go
to `unknown` too, so a new client call shows up in a failing assertion instead of being guessed at.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
_NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")

# What the Hub writes into a new repo (abridged): these patterns decide which files go through LFS.
DEFAULT_GITATTRIBUTES = b"""*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.jpg filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class Entry:
    """One file in a commit's tree. `oid` is the git blob id (of the pointer file for LFS files)."""

    oid: str
    size: int
    content: bytes | None = None  # regular files
    lfs_sha256: str | None = None  # LFS files (content lives in Repo.lfs)
    pointer_size: int = 0


@dataclass
class Commit:
    sha: str
    parent: str | None
    tree: dict[str, Entry]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        rev = unquote(rev)
        for prefix in ("refs/heads/", "refs/tags/"):
            if rev.startswith(prefix):
                rev = rev[len(prefix) :]
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if len(rev) >= 7 and re.fullmatch(r"[0-9a-f]+", rev):
            hits = [sha for sha in self.commits if sha.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        return None

    def read(self, entry: Entry) -> bytes:
        return entry.content if entry.content is not None else self.lfs[entry.lfs_sha256]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _tree_shas(tree: dict[str, Entry]) -> dict[str, str]:
    """git tree object ids for the root ("") and every folder of a flat {path: Entry} mapping."""
    children: dict[str, dict[str, tuple[str, str]]] = {"": {}}
    for path in tree:
        parts = path.split("/")
        for i in range(1, len(parts)):
            children.setdefault("/".join(parts[:i]), {})
    out: dict[str, str] = {}

    def build(folder: str) -> str:
        entries: list[tuple[str, bytes]] = []
        prefix = f"{folder}/" if folder else ""
        names = set()
        for path, entry in tree.items():
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                head = rest.split("/", 1)[0]
                if "/" in rest:
                    names.add(head)
                else:
                    entries.append((head, b"100644 " + head.encode() + b"\0" + bytes.fromhex(entry.oid)))
        for name in names:
            sub = build(prefix + name)
            entries.append((name + "/", b"40000 " + name.encode() + b"\0" + bytes.fromhex(sub)))
        body = b"".join(raw for _key, raw in sorted(entries))  # git orders folders as if they ended with "/"
        sha = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
        out[folder] = sha
        return sha

    build("")
    return out


def _commit_sha(tree_sha: str, parent: str | None, message: str, ts: int) -> str:
    who = f"hub-test <hub@localhost> {ts} +0000"
    body = f"tree {tree_sha}\n" + (f"parent {parent}\n" if parent else "") + f"author {who}\ncommitter {who}\n\n"
    data = (body + message + "\n").encode()
    return hashlib.sha1(b"commit %d\0" % len(data) + data).hexdigest()


@dataclass
class _Fault:
    kind: str  # "fail" | "drop" | "stall"
    needle: str
    method: str | None
    times: int
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    after: bool = False  # drop: apply the request first, then lose the answer
    seconds: float = 0.0


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


class HubServer:
    """In-memory Hub on 127.0.0.1. Use as a context manager; `endpoint` is its base URL."""

    def __init__(
        self,
        tokens: dict[str, str] | None = None,
        user: str = "tester",
        orgs: tuple[str, ...] = (),
        types_share_names: bool = True,
    ):
        # token -> "write" | "read"
        self.tokens = dict(tokens or {})
        self.user = user
        self.orgs = tuple(orgs)
        # The real Hub lets a model and a dataset share a name. This server refuses it (409), as a stricter
        # Hub-compatible server might, so that publish's handling of "exists with another type" can be tested.
        self.types_share_names = types_share_names
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status); status 0 = dropped
        self.unknown: list[tuple[str, str]] = []
        self.commit_count = 0  # commits created through the commit endpoint (not create_repo's initial one)
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ------------------------------------------------------------------ fault injection
    def fail_next(
        self, needle: str, status: int = 500, *, times: int = 1, method: str | None = None, headers: dict | None = None
    ) -> None:
        """Answer the next `times` requests whose path contains `needle` with `status` (nothing is applied)."""
        with self._lock:
            self._faults.append(_Fault("fail", needle, method, times, status=status, headers=dict(headers or {})))

    def drop_next(self, needle: str, *, times: int = 1, method: str | None = None, after: bool = False) -> None:
        """Close the connection without any answer. after=True: the request takes effect first (a lost response)."""
        with self._lock:
            self._faults.append(_Fault("drop", needle, method, times, after=after))

    def stall_next(self, needle: str, seconds: float, *, times: int = 1, method: str | None = None) -> None:
        """Wait `seconds` before handling the request (to trigger client read timeouts)."""
        with self._lock:
            self._faults.append(_Fault("stall", needle, method, times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.needle in path and (fault.method is None or fault.method == method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ------------------------------------------------------------------ helpers for tests
    def add_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo directly (e.g. a model repo that a publish must not clobber)."""
        with self._lock:
            return self._create(repo_type, repo_id, private)

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def head(self, repo_id: str, repo_type: str = "dataset") -> str:
        return self.repo(repo_id, repo_type).branches["main"]

    def files(self, repo_id: str, rev: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        repo = self.repo(repo_id, repo_type)
        commit = repo.commits[repo.resolve(rev)]
        return {path: repo.read(entry) for path, entry in commit.tree.items()}

    def history(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        """Commits of `main`, newest first."""
        repo = self.repo(repo_id, repo_type)
        out, sha = [], repo.branches["main"]
        while sha:
            out.append(repo.commits[sha])
            sha = repo.commits[sha].parent
        return out

    # ------------------------------------------------------------------ state changes
    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(type=repo_type, id=repo_id, private=private, created_at=_now())
        self.repos[(repo_type, repo_id)] = repo
        ga = DEFAULT_GITATTRIBUTES
        tree = {".gitattributes": Entry(oid=git_blob_sha(ga), size=len(ga), content=ga)}
        self._add_commit(repo, None, tree, "initial commit", "")
        return repo

    def _add_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], title: str, desc: str) -> Commit:
        message = title + (f"\n\n{desc}" if desc else "")
        sha = _commit_sha(_tree_shas(tree)[""], parent, message, int(time.time() * 1000))
        commit = Commit(sha=sha, parent=parent, tree=tree, title=title, message=message, date=_now())
        repo.commits[sha] = commit
        repo.branches["main"] = sha
        return commit

    def _is_lfs(self, repo: Repo, path: str, size: int, sample: bytes) -> bool:
        head = repo.commits[repo.branches["main"]]
        ga = head.tree.get(".gitattributes")
        patterns = []
        if ga is not None:
            for line in repo.read(ga).decode(errors="replace").splitlines():
                parts = line.split()
                if len(parts) > 1 and "filter=lfs" in parts[1:]:
                    patterns.append(parts[0])
        name = path.rsplit("/", 1)[-1]
        for pat in patterns:
            if fnmatch.fnmatch(path if "/" in pat else name, pat):
                return True
        return size >= LFS_SIZE_THRESHOLD or b"\0" in sample

    def sign(self, repo_key: str, oid: str) -> str:
        return hmac.new(self._secret, f"{repo_key}:{oid}".encode(), hashlib.sha256).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub: a dropped answer hits a pooled connection

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read `hub.requests`
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, ctype: str = "application/json"):
        # Buffered, not written: a drop-after fault must be able to swallow an answer that was already built.
        self._response = (status, body, {"Content-Type": ctype, **(headers or {})})
        self._status = status

    def _flush(self) -> None:
        status, body, headers = self._response
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object, headers: dict | None = None, ctype: str = "application/json") -> None:
        self._send(status, json.dumps(obj).encode(), headers, ctype)

    def _drop(self) -> None:
        self.close_connection = True
        self._status = 0

    def _dispatch(self) -> None:
        hub = self.hub
        url = urlsplit(self.path)
        self.url_path, self.query = url.path, parse_qs(url.query)
        self._status = 0
        self._response = None
        body = self._read_body()
        fault = hub._take_fault(self.command, url.path)
        try:
            if fault and fault.kind == "stall":
                time.sleep(fault.seconds)
            if fault and fault.kind == "fail":
                self._json(fault.status, {"error": f"injected HTTP {fault.status}"}, fault.headers)
            elif fault and fault.kind == "drop" and not fault.after:
                self._drop()
            else:
                try:
                    self._route(body)
                except HubError as e:
                    headers = dict(e.headers)
                    if e.code:
                        headers["X-Error-Code"] = e.code
                    headers.setdefault("X-Error-Message", e.message)
                    self._json(e.status, {"error": e.message, **e.extra}, headers)
                if fault and fault.kind == "drop":  # after=True: the request took effect, the answer is lost
                    self._drop()
            if self._status:
                self._flush()
        except (BrokenPipeError, ConnectionResetError):
            self._drop()
        with hub._lock:
            hub.requests.append((self.command, url.path, self._status))

    def _route(self, body: bytes) -> None:
        method, path = self.command, self.url_path
        hub = self.hub
        m = None

        def match(pattern: str) -> bool:
            nonlocal m
            m = re.fullmatch(pattern, path)
            return m is not None

        rid = r"(?P<rid>[^/]+/[^/]+)"
        kinds = r"(?P<t>models|datasets|spaces)"
        if method == "GET" and path == "/api/whoami-v2":
            return self._whoami()
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(body)
        if method == "GET" and path == "/api/agent-harnesses":
            return self._json(200, {"harnesses": []})
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(body)
        if match(rf"/api/{kinds}/{rid}(?:/revision/(?P<rev>.+))?") and method == "GET":
            return self._repo_info(m["t"][:-1], m["rid"], m["rev"] or "main")
        if match(rf"/api/{kinds}/{rid}/preupload/(?P<rev>.+)") and method == "POST":
            return self._preupload(m["t"][:-1], m["rid"], m["rev"], body)
        if match(rf"/api/{kinds}/{rid}/commit/(?P<rev>.+)") and method == "POST":
            return self._commit(m["t"][:-1], m["rid"], m["rev"], body)
        if match(rf"/api/{kinds}/{rid}/tree/(?P<rev>[^/]+)(?:/(?P<p>.*))?") and method == "GET":
            return self._tree(m["t"][:-1], m["rid"], m["rev"], m["p"] or "")
        if match(rf"/api/{kinds}/{rid}/paths-info/(?P<rev>[^/]+)") and method == "POST":
            return self._paths_info(m["t"][:-1], m["rid"], m["rev"], body)
        if match(rf"/api/{kinds}/{rid}/refs") and method == "GET":
            return self._refs(m["t"][:-1], m["rid"])
        if match(rf"/api/{kinds}/{rid}/tag/(?P<rev>.+)") and method == "POST":
            return self._tag(m["t"][:-1], m["rid"], m["rev"], body)
        if match(rf"/api/{kinds}/{rid}/commits/(?P<rev>.+)") and method == "GET":
            return self._commits(m["t"][:-1], m["rid"], m["rev"])
        if match(r"/(?:(?P<t>datasets|spaces)/)?(?P<rid>[^/]+/[^/]+)\.git/info/lfs/objects/batch") and method == "POST":
            return self._lfs_batch((m["t"] or "models")[:-1], m["rid"], body)
        if match(r"/_lfs/(?P<t>model|dataset|space)/(?P<rid>[^/]+/[^/]+)/(?P<oid>[0-9a-f]{64})") and method == "PUT":
            return self._lfs_put(m["t"], m["rid"], m["oid"], body)
        lfs_verify = r"/(?:(?P<t>datasets|spaces)/)?(?P<rid>[^/]+/[^/]+)\.git/info/lfs/objects/verify"
        if match(lfs_verify) and method == "POST":
            return self._lfs_verify((m["t"] or "models")[:-1], m["rid"], body)
        if match(r"/(?:(?P<t>datasets|spaces)/)?(?P<rid>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<p>.+)") and method in (
            "GET",
            "HEAD",
        ):
            return self._resolve((m["t"] or "models")[:-1], m["rid"], m["rev"], unquote(m["p"]))
        with hub._lock:
            hub.unknown.append((method, self.path))
        raise HubError(404, f"unknown route {method} {path}")

    # ------------------------------------------------------------------ auth
    def _auth(self, *, required: bool = False, write: bool = False) -> str | None:
        """Returns the token's role or None (anonymous). Unknown tokens are always refused, like the Hub."""
        header = self.headers.get("Authorization", "")
        if not header:
            if required or write:
                raise HubError(401, "Invalid credentials in Authorization header")
            return None
        token = header[7:] if header.startswith("Bearer ") else ""
        role = self.hub.tokens.get(token)
        if role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if write and role != "write":
            raise HubError(403, "You don't have write access to this resource (read-only token)")
        return role

    def _get_repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        role = self._auth(write=write)
        repo = self.hub.repos.get((repo_type, unquote(repo_id)))
        if repo is None or (repo.private and role is None):
            # The Hub answers 401 for private repos without auth, 404 otherwise; both carry RepoNotFound.
            raise HubError(401 if role is None else 404, "Repository not found", "RepoNotFound")
        if write and repo.id.split("/")[0] not in (self.hub.user, *self.hub.orgs):
            raise HubError(403, "You don't have the rights to write to this repository")
        return repo

    def _get_rev(self, repo: Repo, rev: str) -> Commit:
        sha = repo.resolve(rev)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return repo.commits[sha]

    # ------------------------------------------------------------------ routes
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
        dirs = _tree_shas(commit.tree)
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
        dirs = _tree_shas(commit.tree)
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

