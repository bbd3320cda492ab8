"""The completions request model: what it takes, drops and refuses (naming the field), and the logprobs shape helpers.

One definition (``common.completions_protocol``) serves the router and the CPU stage
server; the server's own subclass (``servers.completions``) keeps refusing what it
always refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.completions_protocol import (
    CompletionLogprobs,
    CompletionRequest,
    chat_entries,
    entries_logprobs,
    parse_completion_request,
    top_alternatives,
)
from common.errors import APIError
from servers.completions import parse_stage_completion_request as parse_stage_request

BASE: dict[str, Any] = {"model": "m", "prompt": "def add(a, b):"}
# What neither front end serves (the router and the stage server parse with this model), and the field each 400 names:
# their own tests send these over HTTP too.
REFUSED_EVERYWHERE: list[tuple[dict[str, Any], str]] = [
    ({"prompt": [1, 2, 3]}, "prompt"),
    ({"prompt": [[1, 2]]}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"n": 2}, "n"),
    ({"logprobs": 50}, "logprobs"),
    ({"bogus": 1}, "bogus"),
]


def _parse(**fields: Any) -> CompletionRequest:
    return parse_completion_request(json.dumps({**BASE, **fields}).encode())


def _refused(parse: Any = parse_completion_request, **fields: Any) -> APIError:
    with pytest.raises(APIError) as info:
        parse(json.dumps({**BASE, **fields}).encode())
    assert info.value.status == 400
    return info.value


def test_defaults_and_the_upstream_body() -> None:
    req = _parse(prompt=["def add(a, b):"], max_tokens=8, stop="\n", logprobs=0, seed=3)
    assert req.prompt_text == "def add(a, b):" and req.token_limit == 8 and req.stop_list == ["\n"]
    body = req.upstream_body(exclude={"model"})
    assert body == {"prompt": "def add(a, b):", "max_tokens": 8, "stop": "\n", "logprobs": 0, "seed": 3, "stream": False, "echo": False}
    assert _parse().token_limit == 16  # OpenAI's default for completions


def test_fields_that_do_not_change_the_answer_are_accepted_and_never_forwarded() -> None:
    ignored = {"user": "u1", "metadata": {"app": "x"}, "store": True, "service_tier": "auto", "prompt_cache_key": "k",
               "safety_identifier": "s", "suffix": ""}  # fmt: skip
    body = _parse(**ignored).upstream_body()
    assert not set(ignored) & set(body)


def test_penalties_and_cascade_knobs_are_taken() -> None:
    body = _parse(presence_penalty=0.5, frequency_penalty=0.1, cascade_lambda=2.0, cascade_max_stage="s0").upstream_body()
    assert body["presence_penalty"] == 0.5 and body["cascade_lambda"] == 2.0 and body["cascade_max_stage"] == "s0"


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        ({"prompt": [1, 2, 3]}, "prompt", "token-id"),
        ({"prompt": [[1, 2], [3]]}, "prompt", "token-id"),
        ({"prompt": ["a", "b"]}, "prompt", "one prompt"),
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": None}, "prompt", "Missing"),
        ({"prompt": {"text": "x"}}, "prompt", "string"),
        ({"n": 2}, "n", ""),
        ({"best_of": 2}, "best_of", ""),
        ({"suffix": "}"}, "suffix", "not supported"),
        ({"logit_bias": {"1": 2}}, "logit_bias", "not supported"),
        ({"logprobs": 21}, "logprobs", ""),
        ({"logprobs": True}, "logprobs", ""),  # strict: a chat-style boolean is not a count
        ({"max_tokens": 0}, "max_tokens", "echo"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream"),
        ({"temperature": 3}, "temperature", ""),
        ({"bogus": 1}, "bogus", "Unrecognized"),
    ],
)
def test_what_no_stage_can_honour_is_refused_by_name(fields: dict[str, Any], param: str, says: str) -> None:
    err = _refused(**fields)
    assert err.param == param and says in err.message


@pytest.mark.parametrize(("fields", "param"), REFUSED_EVERYWHERE)
def test_what_neither_front_end_serves_is_refused_by_both(fields: dict[str, Any], param: str) -> None:
    assert _refused(**fields).param == param
    assert _refused(parse_stage_request, **fields).param == param


def test_scoring_only_needs_echo() -> None:
    assert _parse(max_tokens=0, echo=True, logprobs=1).token_limit == 0


def test_the_stage_server_refuses_what_it_always_did() -> None:
    """``servers.completions`` answers exactly as before the model moved: penalties (llama.cpp) and the router's
    fields are 400s naming them; ``user`` is still dropped."""
    for name in ("presence_penalty", "frequency_penalty"):
        assert _refused(parse_stage_request, **{name: 0.5}).param == name
    for name, value in (("cascade_lambda", 1.0), ("cascade_max_stage", 0), ("metadata", {}), ("store", True), ("service_tier", "auto")):
        err = _refused(parse_stage_request, **{name: value})
        assert err.param == name and err.message == f"Unrecognized request argument supplied: {name}"
    req = parse_stage_request(json.dumps({**BASE, "user": "u", "echo": True, "max_tokens": 0}).encode())
    assert req.echo and req.token_limit == 0 and not req.presence_penalty


def test_the_logprobs_accumulator_and_the_translations() -> None:
    out = CompletionLogprobs()
    out.add("def", -0.1, [("def", -0.1), ("class", -2.0)])
    out.add(" add", -3.0, [(" f", -0.5)])  # the chosen token below the top: added to the alternatives
    out.add(" x", None, None)
    lp = out.take()
    assert lp == {"tokens": ["def", " add", " x"], "token_logprobs": [-0.1, -3.0, None],
                  "top_logprobs": [{"def": -0.1, "class": -2.0}, {" f": -0.5, " add": -3.0}, None], "text_offset": [0, 3, 7]}  # fmt: skip
    assert out.take()["tokens"] == []
    assert top_alternatives({" add": -3.0, " f": -0.5, " g": -1.0}, 2) == [(" f", -0.5), (" g", -1.0)]
    assert top_alternatives(None, 2) == [] and top_alternatives({"a": -1.0}, 0) == []
    entries = chat_entries(lp, 1)  # stops at the position without a logprob
    assert [(e["token"], e["logprob"], [a["token"] for a in e["top_logprobs"]]) for e in entries] == [
        ("def", -0.1, ["def"]),
        (" add", -3.0, [" f"]),
    ]
    assert entries[0]["bytes"] == list(b"def")
    assert chat_entries(lp, 2, start=1)[0]["token"] == " add" and chat_entries(None, 2) == []
    again = entries_logprobs(entries).take()
    assert again["tokens"] == ["def", " add"] and again["text_offset"] == [0, 3]
    assert again["top_logprobs"] == [{"def": -0.1}, {" f": -0.5, " add": -3.0}]


def test_null_stream_and_echo_are_their_defaults() -> None:
    """OpenAI's spec and vLLM take ``stream: null`` and ``echo: null``: false."""
    req = _parse(stream=None, echo=None)
    assert req.stream is False and req.echo is False
    assert _parse(echo=True, stream=True).echo is True
    assert _refused(echo="yes").param == "echo"


def test_an_empty_logit_bias_is_absent() -> None:
    """``logit_bias: {}`` biases nothing (LangChain sends it); a non-empty one stays refused (above)."""
    assert "logit_bias" not in _parse(logit_bias={}).upstream_body()


def test_vllm_sampling_extras_are_forwarded_and_their_ranges_checked() -> None:
    extras = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "min_tokens": 3}
    body = _parse(**extras).upstream_body()
    assert {k: body[k] for k in extras} == extras
    assert parse_stage_request(json.dumps({**BASE, **extras}).encode()).top_k == 5  # the CPU stage server takes them too
    # chat's template variables change nothing without a chat template: accepted, not forwarded
    assert "chat_template_kwargs" not in _parse(chat_template_kwargs={"enable_thinking": False}).upstream_body()
    assert _refused(top_k=-2).param == "top_k"
    assert _refused(min_p=2).param == "min_p"
    assert _refused(repetition_penalty=0).param == "repetition_penalty"
    assert _refused(min_tokens=17).param == "min_tokens"  # above the default max_tokens, 16
    assert _refused(min_tokens=5, max_tokens=4).param == "min_tokens"
