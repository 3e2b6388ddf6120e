"""`SyntheticConfig`: the settings of the known-entropy `synthetic` source (scaling/data/synthetic.py;
sweeps/README.md `[data.synthetic]`). Kept beside scaling/config.py, which imports it, so that the
data sources and the evaluation sets (scaling/config_evals.py) share one frozen, self-checking dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from scaling.config_checks import ConfigValueError, check, entries, integer, number


@dataclass(frozen=True)
class SyntheticConfig:
    """The known-entropy `synthetic` source: a Zipf-weighted mixture of random Markov chains of
    several orders (scaling/data/synthetic.py; sweeps/README.md `[data.synthetic]`)."""

    seed: int = 0
    components: int = 256
    zipf_exponent: float = 1.2
    alphabet: int = 16
    orders: tuple[int, ...] = (1, 2, 3)
    concentration: float = 0.2
    end_prob: float = 0.02
    train_tokens: int = 4_000_000
    val_tokens: int = 100_000

    def __post_init__(self):
        # Token 0 separates documents: an alphabet is drawn from the other 255 byte values.
        check(self, seed=integer(ge=0), components=integer(ge=1), zipf_exponent=number(ge=0),
              alphabet=integer(ge=2, le=255), orders=entries(integer()))
        if not self.orders or any(not 1 <= k <= 4 for k in self.orders):
            raise ConfigValueError("orders", f"expected a non-empty list of orders in [1, 4], got {list(self.orders)}")
        # A component of order k keeps a table row per context of k symbols.
        if self.alphabet ** max(self.orders) > 1 << 16:
            raise ConfigValueError("orders", f"alphabet^order = {self.alphabet}^{max(self.orders)} contexts is over "
                                   "65536; lower the order or the alphabet")
        check(self, concentration=number(gt=0), end_prob=number(gt=0, lt=1), train_tokens=integer(ge=1000),
              val_tokens=integer(ge=1000))
