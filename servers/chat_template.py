"""Render chat messages to a prompt string with the model's own Jinja template.

The template comes from the GGUF metadata, so each stage formats prompts
exactly as its model was trained. ``continue_final_message`` follows vLLM:
render without a generation prompt and cut the text right after the final
(assistant) message's content, so the model continues that message instead
of starting a new turn -- this is what draft verification relies on.

Tools go to the template's ``tools`` variable in OpenAI's shape, and the
``tojson`` filter is transformers' (no HTML escaping, keys in their given
order), because that is how the templates render them in training and in vLLM.
Jinja's own ``tojson`` would write ``<`` as ``\\u003c`` and sort the keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The messages cannot be rendered (bad roles, template raised, ...)."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    """transformers' ``tojson`` for chat templates."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        self.source = source
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text. ``extra``: the request's ``chat_template_kwargs`` (vLLM's extra), more variables for the
        template (``enable_thinking`` for Qwen3's); those named like the ones set here (``messages``, ``tools``, ...)
        do not replace them: the request's own fields say those."""
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt cannot both be true")
        try:
            text = self._template.render(
                {
                    **(extra or {}),
                    "messages": messages,
                    "add_generation_prompt": add_generation_prompt,
                    "tools": tools,
                    "bos_token": self._bos,
                    "eos_token": self._eos,
                }
            )
        except ChatTemplateError:
            raise
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            # a template error, or one of Python's from values it did not expect (``chat_template_kwargs`` are the client's)
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
        if not continue_final_message:
            return text
        final = messages[-1].get("content") or ""
        cut = text.rfind(final) if final else -1
        if not final or cut < 0:
            raise ChatTemplateError("continue_final_message needs a final message with non-empty text content")
        return text[: cut + len(final)]
