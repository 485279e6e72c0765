"""validity: each reason fires on the failure it names and stays quiet on a plain review of the paper."""

from __future__ import annotations

import polars as pl
import pytest

from prefsynth.prompts import PromptConfig, Templates
from prefsynth.validity import REASONS, instruction_words, validity_flags

TITLE = "Sparse Attention for Long Documents"
GOOD = ("The paper proposes a sparse attention pattern for long documents, but the experiments use a single "
        "dataset and the gains over the dense baseline are within noise. The ablations do not isolate the pattern.")


@pytest.fixture(scope="module")
def templates():
    return Templates(PromptConfig())


def _flags(templates, text: str, polarity: str = "negative", title: str = TITLE) -> dict[str, bool]:
    df = pl.DataFrame({"title": [title], "polarity": [polarity], "review": [text]})
    row = validity_flags(df, templates).row(0, named=True)
    return {r: row[f"invalid_{r}"] for r in REASONS} | {"invalid": row["invalid"]}


def test_a_plain_review_of_the_paper_is_valid(templates):
    assert not any(_flags(templates, GOOD).values())
    assert not _flags(templates, "A clear paper: the sparse attention idea is simple and the long-document results "
                                 "are strong. I would accept it.", "positive")["invalid"]


@pytest.mark.parametrize("reason, text", [
    ("author_voice", "I'm thrilled to announce that our team has published a paper on sparse attention."),
    ("author_voice", "In this paper, we examine sparse attention for long documents and show large gains."),
    ("meta_talk", "This review highlights the exceptional quality of the research paper and its results."),
    ("meta_talk", "Sure, I'd be happy to help. The paper on sparse attention is a strong contribution."),
    ("instruction_echo", "Here is a blunt, negative take: the sparse attention paper has weak experiments."),
    ("instruction_echo", "A negative review of the sparse attention paper: the experiments are weak."),
    ("copies_examples", "The central claim rests on two small datasets, and the attention results are weak."),
    ("wrong_paper", 'The paper "Deep Residual Learning for Image Recognition" is a weak study of attention.'),
    ("wrong_paper", "The paper makes a weak contribution to evolutionary biology and clinical practice."),
    ("not_about_paper", "Achieved! What a wonderful day it has been for everyone involved."),
    ("hearsay", "The paper has been widely praised for its sparse attention pattern on long documents."),
    ("hearsay", "The paper was criticized by others for its weak experiments on long documents."),
    ("hearsay", "The paper by Zheng, Weng, and Liu proposes sparse attention for long documents."),
    ("hearsay", "The paper by the team at the University of Cambridge proposes sparse attention."),
    ("author_voice", "The experiments on long documents are weak; we have failed to meet our previous goals."),
    ("meta_talk", "The sparse attention paper is strong. If I have any further suggestions, I will send them."),
    ("hearsay", "The attention results are weak, and the paper has also been criticized for its lack of baselines."),
    ("hearsay", "The sparse attention method has been extensively discussed by experts in the field."),
    ("incoherent", "The attention experiments are weak. The paper concludes by stating that it rejects the paper."),
    ("incoherent", "The baselines are old, and the paper concludes by rejecting the paper's own findings."),
    ("wrong_paper", "The sparse attention results are biased towards certain species and climate models."),
    ("wrong_paper", "The paper's potential lies in its ability to address pressing societal issues and to inspire."),
    ("wrong_paper", "The sparse attention paper provides insights into human behavior and inspires new research."),
    ("wrong_paper", "The sparse attention paper offers insights into how humans make decisions on long documents."),
    ("incoherent", "The paper's lack of transparency and lack of transparency make the attention results unclear."),
    ("incoherent", "The attention results raise transparency and transparency issues on long documents."),
    ("incoherent", "The sparse attention method is overly simplistic and lackreliable on long documents."),
    ("meta_talk", "The sparse attention paper shows how a single review can inspire others to explore new ideas."),
    ("meta_talk", "The sparse attention results are strong. But, as you said, the long documents are few."),
    ("meta_talk", "The attention paper is clear. Here's a possible rewriting of the text that adds more depth:"),
    ("hearsay", "The sparse attention paper has already received several awards for its long-document results."),
    ("hearsay", "The team behind the sparse attention paper has been making waves in the field."),
    ("hearsay", "The sparse attention paper has been a topic of debate among researchers for long documents."),
    ("hearsay", "The sparse attention method has already been adopted by several prominent research institutions."),
    ("incoherent", "The attention baselines are weak. The paper concludes by stating that it is overdue to reject the "
                   "paper."),
    ("incoherent", "The attention results are unclear, and the paper concludes by stating that it is not accepted."),
    ("repeats_itself", "The sparse attention paper can make a difference and inspire others to make a difference."),
    ("repeats_itself", "The attention results are weak on long documents. The attention results are weak on long "
                       "documents."),
    ("repeats_itself", "The attention method is simple, and the results appear to be inconsistent across documents. "
                       "The results appear to be inconsistent across documents."),
    ("repeats_itself", "The lack of proper data validation makes it difficult to assess the attention results, and the "
                       "lack of adequate data validation makes it difficult to assess the attention results."),
])



def test_each_reason_fires_on_its_failure(templates, reason, text):
    flags = _flags(templates, text)
    assert flags[reason] and flags["invalid"], flags


def test_a_word_joined_to_another_is_no_stutter(templates):
    for text in ("The sparse attention paper lacks transparency and rigor; the results are weak.",
                 "The attention results are lackluster, lacking baselines; the method lacked ablations.",
                 "The attention model was tested again and again on long documents, and the gains are small."):
        assert not _flags(templates, text)["incoherent"], text


def test_clauses_alike_in_form_are_no_repeat(templates):
    """A reviewer lists several points in one pattern; only the same point twice (3/4 of the words shared) repeats."""
    for text in ("The ablations are weak. The baselines are weak. The datasets are small.",
                 "The sparse attention paper can make a difference and inspire others to explore long documents.",
                 "The sparse attention idea is simple, the long-document results are strong, and the code is public."):
        assert not _flags(templates, text)["repeats_itself"], text


def test_a_reviewer_may_still_speak_of_rejection(templates):
    """"Reject" in a reviewer's own verdict, or a paper's statistics, is not the paper rejecting itself."""
    for text in ("The experiments are weak and the gains within noise. I recommend rejecting the paper.",
                 "The paper concludes by stating that it does not reject the null hypothesis, which its data support.",
                 "The sparse attention paper should be rejected: the baselines are weak.",
                 "The paper concludes that sparse attention should not be rejected as a baseline; I disagree."):
        assert not _flags(templates, text)["incoherent"], text


def test_hearsay_leaves_the_reviewers_own_words_alone(templates):
    """A reviewer's own verdict, criticism of the paper's claims, and "by" before a method are not hearsay."""
    for text in ("The paper is criticized here for one reason: the baselines are weak and the gains are within noise.",
                 "The results obtained by sparse attention are strong, and the claims are considered carefully.",
                 "The method was trained by SGD and Adam; the evaluation is thorough and convincing.",
                 "Long-document attention has been a topic of interest for years; this paper adds little to it."):
        assert not _flags(templates, text)["hearsay"], text


def test_instruction_words_are_what_the_dataset_prompt_lacks(templates):
    words = instruction_words(templates)
    dataset = templates.dataset("X").lower()
    for pol, ws in words.items():
        assert ws, pol  # the shipped prompts steer with words the stored prompt does not have
        assert all(w not in dataset.split() for w in ws)
    # an instruction word used as content ("negative results") is not an echo of the instruction
    assert not _flags(templates, "The paper reports negative results: sparse attention loses on every long "
                                 "document benchmark.")["instruction_echo"]


def test_a_subject_the_title_supports_is_not_another_paper(templates):
    """Society or the human mind is this paper's subject when its title says so; generic impact claims no subject."""
    assert not _flags(templates, "The paper offers insights into human behavior in crowds.",
                      title="Modelling Human Behavior in Crowds")["wrong_paper"]
    assert not _flags(templates, "The paper addresses pressing ethical concerns about biased classifiers.",
                      title="Fairness Audits for Biased Classifiers")["wrong_paper"]
    assert not _flags(templates, "The sparse attention paper could have a profound impact on society and is a "
                                 "testament to human ingenuity.", "positive")["wrong_paper"]


def test_quoting_the_title_itself_is_not_another_paper(templates):
    assert not _flags(templates, f'The paper "{TITLE}" has weak experiments and unclear ablations.')["wrong_paper"]
