"""What a sweep shows: the local sweep's progress (one bar over the sweep's FLOPs with a learned ETA,
one bar per active run; or, quiet, one line per start and finish), `--dry-run`'s table of runs
(`plan_table`), `scaling run`'s own progress (`RunProgress`), and `scaling status`'s table of a results
folder (`status_table`)."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pyarrow.parquet as pq
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analysis.records import run_problems
from scaling import records
from scaling.config import RunSpec
from scaling.flops import param_counts
from scaling.launch.eta import Eta, RunCost, format_seconds, published_eta
from scaling.launch.report import ASSUMED_MFU, LaunchError, run_flops
from scaling.records import RunLock, base_row
from scaling.sweep.reader import load_sweep
from scaling.sweep.branch_plan import plan as branch_plan


class Display:
    """The sweep's progress: one bar over the sweep's FLOPs with a learned ETA (scaling/launch/eta.py), one
    bar per active run; or, quiet, one line per start and finish with the ETA."""

    def __init__(self, todo: list[RunSpec], workers: int, quiet: bool, on_eta=None):
        from scaling.hardware import peak_flops  # here: it imports JAX, which the sweep's parent does not need else

        self.quiet, self.n_runs, self.done, self.on_eta = quiet, len(todo), 0, on_eta
        self.started: set[str] = set()
        self.t0 = time.monotonic()
        self._eta_at, self._eta_last = -math.inf, "ETA ?"
        self.eta = Eta(workers=workers, prior_flops_per_second=ASSUMED_MFU * peak_flops("float32").flops_per_second)
        self.eta.plan([RunCost.of(spec) for spec in todo])
        self.progress = None
        total_flops = sum(map(run_flops, todo))
        if not quiet:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                     TimeElapsedColumn(), refresh_per_second=4)
            self.sweep_task = self.progress.add_task(f"sweep 0/{self.n_runs} runs", total=total_flops, info="")
            self.run_tasks: dict[str, tuple[int, float]] = {}
            self.progress.start()
        self.total_flops = total_flops

    def _eta_text(self, every: float = 0.0) -> str:
        """The sweep's ETA, recomputed at most once per `every` seconds (step events can come
        hundreds of times a second)."""
        now = time.monotonic()
        if now - self._eta_at >= every:
            remaining = self.eta.remaining(now)
            if self.on_eta:
                self.on_eta(now - self.t0, remaining)
            self._eta_at, self._eta_last = now, f"ETA {format_seconds(remaining)}"
        return self._eta_last

    def start(self, spec: RunSpec):
        """Show `spec` as running (once: later calls for it do nothing)."""
        if spec.run_id in self.started:
            return
        self.started.add(spec.run_id)
        self.eta.started(spec.run_id, RunCost.of(spec), time.monotonic())
        if self.quiet:
            print(f"start {spec.run_id} (N={_n(spec)}, D={spec.steps * spec.batch_size * spec.model.seq_len:.3g}) "
                  f"[sweep {self._eta_text()}]", flush=True)
        else:
            task = self.progress.add_task(f"  {spec.run_id}", total=spec.steps, info="compiling")
            self.run_tasks[spec.run_id] = (task, 0.0)

    def update(self, spec: RunSpec, event: dict):
        tps = event.get("tokens_per_second")
        self.eta.stepped(spec.run_id, event["step"], tps, spec.batch_size * spec.model.seq_len, time.monotonic())
        if self.quiet:
            if self.on_eta:
                self._eta_text(every=1.0)
            return
        task, flops_seen = self.run_tasks[spec.run_id]
        flops_now = run_flops(spec) * event["step"] / spec.steps
        info = f"step {event['step']}/{spec.steps} loss {event['loss']:.3f}" + (f" {tps:,.0f} tok/s" if tps else "")
        self.progress.update(task, completed=event["step"], info=info)
        self.progress.advance(self.sweep_task, flops_now - flops_seen)
        self.progress.update(self.sweep_task, info=self._eta_text(every=1.0))
        self.run_tasks[spec.run_id] = (task, flops_now)

    def finish(self, spec: RunSpec, status: str, error: str | None):
        self.done += 1
        self.eta.finished(spec.run_id, time.monotonic())
        if self.quiet:
            print(f"{status} {spec.run_id}" + (f": {error}" if error else "") + f" [sweep {self._eta_text()}]",
                  flush=True)
            return
        task, flops_seen = self.run_tasks.pop(spec.run_id)
        self.progress.remove_task(task)
        self.progress.advance(self.sweep_task, run_flops(spec) - flops_seen)
        self.progress.update(self.sweep_task, description=f"sweep {self.done}/{self.n_runs} runs",
                             info=self._eta_text())
        if status != "complete":
            self.progress.console.print(f"[red]{status}[/red] {spec.run_id}" + (f": {error}" if error else ""))

    def close(self):
        if self.progress:
            self.progress.stop()


def _n(spec: RunSpec) -> str:
    return f"{param_counts(**dataclasses.asdict(spec.model)).n_params_nonembed:.3g}"


def plan_table(sweep, runs) -> tuple[Table, str]:
    """`--dry-run`'s table of runs (shape, N, D, steps, FLOPs, estimated time; a branched sweep's trunks
    and branches) and its total line."""
    from scaling.hardware import peak_flops  # imports JAX
    peak = peak_flops("float32")  # with an assumed utilisation: `scaling bench` measures the real one
    plan = branch_plan(sweep.runs) if sweep.branch else None
    table = Table(title=f"{sweep.name}: {len(runs)} runs -> {sweep.out_dir}")
    branch_cols = ("trained steps", "branch") if plan else ()
    for col in ("run_id", "grid", "n_layer", "d_model", "n_head", "d_ff", "N (non-embed)", "D (tokens)", "steps",
                *branch_cols, "FLOPs", "est. time"):
        table.add_column(col, justify="left" if col in ("run_id", "grid", "branch") else "right")
    total_s = total_flops = 0.0
    for spec in runs:
        m = spec.model
        n = param_counts(**dataclasses.asdict(m)).n_params_nonembed
        # FLOPs this sweep spends on the run: a branch trains only its cool-down.
        trained = plan.trained_steps(spec) if plan else spec.steps
        flops = run_flops(spec) * trained / spec.steps
        seconds = flops / (peak.flops_per_second * ASSUMED_MFU)
        total_s += seconds
        total_flops += flops
        extra = ()
        if plan:
            b = plan.branches.get(spec.run_id)
            role = (f"from {b.trunk} at step {b.step}" if b else
                    f"trunk of {len(plan.of_trunk(spec.run_id))}" if plan.of_trunk(spec.run_id) else "")
            extra = (str(trained), role)
        table.add_row(spec.run_id, spec.grid, str(m.n_layer), str(m.d_model), str(m.n_head), str(m.d_ff), f"{n:,}",
                      f"{spec.steps * spec.batch_size * m.seq_len:.3g}", str(spec.steps), *extra, f"{flops:.3g}",
                      f"{seconds:.0f} s")
    saved = f" (branching saves {sum(map(run_flops, runs)) - total_flops:.3g})" if plan else ""
    return table, (f"total {total_flops:.3g} FLOPs{saved}, about {total_s / 60:.1f} min at {ASSUMED_MFU:.0%} "
                   f"MFU of {peak.flops_per_second:.3g} FLOP/s ({peak.source}) with one run at a time")


class RunProgress:
    """`scaling run`'s progress: JSON lines for a launcher, or a bar per run for a person (started at
    the first step, so that errors before it print alone)."""

    def __init__(self, jsonl: bool):
        self.jsonl, self.bars, self.progress = jsonl, {}, None

    def step(self, event: dict) -> None:
        if self.jsonl:
            print(json.dumps({"event": "step", **event}), flush=True)
            return
        if self.progress is None:
            self.progress = Progress(transient=True)
            self.progress.start()
        run_id = event["run_id"]
        if run_id not in self.bars:
            self.bars[run_id] = self.progress.add_task(run_id, total=event["steps"])
        self.progress.update(self.bars[run_id], completed=event["step"], description=f"{run_id} loss {event['loss']:.3f}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def status_table(results: str, overrides: dict) -> tuple[Table, str]:
    """`scaling status`: a table of a results folder's runs; or, given a sweep file, of every run of its
    grid, the ones that have not started shown as `pending`; and a line of counts (and the ETA)."""
    root, planned = Path(results), []
    if root.is_file() or root.suffix == ".toml":
        sweep = load_sweep(root, **overrides)
        root, planned = Path(sweep.out_dir), [base_row(spec) for spec in sweep.runs]
        summaries = [p for r in planned if (p := records.run_dir(root, r["run_id"]) / "summary.parquet").exists()]
    else:
        if not root.is_dir():
            raise LaunchError(f"no results folder at {root} (give a results folder or a sweep file)")
        summaries = sorted(root.glob("runs/*/summary.parquet")) or sorted(root.glob("*/runs/*/summary.parquet"))
        if not summaries:
            raise LaunchError(f"{root}: no runs found (expected {root}/runs/<run_id>/summary.parquet, or a sweep file)")
    table = Table(title=str(root))
    for col in ("run", "N (non-embed)", "D (tokens)", "step", "status", "val loss", "tokens/s", "MFU", "wall"):
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    counts: dict[str, int] = {}
    for path in summaries:
        problems = run_problems(path.parent)
        try:
            r = pq.read_table(path).to_pylist()[0]
            status = r["status"]
        except Exception:  # noqa: BLE001 - a damaged file (unreadable, empty, no status) is shown, not fatal
            r, status = {"run_id": path.parent.name}, None
        if status == "running" and _lock_is_free(path.parent):
            status = "interrupted"  # no process holds the run's lock: rerun the sweep to resume it
        if problems:  # the records do not back what the summary says: flagged, whatever it says
            status = f"damaged ({'; '.join(problems)})" + (f", recorded {status}" if status else "")
        elif r.get("error"):
            status += f" ({r['error']})"
        label = status.split(" ")[0]
        counts[label] = counts.get(label, 0) + 1
        fmt = lambda v, f: "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)
        table.add_row(path.parent.name, fmt(r.get("n_params_nonembed"), ","), fmt(r.get("target_tokens"), ".3g"),
                      fmt(r.get("step"), "d"), status,
                      fmt(r.get("val_loss"), ".4f"), fmt(r.get("tokens_per_second"), ",.0f"), fmt(r.get("mfu"), ".1%"),
                      fmt(r.get("wall_seconds"), ".1f") + ("s" if r.get("wall_seconds") is not None else ""))
    started = {p.parent.name for p in summaries}
    for r in planned:
        if r["run_id"] not in started:
            counts["pending"] = counts.get("pending", 0) + 1
            table.add_row(r["run_id"], format(r["n_params_nonembed"], ","), format(r["target_tokens"], ".3g"),
                          "", "pending", "", "", "", "")
    return table, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + _eta_note(root, counts)


def _eta_note(root: Path, counts: dict) -> str:
    """The ETA that a running local sweep publishes (scaling/launch/eta.py), where one runs."""
    if not counts.get("running"):
        return ""
    eta = published_eta(root)
    if eta is None:
        return "; ETA unknown (only a local sweep publishes one)"
    remaining, age = eta
    return f"; ETA {format_seconds(remaining)} (the sweep's estimate of {format_seconds(age)} ago)"


def _lock_is_free(run_path: Path) -> bool:
    lock = RunLock(run_path)
    if lock.acquire():
        lock.release()
        return True
    return False
