"""What one generation is asked to do, and how ``stop`` strings end it.

``Sampling`` is the common ground of the chat and the completions endpoints:
each request is validated into one, and decoding (``StageServing.decode``)
reads nothing else. ``StopMatcher`` applies ``stop`` on decoded text rather
than on tokens, because a stop string need not fall on token boundaries; it
holds back the tail that could still be the start of one, so no text that a
stop string later cuts off is ever sent to a streaming client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from servers.grammar import TokenConstraint
from servers.tools import ToolCallParser


@dataclass
class Sampling:
    """What one generation needs, whichever endpoint asked for it."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # vLLM's extras: 0 (or -1) off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    min_tokens: int = 0  # no end of sequence and no stop string before this many tokens
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    stops: list[str] = field(default_factory=list)
    constraint: TokenConstraint | None = None  # grammar-constrained decoding (single use)
    tools: ToolCallParser | None = None  # the generated text is parsed for tool calls (single use)


class StopMatcher:
    """Applies ``stop`` strings on decoded text, holding back a possible partial match."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.floor = 0  # a stop string counts only if it ends beyond buffer[:floor] (text fed with check=False)

    def feed(self, text: str, check: bool = True) -> tuple[str, bool]:
        """Return (text safe to emit, stopped). ``check=False`` (before ``min_tokens``): no stop string ends in ``text``,
        as vLLM checks none before then; a stop string that ends in later text still counts."""
        self.buffer += text
        for s in self.stops if check else ():
            at = self.buffer.find(s, max(0, self.floor - len(s) + 1))
            if at >= 0:
                out, self.buffer = self.buffer[:at], ""
                return out, True
        if self.hold <= 0:
            out, self.buffer = self.buffer, ""
        else:
            out, self.buffer = self.buffer[: -self.hold], self.buffer[-self.hold :]
        self.floor = max(0, self.floor - len(out)) if check else len(self.buffer)
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out
