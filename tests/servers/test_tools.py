"""Tool-call parsing and the grammars for forced calls and JSON outputs (no model server needed).

The parser is checked on whole answers and on every way of streaming them
(one character at a time, random chunks): the content and the calls must be the
same, so a streamed answer equals the non-streamed one.
"""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_cpp import Llama

from common.protocol import Tool
from servers.grammar import GrammarBuilder, GrammarError, TokenConstraint, json_grammar
from servers.tools import HERMES, ParsedCall, detect_tool_format
from servers.weights import resolve

TOOLS = [
    Tool.model_validate(
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ),
    Tool.model_validate(
        {
            "type": "function",
            "function": {
                "name": "add",
                "parameters": {
                    "type": "object",
                    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                    "required": ["a", "b"],
                },
            },
        }
    ),  # fmt: skip
]


def parse(text: str, chunks: list[str] | None = None, parallel: bool = True) -> tuple[str, list[ParsedCall]]:
    parser = HERMES.parser(TOOLS, parallel)
    content: list[str] = []
    calls: list[ParsedCall] = []
    for piece in chunks if chunks is not None else [text]:
        out, made = parser.feed(piece)
        content.append(out)
        calls += made
    out, made = parser.flush()
    return "".join(content) + out, calls + made


def splits(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


DOUBLED = '{{"name": "add", "arguments": {"a": 17, "b": 25}}}'  # what Qwen2.5-Coder-1.5B writes, copying its template


def shape(result: tuple[str, list[ParsedCall]]) -> tuple[str, list[tuple[str, object]]]:
    content, calls = result
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


CASES = {
    "plain text": ("Three primes: 2, 3 and 5.\n", "Three primes: 2, 3 and 5.\n", []),
    "tagged call": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "",
                    [("get_weather", {"city": "Paris"})]),
    "text then call": ('Let me look.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n', "Let me look.",
                       [("add", {"a": 1, "b": 2})]),
    "two tagged calls": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n<tool_call>\n'
                         '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "",
                         [("add", {"a": 1, "b": 2}), ("get_weather", {"city": "Oslo"})]),
    "bare call (Qwen-0.5B)": ('{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}', "",
                              [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    "bare calls on lines": ('{"name": "add", "arguments": {"a": 2, "b": 3}}\n{"name": "add", "arguments": {"a": 5, "b": 8}}', "",
                            [("add", {"a": 2, "b": 3}), ("add", {"a": 5, "b": 8})]),
    "fenced call (Qwen-1.5B)": ('```json\n{\n  "name": "add",\n  "arguments": {\n    "a": 2,\n    "b": 3\n  }\n}\n```', "",
                                [("add", {"a": 2, "b": 3})]),
    "call then text": ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"temperature": 21}', '{"temperature": 21}',
                       [("get_weather", {"city": "Paris"})]),
    "JSON that is not a call": ('{"name": "Alice", "age": 30}', '{"name": "Alice", "age": 30}', []),
    "unknown function": ('<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>',
                         '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', []),
    "broken block": ("<tool_call>\n{not json}\n</tool_call> ok", "<tool_call>\n{not json}\n</tool_call> ok", []),
    "unclosed tagged call": ('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 1}}', "", [("add", {"a": 1, "b": 1})]),
    "unclosed bare call": ('{"name": "add", "arguments": {"a": 1', '{"name": "add", "arguments": {"a": 1', []),
    "code": ("```python\ndef f(x):\n    return {x: 1}\n```\n", "```python\ndef f(x):\n    return {x: 1}\n```\n", []),
    "brace mid-line": ('Use {"name": "add"} like this', 'Use {"name": "add"} like this', []),
    "lone tag start": ("a < b and <tool", "a < b and <tool", []),
    "whitespace only": ("  \n", "  \n", []),
    "a partial fence": ("``", "``", []),
    # Qwen2.5-Coder's template shows the call as {{"name": ..., "arguments": ...}} (a Jinja string, so the braces
    # stay doubled in the prompt) and Qwen2.5-Coder-1.5B copies them: one doubled outer pair is taken off
    "doubled braces tagged (Qwen-Coder-1.5B)": (f"<tool_call>\n{DOUBLED}\n</tool_call>", "", [("add", {"a": 17, "b": 25})]),
    "doubled braces bare": (DOUBLED, "", [("add", {"a": 17, "b": 25})]),
    "doubled braces, text before": (f"Sure.\n{DOUBLED}\n", "Sure.", [("add", {"a": 17, "b": 25})]),
    "doubled braces pretty-printed": ('<tool_call>\n{{\n  "name": "add",\n  "arguments": {"a": 17, "b": 25}\n}}\n</tool_call>', "",
                                      [("add", {"a": 17, "b": 25})]),
    "doubled braces pretty-printed bare": ('{{\n  "name": "add",\n  "arguments": {"a": 17, "b": 25}\n}}', "",
                                           [("add", {"a": 17, "b": 25})]),
    "doubled braces spaced": ('{ {"name": "add", "arguments": {"a": 17, "b": 25}} }', "", [("add", {"a": 17, "b": 25})]),
    "doubled braces fenced": (f"```json\n{DOUBLED}\n```", "", [("add", {"a": 17, "b": 25})]),
    "two doubled calls": (f"{DOUBLED}\n{DOUBLED}", "", [("add", {"a": 17, "b": 25}), ("add", {"a": 17, "b": 25})]),
    "doubled braces, unknown function": ('{{"name": "sub", "arguments": {"a": 1}}}', '{{"name": "sub", "arguments": {"a": 1}}}', []),
    "doubled braces, unknown function tagged": ('<tool_call>{{"name": "sub", "arguments": {}}}</tool_call>',
                                                '<tool_call>{{"name": "sub", "arguments": {}}}</tool_call>', []),
    "tripled braces": ('{{{"name": "add", "arguments": {"a": 1, "b": 2}}}}', '{{{"name": "add", "arguments": {"a": 1, "b": 2}}}}', []),
    "tripled braces tagged": ('<tool_call>{{{"name": "add", "arguments": {"a": 1, "b": 2}}}}</tool_call>',
                              '<tool_call>{{{"name": "add", "arguments": {"a": 1, "b": 2}}}}</tool_call>', []),
    "doubled open, single close": ('{{"name": "add", "arguments": {"a": 1, "b": 2}}',
                                   '{{"name": "add", "arguments": {"a": 1, "b": 2}}', []),
    "doubled open, single close tagged": ('<tool_call>{{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
                                          '<tool_call>{{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', []),
    "doubled arguments too": ('<tool_call>{{"name": "add", "arguments": {{"a": 1}}}}</tool_call>',
                              '<tool_call>{{"name": "add", "arguments": {{"a": 1}}}}</tool_call>', []),
    "doubled braces, more after the pair": ('{{"name": "add", "arguments": {"a": 1, "b": 2}}, "x": 1}',
                                            '{{"name": "add", "arguments": {"a": 1, "b": 2}}, "x": 1}', []),
    "doubled braces mid-line": (f"Use {DOUBLED} like this", f"Use {DOUBLED} like this", []),
    "a Jinja expression": ("{{ name }} and {{name}}\n{{ \"name\" }}", "{{ name }} and {{name}}\n{{ \"name\" }}", []),
    "doubled braces, name repeated as a list": ('{{"name": "add", "name": ["add"], "arguments": {}}}',
                                                '{{"name": "add", "name": ["add"], "arguments": {}}}', []),
    "an unclosed doubled call": ('{{"name": "add", "arguments": {"a": 1, "b": 2}}\n ',
                                 '{{"name": "add", "arguments": {"a": 1, "b": 2}}\n ', []),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CASES))
def test_parser_whole_and_streamed(name: str) -> None:
    text, content, calls = CASES[name]
    whole = shape(parse(text))
    assert whole == (content, calls)
    assert shape(parse(text, list(text))) == whole  # one character at a time
    for seed in range(20):
        assert shape(parse(text, splits(text, seed))) == whole


_PIECES = [
    "{",
    "{{",
    "}",
    "}}",
    " ",
    "\n",
    '"name"',
    ": ",
    '"add"',
    '"sub"',
    ", ",
    '"arguments"',
    '{"a": 1, "b": 2}',
    "<tool_call>",
    "</tool_call>",
    "```json\n",
    "```",
    "x",
    '"',
    "[",
    "]",
]


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.sampled_from(_PIECES), max_size=24), seed=st.integers(0, 1000))
def test_whatever_the_model_writes_the_parser_never_raises_and_streams_as_whole(pieces: list[str], seed: int) -> None:
    """Fragments of calls, doubled braces, tags and fences in any order: streamed or whole, the same answer; and text
    that is no call comes back exactly as written."""
    text = "".join(pieces)
    whole = parse(text)
    assert shape(parse(text, splits(text, seed))) == shape(whole)
    if not whole[1]:
        assert whole[0] == text


def test_parse_block_takes_off_exactly_one_doubled_outer_pair() -> None:
    names = {"add", "get_weather"}
    for body in (DOUBLED, '{{\n"name": "add", "arguments": {"a": 17, "b": 25}\n}}', '{ {"name": "add", "arguments": {"a": 17, "b": 25}} }'):
        call = HERMES.parse_block(body, names)
        assert call is not None and (call.name, json.loads(call.arguments)) == ("add", {"a": 17, "b": 25}), body
    assert HERMES.parse_block(DOUBLED, {"get_weather"}) is None  # only a declared function
    assert HERMES.parse_block("{" + DOUBLED + "}", names) is None  # exactly one pair
    assert HERMES.parse_block('{{"name": "add", "arguments": {"a": 1}}', names) is None  # not a pair
    assert HERMES.parse_block('{{"name": "add", "arguments": {"a": 1}}, {"b": 2}}', names) is None  # inner is not one object


def test_parallel_false_keeps_the_first_call() -> None:
    text = CASES["two tagged calls"][0]
    parser = HERMES.parser(TOOLS, parallel=False)
    content, calls = parser.feed(text)
    assert [c.name for c in calls] == ["add"] and parser.done and content == ""
    assert parser.feed("more") == ("", []) and parser.flush() == ("", [])


def test_call_ids_and_arguments_are_openai_shaped() -> None:
    _, calls = parse(CASES["tagged call"][0])
    entry = calls[0].openai(0)
    assert entry["index"] == 0 and entry["type"] == "function" and str(entry["id"]).startswith("call_")
    assert isinstance(calls[0].arguments, str) and json.loads(calls[0].arguments) == {"city": "Paris"}


def test_format_detection() -> None:
    assert detect_tool_format("{% if tools %}<tool_call></tool_call>{% endif %}") is HERMES
    assert detect_tool_format("{% for message in messages %}{{ message['content'] }}{% endfor %}") is None


# -- grammars, checked against a real tokenizer ------------------------------------
@pytest.fixture(scope="module")
def vocab() -> Llama:
    return Llama(str(resolve("smollm2-135m-instruct")), vocab_only=True, verbose=False)


def accepts(llm: Llama, grammar: str, text: str) -> bool:
    """Whether the grammar admits ``text`` (fed token by token) as a complete output."""
    constraint = TokenConstraint(llm._model.vocab, llm.n_vocab(), grammar)
    try:
        for token in llm.tokenize(text.encode(), add_bos=False, special=True):
            if not constraint.allows(token):
                return False
            constraint.accept(token)
        return constraint.allows(llm.token_eos())
    finally:
        constraint.close()


def test_forced_call_grammar(vocab: Llama) -> None:
    builder, body = HERMES.grammar(TOOLS, only=None, parallel=True)
    grammar = builder.text(body)
    assert accepts(vocab, grammar, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    two = (
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "x"}}\n</tool_call>'
    )
    assert accepts(vocab, grammar, two)
    assert not accepts(vocab, grammar, '<tool_call>\n{"name": "add", "arguments": {"a": "1", "b": 2}}\n</tool_call>')  # a is an integer
    assert not accepts(vocab, grammar, '<tool_call>\n{"name": "other", "arguments": {}}\n</tool_call>')
    assert not accepts(vocab, grammar, "Sure!")
    builder, body = HERMES.grammar(TOOLS, only="get_weather", parallel=False)
    named = builder.text(body)
    assert accepts(vocab, named, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    assert not accepts(vocab, named, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>')
    assert not accepts(vocab, named, two.replace("add", "get_weather").replace('{"a": 1, "b": 2}', '{"city": "y"}'))  # one call only


def test_json_grammars(vocab: Llama) -> None:
    anything = json_grammar(None)
    assert accepts(vocab, anything, '{"a": [1, 2.5, "x", null, true], "b": {}}')
    assert not accepts(vocab, anything, "[1, 2]") and not accepts(vocab, anything, "hello")
    schema = {
        "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}},
        "type": "object",
        "properties": {"title": {"type": "string"}, "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
        "required": ["title", "items"],
        "additionalProperties": False,
    }
    grammar = json_grammar(schema)
    assert accepts(vocab, grammar, '{"title": "t", "items": [{"n": 1}, {"n": 2}]}')
    assert not accepts(vocab, grammar, '{"title": "t"}')
    assert not accepts(vocab, grammar, '{"title": "t", "items": [{"n": "1"}]}')


def test_schemas_with_the_same_def_names_do_not_collide(vocab: Llama) -> None:
    a = {"$defs": {"X": {"type": "integer"}}, "type": "object", "properties": {"v": {"$ref": "#/$defs/X"}}, "required": ["v"]}
    b = {"$defs": {"X": {"type": "string"}}, "type": "object", "properties": {"w": {"$ref": "#/$defs/X"}}, "required": ["w"]}
    builder = GrammarBuilder()
    grammar = builder.text(f"{builder.schema(a, 'a')} | {builder.schema(b, 'b')}")
    assert accepts(vocab, grammar, '{"v": 1}') and accepts(vocab, grammar, '{"w": "s"}')
    assert not accepts(vocab, grammar, '{"v": "s"}') and not accepts(vocab, grammar, '{"w": 1}')


def test_unsupported_schema_is_a_grammar_error() -> None:
    with pytest.raises(GrammarError):
        json_grammar({"type": "object", "properties": {"x": {"$ref": "https://example.com/schema.json"}}})
