"""Shard runs on work-pool workers, kept free of Prefect: what a shard is, what one does, and how the build that
started them decides, from each run's state, whether it is done, re-submitted or the end of the build.

A build with `shards: N` and a pool (flows/build_dataset.py) writes one spec per shard to the shared store
(`generate.store`), starts N runs of the `generate-shard/<pool>` deployment and waits. Each run, on whichever
worker of the pool takes it, generates and judges its titles through all the rounds (candidates) a build would make
(prefsynth.rounds), through its own local cache and the store (prefsynth.shared_store), and leaves a report in the
store. The build then runs its own rounds over all titles, which now only read: everything is in the store (a
review a shard could not know was needed, e.g. a near-duplicate of another shard's text, is generated there).
One shard run makes every round of its titles because a run pays a flow-run start and an engine start (2 s + 30 s
on one CPU core, bench/fanout.py), and rounds are decided title by title. Judging runs inside the
shard too: the engine is loaded there already, and judging a review costs about half of generating it.

A run that crashed (its worker was killed: Prefect marks it Crashed once its heartbeats stop, see
flows/automations.py) or failed for a reason other than the user's is submitted again, up to `attempts` times; the
new run resumes from everything the store holds. A run that failed for a user error fails the build with its
message. Runs that do not finish within `timeout` fail the build with one line saying which and in what state.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from prefsynth.errors import UserError
from prefsynth.fsutil import HOST
from prefsynth.shared_store import filesystem

SHARD_FLOW = "generate-shard"  # deployments `generate-shard/<pool>` in prefect.yaml


@dataclass
class ShardSpec:
    titles: list[str]
    label: str = ""  # "2/4": for run names and messages


def write_spec(url: str, spec: ShardSpec) -> str:
    """Store `spec` under a name made of its content (writing it twice is harmless); returns the name."""
    data = json.dumps(asdict(spec), sort_keys=True, ensure_ascii=False).encode()
    name = hashlib.sha256(data).hexdigest()[:16]
    fs, root = filesystem(url)
    fs.makedirs(f"{root}/specs", exist_ok=True)
    fs.pipe_file(f"{root}/specs/{name}.json", data)
    return name


def read_spec(url: str, name: str) -> ShardSpec:
    fs, root = filesystem(url)
    try:
        return ShardSpec(**json.loads(fs.cat_file(f"{root}/specs/{name}.json")))
    except FileNotFoundError:
        raise UserError(f"shard spec {name} not found in store {url}: does this worker mount the same store "
                        f"as the build that started it?") from None


def write_report(url: str, spec_name: str, run_id: str, report: dict) -> None:
    fs, root = filesystem(url)
    fs.makedirs(f"{root}/reports", exist_ok=True)
    fs.pipe_file(f"{root}/reports/{spec_name}-{run_id}.json", json.dumps(report, sort_keys=True).encode())


def read_reports(url: str, spec_name: str) -> list[dict]:
    """Every report of runs of this spec (a re-submitted shard has two runs; the dead one left none)."""
    fs, root = filesystem(url)
    fs.invalidate_cache(f"{root}/reports")
    try:
        names = fs.glob(f"{root}/reports/{spec_name}-*.json")
    except FileNotFoundError:
        return []
    return [json.loads(fs.cat_file(n)) for n in sorted(names)]


def run_shard(cfg, spec_name: str, run_id: str = "") -> dict:
    """The body of one shard run: every round of generation and judging for the spec's titles, through the local
    cache and the store; then a report of what it did (and where) in the store."""
    from prefsynth.generate import cache_root
    from prefsynth.pipeline import plain_step
    from prefsynth.prompts import Templates
    from prefsynth.rounds import generate_judged

    if not cfg.generate.store:
        raise UserError("a shard run needs generate.store: the store the build and every worker reach")
    started = time.time()
    spec = read_spec(cfg.generate.store, spec_name)
    # No cache lock, unlike a build: shards are disjoint, and the build that started this one may hold the lock of
    # this very cache (a worker on the build's own machine).
    gens, judged = generate_judged(spec.titles, Templates(cfg.prompts), cfg.generate, cfg.judge, cfg.build,
                                   plain_step)
    g = gens.stats
    report = {"spec": spec_name, "label": spec.label, "run_id": run_id, "host": HOST, "pid": os.getpid(),
              "worker": os.environ.get("PREFECT__WORKER_NAME", ""), "home": str(cache_root(cfg.generate)),
              "titles": len(spec.titles), "requested": g.get("requested", 0), "generated": g.get("generated", 0),
              "pulled_from_store": g.get("pulled_from_store", 0), "reused": g.get("reused", 0),
              "judged": judged.stats.get("judged", 0) if judged else 0, "rounds": len(g.get("reviews_per_round", [])),
              "completion_tokens": g.get("completion_tokens", 0), "generate_seconds": g.get("generate_seconds", 0),
              "engine_seconds": g.get("engine_seconds", 0), "started": started, "finished": time.time()}
    write_report(cfg.generate.store, spec_name, run_id, report)
    return report


def report_line(r: dict) -> str:
    """One log line of the build about a shard run's report."""
    return (f"shard {r['label']}: worker {r['worker'] or '?'} ({r['host']}, cache {r['home']}) generated "
            f"{r['generated']:.0f} in {r['rounds']} rounds, took {r['pulled_from_store']:.0f} from the store, judged "
            f"{r['judged']:.0f}, in {r['finished'] - r['started']:.1f} s (engine start {r['engine_seconds']:.1f} s)")


# ------------------------------------------------------------------------------------------- the build's side


def totals(attempts: list[Attempt], reports: list[dict]) -> dict:
    """What the shard runs did together: the build's `on_workers` stats."""
    return {"shard_runs": len(attempts), "resubmitted": sum(a.tries - 1 for a in attempts),
            **{k: sum(r[k] for r in reports)
               for k in ("generated", "pulled_from_store", "judged", "completion_tokens")}}


@dataclass
class Attempt:
    spec: str
    label: str
    run_id: str
    tries: int = 1
    history: list[str] = field(default_factory=list)  # run ids of earlier attempts


def user_error_line(message: str | None) -> str | None:
    """The one-line message of a run that failed for a user error, from its state message (None: not a user
    error). prefsynth raises UserError for everything a user can fix; Prefect puts the exception in the message."""
    if not message or "UserError" not in message:
        return None
    return message.split("UserError:", 1)[-1].strip().splitlines()[0]


def wait_all(attempts: list[Attempt], read_state: Callable[[str], tuple[str, str | None]],
             resubmit: Callable[[Attempt], str], *, pool: str, timeout: float, max_tries: int = 3,
             cancel: Callable[[Attempt, str], None] | None = None, poll_seconds: float = 2.0,
             log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> None:
    """Wait until every shard run has completed. `read_state(run_id)` gives (state type, message), e.g.
    ("COMPLETED", None); `resubmit(attempt)` starts the shard again and returns the new run id. When the build
    fails, `cancel(attempt, state)` is called for every shard run still unfinished: none is left using a worker."""
    pending = {a.spec: a for a in attempts}
    try:
        _wait(pending, read_state, resubmit, pool, clock() + timeout, timeout, max_tries, poll_seconds, log, clock,
              sleep)
    except UserError:
        for a in pending.values():
            state = read_state(a.run_id)[0]
            if cancel is not None and state not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                cancel(a, state)
        raise


def _wait(pending: dict[str, Attempt], read_state, resubmit, pool: str, deadline: float, timeout: float,
          max_tries: int, poll_seconds: float, log, clock, sleep) -> None:
    while pending:
        for a in list(pending.values()):
            state, message = read_state(a.run_id)
            if state == "COMPLETED":
                del pending[a.spec]
            elif state in ("CANCELLED", "CANCELLING"):
                raise UserError(f"shard {a.label} (run {a.run_id}) was cancelled")
            elif state in ("CRASHED", "FAILED"):
                if state == "FAILED" and (line := user_error_line(message)):
                    raise UserError(f"shard {a.label}: {line}")
                if a.tries >= max_tries:
                    raise UserError(f"shard {a.label} {state.lower()} {a.tries} times (last run {a.run_id}: "
                                    f"{(message or '').splitlines()[0] if message else 'no message'})")
                a.history.append(a.run_id)
                a.run_id, a.tries = resubmit(a), a.tries + 1
                log(f"shard {a.label}: run {a.history[-1]} {state.lower()}"
                    f"{' (' + message.splitlines()[0] + ')' if message else ''}; submitted again as run {a.run_id} "
                    f"(try {a.tries} of {max_tries}), resuming from the store")
        if not pending:
            break
        if clock() >= deadline:
            states = ", ".join(f"{a.label}: {read_state(a.run_id)[0]}" for a in pending.values())
            raise UserError(f"{len(pending)} shard run(s) not finished after {timeout:.0f} s ({states}); runs still "
                            f"SCHEDULED or PENDING mean no free worker of pool '{pool}' took them: start one with "
                            f"`scripts/worker.sh {pool}` on any machine that reaches the store")
        sleep(poll_seconds)
