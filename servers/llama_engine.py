"""One llama.cpp model behind a small, explicit decoding API.

Why not ``Llama.create_chat_completion``: its logprobs path sorts the whole
vocabulary in Python at every token (seconds per 100 tokens) and it cannot
score a given continuation (vLLM's ``prompt_logprobs``). We drive the
low-level context ourselves: feed tokens, read the logits rows we asked for,
and do argmax / log-softmax / top-k with numpy. The KV cache keeps the
longest common prefix between consecutive requests.

Not thread-safe: the server serialises calls (one model, one context).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import llama_cpp
import numpy as np
from llama_cpp import Llama

from servers.chat_template import ChatTemplate

TokenLogprob = tuple[int, float]  # (token id, logprob)


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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def top_k(logprobs: np.ndarray, k: int) -> list[TokenLogprob]:
    if k <= 0:
        return []
    idx = np.argpartition(-logprobs, k - 1)[:k]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]


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

    # -- tokens ---------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self._add_bos, special=True)

    def piece(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens, special=False).decode("utf-8", "replace")

    def is_end(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- forward passes -------------------------------------------------------
    def _reuse_prefix(self, tokens: list[int], keep_at_most: int) -> int:
        """Keep the cached KV prefix shared with ``tokens`` (at most ``keep_at_most``)."""
        cached = self.llm.input_ids[: self.llm.n_tokens]
        n = min(len(cached), keep_at_most)
        same = np.asarray(cached[:n]) == np.asarray(tokens[:n], dtype=cached.dtype)
        prefix = n if same.all() else int(np.argmin(same))
        self.llm.n_tokens = prefix
        return prefix

    def _forward(self, tokens: list[int], all_rows: bool) -> Iterator[np.ndarray]:
        """Feed ``tokens`` after the cached prefix; yield logits rows.

        With ``all_rows`` one row per token (batch by batch, so memory stays
        one batch of rows); otherwise only the last token's row.
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
            if all_rows:
                rows = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(chunk), self.n_vocab))
                yield from rows
            elif last_chunk:
                yield np.ctypeslib.as_array(ctx.get_logits(), shape=(1, self.n_vocab))[0]

    def _prefill(self, prompt: list[int]) -> np.ndarray:
        self._reuse_prefix(prompt, keep_at_most=len(prompt) - 1)
        *_, last = self._forward(prompt[self.llm.n_tokens :], all_rows=False)
        return last

    # -- public API -----------------------------------------------------------
    def generate(
        self,
        prompt: list[int],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
    ) -> Iterator[Step]:
        """Yield generated tokens until an end-of-generation token or ``max_tokens``.

        The end token itself is not yielded. The caller decides ``length``
        vs ``stop`` by counting.
        """
        if not prompt:
            raise ValueError("empty prompt")
        rng = np.random.default_rng(seed)
        logits = self._prefill(prompt)
        for produced in range(max_tokens):
            token = self._pick(logits, temperature, top_p, rng)
            if self.is_end(token):
                return
            step = Step(token)
            if logprobs:
                lp = log_softmax(logits)
                step.logprob = float(lp[token])
                step.top = top_k(lp, top_logprobs)
            yield step
            if produced + 1 == max_tokens or self.llm.n_tokens >= self.n_ctx:
                return
            (logits,) = self._forward([token], all_rows=False)
            logits = logits.copy()

    def score(self, prompt: list[int], k: int) -> list[ScoredToken | None]:
        """vLLM ``prompt_logprobs``: for each prompt token, its logprob and rank
        under the model given the tokens before it (None for the first token)."""
        self._reuse_prefix(prompt, keep_at_most=0)
        out: list[ScoredToken | None] = [None]
        rows = self._forward(prompt, all_rows=True)
        for position, row in enumerate(rows):
            if position + 1 >= len(prompt):
                break
            nxt = prompt[position + 1]
            lp = log_softmax(row)
            rank = int((lp > lp[nxt]).sum()) + 1
            out.append(ScoredToken(nxt, float(lp[nxt]), rank, top_k(lp, k)))
        return out

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
        if temperature <= 0.0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if top_p < 1.0:
            order = np.argsort(-probs)
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
            return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))
        return int(rng.choice(len(probs), p=probs))
