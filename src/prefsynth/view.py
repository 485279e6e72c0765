"""`prefsynth view PATH`: a page on 127.0.0.1 to read a built dataset, pairs side by side, kept and dropped rows.

A small stdlib server holds the rows in polars and answers one JSON query per screen (filter, sort, one page of
rows), so the page stays as fast on 100,000 rows as on 100: a static HTML file would have to embed every row.
The page (`view_page.html`, no CDN, no external fonts) renders every string through textContent; the server adds
a Content-Security-Policy that runs only its own script, in case a string ever reached the DOM as markup.
Why this design and the measured figures: docs/viewer.md.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import polars as pl

from prefsynth import hub
from prefsynth.constants import CONFIG_NAMES, DROPPED_DIR, MANIFEST
from prefsynth.errors import UserError, one_line

TEXT_LIMIT = 600  # characters of each text in a list row; an opened row has all of them
PAGE_LIMIT = 500  # most rows one /api/rows answer carries
MESSAGE_COLUMNS = ("prompt", "chosen", "rejected", "completion")


class BadRequest(Exception):
    """A query the page (or a hand-written URL) got wrong: answered 400 with the message."""


# ---------------------------------------------------------------------------------------------- where the rows are


def resolve(path: str) -> Path:
    """The local folder for PATH: the folder itself, or a Hub dataset repo downloaded through the Hub cache."""
    folder = Path(path).expanduser()
    if hub.is_local(path):
        if not folder.is_dir():
            raise UserError(f"{path} is not a folder (nor a Hub dataset repo id namespace/name)")
        return folder
    return download(path)


def download(repo_id: str) -> Path:
    hub.check_repo_id(repo_id)
    return hub.download_dataset(repo_id, hub.resolve_endpoint(None), ["*.parquet", MANIFEST])


# -------------------------------------------------------------------------------------------------------- the rows


def _read(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: say which one
        raise UserError(f"cannot read {path}: {one_line(e, limit=160)}") from None


def _text(schema: pl.Schema, col: str) -> pl.Expr:
    """The text to show for a message column: its last message (for the prompt, the user's), or the plain string."""
    dtype = schema[col]
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        last = pl.col(col).list.last().struct.field("content")
        if col != "prompt":
            return last
        user = pl.col(col).list.eval(pl.element().filter(pl.element().struct.field("role") == "user"))
        return pl.coalesce(user.list.last().struct.field("content"), last)
    return pl.col(col).cast(pl.String)


@dataclass
class Table:
    """One config's rows, kept and dropped, with what the page needs computed once."""

    config: str
    frame: pl.DataFrame  # every column, plus _id, split, status and drop_reasons
    index: pl.DataFrame  # the narrow columns queries filter and sort on (no texts: filtering never copies them)
    texts: list[str]
    scores: list[str]
    flags: list[str]
    extras: list[str] = field(default_factory=list)  # other small columns a list row carries (tokens, label)

    @classmethod
    def load(cls, folder: Path, config: str) -> Table | None:
        parts = [_read(p).with_columns(split=pl.lit(p.stem), status=pl.lit("kept"),
                                       drop_reasons=pl.lit([], dtype=pl.List(pl.String)))
                 for p in sorted((folder / config).glob("*.parquet"))]
        dropped = folder / DROPPED_DIR / f"{config}.parquet"
        if dropped.exists():
            d = _read(dropped)
            d = d.with_columns(status=pl.lit("dropped"),
                               split=pl.col("split").cast(pl.String) if "split" in d.columns else pl.lit("?"),
                               drop_reasons=(pl.col("drop_reasons").cast(pl.List(pl.String))
                                             if "drop_reasons" in d.columns else pl.lit([], pl.List(pl.String))))
            parts.append(d)
        if not parts:
            return None
        frame = pl.concat(parts, how="diagonal_relaxed")
        if "title" not in frame.columns:
            frame = frame.with_columns(title=pl.lit(""))
        floats = [c for c, t in frame.schema.items() if t.is_float()]
        frame = frame.with_columns(pl.col(c).fill_nan(None) for c in floats)  # JSON has no NaN
        texts = [c for c in MESSAGE_COLUMNS if c in frame.columns]
        frame = frame.with_row_index("_id")
        scores = [c for c in floats if "judge" in c]
        scores.sort(key=lambda c: (not c.endswith("judge_negative"), c))  # the combined judge first
        flags = [c for c, t in frame.schema.items() if c != "label" and (
            t == pl.Boolean or (t == pl.String and ("valid" in c or c.startswith("bad_"))))]
        # token counts, the label, and which side of a dropped pair failed (chosen_reasons / rejected_reasons)
        extras = [c for c in frame.columns if c in ("label", "tokens") or c in ("chosen_reasons", "rejected_reasons")
                  or c.endswith("_tokens")]
        index = frame.select("_id", "split", "status", "drop_reasons", *scores,
                             pl.col("title").cast(pl.String).str.to_lowercase().alias("_title"),
                             pl.col("title").cast(pl.String).alias("_sort_title"))
        return cls(config, frame, index, texts, scores, flags, extras)

    def meta(self) -> dict:
        def counts(col: pl.Series) -> dict:
            return {str(k): int(v) for k, v in sorted(col.value_counts().rows())}

        return {"rows": self.frame.height, "status": counts(self.index["status"]),
                "splits": counts(self.index["split"]),
                "reasons": counts(self.index["drop_reasons"].explode().drop_nulls()),
                "texts": self.texts, "scores": self.scores, "flags": self.flags, "extras": self.extras}

    def query(self, q: dict[str, str]) -> dict:
        """One screen of rows: filter (split, status, drop reason, score range, title), sort, then a page."""
        t0 = time.perf_counter()
        cond = pl.lit(True)
        if q.get("split", "") not in ("", "all"):
            cond &= pl.col("split") == q["split"]
        status = q.get("status") or "all"
        if status not in ("kept", "dropped", "all"):
            raise BadRequest(f"status must be kept, dropped or all, not {status!r}")
        if status != "all":
            cond &= pl.col("status") == status
        if q.get("reason"):
            cond &= pl.col("drop_reasons").list.contains(q["reason"])
        score = q.get("score") or (self.scores[0] if self.scores else "")
        for bound, op in (("min", "ge"), ("max", "le")):
            if q.get(bound, "") != "":
                if score not in self.scores:
                    raise BadRequest(f"no score column {score!r} to filter on")
                cond &= getattr(pl.col(score), op)(_number(q, bound))
        if q.get("q", "").strip():
            cond &= pl.col("_title").str.contains(q["q"].strip().lower(), literal=True)
        ids = self.index.lazy().filter(cond)
        sort = q.get("sort", "")
        key, desc = sort.lstrip("-"), sort.startswith("-")
        if key:
            if key not in self.scores and key != "title":
                raise BadRequest(f"cannot sort by {key!r}")
            ids = ids.sort("_sort_title" if key == "title" else key, descending=desc, nulls_last=True,
                           maintain_order=True)
        ids = ids.select("_id").collect().get_column("_id")
        offset, limit = int(_number(q, "offset", 0)), int(_number(q, "limit", 50))
        if offset < 0 or not 0 < limit <= PAGE_LIMIT:
            raise BadRequest(f"offset must be >= 0 and limit 1..{PAGE_LIMIT}")
        page = self.frame[ids.slice(offset, limit).to_list()]
        texts = {c: _text(page.schema, c) for c in self.texts}  # for this page only: no copy of every text
        page = page.select(
            "_id", "title", "split", "status", "drop_reasons", *self.scores, *self.flags, *self.extras,
            # a prompt's end says which paper it is about (its start is the same examples in every row)
            *[(t.str.tail(TEXT_LIMIT) if c == "prompt" else t.str.head(TEXT_LIMIT)).alias(c) for c, t in texts.items()],
            *[(t.str.len_chars() > TEXT_LIMIT).alias(f"{c}_cut") for c, t in texts.items()])
        return {"config": self.config, "total": len(ids), "rows_all": self.frame.height, "offset": offset,
                "limit": limit, "rows": page.to_dicts(), "ms": round((time.perf_counter() - t0) * 1000, 1)}

    def row(self, row_id: int) -> dict:
        if not 0 <= row_id < self.frame.height:
            raise BadRequest(f"no row {row_id} in {self.config}")
        row = self.frame.row(row_id, named=True)
        return {"config": self.config, "texts": self.texts, "scores": self.scores, "flags": self.flags,
                "row": row}


def _number(q: dict[str, str], name: str, default: float | None = None) -> float:
    value = q.get(name, "")
    if value == "" and default is not None:
        return default
    try:
        return float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {value!r}") from None


@dataclass
class Dataset:
    source: str
    tables: dict[str, Table]
    version: int | None = None

    @classmethod
    def open(cls, path: str) -> Dataset:
        folder = resolve(path)
        tables = {c: t for c in CONFIG_NAMES if (t := Table.load(folder, c)) is not None}
        if not tables:
            raise UserError(f"{path} has no paired/ or unpaired/ parquet files: not a dataset folder written by "
                            f"`prefsynth build`")
        version = None
        if (folder / MANIFEST).exists():
            try:
                version = json.loads((folder / MANIFEST).read_text(encoding="utf-8")).get("version")
            except (ValueError, AttributeError):  # the manifest is optional here: a bad one just shows no version
                version = None
        return cls(path, tables, version)

    def table(self, config: str) -> Table:
        if config not in self.tables:
            raise BadRequest(f"no config {config!r} here (have: {', '.join(self.tables)})")
        return self.tables[config]

    def meta(self) -> dict:
        return {"source": self.source, "version": self.version,
                "configs": {c: t.meta() for c, t in self.tables.items()}}


# ------------------------------------------------------------------------------------------------------ the server


class Handler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "prefsynth-view"

    def log_message(self, format: str, *args: object) -> None:  # one line per request would drown the URL line
        pass

    def do_GET(self) -> None:  # http.server's naming
        url = urlsplit(self.path)
        # A page on another site could reach 127.0.0.1 through a DNS name it controls (DNS rebinding): only answer
        # requests addressed to this server by its loopback name.
        if self.headers.get("Host", "") not in self.server.hosts:
            return self._send(403, b"forbidden host", "text/plain")
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        ds = self.server.dataset
        try:
            if url.path == "/":
                return self._send(200, self.server.page, "text/html; charset=utf-8")
            if url.path == "/api/meta":
                return self._json(200, ds.meta())
            if url.path == "/api/rows":
                return self._json(200, ds.table(q.get("config", "")).query(q))
            if url.path == "/api/row":
                return self._json(200, ds.table(q.get("config", "")).row(int(_number(q, "id"))))
        except BadRequest as e:
            return self._json(400, {"error": str(e)})
        return self._json(404, {"error": f"no such page: {url.path}"})

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8"),
                   "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", self.server.csp)
        self.end_headers()
        self.wfile.write(body)


class ViewServer(ThreadingHTTPServer):
    """The server for one dataset, bound to 127.0.0.1; `url` once bound. serve_forever() or start_thread()."""

    daemon_threads = True

    def __init__(self, dataset: Dataset, port: int = 0):
        try:
            super().__init__(("127.0.0.1", port), Handler)
        except OSError as e:
            raise UserError(f"cannot listen on 127.0.0.1:{port} ({e.strerror or e}): pick another --port "
                            f"(0 = any free port)") from None
        self.dataset = dataset
        self.port = self.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        nonce = secrets.token_urlsafe(16)  # the page's own script and style run; nothing else could
        self.csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                    f"connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                    f"frame-ancestors 'none'")
        page = resources.files("prefsynth").joinpath("view_page.html").read_text(encoding="utf-8")
        self.page = page.replace("{{NONCE}}", nonce).encode("utf-8")

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="prefsynth-view", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def serve(path: str, port: int = 0, open_browser: bool = True) -> int:
    """`prefsynth view`: load, print the URL, serve until Ctrl-C."""
    t0 = time.perf_counter()
    dataset = Dataset.open(path)
    server = ViewServer(dataset, port)
    rows = ", ".join(f"{c} {t.frame.height:,} rows" for c, t in dataset.tables.items())
    print(f"view: {path} ({rows}; loaded in {time.perf_counter() - t0:.1f} s) at {server.url}  (Ctrl-C stops it)",
          flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("view: stopped", flush=True)
    finally:
        server.server_close()
    return 0
