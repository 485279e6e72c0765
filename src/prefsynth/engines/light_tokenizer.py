"""A client-side tokenizer for the engine server: what `ServerBackend` needs of a Hugging Face tokenizer (encode, chat
template) without importing transformers.

Why it is hand-written (measured): importing transformers also imports torch, ~2.5 s of every `--engine` run on two
cores, a run that otherwise imports neither torch nor vLLM. `ServerBackend._client_tokenizer` checks its rendering
against the server's own at connect and falls back to transformers' tokenizer on any difference.
"""

from __future__ import annotations

from pathlib import Path


class LightTokenizer:
    """The part of a Hugging Face tokenizer a client of the engine uses (encode, chat template), read with the
    `tokenizers` library and jinja2 the way transformers renders chat templates: importing transformers would also
    import torch, ~2.5 s of every run on two cores. `ServerBackend` checks it against the server's own rendering."""

    def __init__(self, folder: Path):
        import json

        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self.special = {k: (v["content"] if isinstance(v, dict) else v) for k, v in config.items()
                        if k.endswith("_token") and isinstance(v, (str, dict))}
        self._compiled = None
        if template:
            import datetime

            import jinja2.ext
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise jinja2.exceptions.TemplateError(message)

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: \
                json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
            self._compiled = env.from_string(template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text)}

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        assert not tokenize and self._compiled is not None
        return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
