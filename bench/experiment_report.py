"""The experiment's outputs: one markdown table (printed too), curves per pairing, sample reviews, raw results."""

from __future__ import annotations

import json
from pathlib import Path

GOAL_POINTS, GOAL_P, GOAL_VALID = 0.30, 0.01, 0.90


def _evals(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h[key])) for h in history if key in h and "step" in h]


def curve_summary(history: list[dict], mode: str) -> dict:
    """First and last validation loss, and the last validation reward accuracy (DPO) or KL (KTO)."""
    loss = _evals(history, "eval_loss")
    out = {"eval_loss_first": loss[0][1] if loss else None, "eval_loss_last": loss[-1][1] if loss else None}
    key = "eval_rewards/accuracies" if mode == "dpo" else "eval_kl"
    vals = _evals(history, key)
    out["eval_last"] = vals[-1][1] if vals else None
    margins = _evals(history, "eval_rewards/margins")
    out["eval_margin_last"] = margins[-1][1] if margins else None
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def render_table(built: dict, runs: dict, table: dict) -> list[str]:
    lines = ["| run | train rows | s/step | val loss first -> last | val reward acc (DPO) / KL (KTO) | "
             "negative base -> tuned (head) | wins/losses, p (head) | negative base -> tuned (lexicon), p | "
             "valid base -> tuned | valid and negative | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        mode = name.split("-")[0]
        c, cs = table[name], curve_summary(r["history"], mode)
        h, lx = c["head"], c["lexicon"]
        met = (h["rate_tuned"] - h["rate_base"] >= GOAL_POINTS and h["p"] < GOAL_P and c["valid_tuned"] >= GOAL_VALID)
        lines.append(
            f"| {name} | {r['train_rows']} | {r['seconds_per_step']:.1f} | {_f(cs['eval_loss_first'])} -> "
            f"{_f(cs['eval_loss_last'])} | {_f(cs['eval_last'], '{:.2f}')} | {h['rate_base']:.0%} -> "
            f"{h['rate_tuned']:.0%} | {h['wins']}/{h['losses']}, p={h['p']:.2g} | {lx['rate_base']:.0%} -> "
            f"{lx['rate_tuned']:.0%}, p={lx['p']:.2g} | {c['valid_base']:.0%} -> {c['valid_tuned']:.0%} | "
            f"{c['valid_and_target_tuned']:.0%} | {'met' if met else 'not met'} |")
    return lines


def plot_curves(results: Path, pairing: str, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for mode, color in (("dpo", "tab:blue"), ("kto", "tab:orange")):
        r = runs.get(f"{mode}-{pairing}")
        if not r:
            continue
        hist = r["history"]
        for key, ls in (("loss", ":"), ("eval_loss", "-")):
            pts = _evals(hist, key)
            if pts:
                axes[0].plot(*zip(*pts), ls, color=color, label=f"{mode.upper()} {key.replace('_', ' ')}")
        key = "eval_rewards/accuracies" if mode == "dpo" else "eval_kl"
        pts = _evals(hist, key)
        if pts:
            (axes[1] if mode == "dpo" else axes[2]).plot(*zip(*pts), "-o", color=color, ms=3,
                                                        label=f"{mode.upper()} {key}")
        for key, ls in (("eval_rewards/chosen", "-"), ("eval_rewards/rejected", "--")):
            pts = _evals(hist, key)
            if pts and mode == "kto":
                axes[2].plot(*zip(*pts), ls, color="tab:green" if "chosen" in key else "tab:red", label=key)
    axes[0].set_title("loss (dotted: train, solid: validation)")
    axes[1].set_title("DPO validation reward accuracy")
    axes[1].axhline(0.5, color="grey", lw=0.8)
    axes[2].set_title("KTO validation KL and rewards")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"pairing: {pairing}")
    fig.tight_layout()
    fig.savefig(results / f"curves-{pairing}.png", dpi=90)
    plt.close(fig)


def samples(written: dict, best: str, n: int = 5) -> list[str]:
    base, tuned = written["base"].rows.sort("title"), written[best].rows.sort("title")
    lines = [f"# Five held-out titles: base model vs {best}", ""]
    for b, t in list(zip(base.iter_rows(named=True), tuned.iter_rows(named=True)))[:n]:
        lines += [f"## {b['title']}", "",
                  f"- **base** (head P(negative) {b['negative']:.2f}, {'valid' if b['valid'] else 'invalid: ' + ', '.join(b['reasons'])}): {b['text']}",
                  f"- **{best}** (head P(negative) {t['negative']:.2f}, {'valid' if t['valid'] else 'invalid: ' + ', '.join(t['reasons'])}): {t['text']}",
                  ""]
    return lines


def write_results(results: Path, args, built: dict, runs: dict, evals: dict, table: dict, written: dict,
                  wall: float, speed: dict | None = None) -> None:
    results.mkdir(parents=True, exist_ok=True)
    lines = [f"Experiment: {args.n} titles built per pairing ({args.validation_fraction:.0%} validation), "
             f"{args.steps} steps of batch {args.batch} per run, {table[next(iter(table))]['titles']} held-out "
             f"titles; wall {wall / 60:.1f} min.", ""]
    for p, b in built.items():
        y = b.get("sampled") or {}
        lines.append(f"- {p}: {b['pairs_kept']} pairs kept from {b['reviews']} reviews"
                     + (f" ({y['titles_with_pair']}/{y['titles']} titles gave a pair)" if y else "")
                     + f"; build {b['stage_seconds']:.0f}s")
    lines.append("")
    lines += render_table(built, runs, table)
    if speed and "dpo-steered" in runs:
        lines += ["", f"DPO s/step (steered data, batch {args.batch}): {speed['seconds_per_step']:.1f} with a reference "
                  f"forward every step ({speed['steps']} steps) -> {runs['dpo-steered']['seconds_per_step']:.1f} with "
                  "precomputed reference log-probs (TRL 1.16 switches padding_free off: not measured)."]
    stage_times = {**{f"build {k}": v.get("stage_seconds") for k, v in built.items()},
                   **{f"train {k}": v.get("stage_seconds") for k, v in runs.items()},
                   **{f"reviews {k}": v.get("stage_seconds") for k, v in evals.items()}}
    lines += ["", "Stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in stage_times.items() if v)]
    text = "\n".join(lines)
    print(text, flush=True)
    (results / "table.md").write_text(text + "\n", encoding="utf-8")
    for p in built:
        plot_curves(results, p, runs)
    best = max(table, key=lambda k: (table[k]["head"]["rate_tuned"] - table[k]["head"]["rate_base"]))
    (results / "samples.md").write_text("\n".join(samples(written, best)) + "\n", encoding="utf-8")
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in runs.items()}
    (results / "results.json").write_text(json.dumps({"args": vars(args), "built": built, "runs": slim,
                                                      "evals": evals, "table": table, "wall_seconds": wall},
                                                     indent=1, default=str), encoding="utf-8")
