"""The Responses shapes: ``ResponseBuilder`` turns chat-completion chunks into OpenAI's ``Response`` and its events.

One translator for both: a whole chat completion is fed to it as one chunk
(``completion_chunk``), a stream chunk by chunk, so a streamed and a non-streamed
answer are the same ``Response``. ``router.openai.responses.serving`` feeds it.

A stream is the Responses event sequence, each event ``event: <type>\\ndata: <json>``
with a ``sequence_number``::

    response.created, response.in_progress
    per output item (a message, then function calls):
      response.output_item.added
      message:       response.content_part.added, response.output_text.delta ..., response.output_text.done,
                     response.content_part.done
      function call: response.function_call_arguments.delta ..., response.function_call_arguments.done
      response.output_item.done
    response.completed (or response.incomplete, when the answer hit max_output_tokens), with the whole response

An answer that breaks off ends with an ``error`` event, then ``response.failed``
with what had been generated (``ResponseBuilder.fail``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from common.responses_protocol import ResponsesRequest, ToolChoiceObject

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}  # chat finish_reason -> incomplete_details.reason


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A chat ``usage`` as the Responses ``usage`` (None when the stage reported none)."""
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + completion,
    }


def _token_bytes(entry: Mapping[str, Any]) -> list[int]:
    raw = entry.get("bytes")
    return list(raw) if raw is not None else list(str(entry.get("token", "")).encode())


def _logprob(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A chat logprob entry as an ``output_text`` part's (token, bytes, logprob, top_logprobs)."""
    top = [{"token": t["token"], "bytes": _token_bytes(t), "logprob": t["logprob"]} for t in entry.get("top_logprobs") or ()]
    return {"token": entry["token"], "bytes": _token_bytes(entry), "logprob": entry["logprob"], "top_logprobs": top}


def _delta_logprob(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A chat logprob entry as a text delta event's (no bytes)."""
    top = [{"token": t["token"], "logprob": t["logprob"]} for t in entry.get("top_logprobs") or ()]
    return {"token": entry["token"], "logprob": entry["logprob"], "top_logprobs": top}


@dataclass
class _ContentPart:
    kind: str  # "output_text" or "refusal"
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def shape(self) -> dict[str, Any]:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": "".join(self.text)}
        return {"type": "output_text", "annotations": [], "logprobs": [_logprob(e) for e in self.logprobs], "text": "".join(self.text)}


@dataclass
class _Item:
    """An output item being built: a message (its content parts) or a function call (its arguments)."""

    index: int
    data: dict[str, Any]
    parts: list[_ContentPart] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    status: str = "in_progress"  # "completed" or "incomplete" once closed

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def shape(self) -> dict[str, Any]:
        item = {**self.data, "status": self.status}
        if item["type"] == "message":
            item["content"] = [p.shape() for p in self.parts]
        else:
            item["arguments"] = "".join(self.arguments)
        return item


class ResponseBuilder:
    """Chat-completion chunks in, Responses events out; ``response()`` is the response as it stands.

    ``feed`` takes one chat chunk (a dict; a whole completion's message goes in as a
    delta), ``finish`` closes the open items and says completed or incomplete, ``fail``
    ends it with an error; each returns the SSE events to send (empty ones when built
    with ``events=False``, for a non-streamed response).
    """

    def __init__(self, req: ResponsesRequest, events: bool = True) -> None:
        self.req = req
        self.events = events  # False: only the response is wanted (no event is serialized)
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        self.sequence = 0
        self.items: list[_Item] = []
        self.open: _Item | None = None
        self.calls: dict[int, _Item] = {}  # chat tool-call index -> its item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.completed_at: int | None = None

    # -- events ------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        if not self.events:
            return b""
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self) -> list[bytes]:
        snapshot = self.response()
        return [self._event("response.created", response=snapshot), self._event("response.in_progress", response=snapshot)]

    def feed(self, chunk: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices") or []
        if not choices:
            return out
        choice = choices[0]  # n = 1
        delta = choice.get("delta") or {}
        entries = (choice.get("logprobs") or {}).get("content") or []
        if delta.get("content") or entries:
            out += self._text("output_text", delta.get("content") or "", entries)
        if delta.get("refusal"):
            out += self._text("refusal", delta["refusal"], [])
        for call in delta.get("tool_calls") or ():
            out += self._call(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def _text(self, kind: str, text: str, entries: list[dict[str, Any]]) -> list[bytes]:
        out: list[bytes] = []
        item = self.open
        if item is None or item.data["type"] != "message":
            out += self._close_open()
            item = self._add({"id": _new_id("msg"), "type": "message", "role": "assistant", "content": []})
            out.append(self._event("response.output_item.added", output_index=item.index, item=item.shape()))
        part = item.parts[-1] if item.parts else None
        if part is None or part.kind != kind:
            if part is not None:
                out += self._close_part(item)
            part = _ContentPart(kind)
            item.parts.append(part)
            out.append(self._event("response.content_part.added", **self._where(item), part=part.shape()))
        part.text.append(text)
        if not text and not entries:
            return out
        if kind == "refusal":
            out.append(self._event("response.refusal.delta", **self._where(item), delta=text))
            return out
        part.logprobs += entries
        logprobs = [_delta_logprob(e) for e in entries]
        out.append(self._event("response.output_text.delta", **self._where(item), delta=text, logprobs=logprobs))
        return out

    def _call(self, call: Mapping[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        index = int(call.get("index") or 0)
        function = call.get("function") or {}
        item = self.calls.get(index)
        if item is None:
            out += self._close_open()
            data = {
                "id": _new_id("fc"),
                "type": "function_call",
                "call_id": call.get("id") or _new_id("call"),
                "name": function.get("name") or "",
            }
            item = self.calls[index] = self._add({**data, "arguments": ""})
            out.append(self._event("response.output_item.added", output_index=item.index, item=item.shape()))
        elif function.get("name") and not item.data["name"]:
            item.data["name"] = function["name"]
        if function.get("arguments"):
            item.arguments.append(function["arguments"])
            out.append(
                self._event("response.function_call_arguments.delta", item_id=item.id, output_index=item.index, delta=function["arguments"])
            )
        return out

    def _add(self, data: dict[str, Any]) -> _Item:
        item = _Item(len(self.items), data)
        self.items.append(item)
        self.open = item
        return item

    @staticmethod
    def _where(item: _Item) -> dict[str, Any]:
        return {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts) - 1}

    def _close_part(self, item: _Item) -> list[bytes]:
        part = item.parts[-1]
        where = self._where(item)
        if part.kind == "refusal":
            done = self._event("response.refusal.done", **where, refusal="".join(part.text))
        else:
            logprobs = [_delta_logprob(e) for e in part.logprobs]
            done = self._event("response.output_text.done", **where, text="".join(part.text), logprobs=logprobs)
        return [done, self._event("response.content_part.done", **where, part=part.shape())]

    def _close_open(self, status: str = "completed") -> list[bytes]:
        item, self.open = self.open, None
        if item is None:
            return []
        out: list[bytes] = []
        if item.data["type"] == "message":
            if item.parts:
                out += self._close_part(item)
        else:
            arguments = "".join(item.arguments)
            out.append(self._event("response.function_call_arguments.done", item_id=item.id, output_index=item.index, arguments=arguments))
        item.status = status
        out.append(self._event("response.output_item.done", output_index=item.index, item=item.shape()))
        return out

    def finish(self) -> list[bytes]:
        """The answer is complete: close what is open (an empty answer is an empty message) and say how it ended."""
        out: list[bytes] = []
        if not self.items:
            out += self._text("output_text", "", [])
        incomplete = self.finish_reason in _INCOMPLETE
        out += self._close_open("incomplete" if incomplete else "completed")
        self.status = "incomplete" if incomplete else "completed"
        self.completed_at = int(time.time()) if not incomplete else None
        kind = "response.incomplete" if incomplete else "response.completed"
        out.append(self._event(kind, response=self.response()))
        return out

    def fail(self, message: str, code: str | None = None, param: str | None = None) -> list[bytes]:
        """The answer broke off: an ``error`` event, then ``response.failed`` with what there is."""
        if self.open is not None:
            self.open.status, self.open = "incomplete", None
        self.status = "failed"
        self.error = {"code": "server_error", "message": message}
        return [
            self._event("error", code=code, message=message, param=param),
            self._event("response.failed", response=self.response()),
        ]

    # -- the response ------------------------------------------------------------------
    def response(self) -> dict[str, Any]:
        """The ``Response`` object as it stands, with the request's settings echoed as OpenAI echoes them."""
        req = self.req
        incomplete = {"reason": _INCOMPLETE[self.finish_reason]} if self.status == "incomplete" and self.finish_reason else None
        fmt = req.text.format if req.text is not None and req.text.format is not None else None
        text: dict[str, Any] = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt is not None else {"type": "text"}}
        if req.text is not None and req.text.verbosity is not None:
            text["verbosity"] = req.text.verbosity
        choice = req.tool_choice
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "completed_at": self.completed_at,
            "error": self.error,
            "incomplete_details": incomplete,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "metadata": req.metadata or {},
            "model": req.model,
            "output": [i.shape() for i in self.items],
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "temperature": req.temperature,
            "text": text,
            "tool_choice": choice.model_dump(exclude_none=True) if isinstance(choice, ToolChoiceObject) else (choice or "auto"),
            "tools": [t.echo() for t in req.tools or ()],
            "top_logprobs": req.top_logprobs or 0,
            "top_p": req.top_p,
            "truncation": req.truncation or "disabled",
            "usage": self.usage,
            "user": req.user,
        }


def completion_chunk(data: Mapping[str, Any]) -> dict[str, Any]:
    """A whole chat completion as one chunk for the builder: its message as the delta, its usage along."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    calls = [{**c, "index": i} for i, c in enumerate(message.get("tool_calls") or ())]
    delta = {"content": message.get("content"), "refusal": message.get("refusal"), "tool_calls": calls}
    return {
        "choices": [{"delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": choice.get("finish_reason")}],
        "usage": data.get("usage"),
    }
