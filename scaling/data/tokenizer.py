"""The tokenizers of `scaling prepare`: bytes (no dependency), a byte-level BPE trained on the corpus,
or an existing ``tokenizer.json``; the last two need the ``tokenizers`` library (the ``bpe`` extra).

Each gives token ids per text, its end-of-document id, and the table of UTF-8 bytes that every id
decodes to, from which bits per byte are counted exactly on the windows scored.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from scaling.data.errors import DataError

BYTES = "bytes"
BPE = "bpe"
EOT_TEXT = "<|endoftext|>"
# End-of-document tokens of common tokenizer.json files (GPT-2, Llama 3, SentencePiece ports, Gemma).
EOT_CANDIDATES = (EOT_TEXT, "<|end_of_text|>", "</s>", "<eos>")
UINT16_VOCAB = 1 << 16
UINT32_VOCAB = 1 << 32


def token_dtype(vocab_size: int, where: str) -> str:
    """uint16 where every id fits, else uint32; a vocabulary over uint32 is refused."""
    if vocab_size > UINT32_VOCAB:
        raise DataError(f"{where}: vocabulary of {vocab_size:,} tokens does not fit uint32 "
                        f"(expected at most {UINT32_VOCAB:,})")
    return "uint16" if vocab_size <= UINT16_VOCAB else "uint32"


class BytesTokenizer:
    """UTF-8 bytes; the end of a document is NUL (id 0), as for the ``text`` source."""

    name, vocab_size, eot_id = BYTES, 256, 0

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def token_bytes(self) -> np.ndarray:
        table = np.ones(self.vocab_size, dtype=np.int64)
        table[self.eot_id] = 0  # the separator is not text
        return table

    def describe(self) -> dict:
        return {"kind": BYTES}

    def save(self, folder: Path) -> None:
        pass


class FileTokenizer:
    """A ``tokenizers`` Tokenizer: trained here (`train_bpe`) or read from a tokenizer.json."""

    def __init__(self, tokenizer, kind: str, origin: str):
        self.tokenizer, self.kind, self.origin = tokenizer, kind, origin
        self.name = kind
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot_id = next((i for t in EOT_CANDIDATES if (i := tokenizer.token_to_id(t)) is not None), None)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64)
                for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def token_bytes(self) -> np.ndarray:
        """Exact for byte-level tokenizers (GPT-2's, and the BPE trained here): each character of a
        vocabulary entry stands for one byte. Otherwise each id is decoded alone, which can differ
        from its bytes in context (prepare checks the table against the text and says so)."""
        byte_level = _is_byte_level(json.loads(self.tokenizer.to_str()).get("decoder"))
        alphabet = set(_byte_level_alphabet())
        special = {i for i, t in self.tokenizer.get_added_tokens_decoder().items() if t.special}
        added = {i: t.content for i, t in self.tokenizer.get_added_tokens_decoder().items()}
        table = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            if i in special:
                continue  # an end-of-document or other control token is not text
            if i in added:
                table[i] = len(added[i].encode("utf-8"))  # added tokens are stored as raw text
                continue
            token = self.tokenizer.id_to_token(i)
            if token is None:
                continue
            if byte_level and set(token) <= alphabet:
                table[i] = len(token)
            else:
                table[i] = len(self.tokenizer.decode([i], skip_special_tokens=False).encode("utf-8"))
        return table

    def describe(self) -> dict:
        return {"kind": self.kind, "origin": self.origin, "eot": None if self.eot_id is None
                else self.tokenizer.id_to_token(self.eot_id)}

    def save(self, folder: Path) -> None:
        self.tokenizer.save(str(folder / "tokenizer.json"))


def _is_byte_level(decoder: dict | None) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(d) for d in decoder.get("decoders", ()) or ())


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers
    return pre_tokenizers.ByteLevel.alphabet()


def _library(what: str):
    try:
        import tokenizers
    except ImportError:
        raise DataError(f"{what} needs the `tokenizers` library: pip install 'scaling[bpe]' "
                        "(or pip install tokenizers)") from None
    return tokenizers


def train_bpe(texts: Iterable[str], vocab_size: int, progress: bool) -> FileTokenizer:
    """A byte-level BPE (GPT-2's pre-tokenisation) with `vocab_size` tokens, the first of them
    ``<|endoftext|>``, trained offline on `texts`."""
    tokenizers = _library("--tokenizer bpe")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise DataError(f"--vocab-size {vocab_size}: a byte-level BPE needs at least 257 tokens "
                        "(256 bytes and the end-of-document token)")
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(_batches(texts), trainer=trainer)
    return FileTokenizer(tokenizer, BPE, f"trained here, vocab_size {vocab_size}")


def _batches(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer_file(path: Path) -> FileTokenizer:
    tokenizers = _library(f"--tokenizer {path}")
    if not path.is_file():
        raise DataError(f"tokenizer file not found: {path}")
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the library raises plain Exceptions for a bad file
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a tokenizer.json that the tokenizers library reads ({first})") from None
    token_dtype(tokenizer.get_vocab_size(with_added_tokens=True), str(path))
    return FileTokenizer(tokenizer, "file", str(path))
