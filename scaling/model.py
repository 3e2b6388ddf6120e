"""A GPT-2 style pre-LN decoder in Flax NNX, and its loss.

Dimension letters, used in names here and in scaling/science (`x_td`, `scores_bhsc`):

    B  batch rows                     S  positions a call feeds (the training window; a prompt;
    T  tokens, B x S                     one token per decoding step)
    D  model width                    C  cache length: the positions a key-value cache holds
    H  attention heads                P  prompt length
    K  head size, D / H               N  new (generated) tokens
    F  feed-forward width             W  beam width
    V  vocabulary                     L  layers

Parameters live in `param_dtype` (float32); matmuls run in `compute_dtype`; LayerNorm, softmax and
the loss run in float32 (mixed-precision practice of Micikevicius et al. 2018).

Between attentions the residual stream is kept as [T, D], so every dense layer and its gradients
are plain 2-D matmuls; with a [B, S, D] stream XLA:CPU computed the weight gradients through
transposed copies (benchmarks/NOTES.md, "Step speed": 12-14% less CPU time a step for the kaplan
sweep's models).

Every weight names its logical axes where it is made (Flax's `out_sharding` metadata, as
`nnx.with_partitioning` writes it); scaling/training/sharding.py maps them to mesh axes per preset:

    vocab     V: embedding rows, output-head columns
    position  S: positional-embedding rows
    embed     D: the model-width side of every matrix
    qkv       3D: the fused query, key and value projections' outputs, [q | k | v], each H x K
    heads     D as H x K: the attention output projection's input
    mlp       F: the feed-forward hidden units
    residual  D: a vector over the residual stream's features (LayerNorm gains and biases, the
              biases added to the stream); too small for splitting to pay off

One forward pass serves training and generation (as in Flax's examples/gemma): given a key-value
cache and each token's position, `GPT.__call__` writes the tokens' keys and values into the cache
and attends over it, so a decoding step costs one token's work instead of recomputing the prefix.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util

from scaling.config import ModelConfig

# GPT-2 initialisation (Radford et al. 2019; nanoGPT): N(0, 0.02), residual projections scaled by
# 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
INIT_STD = 0.02

# A key-value cache: per layer {"k": [B, C, H, K], "v": [B, C, H, K]} in the compute dtype.
KVCache = list[dict[str, jax.Array]]


def _axes(*logical: str) -> dict:
    """Variable metadata naming a weight's logical axes. Not applied when the weight is made
    (eager sharding off): the mesh and the preset's table are chosen by the run, after."""
    return {"out_sharding": logical, "eager_sharding": False}


def _linear(d_in, d_out, std, rngs, dtype, param_dtype, axes, bias_axis=None):
    return nnx.Linear(d_in, d_out, use_bias=bias_axis is not None, kernel_init=nnx.initializers.normal(std),
                      bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                      kernel_metadata=_axes(*axes), bias_metadata=_axes(bias_axis) if bias_axis else {})


def _layernorm(d, rngs, param_dtype):
    return nnx.LayerNorm(d, epsilon=1e-5, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs,
                         scale_metadata=_axes("residual"), bias_metadata=_axes("residual"))


def _attend(q_bshk, k_bchk, v_bchk, dtype, visible_bsc=None):
    """Softmax attention (scores and softmax in float32) of each query over the keys it may see:
    those at the slots `visible_bsc` marks, or by default the causal prefix of the call's own."""
    scores_bhsc = jnp.einsum("bshk,bchk->bhsc", q_bshk, k_bchk).astype(jnp.float32) / math.sqrt(q_bshk.shape[-1])
    if visible_bsc is None:
        s = q_bshk.shape[1]
        visible = jnp.tril(jnp.ones((s, s), dtype=bool))
    else:
        visible = visible_bsc[:, None]
    scores_bhsc = jnp.where(visible, scores_bhsc, jnp.finfo(jnp.float32).min)
    probs_bhsc = jax.nn.softmax(scores_bhsc, axis=-1).astype(dtype)
    return jnp.einsum("bhsc,bchk->bshk", probs_bhsc, v_bchk)


# Query and key block of the causal attention of a whole window (`_attend_causal`). 64 was the fastest
# of 16-128 at seq 128-512, head size 16-64, timed alone on one core (benchmarks/NOTES.md, "Blocked
# causal attention"); windows shorter than two blocks, or not a multiple of one, attend in one piece.
ATTENTION_BLOCK = 64


def _attend_causal(q_bshk, k_bshk, v_bshk, dtype, block: int = ATTENTION_BLOCK):
    """Causal softmax attention of a whole window from position 0, computed by query blocks: block i's
    queries meet only the keys of blocks 0..i, so the fully masked blocks above the diagonal are never
    computed (about half the work of the S x S scores at S >> block), and each block's scores stay
    small enough to keep in cache. Heads are made the major axis first, so every product is a plain
    batched matmul. The same visible scores and softmax as `_attend`; the sums run over fewer exact
    zeros, so results agree to float rounding, not bitwise. (The FLOP convention, scaling/flops.py,
    still counts the full S x S, as Hoffmann et al. 2022 do.)"""
    s = q_bshk.shape[1]
    if s < 2 * block or s % block:
        return _attend(q_bshk, k_bshk, v_bshk, dtype)
    root_k = math.sqrt(q_bshk.shape[-1])
    q_bhsk, k_bhsk, v_bhsk = (t.transpose(0, 2, 1, 3) for t in (q_bshk, k_bshk, v_bshk))
    diagonal = jnp.tril(jnp.ones((block, block), dtype=bool))
    outs = []
    for i in range(s // block):
        seen = (i + 1) * block  # keys of blocks 0..i
        scores = jnp.einsum("bhsk,bhck->bhsc", q_bhsk[:, :, i * block:seen], k_bhsk[:, :, :seen])
        visible = jnp.concatenate([jnp.ones((block, i * block), dtype=bool), diagonal], axis=1)
        scores = jnp.where(visible, scores.astype(jnp.float32) / root_k, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
        outs.append(jnp.einsum("bhsc,bhck->bhsk", probs, v_bhsk[:, :, :seen]))
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention: str = "xla"):
        d, f = cfg.d_model, cfg.d_ff
        resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.n_head, self.attention, self.dtype = cfg.n_head, attention, dtype
        self.ln1 = _layernorm(d, rngs, param_dtype)
        self.qkv = _linear(d, 3 * d, INIT_STD, rngs, dtype, param_dtype, ("embed", "qkv"), "qkv")
        self.proj = _linear(d, d, resid_std, rngs, dtype, param_dtype, ("heads", "embed"), "residual")
        self.ln2 = _layernorm(d, rngs, param_dtype)
        self.fc = _linear(d, f, INIT_STD, rngs, dtype, param_dtype, ("embed", "mlp"), "mlp")
        self.fc_proj = _linear(f, d, resid_std, rngs, dtype, param_dtype, ("mlp", "embed"), "residual")

    def __call__(self, x_td, b, s, cache: dict | None = None, positions_bs=None):
        """x_td: the residual stream as [T, D]. With a cache ({"k", "v"}: [B, C, H, K]) the tokens'
        keys and values are written at their positions and each query attends to the slots at or
        before its own position; returns (x_td, the updated cache or None)."""
        d = x_td.shape[-1]
        h = self.n_head
        qkv = self.qkv(self.ln1(x_td).astype(self.dtype))
        q_bshk, k_bshk, v_bshk = (t.reshape(b, s, h, d // h) for t in jnp.split(qkv, 3, axis=-1))
        if cache is not None:
            rows_b1 = jnp.arange(b)[:, None]
            cache = {"k": cache["k"].at[rows_b1, positions_bs].set(k_bshk.astype(cache["k"].dtype)),
                     "v": cache["v"].at[rows_b1, positions_bs].set(v_bshk.astype(cache["v"].dtype))}
            visible_bsc = jnp.arange(cache["k"].shape[1])[None, None, :] <= positions_bs[:, :, None]
            y_bshk = _attend(q_bshk, cache["k"].astype(self.dtype), cache["v"].astype(self.dtype), self.dtype,
                             visible_bsc)
        elif self.attention == "dot_product_attention":
            # cuDNN flash attention on GPUs that have it; XLA elsewhere.
            y_bshk = jax.nn.dot_product_attention(q_bshk, k_bshk, v_bshk, is_causal=True)
        else:
            y_bshk = _attend_causal(q_bshk, k_bshk, v_bshk, self.dtype)
        x_td = x_td + self.proj(y_bshk.reshape(b * s, d))
        x_td = x_td + self.fc_proj(jax.nn.gelu(self.fc(self.ln2(x_td).astype(self.dtype))))
        return x_td, cache


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, compute_dtype: str = "float32",
                 param_dtype: str = "float32", attention: str = "xla"):
        dtype, pdtype = jnp.dtype(compute_dtype), jnp.dtype(param_dtype)
        self.cfg, self.dtype = cfg, dtype
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(INIT_STD),
                             param_dtype=pdtype, rngs=rngs, embedding_metadata=_axes("vocab", "embed"))
        self.wpe = nnx.Embed(cfg.seq_len, cfg.d_model, embedding_init=nnx.initializers.normal(0.01),
                             param_dtype=pdtype, rngs=rngs, embedding_metadata=_axes("position", "embed"))
        self.blocks = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, param_dtype=pdtype, attention=attention)
                                for _ in range(cfg.n_layer)])
        self.ln_f = _layernorm(cfg.d_model, rngs, pdtype)
        self.lm_head = None if cfg.tie_embeddings else _linear(cfg.d_model, cfg.vocab_size, INIT_STD, rngs, dtype,
                                                               pdtype, ("embed", "vocab"))

    def __call__(self, tokens_bs, cache: KVCache | None = None, positions_bs=None):
        """Logits [B, S, V] (float32) of the next token after each of `tokens_bs`.

        Without a cache the tokens are a whole window from position 0 (training, evaluation).
        With one (`init_cache`), `positions_bs` says where each token sits; returns (logits, the
        cache with the tokens' keys and values). Rows may sit at different positions (ragged
        prompts); a slot is visible to a query once written, so slots past a row's position may
        hold anything."""
        if (cache is None) != (positions_bs is None):
            raise ValueError("a key-value cache and the tokens' positions go together")
        b, s = tokens_bs.shape
        tokens_bsd = self.wte(tokens_bs)
        positions_bsd = self.wpe(jnp.arange(s))[None] if cache is None else self.wpe(positions_bs)
        x_td = (tokens_bsd + positions_bsd).reshape(b * s, -1)
        layer_caches = [None] * len(self.blocks) if cache is None else cache
        new_cache = []
        for block, layer_cache in zip(self.blocks, layer_caches):
            x_td, layer_cache = block(x_td, b, s, layer_cache, positions_bs)
            new_cache.append(layer_cache)
        x_td = self.ln_f(x_td).astype(self.dtype)
        if self.lm_head is None:
            logits_tv = x_td @ self.wte.embedding[...].astype(self.dtype).T
        else:
            logits_tv = self.lm_head(x_td)
        logits_bsv = logits_tv.reshape(b, s, -1).astype(jnp.float32)
        return logits_bsv if cache is None else (logits_bsv, new_cache)

    def init_cache(self, batch: int, length: int | None = None) -> KVCache:
        """An empty cache of `length` positions (default seq_len) for `batch` rows."""
        shape = (batch, length or self.cfg.seq_len, self.cfg.n_head, self.cfg.head_dim)
        return [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)} for _ in self.blocks]


def abstract_model(cfg: ModelConfig, **numerics) -> tuple[nnx.GraphDef, nnx.State]:
    """The GPT's graph definition and parameter state of shapes only (no arrays made). `numerics`:
    GPT's compute_dtype, param_dtype, attention."""
    return nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0), **numerics)), nnx.Param)


def bind_params(graphdef: nnx.GraphDef, template: nnx.State, params: dict) -> GPT:
    """The module holding a flat parameter dict (`"blocks/0/qkv/kernel"`: array, as training keeps
    them); under jit it only rearranges the traced arrays."""
    state = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(params, sep="/"))
    return nnx.merge(graphdef, state)


def token_losses(logits_bsv, targets_bs, *, label_smoothing: float = 0.0, entropy_coef: float = 0.0):
    """Per-token (cross-entropy, objective, entropy), all float32, in nats.

    The objective is the label-smoothed cross-entropy (Szegedy et al. 2016) minus `entropy_coef` times
    the predictive entropy: a positive coefficient rewards entropy, the confidence penalty of
    Pereyra et al. 2017; a negative one sharpens. The reported loss is always the plain cross-entropy.
    """
    logp_bsv = jax.nn.log_softmax(logits_bsv.astype(jnp.float32), axis=-1)
    nll_bs = -jnp.take_along_axis(logp_bsv, targets_bs[..., None], axis=-1)[..., 0]
    entropy_bs = -jnp.sum(jnp.exp(logp_bsv) * logp_bsv, axis=-1)
    objective_bs = nll_bs
    # A coefficient may be a traced array (packed runs, scaling/training/pack.py): only a Python zero is skipped.
    if not _is_python_zero(label_smoothing):
        uniform_bs = -jnp.mean(logp_bsv, axis=-1)
        objective_bs = (1.0 - label_smoothing) * nll_bs + label_smoothing * uniform_bs
    if not _is_python_zero(entropy_coef):
        objective_bs = objective_bs - entropy_coef * entropy_bs
    return nll_bs, objective_bs, entropy_bs


def _is_python_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0
