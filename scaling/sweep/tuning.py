"""Learning rates tuned per model size: the `[tune]` table, the tuning runs, and the saved rule.

Laws appear cleanly only on the tuned frontier: one learning rate across a wide range of N bends the
curve (Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models",
who tune per size and fit the optimum as a power law in N). `scaling tune SWEEP` trains every model
shape of the sweep's grid at every learning rate of `[tune] lrs`, for `fraction` of that shape's
longest run's tokens; the runs of one shape differ only in lr, so they train as one pack. The best
learning rate of each shape, and a power law LR*(N) fitted to them (analysis/tuning.py), are saved in
`<out_dir>/tune/lr_rule.json`; `[optimizer] lr = "tuned"` then gives each run the rule's value at its
non-embedding N, recorded as `lr_source = "tuned"`. Tuning runs are records of their own (`stage =
"tune"`, under `<out_dir>/tune/`) that never enter the fits of the main grid.

The rule file (the contract between analysis/tuning.py, which writes it, and this module):
    {"format": 1, "param_count": "n_params_nonembed", "n_ref": N0, "lr_ref": lr0, "exponent": k, ...}
    LR*(N) = lr_ref * (N / n_ref) ** exponent
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from scaling.config import ConfigError, ConfigValueError, RunSpec, decay_steps
from scaling.config_checks import check, integer, number
from scaling.flops import param_counts

RULE_FILE = "lr_rule.json"
RULE_FORMAT = 1
MIN_VALUES, MIN_SPAN = 5, 8.0  # at least 5 learning rates spanning at least 8x: an optimum inside the grid
# A tuning run is judged by its final loss alone: a few evaluations (the last one at the end) suffice.
EVAL_POINTS = 4


@dataclass(frozen=True)
class TuneConfig:
    """`[tune]`: the learning rates every model size is tried at, the tuning horizon as a fraction
    of that size's longest run in the grid, and how many times a size whose best learning rate is at
    the edge of what it tried gets one more, a grid step beyond (`widen`, per side)."""

    lrs: tuple[float, ...] = ()
    fraction: float = 0.25
    widen: int = 3

    def __post_init__(self):
        check(self, fraction=number(gt=0, le=1), widen=integer(ge=0, le=10))
        if len(self.lrs) < MIN_VALUES or len(set(self.lrs)) < len(self.lrs):
            raise ConfigValueError("lrs", f"expected at least {MIN_VALUES} distinct learning rates, got {list(self.lrs)}")
        if min(self.lrs) <= 0 or not all(math.isfinite(v) for v in self.lrs):
            raise ConfigValueError("lrs", f"expected learning rates > 0, got {list(self.lrs)}")
        if max(self.lrs) / min(self.lrs) < MIN_SPAN:
            raise ConfigValueError("lrs", f"expected a span of at least {MIN_SPAN:g}x (largest / smallest), got "
                                   f"{max(self.lrs) / min(self.lrs):.3g}x")


def tune_dir(out_dir: str | Path) -> Path:
    """Where a sweep's tuning runs and its rule live."""
    return Path(out_dir) / "tune"


def n_params(spec: RunSpec) -> int:
    """The N the rule is a function of: Kaplan's non-embedding count."""
    return param_counts(**dataclasses.asdict(spec.model)).n_params_nonembed


def tune_runs(runs, tune: TuneConfig, lrs: dict[int, list[float]] | None = None) -> list[RunSpec]:
    """The tuning runs of a grid: every distinct model shape x every learning rate (`lrs`, by
    non-embedding N, where given; else [tune] lrs), at `fraction` of the shape's longest run's tokens
    (whole batches, at least one), with that run's settings and EVAL_POINTS evaluations.

    A tuning run warms up over as many steps as the run it tunes for (`warmup_steps`, as a branched
    group shares it), not over its own fraction of a shorter run: the largest rate a model tolerates
    depends on the warmup in steps (Wortsman et al. 2023, "Small-scale proxies for large-scale
    Transformer training instabilities", Sec. 3). Measured here: tuned with 5 warmup steps, the
    kaplan grid's largest model chose 1.3e-3 and then lost 0.10-0.16 nats at every D to 3e-3 with the
    grid's 49. The warmup is kept inside the tuning run's stable phase (before its WSD cool-down)."""
    shapes: dict = {}
    for spec in runs:
        if spec.model not in shapes or spec.train.tokens > shapes[spec.model].train.tokens:
            shapes[spec.model] = spec
    out = []
    for spec in shapes.values():
        batch = spec.train.batch_tokens
        tokens = max(1, round(tune.fraction * spec.train.tokens / batch)) * batch
        train = dataclasses.replace(spec.train, tokens=tokens, eval_points=min(spec.train.eval_points, EVAL_POINTS))
        warmup = _warmup_for(spec, tokens // batch)
        for lr in (tune.lrs if lrs is None else lrs.get(n_params(spec), ())):
            out.append(dataclasses.replace(spec, grid="kaplan", flops_budget=None, stage="tune", lr_source="fixed",
                                           optim=dataclasses.replace(spec.optim, lr=lr, warmup_steps=warmup),
                                           train=train))
    return out


def _warmup_for(spec: RunSpec, steps: int) -> int | None:
    """The warmup steps of `spec`, for a run of `steps` updates: as many as `spec` takes, at most up to
    the run's cool-down (WSD) or its last step; None where that is the run's own fraction anyway."""
    o = spec.optim
    target = o.warmup_steps if o.warmup_steps is not None else int(round(o.warmup * spec.steps))
    room = steps - decay_steps(o.decay, steps) if o.schedule == "wsd" else steps - 1
    warmup = max(0, min(target, room))
    return None if warmup == int(round(o.warmup * steps)) else warmup


def beyond_edges(tried: dict[int, list[float]], best: dict[int, float]) -> dict[int, list[float]]:
    """For each size (N) whose best learning rate is the smallest or the largest it tried, the next
    one past it: the edge's own grid step again (lr^2 / its neighbour)."""
    out = {}
    for n, lrs in tried.items():
        lrs = sorted(lrs)
        if n not in best or len(lrs) < 2:
            continue
        if math.isclose(best[n], lrs[0]):
            out[n] = [lrs[0] ** 2 / lrs[1]]
        elif math.isclose(best[n], lrs[-1]):
            out[n] = [lrs[-1] ** 2 / lrs[-2]]
    return out


def read_rule(out_dir: str | Path) -> dict | None:
    """The rule `scaling tune` saved for a sweep, or None where there is none."""
    path = tune_dir(out_dir) / RULE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


def rule_lr(rule: dict, n: float) -> float:
    """LR*(N) of a saved rule."""
    return float(rule["lr_ref"] * (n / rule["n_ref"]) ** rule["exponent"])


def tuned_runs(file: str, out_dir: str, runs) -> tuple[RunSpec, ...]:
    """The runs with `lr = "tuned"` resolved: each takes the saved rule's learning rate at its N.
    Raises ConfigError (key optimizer.lr) where no rule has been saved."""
    path = tune_dir(out_dir) / RULE_FILE
    try:
        rule = read_rule(out_dir)
    except (OSError, ValueError) as e:
        raise ConfigError(file, "optimizer.lr", f'"tuned" needs a readable {path} ({type(e).__name__})') from None
    if rule is None or rule.get("format") != RULE_FORMAT:
        raise ConfigError(file, "optimizer.lr", f'"tuned" needs the rule that `scaling tune {file}` writes: no {path}')
    return tuple(dataclasses.replace(spec, lr_source="tuned", optim=dataclasses.replace(
        spec.optim, lr=rule_lr(rule, n_params(spec)))) for spec in runs)
