"""Draft reuse on escalation: the larger stage verifies the smaller stage's answer.

Instead of regenerating from scratch, stage j scores (prompt + draft) in one
pass with vLLM's ``prompt_logprobs`` (our CPU stage server speaks the same
extra), keeps the longest prefix of the draft whose every token is its own
top-1 choice, and generates only the rest with ``continue_final_message``.
Verification is done in the larger stage's own tokenization (the draft is
sent as text), so stages with different tokenizers work.

Lossless for greedy decoding: each accepted token is exactly the token stage j
would have produced at that position, so accepted prefix + continuation is
stage j's own greedy answer. Other cases fall back to plain regeneration, and
say why: sampling (temperature > 0 or unset; the speculative-sampling
acceptance rule is not implemented yet), ``stop`` sequences (a stop string
could straddle the boundary), a stage dialect without ``prompt_logprobs``, or
a draft whose text does not re-assemble from the scored tokens (byte-fallback
tokens split a character).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.stage_client import StageClient


@dataclass
class DraftCheck:
    """What stage j made of stage i's draft."""

    draft_tokens: int = 0  # the draft's length in stage j's tokens
    accepted_tokens: int = 0
    accepted_text: str = ""
    accepted_logprobs: list[dict[str, Any]] = field(default_factory=list)  # OpenAI logprobs entries
    usage: dict[str, int] = field(default_factory=dict)  # of the scoring call
    seconds: float = 0.0

    @property
    def fraction(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0


def why_not_verify(client: StageClient, body: dict[str, Any], draft: str) -> str | None:
    """None when the draft can be verified losslessly; otherwise the reason to regenerate."""
    if client.config.dialect != "vllm":
        return "dialect"
    if body.get("temperature") != 0:
        return "sampling"
    if body.get("stop"):
        return "stop"
    if not draft:
        return "empty-draft"
    return None


def _assistant(body: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        **body,
        "messages": [*body["messages"], {"role": "assistant", "content": text}],
        "continue_final_message": True,
        "add_generation_prompt": False,
    }


async def score_draft(client: StageClient, body: dict[str, Any], draft: str) -> DraftCheck | None:
    """Score ``draft`` on stage ``client``; None if it does not align with the stage's tokens."""
    scoring = {k: v for k, v in _assistant(body, draft).items() if k not in ("logprobs", "top_logprobs")}
    scoring.update(prompt_logprobs=0, max_tokens=1)
    data, seconds = await client.chat(scoring)
    positions = data.get("prompt_logprobs") or []
    # Walk back from the end until the decoded tokens re-assemble the draft.
    tail: list[dict[str, Any]] = []
    text = ""
    i = len(positions)
    while i > 1 and len(text) < len(draft):
        i -= 1
        entry = positions[i]
        if not entry:
            return None
        info = next(iter(entry.values()))  # prompt_logprobs=0: only the prompt token itself
        tail.append(info)
        text = info.get("decoded_token", "") + text
    if text != draft:
        return None
    tail.reverse()
    check = DraftCheck(draft_tokens=len(tail), usage=data.get("usage") or {}, seconds=seconds)
    for info in tail:
        if info.get("rank") != 1:
            break
        token = info["decoded_token"]
        check.accepted_tokens += 1
        check.accepted_text += token
        entry = {"token": token, "logprob": info["logprob"], "bytes": list(token.encode()), "top_logprobs": [{"token": token, "logprob": info["logprob"], "bytes": list(token.encode())}]}
        check.accepted_logprobs.append(entry)
    return check


def trim(check: DraftCheck, limit: int | None) -> bool:
    """Cap the accepted prefix at the client's token limit; True if that ends the answer."""
    if limit is None or check.accepted_tokens < limit:
        return False
    check.accepted_logprobs = check.accepted_logprobs[:limit]
    check.accepted_tokens = limit
    check.accepted_text = "".join(e["token"] for e in check.accepted_logprobs)
    return True


def continuation_body(body: dict[str, Any], check: DraftCheck) -> dict[str, Any]:
    """The request that generates only what comes after the accepted prefix."""
    if not check.accepted_tokens:
        return body
    out = _assistant(body, check.accepted_text)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        out.pop("max_completion_tokens", None)
        out["max_tokens"] = limit - check.accepted_tokens
    return out


def merge(check: DraftCheck, data: dict[str, Any] | None) -> dict[str, Any]:
    """Stage j's answer: accepted prefix + continuation, usage of both calls."""
    if data is None:  # the prefix alone filled the token limit
        data = {"id": "chatcmpl-draft", "object": "chat.completion", "created": 0, "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": {"content": []}, "finish_reason": "length"}], "usage": {}}
    choice = data["choices"][0]
    choice["message"]["content"] = check.accepted_text + (choice["message"].get("content") or "")
    if choice.get("logprobs") is not None or check.accepted_logprobs:
        content = (choice.get("logprobs") or {}).get("content") or []
        choice["logprobs"] = {"content": check.accepted_logprobs + content}
    u = data.get("usage") or {}
    prompt = check.usage.get("prompt_tokens", 0) + u.get("prompt_tokens", 0)
    completion = check.accepted_tokens + u.get("completion_tokens", 0)
    data["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return data


class AcceptanceTracker:
    """Running acceptance per stage pair, to stop paying for scoring passes that do not pay off.

    Prefix acceptance is all-or-nothing at the first disagreement: two models
    that open their answers differently ("Here's a function..." vs
    "```python") accept nothing even when they agree on most later tokens.
    Scoring a draft costs a prefill of its length, so once the exponentially
    weighted mean of accepted tokens for a pair falls below ``min_accepted``
    (after ``warmup`` observations), the pair regenerates instead, probing
    with a verification every ``probe_every``-th escalation to notice a change.
    """

    def __init__(self, min_accepted: float, warmup: int = 8, probe_every: int = 10, weight: float = 0.2) -> None:
        self.min_accepted = min_accepted
        self.warmup = warmup
        self.probe_every = probe_every
        self.weight = weight
        self._mean: dict[tuple[int, int], float] = {}
        self._seen: dict[tuple[int, int], int] = {}
        self._skipped: dict[tuple[int, int], int] = {}

    def should_verify(self, pair: tuple[int, int]) -> bool:
        if self.min_accepted <= 0 or self._seen.get(pair, 0) < self.warmup or self._mean[pair] >= self.min_accepted:
            return True
        self._skipped[pair] = self._skipped.get(pair, 0) + 1
        return self._skipped[pair] % self.probe_every == 0

    def observe(self, pair: tuple[int, int], accepted: int) -> None:
        seen = self._seen.get(pair, 0)
        mean = self._mean.get(pair, float(accepted))
        self._mean[pair] = mean + self.weight * (accepted - mean) if seen else float(accepted)
        self._seen[pair] = seen + 1

    def mean(self, pair: tuple[int, int]) -> float | None:
        return self._mean.get(pair)
