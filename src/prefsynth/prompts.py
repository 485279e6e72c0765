"""Stage 2, prompts: Jinja2 templates from `prompts/`, rendered in a sandbox.

Titles and reviews are passed as variables, so `{{ 7*7 }}` inside a title is printed, never evaluated. The template
set is hashed (every file in the folder, names included) for the card; each cache key uses the hash of just the
templates that shaped it (`hash_for`), so editing the judge prompt does not throw away generated reviews.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from prefsynth.config import opt
from prefsynth.constants import PROMPTS_DIR
from prefsynth.errors import UserError


# template name -> variables it must use (and the only ones it may use besides its own imports)
REQUIRED = {
    "negative": {"title"},
    "positive": {"title"},
    "dataset": {"title"},
    "judge": {"review"},
}
POLARITIES = ("negative", "positive")
# On-policy sampling: reviews written from the stored dataset prompt itself, their polarity left to the judge.
NEUTRAL = "neutral"


@dataclass
class PromptConfig:
    dir: Path = opt(PROMPTS_DIR, "folder holding negative.j2, positive.j2, dataset.j2 and judge.j2",
                    alias="prompts")


def template_for(polarity: str) -> str:
    """The template a review of this polarity is generated from (NEUTRAL: the dataset prompt)."""
    return "dataset" if polarity == NEUTRAL else polarity


class Templates:
    """The loaded, validated template set."""

    def __init__(self, cfg: PromptConfig):
        folder = Path(cfg.dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"prompt folder {folder} does not exist")
        self.dir = folder
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(folder), undefined=jinja2.StrictUndefined, autoescape=False,
            keep_trailing_newline=False,
        )
        self._files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                       if p.is_file() and p.suffix == ".j2"}
        self.hash = self.hash_for(*(p[:-3] for p in self._files))
        self._compiled: dict[str, jinja2.Template] = {}
        for name, required in REQUIRED.items():
            path = folder / f"{name}.j2"
            if not path.is_file():
                raise UserError(f"prompt template {path} is missing")
            try:
                source = path.read_text(encoding="utf-8")
                ast = self.env.parse(source, name=path.name)
                self._compiled[name] = self.env.get_template(path.name)
            except jinja2.TemplateSyntaxError as e:
                raise UserError(f"prompt template {e.filename or path.name}:{e.lineno}: {e.message}") from None
            except UnicodeDecodeError:
                raise UserError(f"prompt template {path} is not UTF-8") from None
            used = meta.find_undeclared_variables(ast)
            if missing := required - used:
                raise UserError(f"prompt template {path.name} must use {{{{ {sorted(missing)[0]} }}}}")
            if unknown := used - required:
                raise UserError(f"prompt template {path.name} uses unknown variable {sorted(unknown)[0]!r} "
                                f"(available: {', '.join(sorted(required))})")

    def hash_for(self, *names: str) -> str:
        """Hash of the named templates plus every partial (a file not among the four required templates, such as
        `_examples.j2`): an import can pull any of them in, so each counts for every template."""
        wanted = {f"{n}.j2" for n in names} | {f for f in self._files if f[:-3] not in REQUIRED}
        h = hashlib.sha256()
        for name in sorted(wanted & set(self._files)):
            h.update(name.encode() + b"\0" + self._files[name] + b"\0")
        return h.hexdigest()[:16]

    def render(self, name: str, **variables: str) -> str:
        try:
            return self._compiled[name].render(**variables).strip()
        except jinja2.TemplateError as e:  # e.g. an imported macro with an error
            raise UserError(f"prompt template {name}.j2 failed to render: {e}") from None

    def render_many(self, name: str, values: list[str], var: str = "title") -> list[str]:
        """Render one template for many values of its single variable.

        The template is rendered twice with sentinel values; if the output is the same text with only the sentinel
        swapped (the variable is inserted verbatim, as in the shipped templates), every row is a string join of the
        fixed parts (vectorised in polars). A template that transforms the variable falls back to one render per row.
        """
        import polars as pl

        s1, s2 = "\x00\x01prefsynth-a\x01\x00", "\x00\x01prefsynth-B\x01\x00"
        r1, r2 = self.render(name, **{var: s1}), self.render(name, **{var: s2})
        parts = r1.split(s1)
        if len(parts) < 2 or s2.join(parts) != r2 or any(s1 in p or s2 in p for p in parts):
            return [self.render(name, **{var: v}) for v in values]
        col = pl.Series("v", values, dtype=pl.Utf8)
        # render() strips the whole text; a value at either end must be stripped the same way
        exprs: list[pl.Expr] = []
        for i, part in enumerate(parts):
            if i:
                exprs.append(pl.col("v"))
            if part:
                exprs.append(pl.lit(part))
        out = pl.DataFrame({"v": col}).select(pl.concat_str(exprs).str.strip_chars().alias("r"))
        return out.get_column("r").to_list()

    def generation(self, title: str, polarity: str) -> str:
        return self.render(template_for(polarity), title=title)

    def system(self) -> str | None:
        """The system message for generation (`system.j2`, optional; no variables), or None without one."""
        if "system.j2" not in self._files:
            return None
        try:
            return self.env.get_template("system.j2").render().strip() or None
        except jinja2.TemplateError as e:
            raise UserError(f"prompt template system.j2 failed to render: {e}") from None

    def dataset(self, title: str) -> str:
        return self.render("dataset", title=title)

    def judge(self, review: str) -> str:
        return self.render("judge", review=review)

