"""The `facts` source: K memorisable facts with Zipf frequencies, whose scaling exponents are known.

After Hutter 2021 ("Learning Curve Theory", arXiv:2102.04074) and Michaud et al. 2023 ("The
Quantization Model of Neural Scaling", arXiv:2303.13506): knowledge comes in discrete pieces, each
learnt or not, used with Zipf-distributed frequencies.

The process (settings: config_facts.FactsConfig, sweeps/README.md `[data.facts]`):

- K facts (``n_facts``). Fact i (rank 1..K) is a key of ``key_len`` symbols and a value of
  ``value_len`` symbols, each symbol uniform on 1..A (``alphabet``); keys are distinct, values
  independent. All of it is a pure function of ``seed``.
- A fact is written as one record of L = key_len + value_len + 2 tokens:
  ``key symbols, ARROW (255), value symbols, END (0)``.
- The stream is a sequence of records drawn i.i.d. with P(i) = i^-(1+alpha) / H, where
  H = sum_{i<=K} i^-(1+alpha). Train and validation are independent streams (seeds 1 and 2) of the
  same facts: no validation token is a training token, but the facts are shared, as they must be for
  memorisation to generalise.

The optimal loss E (``Facts.optimal_nll``). The model is scored on windows of the validation stream,
given only each window, like the synthetic source (scaling/data/synthetic.py). A window starts at a
uniformly random phase phi in 0..L-1 of a record (records have one fixed length, so a window start
falls at any phase with probability 1/L, and the record it falls in is a draw from P: no length
bias). Given phi the window splits into segments: the left-cut record (tokens phi.. of its record),
then whole records, then the right-cut one. With M_o(s) = sum_i P(i) [record_i[o : o + |s|] == s] the
prior mass of the facts whose record shows the tokens s from offset o on,

    P(w_0 .. w_t) = (1 / L) sum_phi  M_phi(first segment) * prod_{later segments s} M_0(s),

so the Bayes-optimal prediction is P(w_t | w_<t) = P(w_0..w_t) / P(w_0..w_(t-1)), the posterior over
the phase and over the left-cut record's fact included. It is computed exactly (float64): the
masses M_o of all prefixes are ranges of the facts sorted by their records from offset o. What it
amounts to: once the phase is known (the first ARROW or END shows it), a key symbol costs
-log P(symbol | key so far) under the prior, and ARROW, END and the value symbols cost nothing, the key
being unique; a whole record costs the prior's entropy H(P), so E -> H(P) / L for long windows. A
record cut at the left shows a key suffix (or a part of the value) that several facts may share:
its value symbols are predicted by the posterior over those facts, narrowing symbol by symbol.

The true exponents (recorded as ``true_exponent_data`` and ``true_exponent_params``). A learner that
has every fact's format and the prior but knows fact i's value only if it stores it predicts an
unknown value uniformly: excess loss value_len * ln A per record of an unknown fact.

- Data (Hutter 2021: Zipf-distributed features with exponent 1 + alpha give learning curves
  with exponent alpha / (1 + alpha)): an ideal learner that has
  memorised every fact seen at least once in D records has expected excess
  value_len ln A sum_i P(i) (1 - P(i))^D ~ value_len ln A int c i^-(1+alpha) exp(-D c i^-(1+alpha)) di
  = value_len ln A c^(1/(1+alpha)) Gamma(alpha/(1+alpha)) / (1+alpha) * D^(-alpha/(1+alpha)) (c = 1/H;
  substitute u = D c i^-(1+alpha)). Data exponent: alpha / (1 + alpha).
- Parameters (Michaud et al. 2023: quanta used with frequencies ∝ k^-(1+alpha), learnt in order
  of frequency, give L ∝ N^-alpha): if a model of N parameters stores the n ∝ N most
  frequent facts, its excess is value_len ln A sum_{i>n} P(i) ~ value_len ln A c n^-alpha / alpha.
  Parameter exponent: alpha.

Both hold for K -> infinity; with finite K the curves bend down to zero excess once the rarest fact
is seen (n or the facts seen in D records approach K): ``counting_excess`` and ``storing_excess``
give the exact finite-K curves, and fits should stay well below that regime.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scaling.config_facts import ARROW, END, FactsConfig
from scaling.data.splitcache import open_generated

VOCAB_SIZE = 256
_FORMAT_VERSION = 1
_CODE = 256  # token ids are below 256: prefix codes are pid * 256 + token


@dataclass(frozen=True, eq=False)
class Facts:
    """The facts of one config: their prior and their records (token ids, uint8)."""

    config: FactsConfig
    prior: np.ndarray  # [K] P(i), rank order
    records: np.ndarray  # [K, L] uint8

    @property
    def record_len(self) -> int:
        return self.config.record_len

    @property
    def true_exponents(self) -> tuple[float, float]:
        """(data exponent alpha / (1 + alpha), parameter exponent alpha); see the module docstring."""
        a = self.config.alpha
        return a / (1 + a), a

    def entropy(self) -> float:
        """H(P) in nats: the optimal loss of one whole record once the phase is known."""
        p = self.prior
        return float(-(p * np.log(p)).sum())

    def value_cost(self) -> float:
        """Nats per record of a fact whose value is unknown (value symbols predicted uniformly)."""
        return self.config.value_len * float(np.log(self.config.alphabet))

    def counting_excess(self, d) -> np.ndarray:
        """Expected excess loss per token of the ideal learner after D records (Hutter 2021): it
        knows the facts seen at least once, and the prior; exact for this finite K."""
        d = np.atleast_1d(np.asarray(d, dtype=np.float64))
        unseen = np.exp(d[:, None] * np.log1p(-np.minimum(self.prior, 1 - 1e-16))[None, :])
        return self.value_cost() / self.record_len * (unseen @ self.prior)

    def storing_excess(self, n) -> np.ndarray:
        """Excess loss per token of a learner that stores the n most frequent facts (Michaud et al.
        2023); exact for this finite K."""
        n = np.clip(np.atleast_1d(np.asarray(n, dtype=np.int64)), 0, len(self.prior))
        tail = np.concatenate([[0.0], np.cumsum(self.prior[::-1])])[::-1]  # tail[n] = sum_{i > n} P(i)
        return self.value_cost() / self.record_len * tail[n]

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(self, n_tokens: int, stream_seed: int) -> np.ndarray:
        """Whole records, i.i.d. from the prior, at most `n_tokens` tokens (uint8)."""
        c = self.config
        rng = np.random.default_rng([c.seed, stream_seed, 0xFAC75])
        n_records = n_tokens // self.record_len
        cdf = np.cumsum(self.prior)
        ranks = np.minimum(np.searchsorted(cdf, rng.random(n_records) * cdf[-1], side="right"), len(cdf) - 1)
        return self.records[ranks].reshape(-1)

    # ------------------------------------------------------------------------------------------
    # The optimal predictor

    def optimal_nll(self, windows: np.ndarray) -> np.ndarray:
        """float64 [n, S]: -log P(windows[:, t+1] | windows[:, :t+1]), the Bayes-optimal predictor
        given only the window (phase and left-cut record unknown; see the module docstring)."""
        w = np.asarray(windows).astype(np.int64)
        length = self.record_len
        tables = [_Table(self.records[:, o:], self.prior) for o in range(length)]
        log_joint = np.stack([self._log_joint(w, phi, tables) for phi in range(length)])  # [L, n, S + 1]
        top = np.max(log_joint, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_p = top + np.log(np.exp(log_joint - top).sum(axis=0))  # log L * P(w_0 .. w_t)
        return -np.diff(log_p, axis=1)

    def _log_joint(self, w: np.ndarray, phi: int, tables: list[_Table]) -> np.ndarray:
        """[n, S + 1]: log prod of the segment masses of w_0..w_t given phase `phi` (-inf: impossible)."""
        n, width = w.shape
        length, k = self.record_len, len(self.prior)
        out = np.empty((n, width))
        lo, hi = np.zeros(n, dtype=np.int64), np.full(n, k, dtype=np.int64)
        done = np.zeros(n)  # log mass of the finished segments
        table = tables[phi]
        mass = np.ones(n)
        with np.errstate(divide="ignore"):
            for t in range(width):
                if phi + t < length:
                    depth = t
                else:
                    depth = (phi + t) % length
                    if depth == 0:  # a new record: the finished one's mass is final
                        done = done + np.log(mass)
                        table = tables[0]
                        lo, hi = np.zeros(n, dtype=np.int64), np.full(n, k, dtype=np.int64)
                lo, hi = table.narrow(depth, lo, hi, w[:, t])
                mass = table.mass(lo, hi)
                out[:, t] = done + np.log(mass)
        return out


class _Table:
    """Facts sorted by their records from one offset on: the facts whose rows start with a given
    prefix are a contiguous range, found by binary search on prefix codes (pid of the prefix so far
    * 256 + next token, non-decreasing down the sorted rows)."""

    def __init__(self, rows: np.ndarray, prior: np.ndarray):
        order = np.lexsort(rows.T[::-1])  # the first column is the primary key
        rows = rows[order].astype(np.int64)
        self.cum = np.concatenate([[0.0], np.cumsum(prior[order])])
        self.codes = np.empty((rows.shape[1], rows.shape[0]), dtype=np.int64)
        pid = np.zeros(rows.shape[0], dtype=np.int64)
        new = np.zeros(rows.shape[0], dtype=bool)
        new[0] = True
        for d in range(rows.shape[1]):
            self.codes[d] = pid * _CODE + rows[:, d]
            new[1:] |= rows[1:, d] != rows[:-1, d]
            pid = np.cumsum(new) - 1

    def narrow(self, depth: int, lo: np.ndarray, hi: np.ndarray, token: np.ndarray):
        """The range of rows matching the prefix [lo, hi) matched, extended by `token` at `depth`."""
        codes = self.codes[depth]
        alive = lo < hi
        group = codes[np.minimum(lo, len(codes) - 1)] // _CODE
        query = np.where(alive, group * _CODE + token, -1)  # -1: below every code, an empty range
        return np.searchsorted(codes, query, side="left"), np.searchsorted(codes, query, side="right")

    def mass(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.where(lo < hi, self.cum[hi] - self.cum[lo], 0.0)


@functools.lru_cache(maxsize=8)
def build_facts(config: FactsConfig) -> Facts:
    """The facts of `config`: a pure function of it (deterministic from `config.seed`)."""
    rng = np.random.default_rng([config.seed, 0xFAC7])
    k, a = config.n_facts, config.alphabet
    prior = np.arange(1, k + 1, dtype=np.float64) ** -(1.0 + config.alpha)
    prior /= prior.sum()
    keys = np.empty((0, config.key_len), dtype=np.uint8)
    while len(keys) < k:  # distinct keys: draw, drop repeats (keeping first draws), draw the rest
        more = rng.integers(1, a + 1, size=(k - len(keys), config.key_len), dtype=np.uint8)
        both = np.concatenate([keys, more])
        _, first = np.unique(_row_codes(both, a), return_index=True)
        keys = both[np.sort(first)]
    values = rng.integers(1, a + 1, size=(k, config.value_len), dtype=np.uint8)
    records = np.concatenate([keys, np.full((k, 1), ARROW, np.uint8), values, np.full((k, 1), END, np.uint8)], axis=1)
    return Facts(config=config, prior=prior, records=records)


def _row_codes(rows: np.ndarray, base: int) -> np.ndarray:
    """One sortable value per row of symbols 1..base, equal iff the rows are: an int64 base-`base`
    number where it fits, else the row's bytes."""
    if base ** rows.shape[1] < 1 << 62:
        return (rows.astype(np.int64) - 1) @ (base ** np.arange(rows.shape[1] - 1, -1, -1, dtype=np.int64))
    return np.ascontiguousarray(rows).view(f"V{rows.shape[1]}").ravel()


# ----------------------------------------------------------------------------------------------
# As a token source (cached on disk like the synthetic source)


def _key(config: FactsConfig) -> str:
    text = json.dumps({"v": _FORMAT_VERSION, "source": "facts", **asdict(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_facts(config: FactsConfig, cache: Path):
    """(train, val, content_hash, split_rule) memmaps, built into `cache` on first use."""
    def generate():
        facts = build_facts(config)
        # Independent streams of the same facts: train and val never share a token position.
        return facts.generate(config.train_tokens, stream_seed=1), facts.generate(config.val_tokens, stream_seed=2)
    split_rule = f"facts; independent train (stream 1) and val (stream 2) samples, seed {config.seed}"
    return open_generated(cache / f"facts-{_key(config)}", asdict(config), _FORMAT_VERSION, split_rule, generate)
