"""Draft reuse for sampled requests (temperature > 0): the speculative-sampling rule.

When stage i sampled its answer and stage j shares its tokenizer, stage j
scores the draft in one pass and walks it token by token: draft token x is
kept with probability min(1, p(x) / q(x)) (p: stage j's distribution at that
position, q: stage i's, both at the request's temperature); at the first
rejection a replacement is drawn from the residual max(0, p - q) and stage j
samples the rest itself. The kept prefix plus the replacement is then
distributed as stage j's own sampling (Leviathan et al. 2023; Chen et al.
2023), so escalating a sampled request does not bias what the client gets.

What the stages return limits the exactness: both distributions are known
only over their top-k alternatives (k = ``TOP_K`` for stage j's scoring pass,
the cascade's ``top_logprobs`` for stage i's answer), as raw log-probabilities
(temperature 1). Tempering renormalises over the known tokens plus an upper
bound of the unseen tail, and the residual is drawn over stage j's top-k.
Where the top-k hold nearly all of the mass (the usual case at T <= 1), the
rule is exact to that mass; ``tests/router/test_speculative.py`` checks the
output distribution against p on full distributions, where it is exact.
Requests with ``top_p < 1``, or with vLLM's ``top_k`` or ``min_p``, regenerate
(the cut of each stage's distribution is not known to the router:
``router.draft.why_not_verify``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from router.draft import CHAT_DRAFT, DraftCheck, DraftIO
from router.stage import Stage

TOP_K = 20  # stage j's alternatives per position in the scoring pass (vLLM's default max_logprobs)
ACCEPT_STREAM = 0x5EC5  # the acceptance draws get their own stream of the request's seed, never the one a stage sampled with


def tempered(logprobs: Mapping[str, float], temperature: float) -> dict[str, float]:
    """Probabilities at ``temperature`` from raw top-k logprobs, normalised over the known tokens
    plus the largest mass the unseen tail can have at T <= 1 (every unseen token is at most the
    smallest seen; above T = 1 this is a lower bound)."""
    if not logprobs:
        return {}
    lps = np.array(list(logprobs.values()), dtype=np.float64)
    tail = max(0.0, 1.0 - float(np.exp(lps).sum()))
    scaled = lps / temperature
    top = scaled.max()
    weights = np.exp(scaled - top)
    smallest = float(lps.min())
    # tail tokens: total raw mass `tail`, each <= exp(smallest), so sum p^(1/T) <= tail * exp(smallest)^(1/T - 1)
    tail_weight = tail * math.exp(smallest * (1.0 / temperature - 1.0) - top) if tail > 0 else 0.0
    z = float(weights.sum()) + tail_weight
    return {tok: float(w / z) for tok, w in zip(logprobs, weights, strict=False)}


def accept(token: str, p: Mapping[str, float], q: Mapping[str, float], rng: np.random.Generator) -> str | None:
    """None if ``token`` (drawn from q) is kept; else the replacement drawn from the residual max(0, p - q)."""
    pt, qt = p.get(token, 0.0), q.get(token, 0.0)
    if qt > 0.0 and rng.random() * qt < pt:
        return None
    residual = {t: max(0.0, pv - q.get(t, 0.0)) for t, pv in p.items()}
    total = sum(residual.values())
    if total <= 0.0:  # p <= q everywhere we can see: fall back to p itself
        residual, total = dict(p), sum(p.values())
    tokens = list(residual)
    weights = np.array([residual[t] for t in tokens]) / total
    return tokens[int(rng.choice(len(tokens), p=weights))]


def _alternatives(entry: Mapping[str, Any]) -> dict[str, float]:
    """An OpenAI logprobs entry as {token: raw logprob}, the token itself included."""
    out = {a["token"]: a["logprob"] for a in entry.get("top_logprobs") or ()}
    out.setdefault(entry["token"], entry["logprob"])
    return out


def is_end(token: str) -> bool:
    """A special end-of-turn token as decoded by the stage (``<|im_end|>``, ``<|eot_id|>``, ...)."""
    return token.startswith("<|") and token.endswith("|>")


async def verify_sampled(
    client: Stage, body: dict[str, Any], draft: str, draft_entries: list[dict[str, Any]], io: DraftIO = CHAT_DRAFT
) -> DraftCheck | None:
    """Stage j's answer prefix from stage i's sampled draft; None if the tokenizations differ.

    ``io``: the API dialect of ``body`` (``router.draft.CHAT_DRAFT`` or ``router.openai.completions.draft.COMPLETIONS_DRAFT``);
    ``draft_entries`` are chat ``logprobs.content`` entries either way."""
    t0 = time.perf_counter()
    temperature = float(body["temperature"])
    scored = await io.score(client, io.asking(body, TOP_K), draft, TOP_K)
    if scored is None or scored.tokens != [e["token"] for e in draft_entries]:
        return None
    # The draws must be independent of the draft: stage i (our CPU server) samples with
    # default_rng(seed), one uniform per token, so reusing the seed would make each acceptance
    # draw the very uniform that picked the draft token (biased output).
    seed = body.get("seed")
    rng = np.random.default_rng(None if seed is None else [int(seed), ACCEPT_STREAM])
    check = DraftCheck(draft_tokens=len(scored.tokens), rounds=1)
    check.count_call(scored.generated["usage"])
    for token, mine, theirs in zip(scored.tokens, scored.entries, draft_entries, strict=False):
        known = _alternatives(mine)
        replacement = accept(token, tempered(known, temperature), tempered(_alternatives(theirs), temperature), rng)
        if replacement is None:
            check.accepted_tokens += 1
            check.accepted_logprobs.append(mine)
            check.accepted_text += token
            continue
        if is_end(replacement):
            check.finished = "stop"
        else:
            check.accepted_logprobs.append(
                {**mine, "token": replacement, "logprob": known[replacement], "bytes": list(replacement.encode())}
            )
            check.accepted_text += replacement
        break
    check.seconds = time.perf_counter() - t0
    return check
