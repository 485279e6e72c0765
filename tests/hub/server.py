"""The loopback Hub server: lifecycle, fault injection, state changes, and what tests read back."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

from hub.handler import Handler
from hub.model import (
    DEFAULT_GITATTRIBUTES, LFS_SIZE_THRESHOLD, Commit, Entry, Repo, commit_sha, git_blob_sha, now, tree_shas,
)


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

        class Bound(Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Bound)
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
        repo = Repo(type=repo_type, id=repo_id, private=private, created_at=now())
        self.repos[(repo_type, repo_id)] = repo
        ga = DEFAULT_GITATTRIBUTES
        tree = {".gitattributes": Entry(oid=git_blob_sha(ga), size=len(ga), content=ga)}
        self._add_commit(repo, None, tree, "initial commit", "")
        return repo

    def _add_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], title: str, desc: str) -> Commit:
        message = title + (f"\n\n{desc}" if desc else "")
        sha = commit_sha(tree_shas(tree)[""], parent, message, int(time.time() * 1000))
        commit = Commit(sha=sha, parent=parent, tree=tree, title=title, message=message, date=now())
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
