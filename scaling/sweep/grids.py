"""The grids of a sweep file: model shapes (explicit, or target parameter counts through the shape
rule) crossed with token counts (Kaplan) or compute budgets (IsoFLOP)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from scaling.config import (
    ConfigError, ModelConfig,
)
from scaling.flops import param_counts, training_flops_per_token
from scaling.sweep.table import Table, int_list, float_list, unique


@dataclass(frozen=True)
class ShapeRule:
    head_dim: int
    ffn_ratio: float
    aspect_ratio: float
    vocab_size: int
    seq_len: int
    tie_embeddings: bool

    def explicit(self, t: Table) -> ModelConfig:
        n_layer = t.int("n_layer", min=1)
        d_model = t.int("d_model", min=1)
        n_head = t.int("n_head", max(1, d_model // self.head_dim), min=1)
        if d_model % n_head:
            raise t.error("n_head", f"{n_head} does not divide d_model={d_model} (expected a divisor of d_model)")
        d_ff = t.int("d_ff", int(round(self.ffn_ratio * d_model)), min=1)
        t.finish()
        return self.make(n_layer, d_model, n_head, d_ff)

    def make(self, n_layer, d_model, n_head=None, d_ff=None) -> ModelConfig:
        return ModelConfig(n_layer=n_layer, d_model=d_model, n_head=n_head or d_model // self.head_dim,
                           d_ff=d_ff or int(round(self.ffn_ratio * d_model)), vocab_size=self.vocab_size,
                           seq_len=self.seq_len, tie_embeddings=self.tie_embeddings)

    def from_target(self, target: int) -> ModelConfig:
        """The shape with about `target` non-embedding parameters: for each depth, the width (a multiple
        of head_dim) whose count is nearest in log; of those, the depth whose d_model/n_layer is nearest
        the aspect ratio (Kaplan et al. 2020 Sec. 3.1: loss depends weakly on shape at fixed N)."""
        best = None
        for n_layer in range(1, 129):
            widths = [self.make(n_layer, self.head_dim * k) for k in range(1, 257)]
            m = min(widths, key=lambda c: abs(math.log(self._nonembed(c) / target)))
            size_err = abs(math.log(self._nonembed(m) / target))
            if size_err > math.log(1.25):
                continue
            score = abs(math.log(m.d_model / m.n_layer / self.aspect_ratio))
            if best is None or score < best[0]:
                best = (score, m)
        if best is None:
            raise ValueError(f"no shape with head_dim={self.head_dim} within 25% of {target} parameters")
        return best[1]

    @staticmethod
    def _nonembed(m: ModelConfig) -> int:
        return param_counts(**dataclasses.asdict(m)).n_params_nonembed


def read_models(t: Table, rule: ShapeRule) -> list[ModelConfig]:
    if ("models" in t.data) == ("n_params" in t.data):
        raise ConfigError(t.file, t.key("models"), "give exactly one of `models` (shapes) or `n_params` (targets)")
    if "models" in t.data:
        key = "models"
        out = [rule.explicit(Table(t.file, t.key(f"models[{i}]"), m)) for i, m in enumerate(t.list("models"))]
    else:
        key, out = "n_params", []
        for i, target in enumerate(int_list(t, "n_params")):
            try:
                out.append(rule.from_target(target))
            except ValueError as e:
                raise t.error(f"n_params[{i}]", str(e)) from None
    # Two entries of one shape (written twice, or with its defaults spelled out, or two targets that
    # the shape rule resolves alike) would be one run: say so rather than merge them.
    unique(t, key, out, show=lambda m: f"the shape n_layer={m.n_layer}, d_model={m.d_model}, n_head={m.n_head}, "
            f"d_ff={m.d_ff}")
    return out


def kaplan_grid(t: Table, rule: ShapeRule):
    models = read_models(t, rule)
    tokens = int_list(t, "tokens")
    unique(t, "tokens", tokens, show=lambda v: f"{v:,} tokens")
    t.finish()
    return [("kaplan", m, d, None) for m in models for d in tokens]


def isoflop_grid(t: Table, rule: ShapeRule, batch_tokens: int):
    """For each budget C and model size N: D = C / (exact training FLOPs per token), rounded to whole
    steps. Sizes outside the tokens-per-parameter window or under min_steps are left out of that budget."""
    budgets = float_list(t, "budgets")
    unique(t, "budgets", budgets, show=lambda v: f"{v:.4g} FLOPs")
    models = read_models(t, rule)
    min_steps = t.int("min_steps", 20, min=1)
    window = t.raw("tokens_per_param", [1.0, 1e4])
    numbers = isinstance(window, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in window)
    if not numbers or len(window) != 2 or not 0 < window[0] < window[1]:
        raise t.error("tokens_per_param", f"expected [low, high] with 0 < low < high, got {window!r}")
    t.finish()
    out = []
    for i, c in enumerate(budgets):
        fitting = []
        for m in models:
            steps = int(c / training_flops_per_token(**dataclasses.asdict(m)) // batch_tokens)
            n = param_counts(**dataclasses.asdict(m)).n_params_nonembed
            fits = steps >= min_steps and window[0] <= steps * batch_tokens / n <= window[1]
            if fits and all(m != other for other, _ in fitting):
                fitting.append((m, steps * batch_tokens))
        if len(fitting) < 3:
            smallest = min(models, key=lambda m: training_flops_per_token(**dataclasses.asdict(m)))
            need = min_steps * batch_tokens * training_flops_per_token(**dataclasses.asdict(smallest))
            raise t.error(f"budgets[{i}]", f"budget {c:.3g} FLOPs fits only {len(fitting)} distinct model size(s) "
                          f"(need >= 3 for an IsoFLOP profile; the smallest model needs >= {need:.3g} FLOPs for "
                          f"{min_steps} steps within tokens_per_param {window})")
        out += [("isoflop", m, d, c) for m, d in fitting]
    return out


