"""Generation with a key-value cache: greedy, temperature, top-k, top-p and beam search.

The GPT of scaling/model.py written as a pure function of its flat parameter dict
(`"blocks/0/qkv/kernel"`, ...) that takes tokens at given positions and a cache of every layer's
keys and values: a prefill writes the prompt's keys and values, and each decoding step then costs
one token's work (its own projections plus attention over the cache) instead of recomputing the
prefix. tests/test_sampling.py checks that its logits equal the Flax module's full recompute.

Dimension letters as in scaling/model.py: B batch, T new tokens, S cache length (the model's
seq_len), D model, H heads, K head size, V vocabulary, L layers.

Rows of a batch may have prompts of different lengths (right-padded): every row carries its own
position, keys are written at that position and a query attends to cache slots at or before it,
so padding is never attended to.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from scaling.science import metrics
from scaling.config import ModelConfig, SamplingConfig

STRATEGIES = ("greedy", "temperature", "top_k", "top_p", "beam")
_SAMPLERS = STRATEGIES[:4]  # chosen at run time inside one compiled program; beam search is its own


def _layernorm(x, scale, bias, eps=1e-5):
    # As flax.nnx.LayerNorm (use_fast_variance): float32 statistics, var = E[x^2] - E[x]^2.
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.maximum(jnp.mean(x * x, axis=-1, keepdims=True) - mean * mean, 0.0)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _linear(params, name, x, dtype):
    return x.astype(dtype) @ params[f"{name}/kernel"].astype(dtype) + params[f"{name}/bias"].astype(dtype)


def init_cache(cfg: ModelConfig, batch: int, dtype, length: int | None = None) -> dict:
    shape = (cfg.n_layer, batch, length or cfg.seq_len, cfg.n_head, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def step(params: dict, cfg: ModelConfig, tokens_bt, positions_bt, cache: dict, dtype=jnp.float32):
    """Logits [B, T, V] (float32) of tokens at positions, and the cache with their keys and values."""
    dtype = jnp.dtype(dtype)
    b, t = tokens_bt.shape
    h, k = cfg.n_head, cfg.head_dim
    s = cache["k"].shape[2]
    x_btd = params["wte/embedding"][tokens_bt] + params["wpe/embedding"][positions_bt]
    visible_bts = jnp.arange(s)[None, None, :] <= positions_bt[:, :, None]
    rows_b1 = jnp.arange(b)[:, None]
    keys, values = [], []
    for layer in range(cfg.n_layer):
        p = f"blocks/{layer}"
        qkv = _linear(params, f"{p}/qkv", _layernorm(x_btd, params[f"{p}/ln1/scale"], params[f"{p}/ln1/bias"]), dtype)
        q_bthk, k_bthk, v_bthk = (a.reshape(b, t, h, k) for a in jnp.split(qkv, 3, axis=-1))
        k_bshk = cache["k"][layer].at[rows_b1, positions_bt].set(k_bthk.astype(cache["k"].dtype))
        v_bshk = cache["v"][layer].at[rows_b1, positions_bt].set(v_bthk.astype(cache["v"].dtype))
        keys.append(k_bshk)
        values.append(v_bshk)
        scores_bhts = jnp.einsum("bqhk,bshk->bhqs", q_bthk, k_bshk.astype(dtype)).astype(jnp.float32) / math.sqrt(k)
        scores_bhts = jnp.where(visible_bts[:, None], scores_bhts, jnp.finfo(jnp.float32).min)
        probs_bhts = jax.nn.softmax(scores_bhts, axis=-1).astype(dtype)
        y_bthk = jnp.einsum("bhqs,bshk->bqhk", probs_bhts, v_bshk.astype(dtype))
        x_btd = x_btd + _linear(params, f"{p}/proj", y_bthk.reshape(b, t, h * k), dtype)
        hidden = _linear(params, f"{p}/fc", _layernorm(x_btd, params[f"{p}/ln2/scale"], params[f"{p}/ln2/bias"]),
                         dtype)
        x_btd = x_btd + _linear(params, f"{p}/fc_proj", jax.nn.gelu(hidden), dtype)
    x_btd = _layernorm(x_btd, params["ln_f/scale"], params["ln_f/bias"]).astype(dtype)
    if "lm_head/kernel" in params:
        logits = x_btd @ params["lm_head/kernel"].astype(dtype)
    else:
        logits = x_btd @ params["wte/embedding"].astype(dtype).T
    return logits.astype(jnp.float32), {"k": jnp.stack(keys), "v": jnp.stack(values)}


def forward(params: dict, cfg: ModelConfig, tokens_bs, dtype=jnp.float32):
    """Logits of a whole sequence (no cache kept): the teacher-forced pass."""
    b, s = tokens_bs.shape
    positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    logits, _ = step(params, cfg, tokens_bs, positions, init_cache(cfg, b, dtype, length=s), dtype)
    return logits


def _choose(strategy: str, logits_bv, key, *, temperature: float, top_k: int, top_p: float):
    """The next token of each row. top-k and top-p truncate the model's own distribution
    (temperature 1; Fan et al. 2018, Holtzman et al. 2020)."""
    if strategy == "greedy":
        return jnp.argmax(logits_bv, axis=-1)
    if strategy == "temperature":
        return jax.random.categorical(key, logits_bv / temperature, axis=-1)
    if strategy == "top_k":
        kth = jax.lax.top_k(logits_bv, top_k)[0][:, -1:]
        return jax.random.categorical(key, jnp.where(logits_bv >= kth, logits_bv, -jnp.inf), axis=-1)
    if strategy == "top_p":
        # The nucleus: the fewest most-likely tokens whose mass reaches top_p (the one crossing it kept).
        order = jnp.argsort(-logits_bv, axis=-1)
        probs_sorted = jnp.take_along_axis(jax.nn.softmax(logits_bv, axis=-1), order, axis=-1)
        keep_sorted = (jnp.cumsum(probs_sorted, axis=-1) - probs_sorted) < top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits_bv.shape[0])[:, None], order].set(keep_sorted)
        return jax.random.categorical(key, jnp.where(keep, logits_bv, -jnp.inf), axis=-1)
    raise ValueError(f"unknown strategy {strategy!r}")


def make_generate(cfg: ModelConfig, n_new: int, strategy: str, dtype: str = "float32", temperature: float = 1.0,
                  top_k: int = 20, top_p: float = 0.9, cache_len: int | None = None):
    """A jitted generate(params, prompts_bp, prompt_len_b, key) -> (tokens [B, n_new], log-likelihood of
    each under the model [B, n_new]). Prompts are right-padded; row i continues after prompt_len[i].
    `cache_len` (default seq_len) bounds prompt + continuation: a shorter cache is less work per step."""
    compiled = _compiled_generate(cfg, n_new, dtype, temperature, top_k, top_p, cache_len or cfg.seq_len)
    index = _SAMPLERS.index(strategy)
    return lambda params, prompts_bp, prompt_len_b, key: compiled(params, prompts_bp, prompt_len_b, key, index)


@functools.lru_cache(maxsize=32)
def _compiled_generate(cfg: ModelConfig, n_new: int, dtype: str, temperature: float, top_k: int, top_p: float,
                       cache_len: int):
    dt = jnp.dtype(dtype)
    branches = [functools.partial(_choose, name, temperature=temperature, top_k=top_k, top_p=top_p)
                for name in _SAMPLERS]

    def generate(params, prompts_bp, prompt_len_b, key, strategy_index):
        b, p = prompts_bp.shape
        cache = init_cache(cfg, b, dt, length=cache_len)
        logits_bpv, cache = step(params, cfg, prompts_bp, jnp.broadcast_to(jnp.arange(p), (b, p)), cache, dt)
        last_bv = logits_bpv[jnp.arange(b), prompt_len_b - 1]

        def body(carry, key_t):
            last_bv, cache, pos_b = carry
            token_b = jax.lax.switch(strategy_index, branches, last_bv, key_t)
            logp_b = jnp.take_along_axis(jax.nn.log_softmax(last_bv, axis=-1), token_b[:, None], axis=-1)[:, 0]
            logits_b1v, cache = step(params, cfg, token_b[:, None], pos_b[:, None], cache, dt)
            return (logits_b1v[:, 0], cache, pos_b + 1), (token_b, logp_b)

        _, (tokens_nb, logp_nb) = jax.lax.scan(body, (last_bv, cache, prompt_len_b), jax.random.split(key, n_new))
        return tokens_nb.T, logp_nb.T

    return jax.jit(generate)


def greedy_loop(params, cfg: ModelConfig, last_bv, cache: dict, pos_b, n_steps, n_new: int, dtype):
    """Greedy continuation from logits `last_bv` (of the token before position pos_b) and a cache holding
    every earlier position: tokens [B, n_new], of which only the first `n_steps` (a traced scalar, so
    no recompile) are decoded and the rest left 0. Slots at or after pos_b may hold anything: each is
    written before any query can see it."""
    b = last_bv.shape[0]

    def body(carry):
        t, last_bv, cache, pos_b, out_bn = carry
        token_b = jnp.argmax(last_bv, axis=-1).astype(jnp.int32)
        out_bn = jax.lax.dynamic_update_slice(out_bn, token_b[:, None], (0, t))
        logits_b1v, cache = step(params, cfg, token_b[:, None], pos_b[:, None], cache, dtype)
        return t + 1, logits_b1v[:, 0], cache, pos_b + 1, out_bn

    init = (jnp.int32(0), last_bv, cache, pos_b, jnp.zeros((b, n_new), jnp.int32))
    return jax.lax.while_loop(lambda c: c[0] < jnp.minimum(n_steps, n_new), body, init)[-1]


@functools.lru_cache(maxsize=8)
def make_beam_search(cfg: ModelConfig, n_new: int, width: int, dtype: str = "float32", cache_len: int | None = None):
    """A jitted beam_search(params, prompts_bp, prompt_len_b) -> (best continuation [B, n_new], its
    log-likelihood per token [B, n_new]): fixed length, no length penalty."""
    dt = jnp.dtype(dtype)

    def beam_search(params, prompts_bp, prompt_len_b):
        b, p = prompts_bp.shape
        cache = init_cache(cfg, b, dt, length=cache_len)
        logits_bpv, cache = step(params, cfg, prompts_bp, jnp.broadcast_to(jnp.arange(p), (b, p)), cache, dt)
        last = jnp.repeat(logits_bpv[jnp.arange(b), prompt_len_b - 1], width, axis=0)  # [B*W, V]
        cache = jax.tree.map(lambda c: jnp.repeat(c, width, axis=1), cache)
        # Only beam 0 is alive at first, so the first step does not pick the same token W times.
        scores_bw = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (b, 1))
        tokens_bwn = jnp.zeros((b, width, n_new), jnp.int32)
        logps_bwn = jnp.zeros((b, width, n_new), jnp.float32)
        pos = jnp.repeat(prompt_len_b, width)

        def body(carry, t):
            last, cache, scores_bw, tokens_bwn, logps_bwn, pos = carry
            v = last.shape[-1]
            logp_bwv = jax.nn.log_softmax(last, axis=-1).reshape(b, width, v)
            top, index = jax.lax.top_k((scores_bw[:, :, None] + logp_bwv).reshape(b, width * v), width)
            parent, token = index // v, (index % v).astype(jnp.int32)
            step_logp = jnp.take_along_axis(logp_bwv.reshape(b, width * v), index, axis=1)
            tokens_bwn = jnp.take_along_axis(tokens_bwn, parent[:, :, None], axis=1).at[:, :, t].set(token)
            logps_bwn = jnp.take_along_axis(logps_bwn, parent[:, :, None], axis=1).at[:, :, t].set(step_logp)
            rows = (jnp.arange(b)[:, None] * width + parent).reshape(-1)
            cache = jax.tree.map(lambda c: c[:, rows], cache)
            logits, cache = step(params, cfg, token.reshape(-1, 1), pos[:, None], cache, dt)
            return (logits[:, 0], cache, top, tokens_bwn, logps_bwn, pos + 1), None

        carry, _ = jax.lax.scan(body, (last, cache, scores_bw, tokens_bwn, logps_bwn, pos), jnp.arange(n_new))
        return carry[3][:, 0], carry[4][:, 0]  # top_k sorts: beam 0 is the best

    return jax.jit(beam_search)


def continuation_metrics(tokens: np.ndarray, logps: np.ndarray) -> dict[str, float]:
    seqs = [list(row) for row in np.asarray(tokens)]
    return {"distinct_1": metrics.distinct_n(seqs, 1), "distinct_2": metrics.distinct_n(seqs, 2),
            "distinct_3": metrics.distinct_n(seqs, 3), "repetition_4": metrics.repetition_rate(seqs, 4),
            "logprob": float(np.mean(logps))}


def sample_all(params, cfg: ModelConfig, windows: np.ndarray, s: SamplingConfig, dtype: str = "float32"
               ) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Continue the first `s.prompt_tokens` tokens of up to `s.prompts` validation windows with every
    strategy. Returns (columns `sample/<strategy>/<metric>`, {strategy: (prompts, continuations)})."""
    prompts = np.asarray(windows[:s.prompts, :s.prompt_tokens], dtype=np.int32)
    prompt_len = np.full(len(prompts), s.prompt_tokens, dtype=np.int32)
    key = jax.random.key(s.seed)
    length = s.prompt_tokens + s.new_tokens
    columns, texts = {}, {}
    for strategy in STRATEGIES:
        if strategy == "beam":
            tokens, logps = make_beam_search(cfg, s.new_tokens, s.beam, dtype, length)(params, prompts, prompt_len)
        else:
            gen = make_generate(cfg, s.new_tokens, strategy, dtype, s.temperature, s.top_k, s.top_p, length)
            tokens, logps = gen(params, prompts, prompt_len, jax.random.fold_in(key, STRATEGIES.index(strategy)))
        tokens, logps = np.asarray(tokens), np.asarray(logps)
        for name, value in continuation_metrics(tokens, logps).items():
            columns[f"sample/{strategy}/{name}"] = value
        texts[strategy] = (prompts, tokens)
    return columns, texts


def render(texts: dict, s: SamplingConfig, as_bytes: bool) -> str:
    """The samples as readable text: bytes decoded as UTF-8 (undecodable bytes escaped), other
    vocabularies as token ids."""
    def show(tokens) -> str:
        if as_bytes:
            return bytes(int(t) for t in tokens).decode("utf-8", errors="backslashreplace").replace("\x00", "\\0")
        return " ".join(str(int(t)) for t in tokens)

    settings = (f"temperature={s.temperature} top_k={s.top_k} top_p={s.top_p} beam={s.beam} "
                f"prompt_tokens={s.prompt_tokens} new_tokens={s.new_tokens} seed={s.seed}")
    lines = [f"# samples from validation prompts; {settings}", ""]
    n = len(next(iter(texts.values()))[0])
    for i in range(n):
        lines.append(f"=== prompt {i}: {show(texts[STRATEGIES[0]][0][i])!r}")
        for strategy, (_, continuations) in texts.items():
            lines.append(f"--- {strategy}: {show(continuations[i])!r}")
        lines.append("")
    return "\n".join(lines)
