"""`FactsConfig`: the settings of the known-exponent `facts` source (scaling/data/facts.py;
sweeps/README.md `[data.facts]`). Kept beside scaling/config.py, which imports it, so that the
data package's generator and the run specs share one frozen, self-checking dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config_checks import ConfigValueError, check, integer, number

# Token ids of a fact record: symbols are 1..alphabet, then these two (vocabulary: bytes, 256).
END = 0  # ends a record (the document separator of every byte source)
ARROW = 255  # between a record's key and its value
MAX_ALPHABET = 254


@dataclass(frozen=True)
class FactsConfig:
    """K facts (key -> value), records drawn i.i.d. with P(i) proportional to i^-(1 + alpha)."""

    seed: int = 0
    n_facts: int = 65536
    alpha: float = 0.5
    key_len: int = 6
    value_len: int = 4
    alphabet: int = 16
    train_tokens: int = 4_000_000
    val_tokens: int = 100_000

    def __post_init__(self):
        check(self, seed=integer(ge=0), n_facts=integer(ge=1, le=1 << 22), alpha=number(gt=0, le=10),
              key_len=integer(ge=1, le=64), value_len=integer(ge=1, le=64),
              alphabet=integer(ge=2, le=MAX_ALPHABET))
        # Distinct keys (a value is a function of its key), drawn at random from a space at least
        # twice as large as the facts, so the draw stays cheap.
        if self.alphabet ** self.key_len < 2 * self.n_facts:
            raise ConfigValueError("key_len", f"alphabet^key_len = {self.alphabet}^{self.key_len} keys is fewer than "
                                   f"2 * n_facts = {2 * self.n_facts}; lengthen the keys or widen the alphabet")
        # (At most 130 tokens a record: a split of 1000 tokens holds several.)
        check(self, train_tokens=integer(ge=1000), val_tokens=integer(ge=1000))

    @property
    def record_len(self) -> int:
        """Tokens per record: key, ARROW, value, END."""
        return self.key_len + self.value_len + 2
