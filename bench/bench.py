"""Side-by-side generation benchmark: the prefsynth path (vLLM) against transformers one prompt at a time and
transformers batched, on the same model, the same real few-shot prompts and the same sampling settings, in one run.

    .venv/bin/python bench/bench.py --n 64                 # make bench N=64
    .venv/bin/python bench/bench.py --n 64 --pipeline      # also: overhead, refresh cost, peak RSS of a real build,
                                                           # with the engine in each run and with `prefsynth engine`

Each measurement runs in its own subprocess (its own threads, its own peak memory). Prints a table, writes
bench/results/bench.json and bench/results/bench.png, and ends with the line
`ratio_single=<a/b> ratio_batched=<a/c> roofline=<fraction>`.
Rates are tokens generated per second of generation (engine start and model load excluded, reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# --------------------------------------------------------------------------------------------- worker side
def _prompts(model: str, titles_file: str, n: int, backend_tok) -> list[str]:
    from prefsynth.collect import CollectConfig, collect
    from prefsynth.prompts import Templates, PromptConfig

    t = Templates(PromptConfig())
    titles = collect(CollectConfig(source=titles_file, n=n, seed=0)).titles
    msgs = [t.generation(title, pol) for title in titles for pol in ("negative", "positive")]
    return [backend_tok.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                            add_generation_prompt=True) for m in msgs]


def _peak_rss_tree() -> int:
    import psutil

    me = psutil.Process()
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class _RssMonitor:
    """Polls the RSS of this process and its children (vLLM runs workers in child processes)."""

    def __init__(self, every: float = 0.2):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _peak_rss_tree())
            self._stop.wait(every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def work_vllm(a: argparse.Namespace) -> dict:
    from prefsynth.engines import Request, get_backend
    from prefsynth.generate import GenerateConfig, request_seed
    from prefsynth.model import resolve_model

    with _RssMonitor() as mon:
        t0 = time.time()
        cfg = GenerateConfig(model=a.model, backend="vllm", temperature=a.temperature, top_p=a.top_p,
                             repetition_penalty=1.0, stop=[],  # the same work as the generate loops it is compared with
                             max_tokens=a.max_tokens, max_num_seqs=a.max_num_seqs)
        backend = get_backend(resolve_model(a.model), cfg)
        load = time.time() - t0
        prompts = _prompts(a.model, a.titles, a.n, backend.tokenizer)
        reqs = [Request(str(i), p, request_seed(str(i))) for i, p in enumerate(prompts)]
        t1 = time.time()
        outs = list(backend.generate(reqs))
        dt = time.time() - t1
    tokens = sum(o.completion_tokens for o in outs)
    return {"name": "prefsynth (vLLM)", "prompts": len(reqs), "tokens": tokens, "seconds": dt,
            "tok_s": tokens / dt, "load_seconds": load, "peak_rss_gib": mon.peak / 2**30}


def _hf(a: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefsynth.model import resolve_model

    torch.set_num_threads(os.cpu_count() or 1)
    path = resolve_model(a.model).path
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return torch, tok, model


def work_hf(a: argparse.Namespace, batch: int, limit: int | None) -> dict:
    with _RssMonitor() as mon:
        t0 = time.time()
        torch, tok, model = _hf(a)
        load = time.time() - t0
        prompts = _prompts(a.model, a.titles, a.n, tok)
        if limit:
            prompts = prompts[:limit]
        torch.manual_seed(0)
        tokens = 0
        t1 = time.time()
        with torch.inference_mode():
            for i in range(0, len(prompts), batch):
                enc = tok(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
                out = model.generate(**enc, do_sample=True, temperature=a.temperature, top_p=a.top_p,
                                     max_new_tokens=a.max_tokens, pad_token_id=tok.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                # count real tokens: up to and including the first EOS of each row
                for row in new.tolist():
                    n = len(row)
                    for j, t in enumerate(row):
                        if t == tok.eos_token_id or t == tok.pad_token_id:
                            n = j + 1
                            break
                    tokens += n
        dt = time.time() - t1
    name = "transformers, one prompt at a time" if batch == 1 else f"transformers, batch {batch}"
    return {"name": name, "prompts": len(prompts), "tokens": tokens, "seconds": dt, "tok_s": tokens / dt,
            "load_seconds": load, "peak_rss_gib": mon.peak / 2**30}


def work_matmul(a: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    n = 2048
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        x @ y
    reps, t0 = 0, time.time()
    while time.time() - t0 < 3.0:
        x @ y
        reps += 1
    dt = time.time() - t0
    return {"name": "fp32 matmul peak", "gflops": 2 * n**3 * reps / dt / 1e9, "threads": torch.get_num_threads()}


def work_params(a: argparse.Namespace) -> dict:
    import json as _json

    from safetensors import safe_open

    from prefsynth.model import resolve_model

    path = Path(resolve_model(a.model).path)
    total = 0
    for f in path.glob("*.safetensors"):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                total += _prod(st.get_slice(k).get_shape())
    cfg = _json.loads((path / "config.json").read_text())
    return {"params": total, "tied_embeddings": bool(cfg.get("tie_word_embeddings"))}


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def work_build(a: argparse.Namespace) -> dict:
    """Build both datasets from `rows` cached generations (synthetic text, real code path)."""
    import random

    import polars as pl

    from prefsynth.build import BuildConfig, build
    from prefsynth.generate import GEN_SCHEMA
    from prefsynth.prompts import PromptConfig, Templates

    n_titles = a.rows // 2
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    titles = [f"Paper {i} on " + " ".join(rng.choice(vocab) for _ in range(6)) for i in range(n_titles)]
    pols = ["negative", "positive"] * n_titles
    df = pl.DataFrame({
        "key": [f"k{i}" for i in range(a.rows)], "title": [t for t in titles for _ in range(2)], "polarity": pols,
        "text": [" ".join(rng.choice(vocab) for _ in range(60)) + "." for _ in range(a.rows)],
        "prompt_tokens": [200] * a.rows, "completion_tokens": [60] * a.rows, "finish_reason": ["stop"] * a.rows,
        "model": ["m"] * a.rows, "template_hash": ["h"] * a.rows, "backend": ["vllm"] * a.rows,
    }, schema={"key": pl.Utf8, **GEN_SCHEMA})
    t = Templates(PromptConfig())
    runs = []
    for _ in range(3):  # median of three: one run on a shared 2-core box swings by +-30%
        t0 = time.time()
        out = build(df, titles, t, BuildConfig(formats="both"))
        runs.append(time.time() - t0)
    return {"name": f"build both formats from {a.rows:,} generations (median of 3)",
            "seconds": sorted(runs)[1], "runs": runs,
            "rows": {c: {s: f.height for s, f in d.items()} for c, d in out.frames.items()}}


WORKERS = {"vllm": work_vllm, "hf1": lambda a: work_hf(a, 1, a.single_limit), "hf64": lambda a: work_hf(a, 64, None),
           "matmul": work_matmul, "params": work_params, "build": work_build}


# --------------------------------------------------------------------------------------------- driver side
def _sub(kind: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(a.n), "--model", a.model, "--titles", a.titles,
           "--max-tokens", str(a.max_tokens), "--temperature", str(a.temperature), "--top-p", str(a.top_p),
           "--single-limit", str(a.single_limit), "--rows", str(a.rows), "--max-num-seqs", str(a.max_num_seqs)]
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "TRANSFORMERS_VERBOSITY": "error",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):])
    raise SystemExit(f"bench worker {kind} failed:\n{proc.stderr[-3000:]}")


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        ps = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
    except psutil.Error:
        return 0


def _engine(action: str, a: argparse.Namespace, state: Path, port: int = 0) -> None:
    """scripts/engine.sh, what `make engine` / `make engine-stop` run, with its state (PID file, log) in `state`."""
    env = {**os.environ, "PREFSYNTH_STATE": str(state), "ENGINE_PORT": str(port), "MODEL": a.pipeline_model or ""}
    proc = subprocess.run([str(ROOT / "scripts" / "engine.sh"), action], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"engine {action} failed:\n{proc.stdout}{proc.stderr}")


def pipeline_figures(a: argparse.Namespace) -> dict:
    """A real default build (fresh cache), then a refresh with 10% more titles: overhead share, refresh cost and
    peak RSS of the whole process tree. Twice: with the engine inside each run (the default), and with a running
    `prefsynth engine` server that both runs use (`--engine`, `make engine`), started fresh for the pair so
    its prefix cache holds nothing of these titles."""
    import random
    import tempfile

    from prefsynth.collect import CollectConfig, collect

    base = Path(tempfile.mkdtemp(prefix="prefsynth-bench-"))
    titles = base / "titles.txt"
    pool = collect(CollectConfig(source=a.titles, n=None)).titles
    n_full = min(a.pipeline_n, len(pool) * 10 // 11)
    n_more = max(1, n_full // 10)
    chosen = random.Random(1).sample(pool, n_full + n_more)

    def build(n: int, mode: str, engine: tuple[int, str] | None) -> dict:
        titles.write_text("\n".join(chosen[:n]) + "\n")
        cmd = [sys.executable, "-m", "prefsynth", "build", "--titles", str(titles), "--n", "all", "--out",
               str(base / mode / "out"), "--cache", str(base / mode / "cache"),
               "--formats", "both", "--summary-json", str(base / "summary.json")]
        if a.pipeline_model:  # else the build's own default generator, as `make paired` runs it
            cmd += ["--model", a.pipeline_model]
        if engine:
            cmd += ["--engine", engine[1]]
        t0 = time.time()
        log_path = base / f"build-{mode}-{n}.log"
        log = open(log_path, "w")  # a file, not a pipe: an unread pipe would block the build
        proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT, text=True)
        peak = engine_peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            if engine:
                engine_peak = max(engine_peak, _tree_rss(engine[0]))
            time.sleep(0.25)
        proc.wait()
        wall = time.time() - t0
        log.close()
        if proc.returncode:
            raise SystemExit(f"pipeline run failed:\n{log_path.read_text()[-3000:]}")
        stats = json.loads((base / "summary.json").read_text())["stats"]
        return {"wall": wall, "peak_rss_gib": peak / 2**30, "engine_rss_gib": engine_peak / 2**30, "stats": stats}

    def pair(mode: str, engine: tuple[int, str] | None) -> dict:
        full = build(n_full, mode, engine)
        more = build(n_full + n_more, mode, engine)
        s = full["stats"]
        model_time = s["generate"].get("engine_seconds", 0) + s["generate"].get("generate_seconds", 0) \
            + s.get("judge", {}).get("llm_seconds", 0)
        out = {"full_wall": full["wall"], "refresh_wall": more["wall"], "refresh_ratio": more["wall"] / full["wall"],
               "model_seconds": model_time, "overhead_share": 1 - model_time / full["wall"],
               "peak_rss_gib": max(full["peak_rss_gib"], more["peak_rss_gib"]),
               "refresh_generated": more["stats"]["generate"]["generated"],
               "full_tok_s": s["generate"].get("tokens_per_second", 0),
               # all judging: the polarity judge's stage time (every round) plus the validity rules in the build
               "judging_seconds": s.get("judge", {}).get("seconds", 0) + s["build"].get("validity_seconds", 0)}
        out["judging_share"] = out["judging_seconds"] / full["wall"]
        if engine:
            out["engine_rss_gib"] = max(full["engine_rss_gib"], more["engine_rss_gib"])
        return out

    res = {"titles_full": n_full, "titles_added": n_more, "in_process": pair("in-process", None)}
    if a.engine_mode:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        t0 = time.time()
        _engine("start", a, base / "state", port)
        started = time.time() - t0
        try:
            pid = int((base / "state" / "run" / "engine.pid").read_text())
            res["engine"] = {"start_seconds": started, **pair("engine", (pid, f"http://127.0.0.1:{port}"))}
        finally:
            _engine("stop", a, base / "state")
    return res


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [results["vllm"], results["hf1"], results["hf64"]]
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.barh([r["name"] for r in rows][::-1], [r["tok_s"] for r in rows][::-1], color=["#888", "#888", "#c0392b"])
    ax.axvline(results["roofline_tok_s"], color="k", ls="--", lw=0.8)
    ax.text(results["roofline_tok_s"], 2.4, " compute roofline", fontsize=8, va="top")
    for i, r in enumerate(rows[::-1]):
        ax.text(r["tok_s"], i, f" {r['tok_s']:.0f}", va="center", fontsize=8)
    ax.set_xlabel("generated tokens / s")
    ax.set_title(f"{results['model']} on {results['machine']}", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})


def pipeline_lines(pp: dict) -> list[str]:
    out = [f"default build of {pp['titles_full']} titles, then +{pp['titles_added']} titles (refresh):"]
    for mode, label in (("in_process", "engine in each run (default)"), ("engine", "running engine (--engine)")):
        if mode in pp:
            m = pp[mode]
            extra = f", server {m['engine_rss_gib']:.2f} GiB (started in {m['start_seconds']:.0f} s)" \
                if mode == "engine" else ""
            out.append(f"  {label:30} full {m['full_wall']:5.0f} s (model {m['model_seconds']:.0f} s, overhead "
                       f"{m['overhead_share']:.1%}); refresh {m['refresh_wall']:4.0f} s = {m['refresh_ratio']:.1%} "
                       f"of the full build; judging {m['judging_seconds']:.0f} s = {m['judging_share']:.1%} of the "
                       f"full build; peak RSS {m['peak_rss_gib']:.2f} GiB{extra}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="titles (2 prompts each)")
    p.add_argument("--model", default="bundled")
    p.add_argument("--titles", default=str(ROOT / "data" / "titles.txt"))
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--single-limit", type=int, default=16,
                   help="prompts for the one-at-a-time baseline (a rate: a subset measures it fairly)")
    p.add_argument("--rows", type=int, default=100_000, help="cached generations for the build timing")
    p.add_argument("--pipeline", action="store_true", help="also run a real build + 10%% refresh")
    p.add_argument("--pipeline-model", default=None,
                   help="with --pipeline: the generating model of the builds (default: the build's default, the writer)")
    p.add_argument("--pipeline-n", type=int, default=300,
                   help="titles in the full build (at most 10/11 of the titles file: the rest is the refresh)")
    p.add_argument("--no-engine-mode", dest="engine_mode", action="store_false",
                   help="with --pipeline: skip the second pair of builds through a running `prefsynth engine`")
    p.add_argument("--only-pipeline", action="store_true",
                   help="run only the pipeline figures (build, refresh, judging share); the generation loops' figures "
                        "in bench/results/bench.json stay as they were")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print("BENCH-RESULT " + json.dumps(WORKERS[a.worker](a)), flush=True)
        return 0
    if a.only_pipeline:
        path = RESULTS / "bench.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        res["pipeline"] = pipeline_figures(a)
        print("\n".join(pipeline_lines(res["pipeline"])))
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
        return 0

    res: dict = {"model": a.model, "n_titles": a.n, "max_tokens": a.max_tokens, "temperature": a.temperature,
                 "machine": f"{os.cpu_count()} cores {platform.machine()} ({platform.processor() or 'cpu'})"}
    for kind in ("matmul", "params", "vllm", "hf64", "hf1", "build"):
        print(f"running {kind} ...", file=sys.stderr, flush=True)
        res[kind] = _sub(kind, a)
    gflop_per_token = 2 * res["params"]["params"] / 1e9
    res["gflop_per_token"] = gflop_per_token
    res["roofline_tok_s"] = res["matmul"]["gflops"] / gflop_per_token
    a_, b_, c_ = res["vllm"]["tok_s"], res["hf1"]["tok_s"], res["hf64"]["tok_s"]
    res["ratio_single"], res["ratio_batched"] = a_ / b_, a_ / c_
    res["roofline"] = a_ / res["roofline_tok_s"]
    if a.pipeline:
        print("running pipeline (full build, then +10% titles) ...", file=sys.stderr, flush=True)
        res["pipeline"] = pipeline_figures(a)

    print(f"\nmodel {a.model}, {res['params']['params'] / 1e6:.1f}M params, {2 * a.n} prompts, "
          f"max_tokens {a.max_tokens}, T={a.temperature}, machine {res['machine']}")
    print(f"{'path':40} {'prompts':>7} {'tokens':>7} {'tok/s':>8} {'load s':>7} {'peak GiB':>9}")
    for k in ("vllm", "hf1", "hf64"):
        r = res[k]
        print(f"{r['name']:40} {r['prompts']:7d} {r['tokens']:7d} {r['tok_s']:8.1f} {r['load_seconds']:7.1f} "
              f"{r['peak_rss_gib']:9.2f}")
    print(f"fp32 matmul peak {res['matmul']['gflops']:.0f} GFLOP/s ({res['matmul']['threads']} threads); "
          f"{gflop_per_token:.3f} GFLOP/token -> roofline {res['roofline_tok_s']:.0f} tok/s; "
          f"vLLM reaches {res['roofline']:.1%}")
    print(f"{res['build']['name']}: {res['build']['seconds']:.2f} s")
    if "pipeline" in res:
        print("\n".join(pipeline_lines(res["pipeline"])))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    plot(res, RESULTS / "bench.png")
    print(f"ratio_single={res['ratio_single']:.2f} ratio_batched={res['ratio_batched']:.2f} "
          f"roofline={res['roofline']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
