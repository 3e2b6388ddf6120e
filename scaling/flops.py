"""Parameter and FLOP counts of the GPT in `scaling.model`, by hand, for the records.

Legend (the model file uses the same letters): V vocab_size, S seq_len, D d_model, L n_layer,
H n_head, F d_ff.

The model is a GPT-2-style pre-LN decoder: token embedding wte [V, D], learned positions wpe [S, D];
L blocks of (ln1, qkv D->3D with bias, out projection D->D with bias, ln2, fc D->F with bias, GELU,
proj F->D with bias); a final ln_f; logits through the tied wte^T or an untied lm_head [D, V] (no bias).

Two compute figures go into every record:

- `flops`: this module's exact count (`FLOPS_CONVENTION`, rules below), attention and the output
  layer included: what the hardware is asked to multiply, the numerator of MFU.
- `flops_6nd`: Kaplan et al. 2020's C = 6ND with N = n_params_nonembed, the figure scaling-law
  papers fit against.

All shape arguments are keyword-only and named as in the model config, so callers pass
`**dataclasses.asdict(model_config)`. `tie_embeddings` is accepted by the FLOP functions and ignored
there (tied or not, the logits are the same [S, D] x [D, V] matmul); any other key is a TypeError,
on purpose: a new config field that changes the architecture must be counted here, not skipped.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

# Rules of the exact count, named in the records' `flops_convention` column.
FLOPS_CONVENTION = "matmul-3x-fullattn"

# Training = forward + backward, the backward pass costing two forwards (gradients with respect to
# the activations and to the weights, one matmul each per forward matmul):
# Kaplan et al. 2020 Sec. 2.1; Hoffmann et al. 2022 Appendix F.
TRAINING_TO_FORWARD = 3


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of one model shape.

    n_params: every trainable parameter.
    n_params_embed: the vocabulary and position matrices: wte [V, D] + wpe [S, D], plus lm_head
        [D, V] when the output layer is untied (it is a vocabulary matrix too).
    n_params_nonembed: n_params - n_params_embed; Kaplan et al. 2020's N, which excludes vocabulary
        and position embeddings. Kaplan approximate it as 12 * L * D^2 (with F = 4D); this count is
        exact: it includes every bias and LayerNorm, and the final ln_f.
    """

    n_params: int
    n_params_nonembed: int
    n_params_embed: int


def _shape(*, n_layer: int, d_model: int, n_head: int, d_ff: int, vocab_size: int, seq_len: int,
           tie_embeddings: bool = True) -> dict[str, int]:
    """The model shape that every count here takes (as keywords: `**dataclasses.asdict(ModelConfig)`),
    checked: positive integers, and n_head dividing d_model."""
    sizes = dict(n_layer=n_layer, d_model=d_model, n_head=n_head, d_ff=d_ff, vocab_size=vocab_size, seq_len=seq_len)
    checked = {}
    for name, value in sizes.items():
        if isinstance(value, bool):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        value = operator.index(value)
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        checked[name] = value
    if checked["d_model"] % checked["n_head"]:
        raise ValueError(
            f"n_head ({checked['n_head']}) must divide d_model ({checked['d_model']})"
        )
    return {**checked, "tie_embeddings": bool(tie_embeddings)}


def param_counts(**shape) -> ParamCounts:
    """Exact parameter counts of the model described in the module docstring (`shape`: see `_shape`)."""
    s = _shape(**shape)
    tie_embeddings = s["tie_embeddings"]
    L, D, F, V, S = s["n_layer"], s["d_model"], s["d_ff"], s["vocab_size"], s["seq_len"]

    layer_norm = 2 * D  # scale and bias
    attention = (D * 3 * D + 3 * D) + (D * D + D)  # qkv and out projection, weights and biases
    mlp = (D * F + F) + (F * D + D)  # fc and proj, weights and biases
    block = 2 * layer_norm + attention + mlp

    n_params_embed = V * D + S * D + (0 if tie_embeddings else D * V)
    n_params_nonembed = L * block + layer_norm  # + ln_f
    return ParamCounts(
        n_params=n_params_embed + n_params_nonembed,
        n_params_nonembed=n_params_nonembed,
        n_params_embed=n_params_embed,
    )


def forward_flops_per_sequence(**shape) -> int:
    """Matmul FLOPs of one forward pass over one sequence of `seq_len` tokens.

    Counts 2 FLOPs per multiply-add, every matmul of the model and nothing else. Left out, because
    they are elementwise (O(S*D) or O(S*S*H) per layer, not O(S*D^2)) and not what MFU measures:
    softmax, masking, LayerNorm, GELU, bias adds, residual adds, the embedding lookups (gathers, no
    multiplies), the loss, and the optimizer update. `n_head` does not enter: the heads split D,
    so H heads of size D/H multiply as much as one head of size D. `tie_embeddings` does not enter
    either: tied or not, the logits are one [S, D] x [D, V] matmul.
    """
    s = _shape(**shape)
    L, D, F, V, S = s["n_layer"], s["d_model"], s["d_ff"], s["vocab_size"], s["seq_len"]

    qkv = 2 * S * D * (3 * D)
    # Scores Q K^T and the weighted sum of values, each over the full S x S matrix: no halving for
    # the causal mask, because XLA computes the full matrix and masks it. Same accounting as
    # Hoffmann et al. 2022 Appendix F and PaLM (Chowdhery et al. 2022, App. B: 6N + 12LHQT).
    # A causal flash kernel (jax.nn.dot_product_attention on cuDNN) skips about half of these;
    # the count stays the same, so MFU compares across attention implementations.
    attention_scores = 2 * S * S * D
    attention_values = 2 * S * S * D
    out_projection = 2 * S * D * D
    mlp = 2 * S * D * F * 2  # fc D->F and proj F->D
    per_layer = qkv + attention_scores + attention_values + out_projection + mlp
    logits = 2 * S * D * V  # the unembedding, counted as in Hoffmann et al. 2022 Appendix F
    return L * per_layer + logits


def training_flops_per_token(**shape) -> float:
    """Training FLOPs per token of a model of `shape` (the keywords of `forward_flops_per_sequence`):
    3 x forward (see TRAINING_TO_FORWARD) / seq_len."""
    return float(_training_flops_per_token(**shape))


def training_flops(tokens: int, **shape) -> float:
    """Training FLOPs of `tokens` tokens of a model of `shape` (the keywords of
    `forward_flops_per_sequence`), float64; exact integer arithmetic up to the rounding."""
    return float(_training_flops_per_token(**shape) * _check_tokens(tokens))


def _training_flops_per_token(**shape) -> int:
    # Every term of the forward count carries a factor S, so the division is exact.
    return TRAINING_TO_FORWARD * forward_flops_per_sequence(**shape) // shape["seq_len"]


def flops_6nd(n_params_nonembed: int, tokens: int) -> float:
    """Kaplan et al. 2020 (Sec. 2.1) training compute C = 6 N D, N = non-embedding parameters.

    It leaves out attention over the context and the output layer, which `training_flops` counts;
    the ratio between the two grows as models get smaller relative to S and V.
    """
    tokens = _check_tokens(tokens)
    return float(6 * operator.index(n_params_nonembed) * tokens)


def _check_tokens(tokens: int | float) -> int:
    # TOML writes 1e6 as a float; accept integral floats, refuse 1.5 tokens.
    if isinstance(tokens, float):
        if not tokens.is_integer():
            raise ValueError(f"tokens must be a whole number, got {tokens!r}")
        tokens = int(tokens)
    tokens = operator.index(tokens)
    if tokens < 0:
        raise ValueError(f"tokens must be >= 0, got {tokens}")
    return tokens
