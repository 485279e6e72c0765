"""The loopback Hub's HTTP side: reading requests, injected faults, the route table, auth, buffered answers."""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from hub.model import Commit, Repo
from hub.routes import HubError, Routes

if TYPE_CHECKING:
    from hub.server import HubServer


class Handler(Routes, BaseHTTPRequestHandler):
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

