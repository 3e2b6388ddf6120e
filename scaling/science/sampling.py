"""Generation with a key-value cache: greedy, temperature, top-k, top-p and beam search.

Every step is the model's own forward pass (`GPT.__call__` of scaling/model.py with a cache): a
prefill writes the prompt's keys and values, and each decoding step then costs one token's work
(its own projections plus attention over the cache) instead of recomputing the prefix.

Dimension letters as in scaling/model.py: B batch, P prompt length, N new tokens, C cache length,
V vocabulary, W beam width.

Rows of a batch may have prompts of different lengths (right-padded): every row carries its own
position, keys are written at that position and a query attends to cache slots at or before it,
so padding is never attended to.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scaling import model
from scaling.science import metrics
from scaling.config import ModelConfig, SamplingConfig

STRATEGIES = ("greedy", "temperature", "top_k", "top_p", "beam")
_SAMPLERS = STRATEGIES[:4]  # chosen at run time inside one compiled program; beam search is its own


def binder(cfg: ModelConfig, dtype: str) -> Callable[[dict], model.GPT]:
    """From a flat parameter dict (training's layout) to the GPT holding it, matmuls and cache in
    `dtype`: for use inside jit, where it only rearranges the traced arrays."""
    graphdef, template = model.abstract_model(cfg, compute_dtype=dtype)
    return lambda params: model.bind_params(graphdef, template, params)


def prefill(gpt: model.GPT, prompts_bp, cache_len: int | None = None):
    """Logits [B, P, V] of the prompts from position 0, and a cache of `cache_len` positions
    (default seq_len) that holds their keys and values."""
    b, p = prompts_bp.shape
    return gpt(prompts_bp, gpt.init_cache(b, cache_len), jnp.broadcast_to(jnp.arange(p), (b, p)))


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
    """A jitted generate(params, prompts_bp, prompt_len_b, key) -> (tokens [B, N], log-likelihood of
    each under the model [B, N]), N = n_new. Prompts are right-padded; row i continues after
    prompt_len[i]. `cache_len` (default seq_len) bounds prompt + continuation: a shorter cache is
    less work per step."""
    compiled = _compiled_generate(cfg, n_new, dtype, temperature, top_k, top_p, cache_len or cfg.seq_len)
    index = _SAMPLERS.index(strategy)
    return lambda params, prompts_bp, prompt_len_b, key: compiled(params, prompts_bp, prompt_len_b, key, index)


@functools.lru_cache(maxsize=32)
def _compiled_generate(cfg: ModelConfig, n_new: int, dtype: str, temperature: float, top_k: int, top_p: float,
                       cache_len: int):
    bind = binder(cfg, dtype)
    branches = [functools.partial(_choose, name, temperature=temperature, top_k=top_k, top_p=top_p)
                for name in _SAMPLERS]

    def generate(params, prompts_bp, prompt_len_b, key, strategy_index):
        gpt = bind(params)
        b = prompts_bp.shape[0]
        logits_bpv, cache = prefill(gpt, prompts_bp, cache_len)
        last_bv = logits_bpv[jnp.arange(b), prompt_len_b - 1]

        def body(carry, key_i):
            last_bv, cache, pos_b = carry
            token_b = jax.lax.switch(strategy_index, branches, last_bv, key_i)
            logp_b = jnp.take_along_axis(jax.nn.log_softmax(last_bv, axis=-1), token_b[:, None], axis=-1)[:, 0]
            logits_b1v, cache = gpt(token_b[:, None], cache, pos_b[:, None])
            return (logits_b1v[:, 0], cache, pos_b + 1), (token_b, logp_b)

        _, (tokens_nb, logp_nb) = jax.lax.scan(body, (last_bv, cache, prompt_len_b), jax.random.split(key, n_new))
        return tokens_nb.T, logp_nb.T

    return jax.jit(generate)


def greedy_loop(gpt: model.GPT, last_bv, cache: model.KVCache, pos_b, n_steps, n_new: int):
    """Greedy continuation from logits `last_bv` (of the token before position pos_b) and a cache holding
    every earlier position: tokens [B, N], N = n_new, of which only the first `n_steps` (a traced
    scalar, so no recompile) are decoded and the rest left 0. Slots at or after pos_b may hold
    anything: each is written before any query can see it."""
    b = last_bv.shape[0]

    def body(carry):
        i, last_bv, cache, pos_b, out_bn = carry
        token_b = jnp.argmax(last_bv, axis=-1).astype(jnp.int32)
        out_bn = jax.lax.dynamic_update_slice(out_bn, token_b[:, None], (0, i))
        logits_b1v, cache = gpt(token_b[:, None], cache, pos_b[:, None])
        return i + 1, logits_b1v[:, 0], cache, pos_b + 1, out_bn

    init = (jnp.int32(0), last_bv, cache, pos_b, jnp.zeros((b, n_new), jnp.int32))
    return jax.lax.while_loop(lambda c: c[0] < jnp.minimum(n_steps, n_new), body, init)[-1]


@functools.lru_cache(maxsize=8)
def make_beam_search(cfg: ModelConfig, n_new: int, width: int, dtype: str = "float32", cache_len: int | None = None):
    """A jitted beam_search(params, prompts_bp, prompt_len_b) -> (best continuation [B, N], its
    log-likelihood per token [B, N]), N = n_new: fixed length, no length penalty."""
    bind = binder(cfg, dtype)

    def beam_search(params, prompts_bp, prompt_len_b):
        gpt = bind(params)
        b = prompts_bp.shape[0]
        logits_bpv, cache = prefill(gpt, prompts_bp, cache_len)
        # [B * W, V]: beam w of row i is row i * W + w.
        last = jnp.repeat(logits_bpv[jnp.arange(b), prompt_len_b - 1], width, axis=0)
        cache = jax.tree.map(lambda c: jnp.repeat(c, width, axis=0), cache)
        # Only beam 0 is alive at first, so the first step does not pick the same token W times.
        scores_bw = jnp.tile(jnp.where(jnp.arange(width) == 0, 0.0, -jnp.inf), (b, 1))
        tokens_bwn = jnp.zeros((b, width, n_new), jnp.int32)
        logps_bwn = jnp.zeros((b, width, n_new), jnp.float32)
        pos = jnp.repeat(prompt_len_b, width)

        def body(carry, i):
            last, cache, scores_bw, tokens_bwn, logps_bwn, pos = carry
            v = last.shape[-1]
            logp_bwv = jax.nn.log_softmax(last, axis=-1).reshape(b, width, v)
            top, index = jax.lax.top_k((scores_bw[:, :, None] + logp_bwv).reshape(b, width * v), width)
            parent, token = index // v, (index % v).astype(jnp.int32)
            step_logp = jnp.take_along_axis(logp_bwv.reshape(b, width * v), index, axis=1)
            tokens_bwn = jnp.take_along_axis(tokens_bwn, parent[:, :, None], axis=1).at[:, :, i].set(token)
            logps_bwn = jnp.take_along_axis(logps_bwn, parent[:, :, None], axis=1).at[:, :, i].set(step_logp)
            rows = (jnp.arange(b)[:, None] * width + parent).reshape(-1)
            cache = jax.tree.map(lambda c: c[rows], cache)
            logits, cache = gpt(token.reshape(-1, 1), cache, pos[:, None])
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
