"""A GPT-2 style pre-LN decoder in Flax NNX, and its loss.

Dimension letters used in names: B batch, S sequence, T tokens (B x S), D model, H heads, K head size,
F feed-forward, V vocabulary. Parameters live in `param_dtype` (float32); matmuls run in
`compute_dtype`; LayerNorm, softmax and the loss run in float32 (mixed-precision practice of
Micikevicius et al. 2018).

Between attentions the residual stream is kept as [T, D], so every dense layer and its gradients
are plain 2-D matmuls; with a [B, S, D] stream XLA:CPU computed the weight gradients through
transposed copies (benchmarks/NOTES.md, "Step speed": 12-14% less CPU time a step for the kaplan
sweep's models).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from scaling.config import ModelConfig

# GPT-2 initialisation (Radford et al. 2019; nanoGPT): N(0, 0.02), residual projections scaled by
# 1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth.
INIT_STD = 0.02


def _linear(d_in, d_out, std, rngs, dtype, param_dtype, bias=True):
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=nnx.initializers.normal(std),
                      bias_init=nnx.initializers.zeros_init(), dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def _layernorm(d, rngs, param_dtype):
    return nnx.LayerNorm(d, epsilon=1e-5, dtype=jnp.float32, param_dtype=param_dtype, rngs=rngs)


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, dtype, param_dtype, attention: str = "xla"):
        d, f = cfg.d_model, cfg.d_ff
        resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer)
        self.n_head, self.attention, self.dtype = cfg.n_head, attention, dtype
        self.ln1 = _layernorm(d, rngs, param_dtype)
        self.qkv = _linear(d, 3 * d, INIT_STD, rngs, dtype, param_dtype)
        self.proj = _linear(d, d, resid_std, rngs, dtype, param_dtype)
        self.ln2 = _layernorm(d, rngs, param_dtype)
        self.fc = _linear(d, f, INIT_STD, rngs, dtype, param_dtype)
        self.fc_proj = _linear(f, d, resid_std, rngs, dtype, param_dtype)

    def __call__(self, x_td, b, s):
        """x_td: the residual stream as [tokens, D] (tokens = b * s): the dense layers and their
        gradients are plain 2-D matmuls."""
        d = x_td.shape[-1]
        h = self.n_head
        qkv = self.qkv(self.ln1(x_td).astype(self.dtype))
        q_bshk, k_bshk, v_bshk = (t.reshape(b, s, h, d // h) for t in jnp.split(qkv, 3, axis=-1))
        if self.attention == "dot_product_attention":
            # cuDNN flash attention on GPUs that have it; XLA elsewhere.
            y_bshk = jax.nn.dot_product_attention(q_bshk, k_bshk, v_bshk, is_causal=True)
        else:
            scores_bhss = jnp.einsum("bqhk,bshk->bhqs", q_bshk, k_bshk).astype(jnp.float32) / math.sqrt(d // h)
            causal_ss = jnp.tril(jnp.ones((s, s), dtype=bool))
            scores_bhss = jnp.where(causal_ss, scores_bhss, jnp.finfo(jnp.float32).min)
            probs_bhss = jax.nn.softmax(scores_bhss, axis=-1).astype(self.dtype)
            y_bshk = jnp.einsum("bhqs,bshk->bqhk", probs_bhss, v_bshk)
        x_td = x_td + self.proj(y_bshk.reshape(b * s, d))
        x_td = x_td + self.fc_proj(jax.nn.gelu(self.fc(self.ln2(x_td).astype(self.dtype))))
        return x_td


class GPT(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, compute_dtype: str = "float32",
                 param_dtype: str = "float32", attention: str = "xla"):
        dtype, pdtype = jnp.dtype(compute_dtype), jnp.dtype(param_dtype)
        self.cfg, self.dtype = cfg, dtype
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nnx.initializers.normal(INIT_STD),
                             param_dtype=pdtype, rngs=rngs)
        self.wpe = nnx.Embed(cfg.seq_len, cfg.d_model, embedding_init=nnx.initializers.normal(0.01),
                             param_dtype=pdtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs, dtype=dtype, param_dtype=pdtype, attention=attention)
                                for _ in range(cfg.n_layer)])
        self.ln_f = _layernorm(cfg.d_model, rngs, pdtype)
        self.lm_head = None if cfg.tie_embeddings else _linear(cfg.d_model, cfg.vocab_size, INIT_STD, rngs, dtype,
                                                               pdtype, bias=False)

    def __call__(self, tokens_bs):
        b, s = tokens_bs.shape
        x_td = (self.wte(tokens_bs) + self.wpe(jnp.arange(s))[None]).reshape(b * s, -1)
        for block in self.blocks:
            x_td = block(x_td, b, s)
        x_td = self.ln_f(x_td).astype(self.dtype)
        if self.lm_head is None:
            logits_tv = x_td @ self.wte.embedding[...].astype(self.dtype).T
        else:
            logits_tv = self.lm_head(x_td)
        return logits_tv.reshape(b, s, -1).astype(jnp.float32)


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
