"""Batches as a pure function of (data_seed, step): a stateless permutation of windows, so every
model of a sweep sees the same data in the same order and resume needs no replay."""
from __future__ import annotations

import hashlib
import math

import numpy as np

from scaling.data.errors import DataError


# ----------------------------------------------------------------------------------------------
# Stateless permutation and batches

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_FEISTEL_ROUNDS = 6  # 4 suffice for a pseudo-random permutation (Luby-Rackoff); 6 for margin


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finalizer (Steele et al. 2014): a cheap, well-avalanched 64-bit mix.
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    digest = hashlib.sha512(f"scaling.permute|{seed}|{epoch}".encode()).digest()
    return [np.uint64(int.from_bytes(digest[8 * r:8 * r + 8], "little"))
            for r in range(_FEISTEL_ROUNDS)]


def permute(index: np.ndarray, n: int, seed: int, epoch: int = 0) -> np.ndarray:
    """The image of ``index`` under a bijection of [0, n) that is a pure function of (seed, epoch).

    A balanced Feistel network over the smallest even number of bits covering n is a bijection on
    [0, 2^bits) for any round function; cycle-walking (re-encrypting values >= n) restricts it to
    [0, n). The domain is under 4n, so the walk takes under 4 steps on average.
    """
    index = np.asarray(index)
    flat = np.atleast_1d(index).astype(np.int64).ravel()
    if n < 1:
        raise ValueError(f"permute needs n >= 1, got {n}")
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise ValueError(f"permute: index out of range [0, {n})")
    if n == 1:
        return np.zeros(index.shape, dtype=np.int64)
    half = ((n - 1).bit_length() + 1) // 2
    half_mask = np.uint64((1 << half) - 1)
    keys = _round_keys(seed, epoch)

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & half_mask
        for k in keys:
            left, right = right, left ^ (_mix64(right ^ k) & half_mask)
        return (left << np.uint64(half)) | right

    out = encrypt(flat.astype(np.uint64))
    outside = out >= np.uint64(n)
    while outside.any():
        out[outside] = encrypt(out[outside])
        outside = out >= np.uint64(n)
    return out.astype(np.int64).reshape(index.shape)


class Batcher:
    """Batches of fixed windows of the train split, in an order fixed by (data_seed, step).

    `unique_tokens` (None: the whole split) limits training to `unique_tokens // seq_len` windows, the
    first that many of epoch 0's order (so a random sample over the whole split, nested: a smaller limit
    keeps a subset of a larger one's windows), repeated in the same order every epoch (Muennighoff et
    al. 2023, "Scaling Data-Constrained Language Models", repeat their unique data each epoch). The
    batch of step k is then a pure function of (data_seed, k, unique_tokens), and with a batch of B
    sequences and W windows a multiple of B, batches repeat with period W / B steps."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, data_seed: int,
                 unique_tokens: int | None = None):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.data_seed = data_seed
        self.n_windows = (len(tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise DataError(f"train split holds {len(tokens)} tokens, fewer than one window of "
                            f"seq_len + 1 = {seq_len + 1}")
        self.repeated = unique_tokens is not None
        self.unique_windows = self.n_windows
        if self.repeated:
            self.unique_windows = unique_tokens // seq_len
            if unique_tokens > self.n_windows * seq_len:
                raise DataError(f"data.unique_tokens = {unique_tokens:,} exceeds the train split's "
                                f"{self.n_windows * seq_len:,} tokens ({self.n_windows:,} windows of {seq_len})")
            if self.unique_windows < batch_size:
                raise DataError(f"data.unique_tokens = {unique_tokens:,} is below one batch of "
                                f"{batch_size * seq_len:,} tokens")
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    @property
    def unique_tokens(self) -> int:
        """The distinct tokens training can see: its windows' targets (seq_len each)."""
        return self.unique_windows * self.seq_len

    def window_indices(self, step: int, process_index: int = 0,
                       process_count: int = 1) -> np.ndarray:
        """Which window each row of this process's share of ``step``'s batch reads."""
        if self.batch_size % process_count:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by "
                             f"process_count {process_count}")
        if step < 0 or not 0 <= process_index < process_count:
            raise ValueError(f"need step >= 0 and process_index in [0, {process_count}), "
                             f"got {step}, {process_index}")
        rows = self.batch_size // process_count
        sequence = step * self.batch_size + process_index * rows + np.arange(rows, dtype=np.int64)
        if self.repeated:  # every epoch the same windows in the same order: epoch 0's first ones
            return permute(sequence % self.unique_windows, self.n_windows, self.data_seed, 0)
        epoch, position = np.divmod(sequence, self.n_windows)
        windows = np.empty(rows, dtype=np.int64)
        for e in np.unique(epoch):  # a batch spans at most a few epochs
            in_epoch = epoch == e
            windows[in_epoch] = permute(position[in_epoch], self.n_windows, self.data_seed, int(e))
        return windows

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> np.ndarray:
        """int32 [batch_size // process_count, seq_len + 1]; inputs [:, :-1], targets [:, 1:]."""
        starts = self.window_indices(step, process_index, process_count) * self.seq_len
        return np.asarray(self.tokens[starts[:, None] + self._offsets], dtype=np.int32)


def validation_windows(val: np.ndarray, seq_len: int, n_sequences: int) -> np.ndarray:
    """int32 [n, seq_len + 1]: n <= n_sequences windows spread evenly over the val split.

    Evenly spaced rather than random so that every model, and every eval of one model, scores
    exactly the same tokens, and those tokens sample the whole split rather than its first files.
    """
    if n_sequences < 1:
        raise ValueError(f"n_sequences must be >= 1, got {n_sequences}")
    n_available = (len(val) - 1) // seq_len
    if n_available < 1:
        raise DataError(f"validation split holds {len(val)} tokens, fewer than one window of "
                        f"seq_len + 1 = {seq_len + 1}; raise val_fraction or add data")
    n = min(n_sequences, n_available)
    starts = (np.arange(n, dtype=np.int64) * n_available // n) * seq_len
    return np.asarray(val[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)


def bits_per_byte(mean_nll: float, windows: np.ndarray, token_bytes: np.ndarray) -> float:
    """Bits per byte of text over exactly `windows` (their targets, ``windows[:, 1:]``, each scored
    once): the nats of all targets / ln 2 / the bytes those targets stand for. `mean_nll` is nats
    per target token; `token_bytes` the bytes of each token id (0 for an end-of-document token).
    Loss per token is not comparable across tokenizers; this is (Gao et al. 2020, The Pile)."""
    targets = np.asarray(windows)[:, 1:]
    n_bytes = int(np.asarray(token_bytes)[targets].sum())
    if n_bytes == 0:
        return math.nan  # windows of end-of-document tokens only: no text to count per
    return mean_nll * targets.size / math.log(2) / n_bytes
