"""The grids of a sweep file: model shapes (explicit, or target parameter counts through the shape
rule) crossed with token counts (Kaplan) or compute budgets (IsoFLOP)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from scaling.config import ConfigError, ModelConfig
from scaling.config_checks import check, field_default, integer, number
from scaling.flops import param_counts, training_flops_per_token
from scaling.sweep.table import Table, int_list, float_list, unique

BYTE_VOCAB = 256  # the bytes tokenizer (every source but "tokens")


@dataclass(frozen=True)
class ShapeRule:
    """How a sweep's models are made: the settings of [model] and, from [data], the vocabulary and
    sequence length that every model shares. The defaults are the sweep file's."""

    head_dim: int = 32
    ffn_ratio: float = 4.0
    aspect_ratio: float = 32.0
    vocab_size: int = BYTE_VOCAB
    seq_len: int = 128
    tie_embeddings: bool = field_default(ModelConfig, "tie_embeddings")

    def __post_init__(self):
        check(self, head_dim=integer(ge=1), ffn_ratio=number(gt=0), aspect_ratio=number(gt=0))
        # The rest are every model's own settings, under the same names: ModelConfig checks them.
        ModelConfig(n_layer=1, d_model=1, n_head=1, d_ff=1, vocab_size=self.vocab_size, seq_len=self.seq_len,
                    tie_embeddings=self.tie_embeddings)

    def explicit(self, table: Table) -> ModelConfig:
        """A `models` entry; n_head and d_ff default to d_model / head_dim and ffn_ratio x d_model."""
        shape = table.values(ModelConfig, ("n_layer", "d_model", "n_head", "d_ff"))
        table.finish()
        width = shape.values.get("d_model")
        # A d_model that is no integer gets stand-ins: ModelConfig refuses d_model before it reads them.
        width = width if isinstance(width, int) else 0
        defaults = dict(n_head=max(1, width // self.head_dim), d_ff=int(round(self.ffn_ratio * width)))
        return shape.build(ModelConfig, **{k: v for k, v in defaults.items() if k not in shape.values},
                           vocab_size=self.vocab_size, seq_len=self.seq_len, tie_embeddings=self.tie_embeddings)

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
            widths = [self.head_dim * k for k in range(1, 257)]
            d_model = min(widths, key=lambda d: abs(math.log(self._nonembed(n_layer, d) / target)))
            size_err = abs(math.log(self._nonembed(n_layer, d_model) / target))
            if size_err > math.log(1.25):
                continue
            score = abs(math.log(d_model / n_layer / self.aspect_ratio))
            if best is None or score < best[0]:
                best = (score, n_layer, d_model)
        if best is None:
            raise ValueError(f"no shape with head_dim={self.head_dim} within 25% of {target} parameters")
        return self.make(best[1], best[2])

    def _nonembed(self, n_layer: int, d_model: int) -> int:
        """The count of `make(n_layer, d_model)`, without making (and checking) 30,000 candidates."""
        return param_counts(n_layer=n_layer, d_model=d_model, n_head=d_model // self.head_dim,
                            d_ff=int(round(self.ffn_ratio * d_model)), vocab_size=self.vocab_size,
                            seq_len=self.seq_len, tie_embeddings=self.tie_embeddings).n_params_nonembed


def read_models(table: Table, rule: ShapeRule) -> list[ModelConfig]:
    if ("models" in table.data) == ("n_params" in table.data):
        raise ConfigError(table.file, table.key("models"), "give exactly one of `models` (shapes) or `n_params` "
                          "(targets)")
    if "models" in table.data:
        key = "models"
        out = [rule.explicit(Table(table.file, table.key(f"models[{i}]"), entry))
               for i, entry in enumerate(table.list("models"))]
    else:
        key, out = "n_params", []
        for i, target in enumerate(int_list(table, "n_params")):
            try:
                out.append(rule.from_target(target))
            except ValueError as e:
                raise table.error(f"n_params[{i}]", str(e)) from None
    # Two entries of one shape (written twice, or with its defaults spelled out, or two targets that
    # the shape rule resolves alike) would be one run: say so rather than merge them.
    unique(table, key, out, show=lambda model: f"the shape n_layer={model.n_layer}, d_model={model.d_model}, "
           f"n_head={model.n_head}, d_ff={model.d_ff}")
    return out


def kaplan_grid(table: Table, rule: ShapeRule):
    models = read_models(table, rule)
    token_counts = int_list(table, "tokens")
    unique(table, "tokens", token_counts, show=lambda tokens: f"{tokens:,} tokens")
    table.finish()
    return [("kaplan", model, tokens, None) for model in models for tokens in token_counts]


def isoflop_grid(table: Table, rule: ShapeRule, batch_tokens: int):
    """For each budget C and model size N: D = C / (exact training FLOPs per token), rounded to whole
    steps. Sizes outside the tokens-per-parameter window or under min_steps are left out of that budget."""
    budgets = float_list(table, "budgets")
    unique(table, "budgets", budgets, show=lambda budget: f"{budget:.4g} FLOPs")
    models = read_models(table, rule)
    min_steps = table.int("min_steps", 20, ge=1)
    window = table.raw("tokens_per_param", [1.0, 1e4])
    numbers = isinstance(window, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in window)
    if not numbers or len(window) != 2 or not 0 < window[0] < window[1]:
        raise table.error("tokens_per_param", f"expected [low, high] with 0 < low < high, got {window!r}")
    table.finish()
    out = []
    for i, budget in enumerate(budgets):
        fitting = []
        for model in models:
            shape = dataclasses.asdict(model)
            steps = int(budget / training_flops_per_token(**shape) // batch_tokens)
            n_params = param_counts(**shape).n_params_nonembed
            fits = steps >= min_steps and window[0] <= steps * batch_tokens / n_params <= window[1]
            if fits and all(model != other for other, _ in fitting):
                fitting.append((model, steps * batch_tokens))
        if len(fitting) < 3:
            smallest = min(models, key=lambda model: training_flops_per_token(**dataclasses.asdict(model)))
            need = min_steps * batch_tokens * training_flops_per_token(**dataclasses.asdict(smallest))
            raise table.error(f"budgets[{i}]", f"budget {budget:.3g} FLOPs fits only {len(fitting)} distinct model "
                              f"size(s) (need >= 3 for an IsoFLOP profile; the smallest model needs >= {need:.3g} "
                              f"FLOPs for {min_steps} steps within tokens_per_param {window})")
        out += [("isoflop", model, tokens, budget) for model, tokens in fitting]
    return out


def grid_points(root: Table, rule: ShapeRule, batch_tokens: int) -> list[tuple[str, ModelConfig, int, float | None]]:
    """(grid kind, model, tokens, budget) of every point of the [grid] and [isoflop] tables."""
    points = []
    if "grid" in root.data:
        points += kaplan_grid(root.sub("grid"), rule)
    if "isoflop" in root.data:
        points += isoflop_grid(root.sub("isoflop"), rule, batch_tokens)
    return points
