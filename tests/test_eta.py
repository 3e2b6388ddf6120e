"""The sweep ETA's cost model (scaling/launch/eta.py) against simulated sweeps whose true timings are known."""

import heapq

import pytest

from scaling.launch.eta import Eta, RunCost, format_seconds

# The simulated machine: 10 GFLOP/s, 3 ms a step, 5 s to start a run, 0.4 s of fixed cost per eval.
U, A, STARTUP, P = 1e-10, 3e-3, 5.0, 0.4
TOKENS_PER_STEP = 4096


def true_seconds(c: RunCost) -> float:
    return STARTUP + c.steps * (A + c.step_flops * U) + c.evals * (c.eval_flops * U + P)


def costs() -> list[RunCost]:
    """Twelve runs of four sizes (step FLOPs over two decades), longest first as the launcher orders them."""
    out = [RunCost(steps=steps, step_flops=f, evals=12, eval_flops=f / 40)
           for f in (2e7, 1e8, 6e8, 2e9) for steps in (300, 900, 2700)]
    return sorted(out, key=lambda c: c.steps * c.step_flops, reverse=True)


def simulate(workers: int, at_fraction: float, prior_flops_per_second: float) -> tuple[float, float]:
    """Run the launcher's schedule on the simulated machine, feeding `Eta` its events up to
    `at_fraction` of the sweep's true wall time; returns (predicted remaining, true remaining)."""
    plan = costs()
    slots = [(0.0, i) for i in range(workers)]
    events = []  # (time, order, kind, run_id, payload)
    order = 0
    for k, c in enumerate(plan):
        start, slot = heapq.heappop(slots)
        end = start + true_seconds(c)
        heapq.heappush(slots, (end, slot))
        run_id = f"run{k}"
        events.append((start, order, "start", run_id, c))
        step_s = A + c.step_flops * U
        eval_s = c.eval_flops * U + P
        for step in range(1, c.steps + 1, 50):  # a progress event every 50 steps
            t = start + STARTUP + step * step_s + c.evals * eval_s * step / c.steps
            events.append((t, order + 1, "step", run_id, (step, TOKENS_PER_STEP / step_s)))
        events.append((end, order + 2, "finish", run_id, None))
        order += 3
    total = max(t for t, _ in slots)
    now = at_fraction * total
    eta = Eta(workers=workers, prior_flops_per_second=prior_flops_per_second)
    eta.plan(plan)
    for t, _, kind, run_id, payload in sorted(events, key=lambda e: (e[0], e[1])):
        if t > now:
            break
        if kind == "start":
            eta.started(run_id, payload, t)
        elif kind == "step":
            eta.stepped(run_id, payload[0], payload[1], TOKENS_PER_STEP, t)
        else:
            eta.finished(run_id, t)
    return eta.remaining(now), total - now


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_eta_at_half_way_is_close_to_the_truth_although_the_prior_is_5x_off(workers):
    predicted, actual = simulate(workers, 0.5, prior_flops_per_second=5e10)
    assert predicted == pytest.approx(actual, rel=0.05)


def test_a_flops_only_prior_is_what_a_learned_model_corrects():
    # Before anything is observed the prior (5x too fast) predicts far too little ...
    early, actual_early = simulate(2, 0.0, prior_flops_per_second=5e10)
    assert early < 0.5 * actual_early
    # ... and a quarter of the way in, the model has learned the machine.
    later, actual_later = simulate(2, 0.25, prior_flops_per_second=5e10)
    assert later == pytest.approx(actual_later, rel=0.1)


def test_remaining_is_zero_when_nothing_is_left():
    eta = Eta(workers=2, prior_flops_per_second=1e10)
    assert eta.remaining(0.0) == 0.0


def test_format_seconds():
    assert format_seconds(59.6) == "1:00"
    assert format_seconds(3725) == "1:02:05"
    assert format_seconds(float("nan")) == "?"
