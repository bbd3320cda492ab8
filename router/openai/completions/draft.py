"""Draft verification over ``/v1/completions``: ``COMPLETIONS_DRAFT``, a ``router.draft.DraftIO``.

The rounds of ``router.draft.verify_draft`` (and the speculative-sampling rule of
``router.speculative``) verify a completions draft the way they verify a chat one;
what differs is only how a stage is asked and how its answer is read. The text is
scored as the end of the prompt with ``echo: true`` and ``logprobs`` (prompt +
draft, one generated token), and stage j continues with the kept text appended
to the prompt. The draft positions are the echoed ones after the prompt, so the
prompt must end on a token boundary of prompt + draft: where a token straddles
it (a prompt ending in spaces that the draft's first word takes up, " return"),
the draft is misaligned and regenerated, since stage j's own answer starts
after the prompt's own last token. The completions API has no way to score the
draft's positions only, so the first round also scores the prompt's (its later
rounds reuse them from the prefix cache on our CPU server and vLLM).
"""

from __future__ import annotations

from typing import Any

from common.completions_protocol import chat_entries, entries_logprobs, top_alternatives
from router.draft import DraftCheck, DraftIO, ScoredText, logprob_entry, merged_usage, token_limit
from router.stage import Stage, completions_stage


class CompletionsDraft(DraftIO):
    """Verification over ``/v1/completions``: the draft is the end of the prompt (``echo`` scores it), the
    continuation a prompt that ends with the kept text. ``body`` is an upstream completions request."""

    def top_k(self, body: dict[str, Any]) -> int:
        return int(body.get("logprobs") or 0)

    def asking(self, body: dict[str, Any], k: int) -> dict[str, Any]:
        return {**body, "logprobs": k}

    async def score(self, client: Stage, body: dict[str, Any], text: str, k: int) -> ScoredText | None:
        """Score ``text`` as the end of the prompt; None if the tokens do not re-assemble it there (``score_text``'s contract).

        The chosen token is stage j's top-1 where no alternative is more likely (the completions shape has no rank).
        """
        full = str(body["prompt"]) + text
        scoring = {**body, "prompt": full, "echo": True, "max_tokens": 1, "logprobs": max(k, 1)}
        data = (await completions_stage(client).complete(scoring)).data
        choice = data["choices"][0]
        lp = choice.get("logprobs") or {}
        tokens, values, tops = lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
        if not len(tokens) == len(values) == len(tops):
            return None
        end = at = 0
        while end < len(tokens) and at < len(full):  # the echoed positions: up to the end of prompt + text
            at += len(tokens[end])
            end += 1
        start, got = end, 0
        while start > 1 and got < len(text):  # walk back until the tokens re-assemble the text
            start -= 1
            got += len(tokens[start])
        if at != len(full) or got != len(text) or "".join(tokens[start:end]) != text:
            return None
        out = ScoredText([], [], [], {})
        for i in range(start, end):
            value, top = values[i], tops[i]
            if value is None or not top:
                return None
            out.tokens.append(tokens[i])
            out.top1.append(value >= max(top.values()))
            out.entries.append(logprob_entry(tokens[i], value, top_alternatives(top, k)))
        generated = choice.get("text") or ""
        rest = generated[len(full) :] if generated.startswith(full) else "".join(tokens[end:])
        out.generated = _as_chat(rest, chat_entries(lp, k, start=end), choice.get("finish_reason"), data.get("usage"))
        return out

    async def generate(self, client: Stage, body: dict[str, Any], text: str, max_tokens: int) -> dict[str, Any]:
        data = await self.fetch(client, {**body, "prompt": str(body["prompt"]) + text, "max_tokens": max_tokens})
        choice = data["choices"][0]
        return _as_chat(choice.get("text") or "", chat_entries(choice.get("logprobs"), self.top_k(body)), choice.get("finish_reason"),
                        data.get("usage"))  # fmt: skip

    def continuation(self, body: dict[str, Any], check: DraftCheck) -> dict[str, Any]:
        if not check.accepted_text:
            return body
        out = {**body, "prompt": str(body["prompt"]) + check.accepted_text}
        limit = token_limit(body)
        if limit is not None:
            out["max_tokens"] = limit - check.prefix_tokens
        return out

    def merge(self, check: DraftCheck, data: dict[str, Any] | None) -> dict[str, Any]:
        """Stage j's completion: kept prefix + continuation (logprobs in the completions shape), usage of all calls."""
        if data is None:  # the rounds completed the answer
            choice = {"index": 0, "text": "", "logprobs": None, "finish_reason": check.finished or "length"}
            data = {"id": "cmpl-draft", "object": "text_completion", "created": 0, "choices": [choice], "usage": {}}
        choice = data["choices"][0]
        choice["text"] = check.accepted_text + (choice.get("text") or "")
        tail = choice.get("logprobs")
        if tail is not None or check.accepted_logprobs:
            out = entries_logprobs(check.accepted_logprobs)
            tail = tail or {}
            for token, value, top in zip(tail.get("tokens") or (), tail.get("token_logprobs") or (), tail.get("top_logprobs") or (),
                                         strict=False):  # fmt: skip
                out.add(token, value, None if top is None else top.items())
            choice["logprobs"] = out.take()
        data["usage"] = merged_usage(check, data.get("usage"))
        return data

    async def fetch(self, client: Stage, body: dict[str, Any]) -> dict[str, Any]:
        return (await completions_stage(client).complete(body)).data


def _as_chat(text: str, entries: list[dict[str, Any]], finish: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    """A completions answer as the chat completion the rounds read (``router.draft``'s ``_take``)."""
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": entries}, "finish_reason": finish}
    return {"choices": [choice], "usage": usage or {}}


COMPLETIONS_DRAFT = CompletionsDraft()
