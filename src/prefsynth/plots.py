"""PNG plots people would rather look at than read. Matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

import io

import polars as pl


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No timestamp or software tag in the PNG: identical data gives identical bytes.
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _figure().close(fig)
    return buf.getvalue()


def judge_histogram(gens: pl.DataFrame, scores: pl.DataFrame, chosen: str) -> bytes:
    """Distribution of judged negativity for the reviews asked to be negative vs positive, one panel per judge."""
    plt = _figure()
    df = gens.select("key", "polarity").join(scores, on="key", how="inner")
    cols = [(c, label) for c, label in (("judge_llm", "LLM judge P(negative)"),
                                        ("judge_lexicon", "lexicon negativity (VADER)"),
                                        ("judge_negative", "combined")) if df.get_column(c).is_not_nan().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.2), squeeze=False)
    bins = [i / 20 for i in range(21)]
    for ax, (c, label) in zip(axes[0], cols):
        for pol, color in (("negative", "#c0392b"), ("positive", "#2e86c1")):
            vals = df.filter(pl.col("polarity") == pol).get_column(c).drop_nans().to_list()
            role = "chosen" if pol == chosen else "rejected"
            ax.hist(vals, bins=bins, alpha=0.6, color=color, label=f"asked {pol} ({role}, n={len(vals)})")
        ax.axvline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_xlim(0, 1)
    axes[0][0].set_ylabel("reviews")
    axes[0][0].legend(fontsize=7, loc="upper center")
    fig.suptitle("How negative is each review? (right of 0.5 = judged negative)", fontsize=10)
    return _png(fig)


def training_curves(history: list[dict], mode: str) -> bytes:
    """Loss, rewards, and reward accuracy (DPO) or KL (KTO) against steps, train solid and validation dashed."""
    plt = _figure()
    third = ("rewards/accuracies", "reward accuracy") if mode == "dpo" else ("kl", "KL estimate")
    panels = [("loss", "loss"), ("rewards/chosen", "rewards (chosen / rejected)"), ("rewards/margins", "reward margin"),
              third]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))

    def series(key: str) -> tuple[list[int], list[float]]:
        pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
        return [p[0] for p in pts], [p[1] for p in pts]

    for ax, (key, title) in zip(axes, panels):
        keys = [key, "rewards/rejected"] if key == "rewards/chosen" else [key]
        for k, color in zip(keys, ("#c0392b", "#2e86c1")):
            name = k.split("/")[-1] if len(keys) > 1 else "train"
            xs, ys = series(k)
            if xs:
                ax.plot(xs, ys, color=color, lw=1.2, label=name)
            xs, ys = series(f"eval_{k}")
            if xs:
                ax.plot(xs, ys, color=color, lw=1.2, ls="--", marker="o", ms=3,
                        label=f"{name} (validation)" if len(keys) > 1 else "validation")
        if key in ("rewards/chosen", "rewards/margins"):
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{mode.upper()} training", fontsize=10, y=1.03)
    return _png(fig)
