"""What a run tells its reader: the result lines, the verdict, and the output folder's README.md (model card)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from prefsynth.errors import one_line
from prefsynth.train.config import TrainConfig

METRIC_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "kl")


@dataclass
class TrainResult:
    out: str
    mode: str
    base_model: str
    steps: int
    seconds: float
    seconds_per_step: float
    train: dict = field(default_factory=dict)  # last logged training metrics
    eval: dict = field(default_factory=dict)  # last validation metrics (eval_loss, eval_rewards/...)
    evaluation: dict = field(default_factory=dict)  # negativity rates and win rate (empty when skipped)
    pushed: dict | None = None

    def lines(self) -> list[str]:
        out = [f"{self.mode.upper()} adapter on {self.base_model} at {self.out}",
               f"  {self.steps} steps in {self.seconds:.0f}s ({self.seconds_per_step:.2f}s/step)"]
        if self.train:
            out.append("  train: " + ", ".join(f"{k} {self.train[k]:.4g}" for k in METRIC_KEYS if k in self.train))
        if self.eval:
            out.append("  validation: " + ", ".join(f"{k} {self.eval['eval_' + k]:.4g}" for k in METRIC_KEYS
                                                    if "eval_" + k in self.eval))
        e = self.evaluation
        if e:
            out.append(f"  evaluation on {e['titles']} validation titles: negativity base "
                       f"{e['negativity_rate_base']:.0%} -> tuned {e['negativity_rate_tuned']:.0%}; tuned review "
                       f"more {e['target']} than base for {e['win_rate']:.0%} of titles")
        if self.pushed:
            out.append(f"  pushed to {self.pushed['repo_id']}@{self.pushed['revision'][:12]}")
        return out


def verdict(e: dict) -> str:
    """One sentence: did the data move the model toward the chosen polarity, and could a coin have done it?"""
    if not e:
        return "No evaluation was run (eval.titles = 0 or no validation titles)."
    d = e["negativity_rate_tuned"] - e["negativity_rate_base"]
    if e["chosen"] != "negative":
        d = -d
    p = e["sign_test_p"]
    moves = {j: v["negativity_rate_tuned"] - v["negativity_rate_base"] for j, v in e.get("by_judge", {}).items()}
    if len(moves) == 2 and min(moves.values()) < 0 < max(moves.values()):
        # Seen on SmolLM2: VADER 10% -> 70% negative while the 135M LLM judge said 20% -> 0%.
        return (f"The judges disagree on the direction (negativity rate "
                f"{', '.join(f'{j} {100 * v:+.0f} pp' for j, v in moves.items())}): read the samples before "
                f"trusting the combined score (win rate {e['win_rate']:.0%}, sign test p = {p:.3g}).")
    if e["win_rate"] > 0.5 and d >= 0 and p < 0.05:
        return (f"The data worked: the tuned model's reviews are more {e['target']} than the base model's "
                f"(win rate {e['win_rate']:.0%}, sign test p = {p:.3g}).")
    if e["win_rate"] < 0.5 and p < 0.05:
        return (f"The tuned model moved AWAY from {e['target']} reviews (win rate {e['win_rate']:.0%}, p = {p:.3g}): "
                f"check the chosen/rejected direction and the label noise of the data.")
    return (f"No clear effect at n={e['titles']} titles (win rate {e['win_rate']:.0%}, sign test p = {p:.3g}): "
            f"train longer, or evaluate on more titles.")


def render_report(cfg: TrainConfig, metrics: dict) -> str:
    e = metrics.get("evaluation") or {}
    tr, ev = metrics.get("train", {}), metrics.get("eval", {})
    base = metrics["base_model"]
    front = ["---", "library_name: peft", f"tags: [prefsynth, trl, {cfg.mode}, lora]"]
    if metrics["base_model"].get("hub_id"):
        front.append(f"base_model: {json.dumps(base['hub_id'])}")
    if metrics["data"].get("hub_id"):
        front.append(f"datasets: [{json.dumps(metrics['data']['hub_id'])}]")
    front.append("---")
    lines = front + [
        f"# {cfg.mode.upper()} LoRA adapter ({metrics['data']['config']} data)", "",
        f"**{verdict(e)}**", "",
        f"- base model: {base['name']} (fingerprint `{base['fingerprint'][:12]}`)",
        f"- data: `{metrics['data']['source']}`" + (f" @ `{metrics['data']['revision']}`"
                                                    if metrics['data'].get('revision') else "")
        + f", {metrics['data']['train_rows']} train / {metrics['data']['validation_rows']} validation rows",
        f"- {metrics['steps']} steps, batch {metrics['hyperparameters']['batch_size']}, lr {cfg.lr:g} "
        f"({cfg.scheduler}), beta {cfg.beta:g}, LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} "
        f"dropout={cfg.lora.dropout:g}, max_length {cfg.max_length} (truncation: {cfg.truncation})",
        f"- device {metrics['device']['kind']} ({metrics['device']['dtype']}, {metrics['device']['optim']}), "
        f"{metrics['seconds']:.0f}s, {metrics['seconds_per_step']:.2f}s/step", "",
        "## Evaluation: reviews of validation titles from the neutral dataset prompt", "",
    ]
    if e:
        lines += [
            f"Each model wrote one review per title ({e['titles']} titles, same sampling seed for both); the "
            f"polarity judge (LLM judge = base model with the adapter off, plus VADER) scored them.", "",
            "| | base | tuned |", "|---|---|---|",
            f"| negativity rate (combined judge > 0.5) | {e['negativity_rate_base']:.0%} | "
            f"{e['negativity_rate_tuned']:.0%} |",
            f"| mean negativity score | {e['mean_negativity_base']:.3f} | {e['mean_negativity_tuned']:.3f} |",
            *[f"| negativity rate, {j} judge | {v['negativity_rate_base']:.0%} | {v['negativity_rate_tuned']:.0%} |"
              for j, v in e["by_judge"].items()],
            *[f"| mean score, {j} judge | {v['mean_base']:.3f} | {v['mean_tuned']:.3f} |"
              for j, v in e["by_judge"].items()],
            f"| mean words per review | {e['mean_words_base']} | {e['mean_words_tuned']} |", "",
            f"Tuned review more {e['target']} than the base review for the same title: **{e['win_rate']:.0%}** "
            f"of titles ({e['wins']} wins, {e['losses']} losses, {e['ties']} ties; ties count half; two-sided "
            f"sign test p = {e['sign_test_p']:.3g}).", "",
            "### Samples", "",
        ]
        for s in e["samples"][:3]:
            # one_line: a newline inside a list item would end it
            lines += [f"*{s['title']}*", "",
                      f"- base ({s['score_base']:.2f}): {one_line(s['base'], limit=400)}",
                      f"- tuned ({s['score_tuned']:.2f}): {one_line(s['tuned'], limit=400)}", ""]
    else:
        lines += ["Not run.", ""]
    keys = [k for k in METRIC_KEYS if k in tr or f"eval_{k}" in ev]
    lines += ["## Training metrics (last logged values)", "", "| metric | train | validation |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(tr.get(k))} | {_fmt(ev.get('eval_' + k))} |" for k in keys]
    lines += ["", "![training curves](training_curves.png)", "",
              "Reading the curves: DPO rewards are log-probability ratios against the base model, times beta. Both "
              "chosen and rejected rewards often go negative (the model lowers the likelihood of everything it "
              "was shown); what matters is the margin and the accuracy, and above all the evaluation above.", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}"
