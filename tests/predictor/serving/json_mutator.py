"""Structure-aware mutations of chat completion bodies: still JSON (mostly), spelled in ways a server might.

Why: byte-level mutation breaks the JSON in almost every input (in a first libFuzzer run 98 % of
inputs were declined, nearly all because they no longer decoded), so the oracle's interesting
half -- bodies that decode, where the scanner must give exactly the decoder's answer or decline --
was rarely reached. These mutations decode the body, change its structure (numbers respelled or
replaced, keys repeated, escaped, dropped or reordered, values of another type, entries cut or
repeated, extra nesting) and write it back with a random style (whitespace, escapes, number
spellings), so most results decode and many take other paths through the scanner.
"""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import orjson

Pairs = list[tuple[str, Any]]  # an object as written: keys in order, repeats allowed


class Obj:
    """A JSON object that keeps its members' order and repeated keys (a dict cannot)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: Pairs) -> None:
        self.pairs = pairs


class Num:
    """A number with its spelling fixed (so a mutation can choose one a serializer never would)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def to_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj([(k, to_tree(v)) for k, v in value.items()])
    if isinstance(value, list):
        return [to_tree(v) for v in value]
    return value


def _spell_float(rng: random.Random, x: float) -> str:
    """One of several spellings of the same double (all valid JSON), or now and then a rounded one."""
    if not math.isfinite(x):
        return "-9999.0"  # what vLLM writes for -inf
    text, r = repr(x), rng.random()
    if r < 0.4:
        return text
    if r < 0.55:
        return f"{x:.17g}"
    if r < 0.7:
        return f"{x:.17e}".replace("e", rng.choice(["e", "E"]))
    if r < 0.8 and x == int(x) and abs(x) < 1e15:
        return str(int(x)) + rng.choice(["", ".0", ".000", "e0", "E+0"])
    if r < 0.9 and "." in text and "e" not in text:
        return text + "0" * rng.randint(1, 3)
    return f"{x:.{rng.randint(1, 25)}g}"


def _odd_number(rng: random.Random) -> str:
    """Numbers near the edges: float32 rounding boundaries, subnormals, huge, many digits, integer -0."""
    r = rng.random()
    if r < 0.3:  # exactly half-way between two float32 values, or one double ulp off
        f = struct.unpack("<f", struct.pack("<I", rng.randrange(0x00000001, 0x7F7FFFFF)))[0]
        nxt = struct.unpack("<f", struct.pack("<I", struct.unpack("<I", struct.pack("<f", f))[0] + 1))[0]
        mid = (f + nxt) / 2
        return repr(-rng.choice([mid, math.nextafter(mid, 0.0), math.nextafter(mid, math.inf)]))
    fixed = ["-0", "0", "-0.0", "-1e-400", "-4.9e-324", "-1.7976931348623157e308", "1e308", "-1e309", "-3.4028235e38", "-3.40282357e38",
             "-1.4e-45", "-7e-46", "-123456789012345678901234567890", "-0.000000000000000000000123", "-9223372036854775808",
             "18446744073709551616", "1.5.5", "-01", "1.", "-", "1e+", "--1", "-1-2", "NaN", "-Infinity"]  # fmt: skip
    long = ["-1" + "0" * rng.randint(1, 400), "-1e" + "0" * rng.randint(1, 30) + "1", "-0." + "0" * rng.randint(1, 400) + "1"]
    return rng.choice(fixed + long)


_KEYS = ["logprob", "logprobs", "top_logprobs", "content", "choices", "finish_reason", "token", "bytes", "index", "message"]


def _nodes(tree: Any, out: list[tuple[Any, Any]], parent: Any = None, key: Any = None) -> list[tuple[Any, Any]]:
    out.append((parent, key))
    if isinstance(tree, Obj):
        for i, (_, v) in enumerate(tree.pairs):
            _nodes(v, out, tree, i)
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _nodes(v, out, tree, i)
    return out


def _get(parent: Any, key: Any) -> Any:
    return parent.pairs[key][1] if isinstance(parent, Obj) else parent[key]


def _set(parent: Any, key: Any, value: Any) -> None:
    if isinstance(parent, Obj):
        parent.pairs[key] = (parent.pairs[key][0], value)
    else:
        parent[key] = value


def mutate_tree(rng: random.Random, tree: Any) -> Any:
    """One to three structural edits at random nodes; returns the (maybe new) root."""
    for _ in range(rng.randint(1, 3)):
        nodes = _nodes(tree, [])
        parent, key = rng.choice(nodes)
        if parent is None:
            continue
        value = _get(parent, key)
        r = rng.random()
        if isinstance(value, float | int) and not isinstance(value, bool) and r < 0.5:
            _set(parent, key, Num(_odd_number(rng)) if rng.random() < 0.3 else Num(_spell_float(rng, float(value))))
        elif r < 0.6:
            _set(parent, key, rng.choice([None, True, False, "", "x", [], Obj([]), -1.5, 0, [[-1.0]], Obj([("logprob", -2.0)])]))
        elif isinstance(parent, Obj) and r < 0.7:  # repeat this member (maybe with another value) or drop it
            name, v = parent.pairs[key]
            if rng.random() < 0.5:
                parent.pairs.insert(rng.randrange(len(parent.pairs) + 1), (name, v if rng.random() < 0.5 else None))
            else:
                del parent.pairs[key]
        elif isinstance(parent, Obj) and r < 0.8:  # rename: to another known key, escaped, or a near miss
            name, v = parent.pairs[key]
            new = rng.choice([rng.choice(_KEYS), f"{name[:-1]}\\u{ord(name[-1]):04x}" if name else name, name + " ", name.upper()])
            parent.pairs[key] = (new, v)
        elif isinstance(parent, Obj) and r < 0.85:  # shuffle the members
            rng.shuffle(parent.pairs)
        elif isinstance(parent, list) and r < 0.93:  # cut or repeat list items
            if rng.random() < 0.5 and parent:
                del parent[key:]
            else:
                parent[key:key] = [parent[key]] * rng.randint(1, 3)
        elif isinstance(value, str):
            _set(parent, key, value + rng.choice(['"', "\\", "\n", "\u2028", "\x00", "\udcff", "é", "}]", "\\u0073"]))
        else:  # nest it
            _set(parent, key, rng.choice([[value], Obj([("x", value)]), [[[[[value]]]]]]))
    return tree


def _string(s: str, ascii_only: bool) -> str:
    if "\\u" in s:  # a mutation spelled a key with an escape on purpose: keep it as written
        return '"' + s.replace('"', '\\"') + '"'
    return json.dumps(s, ensure_ascii=ascii_only)  # a lone surrogate stays one: written out as bytes that are not UTF-8


def dump(rng: random.Random, tree: Any) -> bytes:
    """Write a tree with a random style: compact or spaced, indented, ASCII-escaped, numbers respelled."""
    sep = rng.choice([(",", ":"), (", ", ": "), (",\n", " : "), (" ,", ":\t")])
    ascii_only = rng.random() < 0.2
    respell = rng.random() < 0.3
    parts: list[str] = []

    def go(node: Any) -> None:
        if isinstance(node, Obj):
            parts.append("{")
            for i, (k, v) in enumerate(node.pairs):
                if i:
                    parts.append(sep[0])
                parts.append(_string(k, ascii_only))
                parts.append(sep[1])
                go(v)
            parts.append("}")
        elif isinstance(node, list):
            parts.append("[")
            for i, v in enumerate(node):
                if i:
                    parts.append(sep[0])
                go(v)
            parts.append("]")
        elif isinstance(node, Num):
            parts.append(node.text)
        elif isinstance(node, bool) or node is None:
            parts.append({True: "true", False: "false", None: "null"}[node])
        elif isinstance(node, float):
            parts.append(_spell_float(rng, node) if respell else repr(node) if math.isfinite(node) else "-9999.0")
        elif isinstance(node, int):
            parts.append(str(node))
        else:
            parts.append(_string(str(node), ascii_only))

    go(tree)
    return ("".join(parts) + rng.choice(["", "", "\n", " \r\n"])).encode("utf-8", "surrogatepass")


def mutate_json(data: bytes, seed: int) -> bytes | None:
    """A structural mutant of ``data``, or None when it does not decode (then mutate bytes instead)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    rng = random.Random(seed)
    try:
        return dump(rng, mutate_tree(rng, to_tree(value)))
    except RecursionError:  # nesting grown past Python's recursion limit over generations: mutate bytes
        return None
