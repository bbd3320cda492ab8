"""Tool calling through the model's own chat template, the way vLLM's OpenAI server does it.

The template renders the offered tools (its ``tools`` variable) and the history's
calls and results; what the model writes back is parsed into OpenAI ``tool_calls``.
How a model writes a call depends on its template family, so a ``ToolFormat`` is
detected from the template text when the model loads:

* ``hermes`` (Qwen2.5, Hermes 2 Pro and others): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
  one block per call.
* no format (SmolLM2's template has no tools at all): tool requests get a 400.

``tool_choice``:

* ``auto``: free generation, then parsing (vLLM's behaviour). A block that does
  not parse, or names a function that was not offered, stays in ``content`` as text.
* ``required`` / a named function: a grammar that only admits the format's call
  blocks (for the offered / the named function, arguments valid against its
  ``parameters`` schema), so the output always parses.
* ``none``: the tools are not rendered at all (vLLM renders them and ignores calls;
  we leave them out so the model has no reason to write one). The history's calls
  and results are still rendered.

``parallel_tool_calls: false`` admits one call: the grammar has one block, and in
``auto`` mode generation stops after the first complete call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

from common.protocol import NamedToolChoice, Tool, ToolChoice
from servers.grammar import GrammarBuilder, GrammarError, gbnf_literal


@dataclass(frozen=True)
class ParsedCall:
    """One tool call the model wrote, in OpenAI's shape (``arguments`` as JSON text)."""

    id: str
    name: str
    arguments: str

    def openai(self, index: int | None = None) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return out if index is None else {"index": index, **out}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class ToolFormat:
    """How one template family writes tool calls: the tags around each call's JSON."""

    name: str
    start: str
    end: str

    # -- grammar (tool_choice required / named) ---------------------------------
    def grammar(
        self, tools: list[Tool], only: str | None, parallel: bool, builder: GrammarBuilder | None = None
    ) -> tuple[GrammarBuilder, str]:
        """Rules for one or more call blocks; returns the builder and the body for ``root``."""
        builder = builder or GrammarBuilder()
        alternatives = []
        for i, tool in enumerate(tools):
            fn = tool.function
            if only is not None and fn.name != only:
                continue
            params = fn.parameters if fn.parameters else {"type": "object", "properties": {}}
            try:
                args = builder.schema(params, f"tool{i}-args")
            except GrammarError as exc:
                raise GrammarError(f"tools[{i}].function.parameters: {exc.message}", f"tools[{i}].function.parameters") from None
            head = gbnf_literal(f'{self.start}\n{{"name": "{fn.name}", "arguments": ')
            alternatives.append(builder.rule(f"tool{i}-call", f"{head} {args} {gbnf_literal('}' + chr(10) + self.end)}"))
        call = builder.rule("tool-call", " | ".join(alternatives))
        return builder, f'{call} ("\\n" {call})*' if parallel else call

    # -- parsing ----------------------------------------------------------------
    def parse_block(self, body: str, names: set[str]) -> ParsedCall | None:
        """The call inside one block, or None when it is not a well-formed call to an offered function.

        A block that is not JSON but is one JSON object inside exactly one extra pair of braces
        (``{{"name": ..., "arguments": {...}}}``) is read as that object: Qwen2.5-Coder-1.5B's template (not
        the 0.5B's) shows the call format as ``{{"name": <function-name>, ...}}`` inside a Jinja string, so the
        doubled braces reach the prompt verbatim and the model copies them (seen live: a system prompt and
        "What is 17 + 25?" with an ``add`` tool). Nothing else is repaired.
        """
        try:
            obj = json.loads(body)
        except ValueError:
            inner = undoubled(body)
            if inner is None:
                return None
            obj = json.loads(inner)
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or obj["name"] not in names:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as JSON text
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        return ParsedCall(new_call_id(), obj["name"], json.dumps(args, ensure_ascii=False))

    def parser(self, tools: list[Tool], parallel: bool) -> ToolCallParser:
        return ToolCallParser(self, {t.function.name for t in tools}, parallel)


HERMES = ToolFormat("hermes", "<tool_call>", "</tool_call>")

_DOUBLED = re.compile(r"\A\s*\{\s*(\{.*\})\s*\}\s*\Z", re.DOTALL)


def undoubled(text: str) -> str | None:
    """The JSON object inside ``text`` when ``text`` is that object wrapped in one more pair of braces
    (``{{...}}``, white space allowed around and between them); None otherwise.

    Strict on purpose, because it turns text into a call: exactly one outer pair comes off, and what is
    left must be one JSON object (a second or third extra pair, or an object followed by more, is not).
    """
    doubled = _DOUBLED.match(text)
    if doubled is None:
        return None
    inner = doubled.group(1)
    try:
        value = json.loads(inner)
    except ValueError:
        return None
    return inner if isinstance(value, dict) else None


def detect_tool_format(template_source: str) -> ToolFormat | None:
    """The tool format a chat template uses, or None when it renders no tools."""
    if "tools" in template_source and HERMES.start in template_source and HERMES.end in template_source:
        return HERMES
    return None


def tool_choice_name(choice: ToolChoice | None) -> str | None:
    return choice.name if isinstance(choice, NamedToolChoice) else None


def template_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    """Tools as chat templates take them (OpenAI's shape, as transformers and vLLM pass them)."""
    return [t.model_dump(exclude_none=True, by_alias=True) for t in tools]


class ToolCallParser:
    """Splits generated text into content and tool calls, incrementally (streaming and whole answers alike).

    ``feed`` returns the content that is safe to show and the calls completed so
    far. A call is a tagged block (``<tool_call>...</tool_call>``), or -- as
    llama.cpp's Hermes parser also takes it, because small Qwen models often drop
    the tags -- a bare JSON object ``{"name": <an offered function>, "arguments": {...}}``
    that starts a line. Both forms are also taken with their object inside one
    more pair of braces (``{{"name": ..., "arguments": {...}}}``, how Qwen2.5-Coder-1.5B
    copies its template's example; see ``ToolFormat.parse_block``). Text that may
    still turn out to be a call (a partial tag, a line starting with
    ``{"name": "<prefix of an offered name>`` or ``{{"name": ...``) is held back
    until it is told apart. Whitespace next to a call is dropped (the newline
    between blocks is not content); everything else comes out unchanged, so an
    answer without calls is returned exactly as generated.
    """

    def __init__(self, fmt: ToolFormat, names: set[str], parallel: bool) -> None:
        self.fmt = fmt
        self.names = names
        self.parallel = parallel
        self.calls: list[ParsedCall] = []
        self.done = False  # parallel calls off and one call made: nothing more is wanted
        self._buffer = ""
        self._mode = "text"  # "text" | "tagged" (inside a tagged block) | "bare" (the buffer starts a possible bare call)
        self._line_start = True  # the text consumed so far ends at the start of a line (spaces aside)
        self._space = ""  # trailing whitespace of the content, held until more content follows
        self._after_call = False

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        if self.done:
            return "", []
        self._buffer += text
        out: list[str] = []
        made: list[ParsedCall] = []
        while not self.done and self._step(out, made):
            pass
        if self.done:
            self._buffer = ""
        return "".join(out), made

    def _step(self, out: list[str], made: list[ParsedCall]) -> bool:
        """Consume what can be decided at the head of the buffer; False when more text is needed."""
        buf = self._buffer
        if self._mode == "tagged":
            at = buf.find(self.fmt.end)
            if at < 0:
                return False
            self._buffer = buf[at + len(self.fmt.end) :]
            self._mode = "text"
            self._block(buf[:at], self.fmt.start + buf[: at + len(self.fmt.end)], out, made)
            return True
        if self._mode == "bare":
            return self._bare(_bare_call(buf, self.names), out, made)
        at = buf.find(self.fmt.start)
        bare = self._bare_start(buf, len(buf) if at < 0 else at)
        if bare >= 0:
            out.append(self._content(buf[:bare]))
            self._buffer = buf[bare:]
            self._mode = "bare"
            return True
        if at >= 0:
            out.append(self._content(buf[:at]))
            self._buffer = buf[at + len(self.fmt.start) :]
            self._mode = "tagged"
            return True
        keep = _partial_suffix(buf, self.fmt.start)
        out.append(self._content(buf[: len(buf) - keep]))
        self._buffer = buf[len(buf) - keep :]
        return False

    def flush(self) -> tuple[str, list[ParsedCall]]:
        """The end of generation: what was held back is decided now (an unclosed block is parsed as it stands)."""
        out: list[str] = []
        made: list[ParsedCall] = []
        while not self.done:
            if self._mode == "bare":
                self._bare(_bare_call(self._buffer, self.names, final=True), out, made)
            elif self._step(out, made):
                continue
            elif self._mode == "tagged":
                body, self._buffer, self._mode = self._buffer, "", "text"
                self._block(body, self.fmt.start + body, out, made)
            else:
                out.append(self._content(self._buffer))
                break
        self._buffer = ""
        if not self.calls:
            out.append(self._space)
        self._space = ""
        return "".join(out), made

    def _bare(self, bare: _Bare, out: list[str], made: list[ParsedCall]) -> bool:
        """Act on what the head of the buffer is (bare mode); False when more text is needed."""
        buf = self._buffer
        if bare.state == "maybe":
            return False
        self._mode = "text"
        if bare.state == "no":  # not a call: the first character is content, the rest is looked at again
            out.append(self._content(buf[0]))
            self._buffer = buf[1:]
            return True
        self._buffer = buf[bare.end :]
        self._block(buf[bare.start : bare.stop], buf[: bare.end], out, made)
        return True

    def _bare_start(self, buf: str, limit: int) -> int:
        """Where a bare call may start in ``buf[:limit]``: a ``{`` or a code fence at the start of a line; -1 if nowhere."""
        for at, char in enumerate(buf[:limit]):
            if char in "{`":
                line = buf.rfind("\n", 0, at)
                if not buf[line + 1 : at].strip(" \t") and (line >= 0 or self._line_start):
                    return at
        return -1

    def _block(self, body: str, raw: str, out: list[str], made: list[ParsedCall]) -> None:
        """A block is a call, or (not well formed, or not an offered function) content, exactly as written."""
        call = self.fmt.parse_block(body.strip(), self.names)
        if call is None:
            out.append(self._content(raw))
            return
        self._space = ""
        self._after_call = True
        self._line_start = True
        self.calls.append(call)
        made.append(call)
        if not self.parallel:
            self.done = True

    def _content(self, text: str) -> str:
        """``text`` as content: whitespace right after a call dropped, trailing whitespace held back."""
        if not text:
            return ""
        line = text.rfind("\n")
        self._line_start = not text[line + 1 :].strip(" \t") and (line >= 0 or self._line_start)
        if self._after_call:
            text = text.lstrip()
            if not text:
                return ""
            self._after_call = False
        text = self._space + text
        body = text.rstrip()
        self._space = text[len(body) :]
        return body


# A bare call: an optional code fence, then an object whose first key is "name" and whose name is an offered function,
# possibly inside one more pair of braces (group 1 of the head patterns, up to the inner object).
_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n\s*")
_FENCE_PARTIAL = re.compile(r"`{1,3}(?:(?:j(?:s(?:o(?:n)?)?)?|J(?:S(?:O(?:N)?)?)?)[ \t]*)?\Z")
_FENCE_CLOSE = re.compile(r"\s*```")
_BARE_FULL = re.compile(r'(\{\s*(?=\{))?\{\s*"name"\s*:\s*"([^"\\]*)"')
_BARE_PARTIAL = re.compile(r'(\{\s*(?=\{))?\{\s*(?:"(?:n(?:a(?:m(?:e(?:"\s*(?::\s*(?:"([^"\\]*))?)?)?)?)?)?)?)?\Z')
_DOUBLED_CLOSE = re.compile(r"\s*\}")
_DECODER = json.JSONDecoder()


class _Bare(NamedTuple):
    state: str  # "yes", "no", or "maybe" (cannot be told yet)
    start: int = 0  # the object: buf[start:stop]
    stop: int = 0
    end: int = 0  # what the call takes, closing fence included


def _bare_call(buf: str, names: set[str], final: bool = False) -> _Bare:
    """Whether ``buf`` starts with a bare call; ``final``: no more text will come."""
    fence = _FENCE.match(buf)
    if buf.startswith("`") and fence is None:
        return _Bare("maybe" if _FENCE_PARTIAL.match(buf) and not final else "no")
    start = fence.end() if fence else 0
    head, inner = _bare_head(buf[start:], names)
    if head != "yes":
        return _Bare("no" if final else head)
    try:
        value, stop = _DECODER.raw_decode(buf, start + inner)
    except ValueError:
        return _Bare("no" if final else "maybe")  # not complete yet (at the end: never, so it is text)
    if inner:  # doubled braces: the inner object must be a call, closed by exactly one more brace
        if not _is_call(value, names):
            return _Bare("no")
        close = _DOUBLED_CLOSE.match(buf, stop)
        if close is None:
            return _Bare("maybe" if not final and not buf[stop:].strip() else "no")
        stop = close.end()  # parse_block takes the pair off again (``undoubled``)
    if fence is None:
        return _Bare("yes", start, stop, stop)
    close = _FENCE_CLOSE.match(buf, stop)
    if close:
        return _Bare("yes", start, stop, close.end())
    rest = buf[stop:].lstrip()
    if "```".startswith(rest):  # the closing fence may still come
        return _Bare("yes", start, stop, len(buf)) if final else _Bare("maybe")
    return _Bare("yes", start, stop, stop)


def _bare_head(buf: str, names: set[str]) -> tuple[str, int]:
    """Whether ``buf`` starts an object naming one of ``names`` first: "yes", "no" or "maybe" (too short to tell),
    and where that object starts (past an extra opening brace: doubled braces)."""
    if not buf:
        return "maybe", 0
    full = _BARE_FULL.match(buf)
    if full:
        return ("yes" if full.group(2) in names else "no"), full.end(1) if full.group(1) else 0
    partial = _BARE_PARTIAL.match(buf)
    if partial is None:
        return "no", 0
    name = partial.group(2)
    return ("maybe" if name is None or any(n.startswith(name) for n in names) else "no"), 0


def _is_call(value: object, names: set[str]) -> bool:
    """Whether a decoded object names an offered function (a repeated "name" key may have replaced the string)."""
    return isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"] in names


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
