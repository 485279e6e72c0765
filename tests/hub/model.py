"""The loopback Hub's data: repos, commits, file entries and refs, with real git object ids.

Commits have a parent chain and git blob/tree/commit sha1s (LFS files as pointer blobs), so shas change exactly when
content changes and an empty commit is visible as a commit with its parent's tree.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import unquote

REPO_TYPES = ("model", "dataset", "space")

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



def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def tree_shas(tree: dict[str, Entry]) -> dict[str, str]:
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


def commit_sha(tree_sha: str, parent: str | None, message: str, ts: int) -> str:
    who = f"hub-test <hub@localhost> {ts} +0000"
    body = f"tree {tree_sha}\n" + (f"parent {parent}\n" if parent else "") + f"author {who}\ncommitter {who}\n\n"
    data = (body + message + "\n").encode()
    return hashlib.sha1(b"commit %d\0" % len(data) + data).hexdigest()

