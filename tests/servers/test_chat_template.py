"""``ChatTemplate`` on its own (no model): what a request's ``chat_template_kwargs`` do to the rendered prompt."""

from __future__ import annotations

import pytest

from servers.chat_template import ChatTemplate, ChatTemplateError

# Qwen3's switch, reduced: thinking on unless the client says enable_thinking: false
SOURCE = (
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% if enable_thinking is defined and enable_thinking is false %}"
    "<think></think>{% endif %}{% endif %}"
)
MESSAGES = [{"role": "user", "content": "hi"}]


def test_chat_template_kwargs_are_template_variables() -> None:
    template = ChatTemplate(SOURCE, "", "")
    assert template.render(MESSAGES) == "<user>hi</user><assistant>"
    assert template.render(MESSAGES, extra={"enable_thinking": False}) == "<user>hi</user><assistant><think></think>"
    assert template.render(MESSAGES, extra={"enable_thinking": True}) == "<user>hi</user><assistant>"


def test_chat_template_kwargs_do_not_replace_the_requests_own_variables() -> None:
    template = ChatTemplate(SOURCE, "", "")
    extra = {"messages": [], "add_generation_prompt": False}
    assert template.render(MESSAGES, extra=extra) == "<user>hi</user><assistant>"


def test_a_value_the_template_cannot_use_is_a_template_error_not_a_crash() -> None:
    template = ChatTemplate("{{ messages[0].content + limit }}", "", "")
    with pytest.raises(ChatTemplateError):
        template.render(MESSAGES, extra={"limit": 3})  # str + int: a TypeError inside the template
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ raise_exception('no') }}", "", "").render(MESSAGES, extra={"raise_exception": "x"})
