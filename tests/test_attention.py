"""The blocked causal attention of a whole window (scaling/model.py, `_attend_causal`) computes what the
one-piece masked softmax does, values and gradients, and the model's passes agree with each other."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.config import ModelConfig
from scaling.model import ATTENTION_BLOCK, GPT, _attend, _attend_causal


def _qkvg(b, s, h, k, seed=0):
    key = jax.random.key(seed)
    return [jax.random.normal(jax.random.fold_in(key, i), (b, s, h, k)) for i in range(4)]


def _value_and_grads(attend, q, k, v, g):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v, jnp.float32) * g)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize("shape", [(2, 2 * ATTENTION_BLOCK, 4, 16), (1, 4 * ATTENTION_BLOCK, 2, 64),
                                   (2, 3 * ATTENTION_BLOCK, 3, 8)])
def test_blocked_causal_attention_equals_the_masked_softmax(shape):
    q, k, v, g = _qkvg(*shape)
    np.testing.assert_allclose(_attend_causal(q, k, v, jnp.float32), _attend(q, k, v, jnp.float32), atol=2e-6)
    (value, grads), (ref_value, ref_grads) = (_value_and_grads(f, q, k, v, g) for f in (_attend_causal, _attend))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Causal: the first block's outputs do not move when later positions change.
    v2 = v.at[:, ATTENTION_BLOCK:].add(1.0)
    np.testing.assert_array_equal(_attend_causal(q, k, v2, jnp.float32)[:, :ATTENTION_BLOCK],
                                  _attend_causal(q, k, v, jnp.float32)[:, :ATTENTION_BLOCK])


@pytest.mark.parametrize("s", [ATTENTION_BLOCK, ATTENTION_BLOCK + 36, 32])
def test_windows_too_short_or_ragged_for_blocks_attend_in_one_piece(s):
    # The kaplan sweeps' seq 64 is one block: the arithmetic, and so the shipped losses, are unchanged.
    q, k, v, _ = _qkvg(2, s, 2, 8)
    np.testing.assert_array_equal(_attend_causal(q, k, v, jnp.float32), _attend(q, k, v, jnp.float32))


def test_the_training_pass_at_a_blocked_length_equals_kv_cache_decoding():
    from scaling.science import sampling
    from scaling.training.step import _flatten

    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, vocab_size=256, seq_len=2 * ATTENTION_BLOCK)
    model = GPT(cfg, rngs=nnx.Rngs(1))
    params = _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    tokens = jax.random.randint(jax.random.key(0), (2, cfg.seq_len), 0, 256)
    logits, _ = sampling.prefill(sampling.binder(cfg, "float32")(params), tokens)  # the cache path: one piece
    np.testing.assert_allclose(model(tokens), logits, atol=2e-5, rtol=1e-5)
