"""Pure parts of draft reuse: when to verify, trimming to the token limit, merging answers."""

from __future__ import annotations

from common.settings import StageConfig
from router.draft import DraftCheck, _proposal, continuation_body, merge, rejoin, trim, why_not_verify
from router.stage_client import StageClient


def _check(tokens: list[str]) -> DraftCheck:
    entries = [{"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens]
    return DraftCheck(
        draft_tokens=len(tokens) + 2,
        accepted_tokens=len(tokens),
        accepted_text="".join(tokens),
        accepted_logprobs=entries,
        usage={"prompt_tokens": 30, "completion_tokens": 1},
    )


def _client(dialect: str) -> StageClient:
    return StageClient(StageConfig(name="s", model="m", url="http://127.0.0.1:1/v1", prices={"cost": {"request": 1.0}}, dialect=dialect))  # type: ignore[arg-type]


def test_why_not_verify() -> None:
    greedy = {"messages": [], "temperature": 0}
    assert why_not_verify(_client("vllm"), greedy, "draft") is None
    assert why_not_verify(_client("openai"), greedy, "draft") == "dialect"
    assert why_not_verify(_client("vllm"), {"messages": []}, "draft") == "sampling"
    assert why_not_verify(_client("vllm"), {**greedy, "temperature": 0.5}, "draft") == "sampling"
    assert why_not_verify(_client("vllm"), {**greedy, "stop": ["x"]}, "draft") == "stop"
    assert why_not_verify(_client("vllm"), greedy, "") == "empty-draft"
    prefill = {**greedy, "continue_final_message": True, "add_generation_prompt": False}
    assert why_not_verify(_client("vllm"), prefill, "draft") == "prefill"  # the draft continues the client's message
    no_header = {**greedy, "add_generation_prompt": False}  # the answer follows the messages with no assistant header
    assert why_not_verify(_client("vllm"), no_header, "draft") == "prefill"
    assert why_not_verify(_client("vllm"), {**greedy, "continue_final_message": False}, "draft") is None
    # sampled drafts are verified (speculative sampling) only between stages that share a tokenizer
    assert why_not_verify(_client("vllm"), {"messages": [], "temperature": 0.7}, "draft", shared_tokenizer=True) is None
    assert why_not_verify(_client("vllm"), {"messages": []}, "draft", shared_tokenizer=True) is None
    assert (
        why_not_verify(_client("vllm"), {"messages": [], "temperature": 0.7, "top_p": 0.9}, "draft", shared_tokenizer=True)
        == "sampling-top-p"
    )


def test_why_not_verify_penalties_and_cuts_of_the_distribution() -> None:
    """A penalty or ``min_tokens`` changes stage j's choices beyond its raw scores: regenerate; ``top_k``/``min_p``
    cut a sampled distribution the speculative-sampling rule does not know, as ``top_p`` does; their "off" values
    and ``chat_template_kwargs`` change nothing."""
    greedy = {"messages": [], "temperature": 0}
    vllm = _client("vllm")
    assert why_not_verify(vllm, {**greedy, "repetition_penalty": 1.1}, "draft") == "penalties"
    assert why_not_verify(vllm, {**greedy, "min_tokens": 5}, "draft") == "penalties"
    assert why_not_verify(vllm, {**greedy, "presence_penalty": 0.5}, "draft") == "penalties"
    assert why_not_verify(vllm, {**greedy, "repetition_penalty": 1.0, "min_tokens": 0}, "draft") is None
    assert why_not_verify(vllm, {**greedy, "top_k": 5, "min_p": 0.1, "chat_template_kwargs": {"enable_thinking": False}}, "draft") is None
    sampled = {"messages": [], "temperature": 0.7}
    assert why_not_verify(vllm, {**sampled, "top_k": 5}, "draft", shared_tokenizer=True) == "sampling-top-k"
    assert why_not_verify(vllm, {**sampled, "min_p": 0.05}, "draft", shared_tokenizer=True) == "sampling-top-k"
    assert why_not_verify(vllm, {**sampled, "top_k": -1, "min_p": 0}, "draft", shared_tokenizer=True) is None
    assert why_not_verify(vllm, {**sampled, "top_k": 5}, "draft") == "sampling"


def test_proposals_end_before_a_space_and_rejoin_needs_a_long_enough_tail() -> None:
    draft = "def f(x):\n    return x + 1\n"
    assert _proposal(draft, 0, 3, 4.0) == "def f(x):"  # ~12 characters, cut before the newline
    assert _proposal(draft, 10, 100, 4.0) == draft[10:]  # the rest of the draft
    assert rejoin(draft, 0, "```python\ndef f(x):") == len("def f(x):")
    assert rejoin(draft, 0, "abc") is None  # shorter than REJOIN_MIN_CHARS
    assert rejoin(draft, 12, "```python\ndef f(x):") is None  # only searched after where the draft was left


def test_trim_to_limit() -> None:
    check = _check(["a", "b", "c", "d"])
    assert not trim(check, None) and not trim(check, 5)
    assert trim(check, 2) and check.accepted_text == "ab" and check.accepted_tokens == 2


def test_continuation_and_merge() -> None:
    check = _check(["Hel", "lo"])
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "temperature": 0}
    cont = continuation_body(body, check)
    assert cont["messages"][-1] == {"role": "assistant", "content": "Hello"}
    assert cont["continue_final_message"] and not cont["add_generation_prompt"] and cont["max_tokens"] == 8
    data = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " world"},
                "logprobs": {"content": [{"token": " world"}]},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 32, "completion_tokens": 1},
    }
    out = merge(check, data)
    assert out["choices"][0]["message"]["content"] == "Hello world"
    assert [e["token"] for e in out["choices"][0]["logprobs"]["content"]] == ["Hel", "lo", " world"]
    assert out["usage"] == {"prompt_tokens": 62, "completion_tokens": 3, "total_tokens": 65}
    assert continuation_body(body, DraftCheck()) is body


def test_acceptance_tracker_gives_up_on_a_pair_that_never_agrees_and_probes() -> None:
    from router.draft import AcceptanceTracker

    t = AcceptanceTracker(min_accepted=4, warmup=3, probe_every=5)
    good, bad = (0, 1), (0, 2)
    for _ in range(3):
        assert t.should_verify(good) and t.should_verify(bad)
        t.observe(good, 30)
        t.observe(bad, 0)
    assert t.should_verify(good)
    decisions = [t.should_verify(bad) for _ in range(10)]
    assert decisions.count(True) == 2 and decisions[4] and decisions[9]  # probes only
    for _ in range(20):
        t.observe(bad, 40)  # the pair starts agreeing: the mean recovers
    assert t.should_verify(bad)
    assert AcceptanceTracker(min_accepted=0).should_verify(bad)


def test_white_space_alone_does_not_rejoin() -> None:
    draft = "if x:\n        return 1\n        pass\n"
    assert rejoin(draft, 0, "else:\n        ") is None  # the tail is indentation only
    assert rejoin(draft, 0, "y = 2\n        return 1") == draft.index("return 1") + len("return 1")
