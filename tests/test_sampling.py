"""KV-cache decoding equals full recompute; the strategies do what they say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scaling.science import sampling
from scaling.config import ModelConfig, SamplingConfig
from scaling.model import GPT
from scaling.training.step import _flatten, _unflatten

CFG = ModelConfig(n_layer=2, d_model=32, n_head=4, d_ff=64, vocab_size=256, seq_len=24)


@pytest.fixture(scope="module")
def model_and_params():
    model = GPT(CFG, rngs=nnx.Rngs(3))
    # Larger weights than the initialisation, so the logits are far from uniform and differences show.
    params = {k: v * 8 if v.ndim == 2 else v for k, v in _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, _unflatten(params))
    nnx.update(model, state)
    return model, params


def test_a_prefill_of_the_whole_window_equals_the_training_pass(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(0), (3, CFG.seq_len), 0, 256)
    logits, _ = sampling.prefill(sampling.binder(CFG, "float32")(params), tokens)
    np.testing.assert_allclose(logits, model(tokens), atol=2e-4, rtol=1e-4)


def test_kv_cache_logits_equal_full_recompute(model_and_params):
    model, _ = model_and_params
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (2, 20), 0, 256))
    prompt = 7
    step = nnx.jit(lambda gpt, tokens_bs, cache, positions_bs: gpt(tokens_bs, cache, positions_bs))
    positions = np.broadcast_to(np.arange(prompt), (2, prompt))
    logits, cache = step(model, tokens[:, :prompt], model.init_cache(2), positions)
    incremental = [logits]
    for pos in range(prompt, 20):  # one token per step, the rest read from the cache
        logits, cache = step(model, tokens[:, pos:pos + 1], cache, np.full((2, 1), pos))
        incremental.append(logits)
    full = model(jnp.asarray(tokens))
    np.testing.assert_allclose(jnp.concatenate(incremental, axis=1), full, atol=2e-4, rtol=1e-4)


def test_a_cache_without_positions_is_refused(model_and_params):
    model, _ = model_and_params
    with pytest.raises(ValueError, match="go together"):
        model(jnp.zeros((1, 4), jnp.int32), model.init_cache(1))


def test_greedy_generation_matches_argmax_of_full_recompute_with_ragged_prompts(model_and_params):
    model, params = model_and_params
    prompts = np.zeros((2, 6), np.int32)
    prompts[0, :6] = [5, 9, 200, 31, 7, 8]
    prompts[1, :3] = [40, 41, 42]  # right-padded
    prompt_len = np.array([6, 3], np.int32)
    tokens, logps = sampling.make_generate(CFG, 5, "greedy")(params, prompts, prompt_len, jax.random.key(0))
    full = nnx.jit(lambda m, t: m(t))  # causal: padding after the last real token changes nothing
    for row in range(2):
        seq = list(prompts[row, :prompt_len[row]])
        for i in range(5):
            padded = np.zeros((1, 11), np.int32)
            padded[0, :len(seq)] = seq
            logits = np.asarray(full(model, jnp.asarray(padded)))[0, len(seq) - 1]
            assert tokens[row, i] == logits.argmax()
            np.testing.assert_allclose(logps[row, i], jax.nn.log_softmax(logits)[logits.argmax()], atol=1e-4)
            seq.append(int(logits.argmax()))


def test_top_k_and_top_p_truncate():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.split(jax.random.key(0), 1)[0]
    top2 = np.asarray(sampling._choose("top_k", logits, keys, temperature=1.0, top_k=2, top_p=1.0))
    assert set(top2) == {0, 1}
    assert abs((top2 == 0).mean() - 0.5 / 0.8) < 0.05
    # Nucleus 0.7: {0.5, 0.3} reaches it (the token crossing the threshold is kept).
    nucleus = np.asarray(sampling._choose("top_p", logits, keys, temperature=1.0, top_k=0, top_p=0.7))
    assert set(nucleus) == {0, 1}
    nucleus = np.asarray(sampling._choose("top_p", logits, keys, temperature=1.0, top_k=0, top_p=0.85))
    assert set(nucleus) == {0, 1, 2}
    cold = np.asarray(sampling._choose("temperature", logits, keys, temperature=0.05, top_k=0, top_p=0))
    assert (cold == 0).mean() > 0.99


def test_beam_search_finds_at_least_the_greedy_likelihood(model_and_params):
    _, params = model_and_params
    prompts = np.asarray(jax.random.randint(jax.random.key(2), (3, 5), 0, 256), dtype=np.int32)
    lens = np.full(3, 5, np.int32)
    _, greedy = sampling.make_generate(CFG, 6, "greedy")(params, prompts, lens, jax.random.key(0))
    beam_tokens, beam = sampling.make_beam_search(CFG, 6, 4)(params, prompts, lens)
    assert np.all(np.asarray(beam).sum(1) >= np.asarray(greedy).sum(1) - 1e-4)
    # Width 1 is greedy.
    _, one = sampling.make_beam_search(CFG, 6, 1)(params, prompts, lens)
    np.testing.assert_allclose(one, greedy, atol=1e-5)


def test_sample_all_records_every_strategy():
    small = ModelConfig(n_layer=1, d_model=16, n_head=2, d_ff=32, vocab_size=256, seq_len=16)
    params = _flatten(nnx.to_pure_dict(nnx.state(GPT(small, rngs=nnx.Rngs(0)), nnx.Param)))
    windows = np.asarray(jax.random.randint(jax.random.key(4), (4, small.seq_len + 1), 32, 127))
    s = SamplingConfig(prompts=3, prompt_tokens=8, new_tokens=8, beam=2)
    columns, texts = sampling.sample_all(params, small, windows, s)
    assert set(texts) == set(sampling.STRATEGIES)
    for strategy in sampling.STRATEGIES:
        assert 0 < columns[f"sample/{strategy}/distinct_1"] <= 1
        assert columns[f"sample/{strategy}/logprob"] < 0
        assert texts[strategy][1].shape == (3, 8)
    text = sampling.render(texts, s, as_bytes=True)
    assert text.count("=== prompt") == 3 and text.count("--- beam") == 3
