"""Peers side by side: the same job through prefsynth, distilabel and curator, timed and crashed in one run.

    make bench-peers N=300                      # .venv/bin/python bench/peers/run.py --n 300
    .venv/bin/python bench/peers/run.py --n 4 --max-tokens 32          # a smoke run

The job: N titles -> one negative and one positive review per title from prefsynth's few-shot prompts -> a paired
dataset (prompt/chosen/rejected, train/validation) on disk. One vLLM server (`prefsynth engine`, the bundled
SmolLM2-135M-Instruct) serves all three behind a counting proxy (proxy.py); each peer runs from its own venv
(venvs.py), prefsynth from the project's. Per tool: wall time from start to dataset on disk, generated tokens/s,
peak RSS of its process tree; then a crash round: SIGKILL once half the reviews are on disk in the tool's own cache,
rerun the same command, count reviews lost and regenerated, compare with the uninterrupted dataset. Prints a table
(also written to bench/results/peers.txt) ending with `peer_speedup distilabel=<x> curator=<y>`
(peer wall / prefsynth wall). See docs/peers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import urllib.request
from functools import partial
from importlib.metadata import version
from pathlib import Path

from prefsynth.errors import UserError

import job as jobfile
import procs
import table
import venvs
from tools import TOOLS, Setup, Tool, read_pairs

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".state" / "peers"
RESULTS = ROOT / "bench" / "results" / "peers.txt"


def http_json(url: str, data: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
    return json.loads(body) if body.strip() else {}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def same_start(server: str, job: dict) -> None:
    """Every job meets the server in the same state: its prefix cache emptied (vLLM's dev endpoint), then one
    review of each polarity sampled outside the proxy (the few-shot prefix cached, the decode path warm). Without
    this the first tool pays the server's first passes and later tools find earlier tools' prompts cached."""
    http_json(server + "/reset_prefix_cache", b"")
    for polarity in ("negative", "positive"):
        body = {"model": job["model"], "prompt": job["rows"][0][polarity]["text"], **job["sampling"], "seed": 1}
        http_json(server + "/v1/completions", json.dumps(body).encode())


def reviews_in(pairs: list[tuple]) -> int:
    return sum((c is not None) + (r is not None) for _, _, c, r in pairs)


def uninterrupted(tool: Tool, s: Setup, run: Path, timeout: float, stall: float) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    http_json(s.proxy + "/_proxy/reset", b"")
    ran = procs.run_job(tool.argv(s, run), run / "log.txt", tool.env(s, run), timeout,
                        partial(tool.done_on_disk, run), stall=stall)
    stats = http_json(s.proxy + "/_proxy/stats")
    res = {"wall": ran.wall, "rc": ran.rc, "peak_rss": ran.peak_rss, "tokens": stats["completion_tokens"],
           "produced": stats["produced"], "prompt_tokens": stats["prompt_tokens"], "log": str(run / "log.txt")}
    if ran.rc != 0:
        res["error"] = procs.why_failed(ran, run / "log.txt", timeout)
        return res
    res["pairs"] = read_pairs(run / "out")
    return res


def crash_round(tool: Tool, s: Setup, run: Path, timeout: float, stall: float, clean: list[tuple]) -> dict:
    """SIGKILL the job once half its reviews are on disk, rerun the same command, and count what it cost."""
    shutil.rmtree(run, ignore_errors=True)
    http_json(s.proxy + "/_proxy/reset", b"")
    total = 2 * s.n
    argv, env = tool.argv(s, run), tool.env(s, run)
    done = partial(tool.done_on_disk, run)
    first = procs.run_job(argv, run / "log.txt", env, timeout, done, (total + 1) // 2, stall)
    res = {"killed_at": first.killed_at, "kill_wall": first.wall, "log": str(run / "log.txt")}
    if first.killed_at is None:  # it finished (or failed) before half its reviews ever showed on disk
        res["note"] = ("finished before half its reviews were seen on disk" if first.rc == 0 else
                       "before the kill: " + procs.why_failed(first, run / "log.txt", timeout))
    second = procs.run_job(argv, run / "log.txt", env, timeout, done, stall=stall)
    stats = http_json(s.proxy + "/_proxy/stats")
    res.update(resume_wall=second.wall, resume_rc=second.rc, produced=stats["produced"],
               regenerated=stats["produced_again"], aborted=stats["aborted"])
    if second.rc != 0:
        res["error"] = f"the rerun after the kill at {first.killed_at}/{total} reviews on disk: " + procs.why_failed(
            second, run / "log.txt", timeout)
        return res
    pairs = read_pairs(run / "out")
    # Lost relative to the tool's own uninterrupted run: a review its filters drop in both runs is no crash loss
    # (the N=300 run of 2026-11-30 counted against 2 x N and so showed prefsynth's 10 few-shot copies as lost).
    res.update(lost=max(0, reviews_in(clean) - reviews_in(pairs)),
               same=sorted(pairs, key=str) == sorted(clean, key=str))
    return res


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="titles (2 reviews each)")
    p.add_argument("--max-tokens", type=int, default=96, help="new tokens per review (prefsynth's default 96)")
    p.add_argument("--titles", default=None, help="titles file (default: prefsynth's data/titles.txt)")
    p.add_argument("--tools", default="prefsynth,distilabel,curator")
    p.add_argument("--no-crash", dest="crash", action="store_false", help="skip the crash rounds")
    p.add_argument("--port", type=int, default=8791, help="the vLLM server's port; the proxy takes the next one")
    p.add_argument("--distilabel-batch", type=int, default=64,
                   help="input_batch_size of each distilabel task: 2 tasks x 64 = the server's 128 sequences")
    p.add_argument("--curator-concurrency", type=int, default=256,
                   help="curator's max_concurrent_requests (prefsynth keeps 2 x 128 requests in flight)")
    p.add_argument("--job-timeout", type=float, default=3600, help="seconds before any job is killed")
    p.add_argument("--stall", type=float, default=180,
                   help="a job whose log and reviews on disk did not move for this many seconds is killed as hung")
    p.add_argument("--no-save", dest="save", action="store_false", help=f"do not write {RESULTS.relative_to(ROOT)}")
    a = p.parse_args()
    names = [t.strip() for t in a.tools.split(",") if t.strip()]
    if unknown := [t for t in names if t not in TOOLS]:
        print(f"error: unknown tool {unknown[0]!r} (known: {', '.join(TOOLS)})", file=sys.stderr)
        return 2
    if a.n < 1 or a.max_tokens < 1:
        print("error: --n and --max-tokens must be at least 1", file=sys.stderr)
        return 2
    for port in (a.port, a.port + 1):
        if not port_free(port):
            print(f"error: port {port} is taken; pick others with --port (it uses --port and --port + 1)",
                  file=sys.stderr)
            return 2
    try:
        titles = jobfile.titles_for(a.n, a.titles)  # a bad titles file or N fails here, before any server starts
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs, logs = STATE / "runs" / f"n{a.n}-t{a.max_tokens}", STATE / "logs"
    shutil.rmtree(runs, ignore_errors=True)
    setup = Setup(runs / "job.json", f"http://127.0.0.1:{a.port + 1}", a.n, a.max_tokens, a.titles,
                  STATE / "venvs", a.distilabel_batch, a.curator_concurrency)
    res: dict[str, dict] = {n: {"version": version("prefsynth") if n == "prefsynth" else "?", "setup": setup}
                            for n in names}
    for name in names:
        if name in venvs.PEERS:
            print(f"{name}: venv ...", file=sys.stderr, flush=True)
            try:
                res[name]["venv"] = venvs.ensure(name, STATE / "venvs", logs / f"venv-{name}.log")
                res[name]["version"] = res[name]["venv"]["version"]
            except RuntimeError as e:
                res[name]["venv_error"] = f"{e}; tried: pip install {' '.join(venvs.PEERS[name])}"
    bg = procs.Background()
    server = f"http://127.0.0.1:{a.port}"
    info: dict = {"cpus": len(os.sched_getaffinity(0)), "server_rss": 0}
    try:
        print("starting the vLLM server ...", file=sys.stderr, flush=True)
        srv = bg.start([str(Path(sys.executable).parent / "prefsynth"), "engine", "--host", "127.0.0.1", "--port",
                        str(a.port)], runs / "server.log", {"VLLM_SERVER_DEV_MODE": "1"})  # for same_start
        info["server_s"] = procs.wait_http(server + "/health", srv, 600, runs / "server.log")
        prx = bg.start([sys.executable, str(Path(__file__).with_name("proxy.py")), "--port", str(a.port + 1),
                        "--upstream", server], runs / "proxy.log")
        procs.wait_http(setup.proxy + "/_proxy/stats", prx, 60, runs / "proxy.log")
        info["model"] = http_json(server + "/v1/models")["data"][0]["id"]
        job = jobfile.make_job(titles, a.max_tokens, info["model"], setup.proxy)
        jobfile.write(job, setup.job)
        info["same_tokens"] = jobfile.same_tokens(server, job)
        for rounds in (["clean", "crash"] if a.crash else ["clean"]):
            for name in names:
                if "venv_error" in res[name] or (rounds == "crash" and "pairs" not in res[name].get("clean", {})):
                    continue
                print(f"{name}: {rounds} run ...", file=sys.stderr, flush=True)
                same_start(server, job)
                run = runs / name / rounds
                tool = TOOLS[name]
                res[name][rounds] = (uninterrupted(tool, setup, run, a.job_timeout, a.stall) if rounds == "clean"
                                     else crash_round(tool, setup, run, a.job_timeout, a.stall,
                                                      res[name]["clean"]["pairs"]))
                info["server_rss"] = max(info["server_rss"], procs.tree_rss(srv.pid))
    except (RuntimeError, UserError, OSError) as e:  # no server, a bad titles file, the server stopped answering
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        bg.stop_all()
    lines = table.report(a.n, a.max_tokens, a.crash, res, info)
    print("\n".join(lines))
    if a.save:
        RESULTS.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
