"""The printed result of `make bench-peers`: speed side by side, the crash round side by side, what failed and how,
and the final `peer_speedup distilabel=<x> curator=<y>` line (peer wall time / prefsynth wall time)."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from tools import TOOLS

GIB = 2**30
ROOT = Path(__file__).resolve().parents[2]  # paths in the report are relative to the checkout


def gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def same_reviews(a: list[tuple], b: list[tuple]) -> int:
    """Reviews with identical text in two datasets, matched by prompt (one pair per title)."""
    mine = {p: (c, r) for _, p, c, r in a}
    same = 0
    for _, p, c, r in b:
        c0, r0 = mine.get(p, (None, None))
        same += (c is not None and c == c0) + (r is not None and r == r0)
    return same


def _ok(r: dict, round_: str = "clean") -> dict | None:
    c = r.get(round_) or {}
    return c if ("pairs" in c if round_ == "clean" else "lost" in c) else None


def speed(res: dict, info: dict) -> list[str]:
    out = [f"{'tool':11}{'version':9}{'prompts sent as':33}{'wall s':>8}{'tok/s':>8}{'peak RSS':>10}{'pairs':>7}"
           f"{'prompt tok/review':>18}"]
    for name, r in res.items():
        c = _ok(r)
        if c is None:
            out.append(f"{name:11}{r['version']:9}{TOOLS[name].endpoint:33}  failed: see below")
            continue
        per = c["prompt_tokens"] / c["produced"] if c["produced"] else 0
        out.append(f"{name:11}{r['version']:9}{TOOLS[name].endpoint:33}{c['wall']:8.1f}"
                   f"{c['tokens'] / c['wall']:8.1f}{gib(c['peak_rss']):>10}{len(c['pairs']):7d}{per:18.1f}")
    out.append(f"wall: start to dataset on disk. tok/s: completion tokens the server produced for the run / wall. "
               f"peak RSS: the tool's process tree (sum of RSS, sampled every 0.25 s); the shared server "
               f"({gib(info['server_rss'])}, the most seen between jobs) and the proxy are not in it.")
    return out


def crash(res: dict, total: int) -> list[str]:
    out = [f"crash: SIGKILL once >= {(total + 1) // 2} of {total} reviews are in the tool's cache on disk, then the "
           f"same command again", f"{'tool':11}{'killed at':>10}{'kill run s':>11}{'resume s':>9}{'lost':>6}"
           f"{'regenerated':>12}{'aborted':>8}  same dataset as uninterrupted"]
    for name, r in res.items():
        k = r.get("crash")
        if not k:
            continue
        at = f"{k['killed_at']}/{total}" if k["killed_at"] is not None else "not killed"
        if _ok(r, "crash") is None:
            out.append(f"{name:11}{at:>10}{k['kill_wall']:11.1f}  the rerun failed: see below")
            continue
        out.append(f"{name:11}{at:>10}{k['kill_wall']:11.1f}{k['resume_wall']:9.1f}{k['lost']:6d}"
                   f"{k['regenerated']:12d}{k['aborted']:8d}  {'yes' if k['same'] else 'no'}"
                   + (f" ({k['note']})" if k.get("note") else ""))
    out.append("lost: reviews the uninterrupted run has and the killed-and-rerun one lacks; regenerated: answers the "
               "server produced again for a "
               "prompt it had already answered; aborted: requests the kill cut off mid-generation.")
    return out


def failures(res: dict) -> list[str]:
    out = []
    for name, r in res.items():
        if r.get("venv_error"):
            out.append(f"{name} venv FAILED: {r['venv_error']}")
        for round_ in ("clean", "crash"):
            err = (r.get(round_) or {}).get("error")
            if err:
                argv = " ".join(TOOLS[name].argv(r["setup"], Path("<run>")))
                out += [f"{name} {round_} run FAILED: {err}",
                        f"  tried: {argv}; <run> = {Path(r[round_]['log']).parent}".replace(f"{ROOT}/", "")]
    return out


def report(n: int, max_tokens: int, crashed: bool, res: dict, info: dict) -> list[str]:
    total = 2 * n
    out = [f"peers side by side: {n} titles -> {total} reviews -> paired dataset; T=0.7, top-p 0.95, max_tokens "
           f"{max_tokens}; {platform.machine()}, {info['cpus']} CPUs; {time.strftime('%Y-%m-%d %H:%M')}",
           f"one server for all: prefsynth engine ({info['model']}), ready in {info['server_s']:.0f} s, behind "
           f"bench/peers/proxy.py; chat messages render the same tokens as the text prompt: "
           f"{'yes' if info['same_tokens'] else 'NO'}"]
    if n < 300 or max_tokens != 96:
        out.append("(a small run: start-up costs dominate; the comparison issue 16 asks for is N=300, max_tokens 96)")
    out += ["", *speed(res, info)]
    if crashed:
        out += ["", *crash(res, total)]
    ps = _ok(res.get("prefsynth", {}))
    same = [f"{name} {same_reviews(ps['pairs'], c['pairs'])}/{total}" for name, r in res.items()
            if ps and name != "prefsynth" and (c := _ok(r))]
    if same:
        out.append("reviews identical to prefsynth's: " + ", ".join(same)
                   + " (curator sends prefsynth's per-review seeds; distilabel's OpenAILLM one fixed seed)")
    out.append("")
    for name, r in res.items():
        if v := r.get("venv"):
            out.append(f"{name} venv ({v['requirement']}): first build {v['build_seconds']:.0f} s "
                       f"({'built in this run' if v['fresh'] else 'cached, built ' + v['built_at']})")
    out += failures(res)
    ratios = [f"{name}={c['wall'] / ps['wall']:.2f}" if ps and (c := _ok(res.get(name, {}))) else f"{name}=n/a"
              for name in ("distilabel", "curator")]
    return out + ["peer_speedup " + " ".join(ratios)]
