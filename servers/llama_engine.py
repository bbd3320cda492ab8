"""One llama.cpp model behind a small, explicit decoding API.

Why not ``Llama.create_chat_completion``: its logprobs path sorts the whole
vocabulary in Python at every token (seconds per 100 tokens) and it cannot
score a given continuation (vLLM's ``prompt_logprobs``). We drive the
low-level context ourselves: feed tokens, read the logits rows we asked for,
and do argmax / log-softmax / top-k with numpy. The KV cache keeps the
longest common prefix between consecutive requests.

Scores are remembered alongside the KV cache: every position fed with its
logits row in view (a scoring pass, or a generated token) keeps its
``ScoredToken``, so re-scoring a longer prompt that shares a prefix (draft
verification proceeds in rounds) only computes the new positions.

Not thread-safe: the server serialises calls (one model, one context).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import Llama

from servers.chat_template import ChatTemplate
from servers.grammar import TokenConstraint

TokenLogprob = tuple[int, float]  # (token id, logprob)
_GREEDY_CANDIDATES = 8  # constrained greedy: top tokens checked one by one before masking the whole vocabulary


# Start-up check (``LlamaEngine.warm_up``): a prompt long enough for a batched prefill, then a few decode steps.
WARM_UP_PROMPT = "Write one short sentence about the weather in a small town near the sea, then stop."
WARM_UP_TOKENS = 4


@dataclass
class Step:
    """One generated token and, when asked for, its logprob and top alternatives."""

    token: int
    logprob: float | None = None
    top: list[TokenLogprob] = field(default_factory=list)


@dataclass
class ScoredToken:
    """A prompt token scored by the model (vLLM ``prompt_logprobs`` entry)."""

    token: int
    logprob: float
    rank: int  # 1 = the model's own top-1 choice
    top: list[TokenLogprob]


class ContextOverflow(ValueError):
    """The prompt does not fit in the context window."""


def _logits(ctx: Any) -> Any:
    """The context's logits pointer (llama_cpp's internal context class is untyped)."""
    return ctx.get_logits()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum())
    return out


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """vLLM's (and transformers') ``repetition_penalty`` on a copy of ``logits``: the logits of the tokens in ``seen``
    (ids already in the prompt or the output) divided by ``penalty`` where positive, multiplied where negative."""
    out = logits.copy()
    if penalty != 1.0 and len(seen):
        values = out[seen]
        with np.errstate(over="ignore"):  # an extreme penalty: logits of +-inf, which picking handles
            out[seen] = np.where(values > 0, values / penalty, values * penalty)
    return out


def top_k(logprobs: np.ndarray, k: int) -> list[TokenLogprob]:
    if k <= 0:
        return []
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


_top_alternatives = top_k  # for ``generate``, whose ``top_k`` parameter (vLLM's name) hides the function


class LlamaEngine:
    def __init__(self, model_path: str, *, n_ctx: int = 4096, n_threads: int = 1, n_batch: int = 512) -> None:
        self.llm = Llama(
            model_path=model_path,
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            logits_all=False,
            verbose=False,
        )
        self.n_ctx = n_ctx
        self.n_vocab = self.llm.n_vocab()
        meta = self.llm.metadata
        self.model_name = meta.get("general.name", "")
        self._add_bos = meta.get("tokenizer.ggml.add_bos_token", "false").lower() == "true"
        bos = self.llm.token_bos()
        eos = self.llm.token_eos()
        self.template = ChatTemplate(
            meta["tokenizer.chat_template"],
            bos_token=self.piece(bos).decode("utf-8", "replace") if bos >= 0 else "",
            eos_token=self.piece(eos).decode("utf-8", "replace") if eos >= 0 else "",
        )
        self._vocab = self.llm._model.vocab
        self._end_ids: np.ndarray | None = None  # every end-of-generation token id (``end_ids``), found once (at warm-up)
        # _scores[p]: token p scored given tokens < p (None: fed without its row in view); len == n_tokens
        self._scores: list[ScoredToken | None] = []
        self._tail: np.ndarray | None = None  # logits row of the last fed token: the next token's distribution

    # -- start-up -------------------------------------------------------------
    def warm_up(self, prompt: str = WARM_UP_PROMPT, max_tokens: int = WARM_UP_TOKENS) -> int:
        """Prefill a short prompt, generate a few greedy tokens, then forget them; the number generated.

        Why before reporting healthy: a llama.cpp build whose kernels this CPU cannot run (a build for
        instructions the machine advertises but does not execute, such as AMX in some VMs) loads its
        weights fine and dies at the first matrix product. Running one batched prefill and a few decode
        steps at start-up turns that into a process that never becomes healthy (the launcher reports its
        exit), instead of a server that says ok and drops every request. The cache is emptied after, so
        the first real request sees the same state as without a warm-up. The end-of-generation ids
        (``end_ids``, ~0.2 s over a 150k vocabulary) are found here too, not during a first ``min_tokens`` request.
        """
        self.end_ids()
        generated = sum(1 for _ in self.generate(self.tokenize(prompt), max_tokens=max_tokens, logprobs=True, top_logprobs=1))
        self._reuse_prefix([], keep_at_most=0)  # keep nothing: the next forward pass starts from an empty cache
        return generated

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=True)

    def piece(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=False).decode("utf-8", "replace")

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def end_ids(self) -> np.ndarray:
        """Every end-of-generation token id (what ``min_tokens`` holds back): one pass over the vocabulary, once."""
        if self._end_ids is None:
            self._end_ids = np.array([t for t in range(self.n_vocab) if self.is_end(t)], dtype=np.intp)
        return self._end_ids

    def constraint(self, grammar: str) -> TokenConstraint:
        """A grammar constraint over this model's vocabulary for one ``generate`` (raises ``GrammarError``)."""
        return TokenConstraint(self._vocab, self.n_vocab, grammar)

    # -- forward passes -------------------------------------------------------
    def _reuse_prefix(self, tokens: list[int], keep_at_most: int) -> int:
        """Keep the cached KV prefix shared with ``tokens`` (at most ``keep_at_most``)."""
        cached = self.llm.input_ids[: self.llm.n_tokens]
        n = min(len(cached), keep_at_most)
        same = np.asarray(cached[:n]) == np.asarray(tokens[:n], dtype=cached.dtype)
        prefix = n if same.all() else int(np.argmin(same))
        if prefix < self.llm.n_tokens:
            self._tail = None
        self.llm.n_tokens = prefix
        del self._scores[prefix:]
        return prefix

    def _forward(self, tokens: list[int], all_rows: bool) -> Iterator[np.ndarray]:
        """Feed ``tokens`` after the cached prefix; yield logits rows.

        With ``all_rows`` one row per token (batch by batch, so memory stays
        one batch of rows); otherwise only the last token's row. Callers
        append to ``_scores`` what they learn about each fed token; positions
        they do not score are padded with None here.
        """
        llm = self.llm
        if llm.n_tokens + len(tokens) > self.n_ctx:
            raise ContextOverflow(f"{llm.n_tokens + len(tokens)} tokens exceed the context window of {self.n_ctx}")
        ctx, batch = llm._ctx, llm._batch
        ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        for start in range(0, len(tokens), llm.n_batch):
            chunk = tokens[start : start + llm.n_batch]
            last_chunk = start + llm.n_batch >= len(tokens)
            batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=all_rows)
            ctx.decode(batch)
            llm.input_ids[llm.n_tokens : llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
            if not all_rows:
                self._scores.extend([None] * (llm.n_tokens - len(self._scores)))
            if all_rows:
                rows = np.ctypeslib.as_array(_logits(ctx), shape=(len(chunk), self.n_vocab))
                if last_chunk:
                    self._tail = rows[-1].copy()
                yield from rows
            elif last_chunk:
                self._tail = np.ctypeslib.as_array(_logits(ctx), shape=(1, self.n_vocab))[0].copy()
                yield self._tail

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        """The next-token logits after ``prompt``: from the cache when the whole prompt was the last thing fed."""
        if self._reuse_prefix(prompt, keep_at_most=len(prompt)) == len(prompt) and self._tail is not None:
            return self._tail.copy()
        self._reuse_prefix(prompt, keep_at_most=len(prompt) - 1)
        *_, last = self._forward(prompt[self.llm.n_tokens :], all_rows=False)
        return last.copy()

    # -- public API -----------------------------------------------------------
    def generate(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        min_tokens: int = 0,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        constraint: TokenConstraint | None = None,
    ) -> Iterator[Step]:
        """Yield generated tokens until an end-of-generation token or ``max_tokens``.

        The end token itself is not yielded. The caller decides ``length``
        vs ``stop`` by counting.

        With a ``constraint`` (a grammar) each token is drawn from the model's
        distribution restricted to the tokens the grammar allows, renormalised
        (temperature and top-p apply after the restriction). The logprobs
        reported are the raw model's, as vLLM reports them: one dialect for CPU
        and GPU stages, so the predictor reads the same quantity from both (how
        much the model itself wanted each token, forced ones included), and no
        grammar pass over the whole vocabulary per step just to renormalise
        (~13 ms a step here: structured answers would decode at ~30 instead of
        ~50 tok/s). Generation ends when the grammar admits nothing but an end
        token (or nothing at all).
        Without a constraint nothing of this runs: the loop is unchanged.

        vLLM's extras: ``top_k`` (0 or -1: off) and ``min_p`` (0: off) cut the
        sampled distribution (``_pick``); ``repetition_penalty`` (1: off) scales
        the logits of every token already in the prompt or the output
        (``penalize``); ``min_tokens`` holds back every end-of-generation token
        until that many tokens are generated. The logprobs reported stay the raw
        model's, as under a grammar.
        """
        if not prompt:
            raise ValueError("empty prompt")
        rng = np.random.default_rng(None if seed is None else seed % 2**64)  # numpy takes no negative seed; the API's may be
        logits = self._prefill(prompt)
        seen = np.unique(np.asarray(prompt, dtype=np.intp)) if repetition_penalty != 1.0 else None
        ends = self.end_ids() if min_tokens > 0 else None
        for produced in range(max_tokens):
            picking = logits
            if seen is not None:
                picking = penalize(logits, seen, repetition_penalty)
            if ends is not None and produced < min_tokens:
                picking = picking.copy() if picking is logits else picking
                picking[ends] = -np.inf
            if constraint is None:
                token = self._pick(picking, temperature, top_p, rng, top_k, min_p)
            else:
                token = self._pick_constrained(picking, constraint, temperature, top_p, rng, top_k, min_p)
                if token < 0:
                    return
            if seen is not None and not (seen == token).any():
                seen = np.append(seen, token)
            if self.is_end(token):
                return
            lp = log_softmax(logits)
            step = Step(token)
            if logprobs:
                step.logprob = float(lp[token])
                step.top = _top_alternatives(lp, top_logprobs)
            yield step
            if constraint is not None:
                constraint.accept(token)
            if produced + 1 == max_tokens or self.llm.n_tokens >= self.n_ctx:
                return
            scored = _scored(lp, token, top_logprobs, step.top)
            (logits,) = self._forward([token], all_rows=False)
            self._scores[-1] = scored
            logits = logits.copy()

    def score(self, prompt: list[int], k: int, first: int = 1) -> list[ScoredToken | None]:
        """vLLM ``prompt_logprobs``: for each prompt token, its logprob and rank
        under the model given the tokens before it (None for the first token).

        Positions before ``first`` are only scored if already cached (None
        otherwise): computing a logits row costs a vocabulary-sized matrix
        product per position, which on a CPU is a large share of a prefill.
        Positions already scored (with at least ``k`` alternatives) in the
        cached prefix are reused; the pass restarts at the first one that is
        not, one position early so that its predecessor's row is in view.
        """
        need_from = min(max(first, 1), len(prompt) - 1)
        known = self._reuse_prefix(prompt, keep_at_most=len(prompt))
        usable = next((p for p in range(need_from, known) if not _covers(self._scores[p], k)), known)
        if usable == len(prompt) and self._tail is not None:  # all scored, and the next token's row is in view
            return list(self._scores)
        usable = min(usable, len(prompt) - 1)
        start = max(usable - 1, 0)
        kept = self._scores[start] if 0 < start < known else None
        self._reuse_prefix(prompt, keep_at_most=start)
        self._scores.append(kept)
        rows_from = max(start, need_from - 1)
        if rows_from > start:  # the part nobody asked for: fed without rows, except the last one
            *_, row = self._forward(prompt[start:rows_from], all_rows=False)
            self._scores.append(_scored(log_softmax(row), prompt[rows_from], k))
        rows = self._forward(prompt[rows_from:], all_rows=True)
        for position, row in enumerate(rows, start=rows_from):
            if position + 1 >= len(prompt):
                break
            self._scores.append(_scored(log_softmax(row), prompt[position + 1], k))
        return list(self._scores[: len(prompt)])

    def _pick_constrained(
        self,
        logits: np.ndarray,
        constraint: TokenConstraint,
        temperature: float,
        top_p: float,
        rng: np.random.Generator,
        top_k: int = 0,
        min_p: float = 0.0,
    ) -> int:
        """A token from the constrained distribution (-1: nothing allowed).

        Masking walks the whole vocabulary through the grammar (~10 ms here), so
        unless the masked logits are needed (top-p, top-k and min-p, whose cut must be taken
        after the restriction) the token the model would pick is checked alone first. Greedy: the best of the top few candidates
        that the grammar allows is the constrained argmax. Sampling: a draw from
        the raw distribution that the grammar allows is kept, otherwise one is
        drawn from the masked distribution -- rejection sampling, exactly the
        constrained distribution (P(x) = p(x) + (1 - p(A)) p(x) / p(A) = p(x) / p(A)).
        """
        if temperature <= 0.0:
            order = np.argpartition(-logits, _GREEDY_CANDIDATES)[:_GREEDY_CANDIDATES]
            for token in order[np.lexsort((order, -logits[order]))]:  # best first, ties by id as np.argmax breaks them
                if constraint.allows(int(token)):
                    return int(token)
        elif top_p >= 1.0 and top_k <= 0 and min_p <= 0.0:
            token = self._pick(logits, temperature, top_p, rng)
            if constraint.allows(token):
                return token
        masked = constraint.mask(logits)
        if not np.isfinite(masked).any():
            return -1
        return self._pick(masked, temperature, top_p, rng, top_k, min_p)

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator, top_k: int = 0, min_p: float = 0.0) -> int:
        """Greedy at temperature 0 (``top_k`` and ``min_p`` change nothing then); otherwise a draw at ``temperature``
        from the tokens that survive vLLM's cuts, in its order: ``min_p`` (less likely than ``min_p`` times the most
        likely token: out), ``top_k`` (0 or -1: off), then the ``top_p`` nucleus of what is left, renormalised."""
        if temperature <= 0.0:
            return int(np.argmax(logits))
        with np.errstate(over="ignore"):
            scaled = logits.astype(np.float64) / temperature
        top = scaled.max()
        if not np.isfinite(top):  # a temperature so small that the scaled logits overflow (inf - inf: NaN): its limit, greedy
            return int(np.argmax(logits))
        probs = np.exp(scaled - top)  # the most likely token has 1
        if min_p > 0.0:
            probs[probs < min_p] = 0.0
        if 0 < top_k < len(probs):
            probs[probs < np.partition(probs, -top_k)[-top_k]] = 0.0
        probs /= probs.sum()
        if top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
            return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))
        return int(rng.choice(len(probs), p=probs))


def _scored(lp: np.ndarray, token: int, k: int, top: list[TokenLogprob] | None = None) -> ScoredToken:
    """``token``'s logprob, rank and the top ``k`` alternatives under the log-distribution ``lp``."""
    return ScoredToken(token, float(lp[token]), int((lp > lp[token]).sum()) + 1, top if top is not None and len(top) >= k else top_k(lp, k))


def _covers(score: ScoredToken | None, k: int) -> bool:
    return score is not None and len(score.top) >= k
