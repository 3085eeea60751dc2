"""A CLIP tokenizer built on the spot for tiny mode: byte-level BPE with no merges, so nothing downloads."""

from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

from transformers import CLIPTokenizer


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's table: printable bytes map to
    themselves, the rest to code points from 256 up)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


@cache
def tiny_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A real `CLIPTokenizer` over the 256 byte symbols (each also with the end-of-word mark) and the two
    specials: 514 ids, so tiny text encoders take `vocab_size=514`."""
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        merges_file = Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
        merges_file.write_text("#version: 0.2\n")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length)
