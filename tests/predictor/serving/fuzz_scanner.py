"""Fuzzing the compiled logprob scanner against the decoding oracle (scan_oracle.check).

The scanner (predictor/serving/_logprob_scan.c) reads bytes another process wrote; this drives it
with bodies mutated from the committed seeds (fuzz_corpus/: vLLM and llama.cpp layouts, and odd
ones) and fails on a crash, a sanitizer report, an exception, or an accepted body that decodes to
anything else. Modes:

  python -m tests.predictor.serving.fuzz_scanner [libFuzzer flags] CORPUS_DIR...
      coverage-guided (atheris, which bundles libFuzzer), on an extension built with clang
      -fsanitize=fuzzer-no-link (and ASan/UBSan): ``make fuzz-scanner``. Half the mutations are
      structural (json_mutator.py), half libFuzzer's byte edits. New inputs go into the
      first directory (build/fuzz/corpus there), so the committed seeds stay as they are.
  python -m tests.predictor.serving.fuzz_scanner --mutate N CORPUS_DIR...
      N random mutations of the seeds (half bytes, half structural: json_mutator.py), no atheris
      or clang needed: the bounded fuzz run of ``make test-sanitizers`` (gcc's ASan/UBSan build).
  python -m tests.predictor.serving.fuzz_scanner --replay PATH...
      re-run files (a crash artifact, a corpus), printing each outcome.
  python -m tests.predictor.serving.fuzz_scanner --write-seeds DIR
      regenerate the committed seeds (deterministic).

Each input is checked with k = 1 and k = 5 (fewer alternatives than the body has, and all).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from predictor.serving import _answer_stats, logprob_scan
from tests.predictor.serving.json_mutator import mutate_json
from tests.predictor.serving.scan_oracle import Outcome, check, mutate

KS = (1, 5)
ROOT = Path(__file__).resolve().parents[3]
tally: Counter[Outcome] = Counter()


KEEP_READABLE_DECLINES = 200  # how many declined-but-readable inputs to keep for review (in $FUZZ_DECLINES_DIR)


def check_one(data: bytes, k: int) -> Outcome:
    """The oracle, then the statistics on whatever the scanner returned (inf, -0, huge values): no crash, no sanitizer report."""
    outcome, stats = check(data, k)
    if stats is not None:
        _answer_stats.answer_stats(stats.token_logprobs, stats.top_logprobs, k)
    return outcome


def one_input(data: bytes) -> None:
    """libFuzzer's TestOneInput: the oracle for each k (a Mismatch or any other exception is a finding)."""
    for k in KS:
        outcome = check_one(data, k)
        tally[outcome] += 1
        keep = os.environ.get("FUZZ_DECLINES_DIR")
        if outcome is Outcome.DECLINED_READABLE and keep and tally[outcome] <= KEEP_READABLE_DECLINES:
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / f"{hashlib.sha1(data).hexdigest()}-k{k}").write_bytes(data)
    total = tally.total()
    if total >= 4096 and total & (total - 1) == 0:  # a tally at each power of two, beside libFuzzer's own lines
        print(f"# oracle after {total} checks: {_tally_line()}", file=sys.stderr, flush=True)


def _tally_line() -> str:
    return ", ".join(f"{o.value} {tally[o]}" for o in Outcome)


def _files(paths: Iterable[str]) -> Iterator[Path]:
    for p in map(Path, paths):
        yield from (sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])


def _check_build() -> None:
    """The run must use the build it was made for (``make`` sets the directory): not silently the plain one."""
    expected = os.environ.get("ADAPTIVE_SD_EXPECT_NATIVE_DIR")
    loaded = Path(logprob_scan._logprob_scan.__file__ or "").resolve()
    if expected and not loaded.is_relative_to(Path(expected).resolve()):
        sys.exit(f"fuzz_scanner: loaded {loaded}, expected a build under {expected}")
    print(f"# scanner: {loaded}", file=sys.stderr)


def run_mutations(runs: int, corpus: list[str], seed: int) -> None:
    bases = [p.read_bytes() for p in _files(corpus)]
    if not bases:
        sys.exit("fuzz_scanner: no seeds")
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for body in bases:
        one_input(body)
    for _ in range(runs):
        body = rng.choice(bases)
        if rng.random() < 0.1:  # splice two seeds: one's head, another's tail
            other = rng.choice(bases)
            body = body[: rng.randrange(len(body) + 1)] + other[rng.randrange(len(other) + 1) :]
        structural = mutate_json(body, rng.getrandbits(32)) if rng.random() < 0.5 else None
        one_input(structural if structural is not None else mutate(rng, body))
    print(f"# {runs} mutations of {len(bases)} seeds in {time.perf_counter() - t0:.1f} s: {_tally_line()}", file=sys.stderr)


def replay(paths: list[str]) -> None:
    for p in _files(paths):
        print(p, [check_one(p.read_bytes(), k).value for k in KS])


def fuzz(argv: list[str]) -> None:
    import atheris  # only this mode needs it (`make fuzz-scanner` installs it)

    seeds = [p.read_bytes() for p in _files(a for a in argv[1:] if not a.startswith("-"))]

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        """60 % structural (json_mutator: the body still decodes, mostly), the rest libFuzzer's own byte edits.

        A structural edit of an input that no longer decodes starts again from a seed half the
        time: else the corpus fills with byte-broken inputs the scanner declines at once.
        """
        choice = seed % 10
        if choice < 6:
            out = mutate_json(data, seed)
            if out is None and choice < 3 and seeds:
                out = mutate_json(seeds[seed % len(seeds)], seed)
            if out is not None and len(out) <= max_size:
                return out
        return bytes(atheris.Mutate(data, max_size))

    atheris.Setup(argv, one_input, custom_mutator=mutator)
    atheris.Fuzz()


# -- the committed seeds ----------------------------------------------------------------------

_VOCAB = ["The", " answer", " is", " 42", ".", "\n", "def", " f", "(x", "):", "    return", " x", " *", " 2", "```", "python",
          ' "', "\\", "é", "数", "\t", " }", "{", "]", "\u2028", "<|im_end|>"]  # fmt: skip


def _stages(n_rows: int) -> Iterator[dict[str, Any]]:
    """Real logprobs (the collected data set's), so the numbers look like a model's."""
    with (ROOT / "data" / "cpu" / "collect.jsonl").open("rb") as f:
        for line, _ in zip(f, range(n_rows), strict=False):
            yield from orjson.loads(line)["stages"]


def _alternatives(rng: random.Random, tops: list[float], vllm: bool) -> list[dict[str, Any]]:
    out = []
    for lp in tops:
        tok = rng.choice(_VOCAB)
        alt: dict[str, Any] = {"token": tok, "logprob": -9999.0 if vllm and lp < -60 else lp, "bytes": list(tok.encode())}
        out.append(alt if vllm else {"bytes": alt["bytes"], "id": rng.randrange(50000), "logprob": lp, "token": tok})
    return out


def _content(rng: random.Random, logprobs: list[Any], k: int, vllm: bool) -> list[dict[str, Any]]:
    content = []
    for lp, tops in logprobs:
        tok = rng.choice(_VOCAB)
        alts = _alternatives(rng, tops[:k], vllm)
        if vllm:  # vLLM (and this project's llama.cpp server): token, logprob, bytes, top_logprobs
            content.append({"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts})
        else:  # llama.cpp's server: nlohmann::json, keys sorted
            content.append({"bytes": list(tok.encode()), "id": rng.randrange(50000), "logprob": lp, "token": tok, "top_logprobs": alts})
    return content


def vllm_body(rng: random.Random, content: list[Any] | None, finish: str | None = "stop", n_choices: int = 1) -> dict[str, Any]:
    text = "".join(e["token"] for e in content or ())
    choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                                      "function_call": None, "tool_calls": [], "reasoning_content": None},
              "logprobs": None if content is None else {"content": content}, "finish_reason": finish, "stop_reason": None}  # fmt: skip
    return {"id": f"chatcmpl-{rng.getrandbits(64):016x}", "object": "chat.completion", "created": 1764547200, "model": "Qwen/Qwen2.5-0.5B",
            "choices": [choice] + [{**choice, "index": i} for i in range(1, n_choices)], "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": 31, "total_tokens": 31 + len(content or ()), "completion_tokens": len(content or ()),
                      "prompt_tokens_details": None},
            "prompt_logprobs": None, "kv_transfer_params": None}  # fmt: skip


def llama_cpp_body(rng: random.Random, content: list[Any], finish: str = "stop") -> dict[str, Any]:
    text = "".join(e["token"] for e in content)
    choice = {"finish_reason": finish, "index": 0, "logprobs": {"content": content}, "message": {"content": text, "role": "assistant"}}
    return {"choices": [choice], "created": 1764547200, "id": f"chatcmpl-{rng.getrandbits(48):x}",
            "model": "qwen2.5-coder-0.5b-instruct-q8_0.gguf", "object": "chat.completion", "system_fingerprint": "b6920-1a2b3c4d",
            "timings": {"prompt_n": 31, "prompt_ms": 41.2, "predicted_n": len(content), "predicted_ms": 180.5},
            "usage": {"completion_tokens": len(content), "prompt_tokens": 31, "total_tokens": 31 + len(content)}}  # fmt: skip


def seeds() -> dict[str, bytes]:
    """Name -> bytes: the two servers' layouts at a few lengths, then spellings and shapes that take the other paths."""
    rng = random.Random(20261201)
    stages = [s for s in _stages(60) if s["logprobs"]]
    short, medium = stages[0], max(stages[:40], key=lambda s: len(s["logprobs"]) if len(s["logprobs"]) < 40 else 0)
    long = next(s for s in _stages(400) if len(s["logprobs"]) > 130)
    out: dict[str, bytes] = {}
    dumps = orjson.dumps
    out["vllm_short.json"] = dumps(vllm_body(rng, _content(rng, short["logprobs"], 5, True)))
    out["vllm_medium.json"] = dumps(vllm_body(rng, _content(rng, medium["logprobs"], 5, True)))
    out["vllm_long_top1.json"] = dumps(vllm_body(rng, _content(rng, long["logprobs"][:140], 1, True), finish="length"))
    out["llama_cpp_short.json"] = dumps(llama_cpp_body(rng, _content(rng, short["logprobs"], 5, False)))
    out["llama_cpp_medium.json"] = dumps(llama_cpp_body(rng, _content(rng, medium["logprobs"], 5, False), finish="length"))
    spaced = vllm_body(rng, _content(rng, short["logprobs"], 3, True))
    out["python_json_spaced.json"] = json.dumps(spaced).encode()  # ", " and ": ", ensure_ascii
    out["indented.json"] = json.dumps(vllm_body(rng, _content(rng, short["logprobs"][:4], 2, True)), indent=2, ensure_ascii=False).encode()
    out["two_choices.json"] = dumps(vllm_body(rng, _content(rng, short["logprobs"][:3], 5, True), n_choices=2))
    out["logprobs_null.json"] = dumps(vllm_body(rng, None))
    out["content_empty.json"] = dumps(vllm_body(rng, []))
    out["finish_null.json"] = dumps(vllm_body(rng, _content(rng, short["logprobs"][:2], 5, True), finish=None))
    ragged = _content(rng, short["logprobs"][:6], 5, True)
    ragged[0]["top_logprobs"] = ragged[0]["top_logprobs"][:2]
    ragged[1]["top_logprobs"] = None
    del ragged[2]["top_logprobs"]
    ragged[3]["top_logprobs"] = []
    ragged[4]["top_logprobs"] = ragged[4]["top_logprobs"] + [{"token": "x", "logprob": -12.5, "bytes": [120]}] * 3
    out["ragged_alternatives.json"] = dumps(vllm_body(rng, ragged))
    numbers = b",".join(
        b'{"token":"n","logprob":%s,"bytes":[110],"top_logprobs":[{"token":"n","logprob":%s,"bytes":[110]}]}' % (a, b)
        for a, b in [(b"0", b"-0.0"), (b"-1e-05", b"-1.5E+2"), (b"-9999.0", b"-9999"), (b"-0.30000000000000004", b"-7e-46"),
                     (b"-3.4028235677973366e+38", b"-1.401298464324817e-45"), (b"-12345678901234567890.5", b"-2.5e-1")]
    )  # fmt: skip
    out["number_spellings.json"] = b'{"choices":[{"index":0,"logprobs":{"content":[' + numbers + b']},"finish_reason":"stop"}]}'
    chunk = {
        "index": 0,
        "delta": {"content": "The"},
        "logprobs": {"content": _content(rng, short["logprobs"][:1], 5, True)},
        "finish_reason": None,
    }
    out["streaming_chunk.json"] = dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [chunk]})
    nested = vllm_body(rng, _content(rng, short["logprobs"][:2], 5, True))
    deep = [[[[{"x": [None, True, False]}]]]]
    nested["choices"][0]["message"]["tool_calls"] = [{"function": {"arguments": '{"a": [1, {"b": "]}"}]}'}, "deep": deep}]
    out["nested_extra_fields.json"] = dumps(nested)
    entry = {"top_logprobs": [{"logprob": -0.5, "token": "a"}], "logprob": -0.5, "token": "a"}
    out["usage_first_keys_reordered.json"] = dumps(
        {"usage": {"prompt_tokens": 3}, "choices": [{"finish_reason": "stop", "logprobs": {"content": [entry]}}]}
    )
    # declined on purpose: a repeated key, an escaped key, nesting past the limit, a truncated body
    out["declined_repeated_logprobs.json"] = b'{"choices":[{"logprobs":null,"logprobs":{"content":[{"logprob":-1}]}}]}'
    out["declined_escaped_key.json"] = b'{"choices":[{"logprob\\u0073":{"content":[{"logprob":-1}]},"finish_reason":"stop"}]}'
    out["declined_deep.json"] = b'{"choices":[{"x":' + b"[" * 70 + b"]" * 70 + b',"logprobs":null}]}'
    out["declined_truncated.json"] = out["vllm_short.json"][: len(out["vllm_short.json"]) // 2]
    return out


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, body in seeds().items():
        (directory / name).write_bytes(body)
    print(f"{len(seeds())} seeds, {sum(map(len, seeds().values()))} bytes, in {directory}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    ap.add_argument("--mutate", type=int, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--replay", action="store_true")
    ap.add_argument("--write-seeds", type=Path, metavar="DIR")
    ap.add_argument("--help", action="help")
    args, rest = ap.parse_known_args()
    if args.write_seeds:
        return write_seeds(args.write_seeds)
    _check_build()
    if args.mutate is not None:
        return run_mutations(args.mutate, rest, args.seed)
    if args.replay:
        return replay(rest)
    fuzz([sys.argv[0], *rest])


if __name__ == "__main__":
    main()
