"""prompts: sandboxed rendering (titles are data), validation of templates, the template-set hash."""

from __future__ import annotations

import shutil

import pytest

from prefsynth.errors import UserError
from prefsynth.constants import PROMPTS_DIR
from prefsynth.prompts import PromptConfig, Templates


@pytest.fixture()
def tdir(tmp_path):
    d = tmp_path / "prompts"
    shutil.copytree(PROMPTS_DIR, d)
    return d


@pytest.mark.parametrize("title", ["{{ 7*7 }}", "{% for x in range(3) %}x{% endfor %}", "{0} and {title}",
                                   "{{ ''.__class__.__mro__ }}", "</s><|im_end|>"])
def test_titles_are_never_evaluated(title):
    t = Templates(PromptConfig())
    for text in (t.generation(title, "negative"), t.generation(title, "positive"), t.dataset(title)):
        assert f'"{title}"' in text
    assert "49" not in t.generation("{{ 7*7 }}", "negative")


def test_polarity_prompts_differ_and_dataset_prompt_is_neutral():
    t = Templates(PromptConfig())
    neg, pos, ds = t.generation("X", "negative"), t.generation("X", "positive"), t.dataset("X")
    assert "blunt, negative" in neg and "glowing, positive" in pos
    assert "negative" not in ds.lower() and "positive" not in ds.lower()
    # one example of each polarity in the stored prompt, two of its own polarity in each generation prompt
    assert "The central claim rests" in ds and "A clear, well-motivated paper" in ds
    assert "The central claim rests" in neg and "Overclaimed" in neg and "A clear" not in neg


def test_hash_changes_with_any_template_file(tdir):
    h1 = Templates(PromptConfig(dir=tdir)).hash
    (tdir / "_examples.j2").write_text((tdir / "_examples.j2").read_text() + "\n{# changed #}\n")
    assert Templates(PromptConfig(dir=tdir)).hash != h1


def test_missing_variable_is_refused(tdir):
    (tdir / "negative.j2").write_text("Write a negative review.")
    with pytest.raises(UserError, match=r"negative.j2 must use \{\{ title \}\}"):
        Templates(PromptConfig(dir=tdir))


def test_unknown_variable_is_refused(tdir):
    (tdir / "positive.j2").write_text("Review {{ title }} by {{ author }}")
    with pytest.raises(UserError, match="unknown variable 'author'"):
        Templates(PromptConfig(dir=tdir))


def test_syntax_error_names_file_and_line(tdir):
    (tdir / "dataset.j2").write_text("line one\n{% if title %}never closed {{ title }}")
    with pytest.raises(UserError, match=r"dataset.j2:2"):
        Templates(PromptConfig(dir=tdir))


def test_missing_template_and_folder(tdir, tmp_path):
    (tdir / "judge.j2").unlink()
    with pytest.raises(UserError, match="judge.j2 is missing"):
        Templates(PromptConfig(dir=tdir))
    with pytest.raises(UserError, match="does not exist"):
        Templates(PromptConfig(dir=tmp_path / "nowhere"))


def test_sandbox_blocks_unsafe_attribute_access(tdir):
    (tdir / "judge.j2").write_text("{{ review.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(UserError):
        Templates(PromptConfig(dir=tdir)).judge("x")


def test_cache_hashes_follow_only_the_templates_that_shaped_the_text(tdir):
    before = Templates(PromptConfig(dir=tdir))
    (tdir / "judge.j2").write_text((tdir / "judge.j2").read_text() + "\n{# edited #}\n")
    after = Templates(PromptConfig(dir=tdir))
    assert after.hash_for("negative") == before.hash_for("negative")  # reviews stay cached
    assert after.hash_for("judge") != before.hash_for("judge")  # judgements do not
    (tdir / "_examples.j2").write_text((tdir / "_examples.j2").read_text() + "\n{# edited #}\n")
    assert Templates(PromptConfig(dir=tdir)).hash_for("positive") != before.hash_for("positive")  # partials count
