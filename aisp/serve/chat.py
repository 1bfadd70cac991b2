"""Chat templates: messages -> prompt text, as transformers' `apply_chat_template` does.

Contract:
- `ChatTemplate.for_model(model_spec, tokenizer)` takes the model folder's template: the
  `chat_template` of tokenizer_config.json (a string, or a list of {name, template} from which
  "default" is used), else a `chat_template.jinja` file beside it (what newer transformers write).
  Presets and folders without one get `DEFAULT_TEMPLATE`, a plain documented format: the bos
  token, then one `role: content` line per message, then `assistant:` for the reply:

      <|bos|>system: Be brief.
      user: Hi
      assistant:

- Templates are untrusted input (they ship with downloaded models), so they run in jinja2's
  `ImmutableSandboxedEnvironment`, with HF's settings (trim_blocks, lstrip_blocks, loop
  controls) and helpers (`raise_exception`, `strftime_now`, a `tojson` that keeps non-ASCII).
  Variables: messages, add_generation_prompt (always True: the server asks for a reply), the
  special tokens' strings (bos_token, eos_token, ... from tokenizer_config.json, or decoded from
  the tokenizer's ids), tools=None.
- The rendered text already holds the template's special tokens, so callers encode it with
  `add_special_tokens=False` (as transformers does); a template error is a `ChatTemplateError`
  (the client's messages broke the template's rules: a 400).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aisp.model.presets import resolve_model
from aisp.model.tokenizer import Tokenizer

__all__ = ["ChatTemplate", "ChatTemplateError", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
            "mask_token")


class ChatTemplateError(ValueError):
    """The template refused the messages (raise_exception) or failed to render them."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    # HF's tojson: no HTML escaping, non-ASCII kept (jinja2's builtin escapes both).
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A compiled, sandboxed chat template plus the special-token strings it may use."""

    def __init__(self, source: str, special_tokens: dict[str, str], origin: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self.origin = origin   # where the template came from, for logs and errors
        self.special_tokens = special_tokens
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"the chat template from {origin} does not compile: {e}") from e

    @classmethod
    def for_model(cls, model_spec: str, tokenizer: Tokenizer) -> "ChatTemplate":
        """The template of `model_spec` (a preset or a folder); see the module docstring."""
        path = resolve_model(model_spec).path
        config = _read_json(path / "tokenizer_config.json") if path is not None else {}
        special = {}
        for name in _SPECIAL:
            value = config.get(name)
            if isinstance(value, dict):   # older files store AddedToken as {"content": ...}
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        for name, tid in (("bos_token", tokenizer.bos_token_id),
                          ("eos_token", (tokenizer.eos_token_ids or (None,))[0])):
            if name not in special and tid is not None:
                special[name] = tokenizer.decode([tid], skip_special_tokens=False)
        special.setdefault("bos_token", "")
        special.setdefault("eos_token", "")
        source, origin = _template_source(path, config)
        return cls(source, special, origin)

    def render(self, messages: list[dict[str, str]] | tuple[dict[str, str], ...]) -> str:
        """The prompt text for `messages`, ending where the assistant's reply begins."""
        try:
            return self.template.render(messages=list(messages), add_generation_prompt=True,
                                        tools=None, **self.special_tokens)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"the chat template ({self.origin}) failed on these "
                                    f"messages: {e}") from e


def _template_source(path: Path | None, config: dict[str, Any]) -> tuple[str, str]:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use"}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
        if template is None:
            raise ValueError(f"{path / 'tokenizer_config.json'} has named chat templates "
                             f"{sorted(named)} but none called 'default'")
    if isinstance(template, str):
        return template, f"{path / 'tokenizer_config.json'}"
    if path is not None and (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text(encoding="utf-8"), \
            str(path / "chat_template.jinja")
    return DEFAULT_TEMPLATE, "the default template (the model has none)"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)
