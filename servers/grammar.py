"""Grammar-constrained decoding: GBNF text from JSON schemas, and a per-request token constraint.

Two halves:

* ``GrammarBuilder`` writes a llama.cpp GBNF grammar. JSON schemas are converted
  with llama-cpp-python's own converter (``llama_cpp.llama_grammar.SchemaConverter``,
  the port of llama.cpp's ``json-schema-to-grammar``), one converter per schema and
  its rules renamed with a prefix, so that several schemas (one per tool, plus a
  response format) live in one grammar without their ``$defs`` names colliding.
* ``TokenConstraint`` is llama.cpp's grammar sampler (``llama_sampler_init_grammar``)
  driven from our own sampling loop: ``allows`` checks one token, ``mask`` sets the
  logits of every token the grammar forbids to ``-inf``, ``accept`` advances the
  grammar by a chosen token.

A full ``mask`` walks the whole vocabulary through the grammar (~9-16 ms for Qwen's
152k tokens on this CPU), so the engine checks the token it would pick anyway first
and masks only when the grammar refuses it (see ``LlamaEngine.generate``).
"""

from __future__ import annotations

import ctypes
import json
import re
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import SchemaConverter

# One GBNF token: a string literal, a character class, a repetition count, a rule name, or anything else.
_GBNF_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[0-9, ]*\}|[A-Za-z0-9-]+|\s+|.', re.S)
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class GrammarError(ValueError):
    """A schema cannot be turned into a grammar, or llama.cpp refused the grammar; ``param`` names the request field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def gbnf_literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class GrammarBuilder:
    """Collects GBNF rules; ``schema`` adds a JSON schema's rules under a prefix and returns its root rule."""

    def __init__(self) -> None:
        self._rules: dict[str, str] = {}

    def rule(self, name: str, body: str) -> str:
        if name in self._rules and self._rules[name] != body:
            raise GrammarError(f"grammar rule {name!r} defined twice")
        self._rules[name] = body
        return name

    def schema(self, schema: dict[str, Any] | None, prefix: str) -> str:
        """Rules matching JSON values valid against ``schema`` (None: any JSON object)."""
        converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]
        try:
            resolved = converter.resolve_refs(json.loads(json.dumps(schema if schema is not None else {"type": "object"})), "schema")
            root: str = converter.visit(resolved, "")  # type: ignore[no-untyped-call]
        except (AssertionError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise GrammarError(f"unsupported JSON schema: {exc}") from None
        rules: dict[str, str] = converter._rules
        names = set(rules)

        def rename(body: str) -> str:
            return "".join(f"{prefix}-{t}" if t in names else t for t in _GBNF_TOKEN.findall(body))

        for name, body in rules.items():
            self.rule(f"{prefix}-{name}", rename(body))
        return f"{prefix}-{root}"

    def text(self, root_body: str) -> str:
        """The grammar with ``root ::= root_body``."""
        lines = [f"root ::= {root_body}"]
        lines += [f"{name} ::= {body}" for name, body in sorted(self._rules.items())]
        return "\n".join(lines) + "\n"


def json_grammar(schema: dict[str, Any] | None) -> str:
    """A grammar for one JSON value valid against ``schema`` (None: any JSON object)."""
    builder = GrammarBuilder()
    return builder.text(builder.schema(schema, "json"))


class TokenConstraint:
    """llama.cpp's grammar sampler over one vocabulary, for one generation.

    Single-use (it holds the grammar's parse state) and not thread-safe. The
    allowed set of the current state is computed at most once (``mask`` after
    ``allows`` reuses it) and forgotten at ``accept``.

    Computing the allowed set on a helper thread while the forward pass runs was
    tried and measured: on this 2-vCPU machine the two C calls slow each other
    down (66 ms together against 23 + 14 ms one after the other), so it is not done.
    """

    def __init__(self, vocab: Any, n_vocab: int, grammar: str) -> None:
        self.grammar = grammar
        self._sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not self._sampler:
            raise GrammarError("llama.cpp could not parse the grammar")
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._all = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        self._ready: np.ndarray | None = None  # the allowed set of the current state, once computed

    def _apply(self, data: np.ndarray) -> None:
        array = llama_cpp.llama_token_data_array(
            data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(data), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def allowed(self) -> np.ndarray:
        """Which tokens the grammar accepts next, as a boolean vector over the vocabulary."""
        if self._ready is None:
            data = self._all
            data["id"] = self._ids
            data["logit"] = 0.0
            self._apply(data)
            self._ready = np.isfinite(data["logit"])
        return self._ready

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts ``token`` next (an end-of-generation token: whether the grammar may end here)."""
        if self._ready is not None:
            return bool(self._ready[token])
        self._one["id"] = token
        self._one["logit"] = 0.0
        self._apply(self._one)
        return bool(np.isfinite(self._one["logit"][0]))

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` with every token the grammar forbids at ``-inf``."""
        out: np.ndarray = np.where(self.allowed(), logits, np.float32(-np.inf))
        return out

    def accept(self, token: int) -> None:
        """Advance the grammar by ``token``, which must be allowed (llama.cpp aborts on a token it cannot take)."""
        self._ready = None
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:
        self.close()
