"""How fast `prefsynth view` is on a large dataset: 100,000 synthetic pairs plus dropped rows, in headless Chromium.

Writes a dataset folder shaped like the build's (paired/{train,validation}.parquet with chat-message columns and
judge scores, ~600-character reviews, dropped/paired.parquet with drop reasons), starts the view server on it and
prints: the server's load time; each API query's time; in the browser, the first paint (navigation start until the
first page of rows is in the DOM) and the round trips of a filter plus a title search, a sort by score and the last
page (the request until the rows are rendered; typing adds the page's 200 ms debounce). Medians of --repeat runs.

    .venv/bin/python bench/view_bench.py                 # 100,000 pairs + 10,000 dropped
    .venv/bin/python bench/view_bench.py --rows 20000 --shot /tmp/view.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's headless-Chromium driver

_WORDS = ("the paper method results baselines experiments ablations novelty claims dataset benchmark proof bound "
          "model training evaluation weak strong unconvincing convincing limited significant clear unclear writing "
          "related work comparison reject accept missing thorough careful sloppy prior variance seeds").split()
PROMPT = ("Two reviews that reviewers wrote about other submissions:\n\nThe central claim rests on two small datasets "
          "and baselines that are years out of date. I see no reason to accept it.\n\nA clear, well-motivated paper "
          "with a simple idea that works. A strong accept.\n\nWrite your own review of the submission \"{}\": two or "
          "three sentences, in your own words.")
REASONS = ["repeat", "echo", "near_duplicate", "inconsistent", "truncated", "author_voice", "wrong_paper"]


def synthesize(out: Path, rows: int, dropped: int, seed: int = 0) -> None:
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    titles = [t.strip() for t in (ROOT / "data" / "titles.txt").read_text().splitlines() if t.strip()]
    pool = [" ".join(rng.choice(_WORDS, 110)).capitalize()[:600] + "." for _ in range(4000)]  # ~600 characters
    n = rows + dropped
    base = pl.DataFrame({
        "title": [f"{titles[i % len(titles)]} ({i // len(titles)})" for i in range(n)],
        "c": rng.integers(0, len(pool), n), "r": rng.integers(0, len(pool), n),
        "chosen_judge_negative": rng.beta(5, 2, n), "rejected_judge_negative": rng.beta(2, 5, n),
        "chosen_judge_llm": rng.random(n), "rejected_judge_llm": rng.random(n),
        "chosen_judge_lexicon": rng.random(n), "rejected_judge_lexicon": rng.random(n),
        "chosen_tokens": rng.integers(60, 160, n).astype("int32"),
        "rejected_tokens": rng.integers(60, 160, n).astype("int32"),
        "consistent": rng.random(n) > 0.1, "chosen_valid": rng.random(n) > 0.05,
    })
    texts = pl.Series(pool)

    def msg(role: str, content) -> pl.Expr:  # one chat message, as the build writes them
        return pl.concat_list(pl.struct(role=pl.lit(role), content=content))

    frame = base.with_columns(
        msg("user", pl.format(PROMPT, pl.col("title"))).alias("prompt"),
        msg("assistant", texts.gather(base["c"])).alias("chosen"),
        msg("assistant", texts.gather(base["r"])).alias("rejected"),
        chosen_key=pl.col("c").cast(pl.String), rejected_key=pl.col("r").cast(pl.String),
    ).drop("c", "r").select("prompt", "chosen", "rejected", pl.exclude("prompt", "chosen", "rejected"))
    kept, gone = frame.head(rows), frame.tail(dropped)
    (out / "paired").mkdir(parents=True)
    n_val = rows // 11
    kept.tail(n_val).write_parquet(out / "paired" / "validation.parquet")
    kept.head(rows - n_val).write_parquet(out / "paired" / "train.parquet")
    (out / "dropped").mkdir()
    gone.with_columns(split=pl.lit("train"),
                      drop_reasons=pl.Series([[REASONS[i % len(REASONS)]] + ([REASONS[(i * 3) % 7]] if i % 4 == 0
                                                                             else []) for i in range(dropped)],
                                             dtype=pl.List(pl.String))
                      ).write_parquet(out / "dropped" / "paired.parquet")


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


ROUND_TRIP = """
const [setup, changes, done] = arguments;
const apply = (list) => { for (const [id, value, event] of list) {
  const el = document.getElementById(id); el.value = value; el.dispatchEvent(new Event(event)); } };
const after = (n, then) => (function wait() { window.__view.renders >= n ? then() : setTimeout(wait, 2); })();
const start = () => {  // the setup has rendered: time the changes alone
  const t0 = performance.now();
  document.addEventListener("view:rendered", (e) => done({wall: performance.now() - t0, request: e.detail.lastMs,
    total: e.detail.total}), {once: true});
  apply(changes);
};
const n = window.__view.renders;
apply(setup);
setup.length ? after(n + 1, start) : start();
"""
LOADED = ("const done = arguments[0]; (function wait() { window.__view && window.__view.renders ? done() : "
          "setTimeout(wait, 2); })();")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000, help="kept pairs (1/11 of them in validation)")
    p.add_argument("--dropped", type=int, default=10_000, help="dropped pairs")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--shot", default=None, help="save a screenshot of the filtered page here")
    a = p.parse_args()

    from test_view import CHROMEDRIVER, CHROMIUM, headless_chromium

    from prefsynth.view import Dataset, ViewServer

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        print("needs Debian's chromium and chromium-driver (make install as root, or apt-get install them)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="view-bench-"))
    t0 = time.perf_counter()
    synthesize(tmp / "ds", a.rows, a.dropped)
    size = sum(f.stat().st_size for f in (tmp / "ds").rglob("*.parquet")) / 2**20
    print(f"dataset: {a.rows:,} pairs + {a.dropped:,} dropped, {size:.0f} MiB of parquet "
          f"(written in {time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    server = ViewServer(Dataset.open(str(tmp / "ds")))
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(f"server load (read parquet, index): {time.perf_counter() - t0:.2f} s; this process's peak RSS {rss:.2f} GiB")
    server.start_thread()

    def api(query: str) -> dict:
        with urllib.request.urlopen(server.url + "api/rows?config=paired&" + query, timeout=60) as r:
            return json.loads(r.read())

    queries = {"first page, kept": "status=kept",
               "filter + search (all rows, score 0.5-0.9, title 'graph')":
                   "status=all&score=chosen_judge_negative&min=0.5&max=0.9&q=graph",
               "sort by score, desc": "status=all&sort=-chosen_judge_negative",
               "drop reason": "status=dropped&reason=echo",
               "last page": f"status=all&offset={a.rows + a.dropped - 50}"}
    for name, q in queries.items():
        answers = []
        ms = median_ms(lambda q=q, answers=answers: answers.append(api(q)), a.repeat)
        print(f"api {name}: {ms:.1f} ms over HTTP (of which the query {statistics.median(r['ms'] for r in answers)} "
              f"ms; {answers[0]['total']:,} rows match)")

    driver = headless_chromium()
    try:
        first, walls = [], []
        for i in range(a.repeat):
            t0 = time.perf_counter()
            driver.get(f"{server.url}?load={i}#status=kept")  # a new query string: a real page load each time
            driver.execute_async_script(LOADED)
            walls.append((time.perf_counter() - t0) * 1000)
            first.append(driver.execute_script("return window.__view.firstRowsMs"))
        print(f"browser first paint (navigation start to 50 rows in the DOM): {statistics.median(first):.0f} ms "
              f"(driver.get to rendered: {statistics.median(walls):.0f} ms)")
        every = [["status", "all", "change"]]
        steps = {"filter + title search (score 0.5-0.9, 'graph', as typed: 200 ms debounce)":
                     (every, [["min", "0.5", "input"], ["max", "0.9", "input"], ["q", "graph", "input"]]),
                 "sort by score": (every, [["sort", "-chosen_judge_negative", "change"]]),
                 "drop reason filter": ([], [["reason", "echo", "change"]])}
        for name, (setup, changes) in steps.items():
            runs = []
            for i in range(a.repeat):
                driver.get(f"{server.url}?step={name[:4]}{i}#status=kept")
                driver.execute_async_script(LOADED)
                runs.append(driver.execute_async_script(ROUND_TRIP, setup, changes))
            print(f"browser {name}: request to rendered {statistics.median(r['request'] for r in runs):.0f} ms, "
                  f"input event to rendered {statistics.median(r['wall'] for r in runs):.0f} ms "
                  f"({runs[-1]['total']:,} rows match)")
        if a.shot:
            driver.save_screenshot(a.shot)
            print(f"screenshot: {a.shot}")
    finally:
        driver.quit()
        server.stop()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(driver.profile_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
