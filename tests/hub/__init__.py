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

Layout: `model` (repos, commits, files, refs as data), `routes` (what each API route answers), `handler` (HTTP
plumbing, faults, route table, auth), `server` (`HubServer`: lifecycle, fault injection, helpers for tests).
The `hub` fixture of tests/conftest.py starts one with `WRITE_TOKEN` and `READ_TOKEN` for each test.
"""

import secrets

from hub.model import Commit, Entry, Repo
from hub.routes import HubError
from hub.server import HubServer

# A distinctive token per test session: any occurrence of it in logs, output or uploaded bytes is a leak.
WRITE_TOKEN = "hf_write_" + secrets.token_hex(16)
READ_TOKEN = "hf_read_" + secrets.token_hex(16)

__all__ = ["READ_TOKEN", "WRITE_TOKEN", "Commit", "Entry", "HubError", "HubServer", "Repo"]
