"""The `synthetic` source: a process whose next-token distribution is known exactly.

The process is a Zipf-weighted mixture of random Markov chains of several orders, packed as
documents:

- There are K components (``components``). Component c has a prior weight pi_c proportional to
  (c + 1)^-``zipf_exponent``, a private alphabet of A (``alphabet``) tokens drawn from 1..255, an
  order k_c (``orders``, assigned in turn by rank, so every order has frequent and rare
  components) and a transition table: one row per context of k_c symbols, each row a draw from a
  symmetric Dirichlet(``concentration``) mixed with ``FLOOR`` of the uniform distribution (so every
  chain is ergodic and every loss finite).
- A document picks its component from pi, then emits a stationary path of that chain: its first
  k_c symbols are drawn from the chain's stationary distribution over contexts, the rest from the
  transition table. At every position the document ends with probability q (``end_prob``), which
  emits the separator token 0 and starts the next document. Lengths are geometric and independent
  of the component.

Why this is a useful yardstick: the components are Zipf-distributed "quanta" (Michaud et al.
2023, "The Quantization Model of Neural Scaling"; Hutter 2021, "Learning Curve Theory": Zipf-
distributed features give power-law learning curves), each a table a model must memorise (more
parameters hold more of them; more data reaches rarer ones), and which one is active must be
inferred in context (the posterior sharpens along a document). So loss keeps falling with N and D
long after the common components are learnt, towards a floor that is known.

Why the optimum is exact on any window: lengths are memoryless and every document starts in its
chain's stationary distribution, so the part of a document visible in a window, whether the window
starts at the document's start or in its middle, has the same law as a whole document: component
c with probability pi_c, then a stationary path of chain c. The Bayes-optimal predictor given only
the window therefore restarts at every separator (and at the window's first token) with the prior
pi, and predicts

    P(sep) = q,   P(x | segment so far) = (1 - q) * sum_c P(c | segment so far) * P_c(x | last k_c symbols)

where P_c(x | fewer than k_c symbols) is the stationary conditional. `Process.optimal_nll` computes
this exactly (in float64) for windows of any length: the same windows, packing and document
boundaries the model is scored on. Streams are generated in parallel lanes, each cut after one of its
own separators, so lane junctions are ordinary document boundaries.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scaling.config import SyntheticConfig
from scaling.data.splitcache import open_generated

SEPARATOR = 0
VOCAB_SIZE = 256
FLOOR = 0.02  # weight of the uniform distribution in every transition row: ergodic, finite loss
_LANES = 2048
_FORMAT_VERSION = 1


def check_config(c: SyntheticConfig) -> list[tuple[str, str]]:
    """(key, what is wrong) for every impossible setting; empty when the config is valid."""
    bad = []
    if c.components < 1:
        bad.append(("components", f"expected an integer >= 1, got {c.components}"))
    if not 2 <= c.alphabet <= VOCAB_SIZE - 1:
        bad.append(("alphabet", f"expected an integer in [2, {VOCAB_SIZE - 1}], got {c.alphabet}"))
    if not c.orders or any(not 1 <= k <= 4 for k in c.orders):
        bad.append(("orders", f"expected a non-empty list of orders in [1, 4], got {list(c.orders)}"))
    elif c.alphabet ** max(c.orders) > 1 << 16:
        bad.append(("orders", f"alphabet^order = {c.alphabet}^{max(c.orders)} contexts is over 65536; "
                              "lower the order or the alphabet"))
    if not 0 < c.end_prob < 1:
        bad.append(("end_prob", f"expected a number in (0, 1), got {c.end_prob}"))
    if c.concentration <= 0:
        bad.append(("concentration", f"expected a number > 0, got {c.concentration}"))
    if c.zipf_exponent < 0:
        bad.append(("zipf_exponent", f"expected a number >= 0, got {c.zipf_exponent}"))
    for key in ("train_tokens", "val_tokens"):
        if getattr(c, key) < 1000:
            bad.append((key, f"expected an integer >= 1000, got {getattr(c, key)}"))
    return bad


@dataclass(frozen=True, eq=False)
class Process:
    """The components of one synthetic source, with every table the generator and the optimal
    predictor read. All tables of all components live in one flat float64 array `probs`: the row of
    component c for a context of the last j symbols (as a base-A number, oldest symbol highest) is
    ``probs[base[c] + offset[c, j] + context * A : ... + A]``; j = k_c is the transition table, j < k_c
    the stationary conditionals."""

    config: SyntheticConfig
    prior: np.ndarray  # [K] pi_c
    order: np.ndarray  # [K] k_c
    alphabet: np.ndarray  # [K, A] token ids (1..255), sorted
    local: np.ndarray  # [K, 256] token -> symbol index in the component's alphabet, or -1
    base: np.ndarray  # [K]
    offset: np.ndarray  # [K, max order + 1]
    probs: np.ndarray  # flat

    @property
    def n_symbols(self) -> int:
        return self.config.alphabet

    def rows(self, comp: np.ndarray, seg_len: np.ndarray, context: np.ndarray) -> np.ndarray:
        """Index of the first entry of each next-symbol row (any matching shapes)."""
        j = np.minimum(seg_len, self.order[comp])
        ctx = context % (self.n_symbols ** j)
        return self.base[comp] + self.offset[comp, j] + ctx * self.n_symbols

    # ------------------------------------------------------------------------------------------
    # Generation

    def generate(self, n_tokens: int, stream_seed: int) -> np.ndarray:
        """About `n_tokens` (a little fewer) tokens of the process, uint8."""
        c = self.config
        rng = np.random.default_rng([c.seed, stream_seed, 0x5E9])
        lanes = max(1, min(_LANES, n_tokens // 512))
        steps = -(-n_tokens // lanes) + int(20 / c.end_prob)  # surplus: each lane is cut after a sep
        a = self.n_symbols
        kmax_c = self.order
        cdf_prior = np.cumsum(self.prior)
        out = np.empty((lanes, steps), dtype=np.uint8)
        comp = np.searchsorted(cdf_prior, rng.random(lanes) * cdf_prior[-1], side="right")
        seg_len = np.zeros(lanes, dtype=np.int64)
        context = np.zeros(lanes, dtype=np.int64)
        offs = np.arange(a)
        for t in range(steps):
            end = rng.random(lanes) < c.end_prob
            start = self.rows(comp, seg_len, context)
            cdf = np.cumsum(self.probs[start[:, None] + offs], axis=1)
            u = rng.random(lanes) * cdf[:, -1]
            symbol = np.minimum((cdf <= u[:, None]).sum(axis=1), a - 1)
            out[:, t] = np.where(end, SEPARATOR, self.alphabet[comp, symbol])
            new_comp = np.searchsorted(cdf_prior, rng.random(lanes) * cdf_prior[-1], side="right")
            comp = np.where(end, new_comp, comp)
            context = np.where(end, 0, (context * a + symbol) % (a ** kmax_c[comp]))
            seg_len = np.where(end, 0, seg_len + 1)
        pieces = []
        for lane in out:
            seps = np.flatnonzero(lane == SEPARATOR)
            if len(seps):  # keep through the last separator: the next lane starts a fresh document
                pieces.append(lane[:seps[-1] + 1])
        stream = np.concatenate(pieces)
        return stream[:n_tokens]

    # ------------------------------------------------------------------------------------------
    # The optimal predictor

    def optimal_nll(self, windows: np.ndarray) -> np.ndarray:
        """float64 [n, S]: -log P(windows[:, t+1] | windows[:, :t+1]) under the exact process, given
        only the window itself (the Bayes-optimal predictor; see the module docstring)."""
        nll, _ = self._predict(np.asarray(windows), full=False)
        return nll

    def predictive(self, windows: np.ndarray) -> np.ndarray:
        """float64 [n, S, 256]: the full optimal next-token distribution at every position."""
        _, dist = self._predict(np.asarray(windows), full=True)
        return dist

    def _predict(self, windows: np.ndarray, full: bool):
        n, width = windows.shape
        k_count, a = len(self.prior), self.n_symbols
        q = self.config.end_prob
        log_prior = np.log(self.prior)[:, None]  # [K, 1]
        comp = np.arange(k_count)[:, None]  # [K, 1]
        modulus = (a ** self.order)[:, None]
        nll = np.zeros((n, width - 1))
        dist = np.zeros((n, width - 1, VOCAB_SIZE)) if full else None
        log_w = np.repeat(log_prior, n, axis=1)  # [K, n] log P(c, segment so far)
        seg_len = np.zeros((1, n), dtype=np.int64)
        context = np.zeros((k_count, n), dtype=np.int64)
        for t in range(width):
            token = windows[:, t]
            is_sep = token == SEPARATOR
            symbol = self.local[:, token]  # [K, n]
            start = self.rows(comp, seg_len, context)  # [K, n]
            if t > 0:
                if full:
                    weights = np.exp(log_w - _logsumexp(log_w))  # [K, n] posterior
                    rows = self.probs[start[..., None] + np.arange(a)]  # [K, n, A]
                    d = np.zeros((n, VOCAB_SIZE))
                    for c in range(k_count):
                        np.add.at(d, (slice(None), self.alphabet[c]), weights[c][:, None] * rows[c])
                    d *= 1 - q
                    d[:, SEPARATOR] = q
                    dist[:, t - 1] = d
            p_sym = np.where(symbol >= 0, self.probs[start + np.maximum(symbol, 0)], 0.0)
            with np.errstate(divide="ignore"):
                log_p = np.log(p_sym)  # [K, n]; -inf where the token is not in c's alphabet
            if t > 0:
                prediction = _logsumexp(log_w + log_p) - _logsumexp(log_w)
                nll[:, t - 1] = np.where(is_sep, -np.log(q), -(np.log1p(-q) + prediction[0]))
            # Observe the token: a separator restarts the posterior at the prior.
            log_w = np.where(is_sep[None], log_prior, log_w + log_p)
            context = np.where(is_sep[None], 0, (context * a + np.maximum(symbol, 0)) % modulus)
            seg_len = np.where(is_sep[None], 0, seg_len + 1)
        return nll, dist


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Over axis 0, keeping it; -inf rows stay -inf without warnings."""
    m = np.max(x, axis=0, keepdims=True)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(np.sum(np.exp(x - m_safe), axis=0, keepdims=True))


@functools.lru_cache(maxsize=8)
def build_process(config: SyntheticConfig) -> Process:
    """The process of `config`: a pure function of it (deterministic from `config.seed`)."""
    bad = check_config(config)
    if bad:
        raise ValueError(f"synthetic.{bad[0][0]}: {bad[0][1]}")
    rng = np.random.default_rng([config.seed, 0xC0FFEE])
    k_count, a = config.components, config.alphabet
    prior = (np.arange(1, k_count + 1, dtype=np.float64)) ** -config.zipf_exponent
    prior /= prior.sum()
    order = np.array([config.orders[c % len(config.orders)] for c in range(k_count)], dtype=np.int64)
    alphabet = np.sort(np.stack([rng.choice(VOCAB_SIZE - 1, size=a, replace=False) + 1
                                 for _ in range(k_count)]), axis=1)
    local = np.full((k_count, VOCAB_SIZE), -1, dtype=np.int64)
    for c in range(k_count):
        local[c, alphabet[c]] = np.arange(a)
    kmax = int(order.max())
    tables: list[list[np.ndarray]] = [[] for _ in range(k_count)]
    for k in sorted(set(order.tolist())):
        members = np.flatnonzero(order == k)
        gamma = rng.gamma(config.concentration, size=(len(members), a ** k, a))
        transition = (1 - FLOOR) * gamma / gamma.sum(axis=-1, keepdims=True) + FLOOR / a
        stationary = _stationary(transition, a, k)  # [m, A^k]
        for i, c in enumerate(members):
            tables[c] = _prefix_tables(stationary[i], a, k) + [transition[i]]
    offset = np.zeros((k_count, kmax + 1), dtype=np.int64)
    base = np.zeros(k_count, dtype=np.int64)
    flat, position = [], 0
    for c in range(k_count):
        base[c] = position
        inner = 0
        for j, table in enumerate(tables[c]):
            offset[c, j] = inner
            inner += table.size
            flat.append(table.ravel())
        offset[c, len(tables[c]):] = offset[c, len(tables[c]) - 1]
        position += inner
    return Process(config=config, prior=prior, order=order, alphabet=alphabet, local=local, base=base,
                   offset=offset, probs=np.concatenate(flat))


def _stationary(transition: np.ndarray, a: int, k: int) -> np.ndarray:
    """[m, A^k] stationary distributions over contexts of m order-k chains, by power iteration.

    A context is k symbols, oldest highest; the next context drops the oldest and appends x, so
    pi'[lo, x] = sum_hi pi[hi, lo] T[hi, lo, x]."""
    m = transition.shape[0]
    t = transition.reshape(m, a, a ** (k - 1), a)
    pi = np.full((m, a ** k), 1.0 / a ** k)
    for _ in range(20000):
        new = np.einsum("mhl,mhlx->mlx", pi.reshape(m, a, a ** (k - 1)), t).reshape(m, a ** k)
        new /= new.sum(axis=1, keepdims=True)
        done = np.abs(new - pi).sum(axis=1).max() < 1e-15
        pi = new
        if done:
            break
    return pi


def _prefix_tables(pi: np.ndarray, a: int, k: int) -> list[np.ndarray]:
    """[A^j, A] for j < k: P(x_{j+1} | x_1..x_j) of a stationary path (marginals of pi)."""
    out = []
    for j in range(k):
        joint = pi.reshape(a ** (j + 1), a ** (k - j - 1)).sum(axis=1).reshape(a ** j, a)
        out.append(joint / joint.sum(axis=1, keepdims=True))
    return out


# ----------------------------------------------------------------------------------------------
# As a token source (cached on disk like the byte corpora of scaling/data/sources.py)


def _key(config: SyntheticConfig) -> str:
    text = json.dumps({"v": _FORMAT_VERSION, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def open_synthetic(config: SyntheticConfig, cache: Path):
    """(train, val, content_hash, split_rule) memmaps, built into `cache` on first use."""
    def generate():
        process = build_process(config)
        # Independent streams: train and val share the process, never a token position.
        return process.generate(config.train_tokens, stream_seed=1), process.generate(config.val_tokens, stream_seed=2)
    split_rule = f"synthetic; independent train (stream 1) and val (stream 2) samples, seed {config.seed}"
    return open_generated(cache / f"synthetic-{_key(config)}", asdict(config), _FORMAT_VERSION, split_rule, generate)
