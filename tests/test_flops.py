"""Parameter and FLOP counts checked against arithmetic done by hand, and against a parameter tree."""

from dataclasses import asdict, dataclass

import numpy as np
import pytest

from scaling.flops import (
    FLOPS_CONVENTION,
    ParamCounts,
    flops_6nd,
    forward_flops_per_sequence,
    param_counts,
    training_flops,
    training_flops_per_token,
)

# Config A: L=2, D=8, H=2, F=32, V=16, S=4.
SHAPE_A = dict(n_layer=2, d_model=8, n_head=2, d_ff=32, vocab_size=16, seq_len=4)
# Config B: L=3, D=12, H=3, F=20, V=10, S=6 (F not 4D, V < D: no symmetry to hide a swap).
SHAPE_B = dict(n_layer=3, d_model=12, n_head=3, d_ff=20, vocab_size=10, seq_len=6)


def test_param_counts_by_hand_config_a_tied_and_untied():
    # One block: ln1 2*8 = 16; qkv 8*24 + 24 = 216; out 8*8 + 8 = 72; ln2 16;
    # fc 8*32 + 32 = 288; proj 32*8 + 8 = 264; total 16 + 216 + 72 + 16 + 288 + 264 = 872.
    # Non-embedding: 2 blocks * 872 + ln_f 16 = 1760.
    # Embedding: wte 16*8 = 128 + wpe 4*8 = 32 = 160; untied adds lm_head 8*16 = 128 -> 288.
    assert param_counts(**SHAPE_A, tie_embeddings=True) == ParamCounts(
        n_params=1920, n_params_nonembed=1760, n_params_embed=160
    )
    assert param_counts(**SHAPE_A, tie_embeddings=False) == ParamCounts(
        n_params=2048, n_params_nonembed=1760, n_params_embed=288
    )


def test_param_counts_by_hand_config_b_untied():
    # One block: ln1 24; qkv 12*36 + 36 = 468; out 12*12 + 12 = 156; ln2 24;
    # fc 12*20 + 20 = 260; proj 20*12 + 12 = 252; total 1184.
    # Non-embedding: 3 * 1184 + ln_f 24 = 3576.
    # Embedding: wte 10*12 = 120 + wpe 6*12 = 72 + lm_head 12*10 = 120 = 312.
    assert param_counts(**SHAPE_B, tie_embeddings=False) == ParamCounts(
        n_params=3888, n_params_nonembed=3576, n_params_embed=312
    )


def test_forward_flops_by_hand_config_a():
    # Per layer: qkv 2*4*8*24 = 1536; scores QK^T 2*4*4*8 = 256 (full 4x4, no causal halving);
    # values 2*4*4*8 = 256; out 2*4*8*8 = 512; MLP 2*4*8*32*2 = 4096; sum 6656.
    # 2 layers = 13312; logits 2*4*8*16 = 1024; total 14336.
    assert forward_flops_per_sequence(**SHAPE_A) == 14336
    # Training: 3 * 14336 / 4 tokens = 10752 per token.
    assert training_flops_per_token(**SHAPE_A) == 10752.0


def test_forward_flops_by_hand_config_b():
    # Per layer: qkv 2*6*12*36 = 5184; scores 2*6*6*12 = 864; values 864; out 2*6*12*12 = 1728;
    # MLP 2*6*12*20*2 = 5760; sum 14400. 3 layers = 43200; logits 2*6*12*10 = 1440; total 44640.
    assert forward_flops_per_sequence(**SHAPE_B) == 44640
    # Training: 3 * 44640 / 6 = 22320 per token.
    assert training_flops_per_token(**SHAPE_B) == 22320.0


@pytest.mark.parametrize("shape", [SHAPE_A, SHAPE_B])
def test_training_is_three_forwards(shape):
    forward = forward_flops_per_sequence(**shape)
    sequences = 7
    tokens = sequences * shape["seq_len"]
    assert training_flops(tokens, **shape) == 3 * forward * sequences
    assert isinstance(training_flops(tokens, **shape), float)
    assert training_flops_per_token(**shape) * shape["seq_len"] == 3 * forward


def test_flops_6nd():
    assert flops_6nd(1760, 1000) == 6 * 1760 * 1000 == 10_560_000
    assert isinstance(flops_6nd(1760, 1000), float)
    # Large runs: exact integer product, rounded once to float64.
    assert flops_6nd(10**9, 2 * 10**10) == 1.2e20


def test_tied_embeddings_change_params_not_flops():
    assert forward_flops_per_sequence(**SHAPE_A, tie_embeddings=True) == forward_flops_per_sequence(
        **SHAPE_A, tie_embeddings=False
    )


def test_n_head_does_not_change_flops():
    assert forward_flops_per_sequence(**{**SHAPE_A, "n_head": 1}) == forward_flops_per_sequence(
        **{**SHAPE_A, "n_head": 8}
    )


def test_nonembed_is_kaplan_12LD2_plus_biases_and_norms():
    # Kaplan et al. 2020: N ~ 12 L D^2 for F = 4D. The exact count adds, per block, 9D of biases
    # and LayerNorms (qkv 3D, out D, fc F, proj D, 2 LayerNorms 4D) plus F, and ln_f's 2D.
    L, D = 6, 64
    counts = param_counts(
        n_layer=L, d_model=D, n_head=4, d_ff=4 * D, vocab_size=256, seq_len=128,
        tie_embeddings=True,
    )
    assert counts.n_params_nonembed == 12 * L * D**2 + L * (9 * D + 4 * D) + 2 * D


def _numpy_parameter_tree(*, n_layer, d_model, n_head, d_ff, vocab_size, seq_len, tie_embeddings):
    """The model's parameters as plain arrays, written from the architecture, not the formula."""
    D, F, V, S = d_model, d_ff, vocab_size, seq_len
    del n_head  # heads split D; they add no parameters
    tree = {"wte": np.zeros((V, D)), "wpe": np.zeros((S, D))}
    for i in range(n_layer):
        tree[f"block{i}"] = {
            "ln1": {"scale": np.ones(D), "bias": np.zeros(D)},
            "attn": {
                "qkv": {"kernel": np.zeros((D, 3 * D)), "bias": np.zeros(3 * D)},
                "out": {"kernel": np.zeros((D, D)), "bias": np.zeros(D)},
            },
            "ln2": {"scale": np.ones(D), "bias": np.zeros(D)},
            "mlp": {
                "fc": {"kernel": np.zeros((D, F)), "bias": np.zeros(F)},
                "proj": {"kernel": np.zeros((F, D)), "bias": np.zeros(D)},
            },
        }
    tree["ln_f"] = {"scale": np.ones(D), "bias": np.zeros(D)}
    if not tie_embeddings:
        tree["lm_head"] = np.zeros((D, V))
    return tree


def _count(tree) -> int:
    if isinstance(tree, dict):
        return sum(_count(value) for value in tree.values())
    return tree.size


@pytest.mark.parametrize(
    "shape",
    [
        {**SHAPE_A, "tie_embeddings": True},
        {**SHAPE_A, "tie_embeddings": False},
        {**SHAPE_B, "tie_embeddings": False},
        dict(n_layer=4, d_model=96, n_head=6, d_ff=384, vocab_size=259, seq_len=64,
             tie_embeddings=True),
    ],
)
def test_param_counts_match_a_counted_parameter_tree(shape):
    tree = _numpy_parameter_tree(**shape)
    embed_keys = ["wte", "wpe"] + ([] if shape["tie_embeddings"] else ["lm_head"])
    n_embed = sum(tree[key].size for key in embed_keys)
    counts = param_counts(**shape)
    assert counts.n_params == _count(tree)
    assert counts.n_params_embed == n_embed
    assert counts.n_params_nonembed == _count(tree) - n_embed


def test_accepts_a_model_config_as_keywords():
    @dataclass(frozen=True)
    class ModelConfig:  # the fields of scaling.model's config
        n_layer: int = 2
        d_model: int = 8
        n_head: int = 2
        d_ff: int = 32
        vocab_size: int = 16
        seq_len: int = 4
        tie_embeddings: bool = True

    config = asdict(ModelConfig())
    assert param_counts(**config).n_params == 1920
    assert forward_flops_per_sequence(**config) == 14336
    assert training_flops(8, **config) == 2 * 3 * 14336


def test_unknown_shape_key_is_an_error():
    # A new architecture option must be counted on purpose, not silently ignored.
    with pytest.raises(TypeError, match="n_kv_head"):
        forward_flops_per_sequence(**SHAPE_A, n_kv_head=1)


def test_invalid_shapes_are_errors():
    with pytest.raises(ValueError, match="n_head"):
        forward_flops_per_sequence(**{**SHAPE_A, "n_head": 3})
    with pytest.raises(ValueError, match="n_layer"):
        param_counts(**{**SHAPE_A, "n_layer": 0}, tie_embeddings=True)
    with pytest.raises(ValueError, match="whole number"):
        training_flops(1.5, **SHAPE_A)


def test_token_counts_written_as_toml_floats():
    assert training_flops(1e6, **SHAPE_A) == 1e6 * 10752
    assert flops_6nd(1760, 1e6) == 6 * 1760 * 1e6


def test_convention_is_named():
    assert FLOPS_CONVENTION == "matmul-3x-fullattn"
