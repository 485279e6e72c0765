"""validity_eval and the build's validity figure: measured per sampling setting, quoted for the build's own."""

from __future__ import annotations

import json

import polars as pl

from prefsynth import quality
from prefsynth.prompts import PromptConfig, Templates
from prefsynth.validity_eval import evaluate, load_labels

OLD = {"temperature": 0.7, "top_p": 0.95, "max_tokens": 96}
NEW = {"temperature": 0.5, "top_p": 0.95, "max_tokens": 96, "stop": ["\n\n"]}
GOOD = "The paper proposes sparse attention, but the experiments use one dataset and the gains are within noise."
AUTHOR = "I'm thrilled to announce that our team has published a paper on sparse attention."
VAGUE = "The paper is a testament to the power of creativity and the dedication of everyone in the field."


def _labels(tmp_path) -> pl.DataFrame:
    rows = [(GOOD, True, OLD), (AUTHOR, False, OLD), (VAGUE, False, OLD), (GOOD + " Reject.", True, NEW),
            (VAGUE + " Truly.", False, NEW), (GOOD + " Yet it is also clever.", True, NEW)]
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps({"title": "Sparse Attention for Long Documents", "polarity": "negative",
                                        "review": r, "valid": v, "label": "mixed" if "clever" in r else "negative",
                                        "reasons": [] if v else ["other"], "sampling": s | {"seed": 3}}) + "\n"
                            for r, v, s in rows))
    return load_labels(path)


def test_rule_kept_validity_is_counted_per_sampling(tmp_path):
    report = evaluate(_labels(tmp_path), Templates(PromptConfig()))
    # the rules drop the author-voice text; the vague one passes them and is not valid by reading
    assert (report["rule_valid"], report["rule_valid_truly_valid"]) == (5, 3)
    by = report["by_sampling"]
    assert by[quality.sampling_key(OLD)] == {"labelled": 3, "rule_valid": 2, "rule_valid_truly_valid": 1,
                                             "rule_valid_polarised": 1}
    # the mixed one is valid but not of the asked tone
    assert by[quality.sampling_key(NEW | {"seed": 9})] == {"labelled": 3, "rule_valid": 3, "rule_valid_truly_valid": 2,
                                                           "rule_valid_polarised": 1}


def _measured(tmp_path, monkeypatch) -> None:
    """A validity.json with one figure for texts sampled with NEW and one over all labels."""
    measured = tmp_path / "validity.json"
    monkeypatch.setattr(quality, "VALIDITY_MEASURED", measured)
    measured.write_text(json.dumps({"rules_version": "r1", "rule_valid": 10, "rule_valid_truly_valid": 5,
                                    "labelled": 12, "by_sampling": {quality.sampling_key(NEW): {
                                        "labelled": 4, "rule_valid": 4, "rule_valid_truly_valid": 4,
                                        "rule_valid_polarised": 3}}}))


def test_a_build_quotes_the_figure_for_its_own_sampling(tmp_path, monkeypatch):
    _measured(tmp_path, monkeypatch)
    same = quality.validity_estimate("r1", NEW | {"seed": 0})
    assert same["same_sampling"] and same["value"] == 1.0 and same["n"] == 4 and same["polarised"]["value"] == 0.75
    assert "of the asked tone" in " ".join(quality.describe({"validity": same}))
    other = quality.validity_estimate("r1", OLD)
    assert not other["same_sampling"] and other["value"] == 0.5 and other["n"] == 10 and "polarised" not in other
    assert "sampled with other settings" in " ".join(quality.describe({"validity": other}))
    assert quality.validity_estimate("edited rules", NEW) == {}  # other rules: not measured, nothing borrowed


def test_judge_eval_leaves_out_texts_a_judge_picked():
    """Kept pairs passed the judge's consistency check: scoring the judge on them would flatter it. The shipped
    accuracy (data/judge/measured.json) was measured on exactly the set that remains."""
    from prefsynth.judge_eval import EVAL_SETS, MEASURED, load_set

    labels = [json.loads(line) for line in EVAL_SETS["generated"].read_text().splitlines() if line.strip()]
    picked = [r for r in labels if r.get("judge_selected")]
    assert picked and all(r["review"] not in {x["review"] for x in load_set(EVAL_SETS["generated"])} for r in picked)
    n = json.loads(MEASURED.read_text())["judges"]["head+text"]["generated"]["n"]
    assert n == len(load_set(EVAL_SETS["generated"]))


def test_a_writers_texts_are_their_own_setting(tmp_path, monkeypatch):
    """Texts of the writer fail differently from the bundled model's: a build with the writer quotes the labels of
    the writer's texts, never those of the bundled model sampled the same way."""
    assert quality.writer_tag("SmolLM2-135M-Instruct", "ab" * 32) == {}
    tag = quality.writer_tag("SmolLM2-135M-Instruct + writer", "cd" * 32)
    assert tag == {"model": "SmolLM2-135M-Instruct + writer@" + "cd" * 6}
    _measured(tmp_path, monkeypatch)
    assert not quality.validity_estimate("r1", NEW | tag)["same_sampling"]


def test_texts_with_other_opening_words_are_their_own_setting(tmp_path, monkeypatch):
    """The opening words change what the model writes: a build with other ones does not quote the labels of texts
    that started with the plain opening."""
    from prefsynth.generate import PLAIN_OPENING

    assert quality.opening_tag(PLAIN_OPENING) == {}
    tag = quality.opening_tag("The paper|The authors")
    assert tag == {"opening": "The paper|The authors"}
    _measured(tmp_path, monkeypatch)
    assert quality.validity_estimate("r1", NEW | quality.opening_tag(PLAIN_OPENING))["same_sampling"]
    assert not quality.validity_estimate("r1", NEW | tag)["same_sampling"]


def test_the_shipped_figures_cover_the_default_writer():
    """data/judge/validity.json (make validity-eval) holds a figure for texts the default settings write with the
    shipped writer (its weights' fingerprint in the tag): the writer's kept reviews of held-out titles, read blind."""
    from prefsynth.generate import GenerateConfig
    from prefsynth.model import resolve_model
    from prefsynth.validity_eval import (CUT_TEST_LABELS, DEFAULT_TEST_LABELS, DPO2_TEST_LABELS, DPO_TEST_LABELS,
                                         NEURIPS_EVAL_LABELS, NEURIPS_TEST_LABELS, OPENING_TEST_LABELS,
                                         TEMPERATURE_LABELS, WRITER_EVAL_LABELS)

    writer = resolve_model("writer")
    default = {k: v for k, v in GenerateConfig().sampling().items() if k != "seed"} | quality.writer_tag(
        writer.name, writer.fingerprint) | quality.cut_tag(GenerateConfig().max_sentences)
    measured = [json.loads(k) for k in json.loads(quality.VALIDITY_MEASURED.read_text())["by_sampling"]]
    assert any({k: v for k, v in m.items() if k != "seed"} == default for m in measured), default
    for path in (WRITER_EVAL_LABELS, NEURIPS_EVAL_LABELS, NEURIPS_TEST_LABELS, DPO_TEST_LABELS, OPENING_TEST_LABELS,
                 DPO2_TEST_LABELS, TEMPERATURE_LABELS, CUT_TEST_LABELS, DEFAULT_TEST_LABELS):
        labelled = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # kept pairs: judge-eval must not score the judge on them
        assert all(r["judge_selected"] for r in labelled), path
