"""Convert a CPU-ladder GGUF file into a Hugging Face folder that vLLM can load.

vLLM (0.32, CPU build) does not load GGUF. transformers can read a GGUF file
(dequantising it) but refuses to save a model it marks as GGUF-quantised, so
the weights are copied into a fresh model built from the same config and saved
as safetensors. Offline: the only input is the GGUF file from the model
packages. Runs in the vLLM environment (transformers, gguf, accelerate, torch).

Usage: python -m servers.gguf_to_hf smollm2-135m-instruct [--out DIR]
Prints the output folder; an existing complete folder is reused.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from servers.weights import DEFAULT_CACHE_DIR, resolve

DEFAULT_HF_DIR = DEFAULT_CACHE_DIR.parent / "hf"


def convert(key: str, out: Path) -> Path:
    marker = out / ".complete"
    if marker.exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = resolve(key)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    AutoConfig.from_pretrained(out)  # the folder loads back
    marker.write_text(key)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="catalog key in servers/weights.py")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    print(convert(args.weights, args.out or DEFAULT_HF_DIR / args.weights))


if __name__ == "__main__":
    main()
