"""The sweep-level race: a whole sweep trained by `scaling sweep`, against the same runs trained one
process per run by a PyTorch trainer in a shell loop. Prints both wall times, their ratio, and the
final losses of the two side by side with the sweep's own seed-to-seed noise.

    python benchmarks/race.py --torch-python /path/to/venv/bin/python          # sweeps/kaplan.toml
    python benchmarks/race.py --sweep sweeps/kaplan-fixed-lr.toml --torch-python ...
    python benchmarks/race.py --project DIR --torch-python ...   # reuse a finished project side

(a) `scaling sweep SWEEP --out DIR/project`, timed end to end from a cold JAX compilation cache (a
    fresh folder in JAX_COMPILATION_CACHE_DIR) with the data already prepared: the tuning stage,
    branching (each size's stable phase trained once, one cool-down per data size), packing, the
    fits and figures at the end; whatever the command does.
(b) For every run (a) wrote, tuning runs included, one `race_torch.py` process, one after the
    other, as `for run in ...; do python train.py $run; done` would: the same model shape, the same
    batches in the same order, the same learning rate at every step (the resolved, tuned value and
    the run's own warm-up and cool-down), AdamW with the same settings, clipping at 1.0, the same
    validation windows scored at the same steps. Each run trains from scratch to its own length:
    a loop around a trainer has no branching or packing. Timed end to end, process start-up
    included; writing each run's batches to a file for it comes before and is timed apart.

Each torch run starts from its project run's initial weights (the project's draws for that seed,
copied in), so the two trainers differ only in their float32 arithmetic and its order; `--own-init`
lets torch draw its own from the same distributions (another seed). The final losses are compared
with the sweep's seed-to-seed spread: the cells the sweep trains at two seeds (`[replicate]`) give
the RMS difference of two seeds of one cell, the scale a difference between trainers must stay well
inside. (At these sizes two seeds of one short run can differ by 0.3 nats: a run that leaves the
unigram plateau a few steps later ends higher, so `--own-init` needs many runs to compare.)

torch is the optional `bench` extra; it may live in another environment (--torch-python).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_step import REPO, load

TORCH_WORKER = Path(__file__).with_name("race_torch.py")


def project_side(sweep: Path, out: Path) -> float:
    """Wall seconds of `scaling sweep` from a cold compilation cache; its log beside its records."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(out.parent / "xla-cold"))
    cmd = [str(Path(sys.executable).with_name("scaling")), "sweep", str(sweep), "--out", str(out)]
    print(f"(a) {' '.join(cmd[1:])}  [cold compilation cache]", flush=True)
    t0, started = time.perf_counter(), time.time()
    with open(out.parent / "project.log", "w") as log:
        rc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    wall = time.perf_counter() - t0
    if rc:
        sys.exit(f"race: `{' '.join(cmd)}` exited {rc}; see {out.parent / 'project.log'}")
    rule = out / "tune" / "lr_rule.json"  # written when the tuning stage ends
    tune_s = rule.stat().st_mtime - started if rule.exists() else None
    (out / "race.json").write_text(json.dumps({"wall_s": wall, "tune_s": tune_s, "sweep": str(sweep)}))
    if tune_s is not None:
        print(f"    tuning stage {tune_s:.1f} s, then the grid {wall - tune_s:.1f} s", flush=True)
    return wall


def finished_runs(out: Path) -> list[tuple[object, dict]]:
    """(RunSpec, final record) of every complete run under `out`, tuning runs included."""
    import pyarrow.parquet as pq

    from scaling.config import RunSpec

    runs = []
    for spec_file in sorted(list(out.glob("runs/*/spec.json")) + list(out.glob("tune/runs/*/spec.json"))):
        summary = spec_file.with_name("summary.parquet")
        if not summary.exists():
            continue
        row = pq.read_table(summary).to_pylist()[0]
        if row["status"] == "complete":
            runs.append((RunSpec.from_dict(json.loads(spec_file.read_text())["spec"]), row))
    return runs


_INITS: dict = {}


def initial_params(spec) -> dict:
    """The project's initial weights of `spec` (its seed), as `param:<flat name>` arrays."""
    import numpy as np

    from scaling.training import sharding as shd, step as tr

    key = (spec.model, spec.seed)
    if key not in _INITS:
        program = tr.build_program(spec, shd.make_mesh(spec.mesh))
        _INITS[key] = {f"param:{k}": np.asarray(v) for k, v in program.init_params().items()}
    return _INITS[key]


def write_run(spec, path: Path, n_devices: int, same_init: bool) -> None:
    """What race_torch.py trains `spec` on, computed as the project's run computes it; with
    `same_init`, the project's initial weights too."""
    import numpy as np

    from scaling import data as data_mod
    from scaling.training import step as tr

    m, d = spec.model, spec.data
    source = data_mod.open_source(d.source, paths=d.paths, dtype=d.dtype, vocab_size=m.vocab_size,
                                  val_fraction=d.val_fraction, base_dir=d.base_dir, synthetic=d.synthetic,
                                  tasks=d.tasks, facts=d.facts, recipe=d.recipe)
    batcher = data_mod.Batcher(source.train, m.seq_len, spec.batch_size, d.data_seed, d.unique_tokens)
    dtype = np.uint8 if m.vocab_size <= 256 else np.int32
    batches = np.stack([batcher.batch(k) for k in range(spec.steps)]).astype(dtype)
    n_val = tr.n_eval_windows(spec, n_devices, len(source.val) // m.seq_len)
    windows = data_mod.validation_windows(source.val, m.seq_len, n_val).astype(dtype)
    o = spec.optim
    lr = np.asarray(tr.lr_schedule(o, spec.steps)(np.arange(spec.steps)), np.float32)
    model = json.dumps({k: getattr(m, k) for k in ("n_layer", "d_model", "n_head", "d_ff", "vocab_size", "seq_len")})
    np.savez(path, batches=batches, val_windows=windows, lr=lr, eval_steps=np.asarray(sorted(spec.train.eval_steps(spec.steps))),
             seed=spec.seed, model=model, weight_decay=o.weight_decay, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
             grad_clip=o.grad_clip, **(initial_params(spec) if same_init else {}))


def cell(spec) -> tuple:
    """A grid cell: everything but the seed."""
    m = spec.model
    return (m.n_layer, m.d_model, spec.train.tokens, spec.optim.lr)


def seed_rms(main: list[tuple[object, dict]]) -> tuple[float, int]:
    """RMS of (seed b - seed a) final loss over the cells trained at two seeds, and how many."""
    by_cell: dict[tuple, dict[int, float]] = {}
    for spec, row in main:
        by_cell.setdefault(cell(spec), {})[spec.seed] = row["val_loss"]
    diffs = [losses[b] - losses[a] for losses in by_cell.values() if len(losses) >= 2
             for a, b in [sorted(losses)[:2]]]
    return (math.sqrt(statistics.fmean(x * x for x in diffs)) if diffs else math.nan), len(diffs)


def main() -> int:
    from scaling.launch.cpu import cores_available

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="sweeps/kaplan.toml")
    p.add_argument("--torch-python", default="python", help="an interpreter with torch (default: python)")
    p.add_argument("--threads", type=int, default=cores_available(),
                   help="torch.set_num_threads (default: the cores this process may use)")
    p.add_argument("--compile", action="store_true", help="torch.compile every torch run")
    p.add_argument("--own-init", action="store_true",
                   help="torch draws its own initial weights (another seed) instead of the project's")
    p.add_argument("--project", metavar="DIR", help="a finished (a): its records and race.json; skips (a)")
    p.add_argument("--work", metavar="DIR", help="where (a)'s records and (b)'s files go (default: a temporary folder)")
    args = p.parse_args()
    if subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True).returncode:
        p.error(f"`{args.torch_python} -c 'import torch'` fails: name an interpreter with torch, --torch-python")
    sweep = (REPO / args.sweep).resolve() if not Path(args.sweep).is_absolute() else Path(args.sweep)
    if not sweep.is_file():
        p.error(f"{args.sweep}: no such sweep file")
    n_devices = cores_available()
    from bench_step import _cpu_devices
    from scaling.sweep import load_sweep
    spec0 = load_sweep(sweep, for_tuning=True).runs[0]
    _cpu_devices(spec0)  # the devices a run gets (one per core), before JAX starts: for the initial weights
    print(f"race: {sweep.relative_to(REPO) if sweep.is_relative_to(REPO) else sweep}, {n_devices} cores; "
          f"{load()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.project:
            out = Path(args.project)
            wall_a = json.loads((out / "race.json").read_text())["wall_s"]
            print(f"(a) reused {out}: {wall_a:.1f} s", flush=True)
        else:
            # The corpus is prepared before either side's clock starts.
            write_run(spec0, work / "warm.npz", n_devices, same_init=False)
            out = work / "project"
            wall_a = project_side(sweep, out)
            print(f"(a) {wall_a:8.1f} s  ({wall_a / 60:.1f} min)", flush=True)
        runs = finished_runs(out)
        main_runs = [(s, r) for s, r in runs if s.stage == "main"]
        tokens = sum(s.steps * s.batch_size * s.model.seq_len for s, _ in runs)
        print(f"(b) {len(runs)} runs ({len(runs) - len(main_runs)} tuning), each from scratch: "
              f"{tokens / 1e6:.1f}M tokens in all", flush=True)
        t0 = time.perf_counter()
        files = []
        for i, (spec, _) in enumerate(runs):
            files.append(work / f"torch-{i:03d}.npz")
            write_run(spec, files[-1], n_devices, same_init=not args.own_init)
        print(f"    batches written for every run in {time.perf_counter() - t0:.1f} s (not counted)", flush=True)
        argv = [args.torch_python, str(TORCH_WORKER), "--threads", str(args.threads)] + (["--compile"] if args.compile else [])
        results = []
        t0 = time.perf_counter()
        for (spec, _), f in zip(runs, files):
            t_run = time.perf_counter()
            done = subprocess.run(argv + [str(f)], capture_output=True, text=True, cwd=TORCH_WORKER.parent)
            if done.returncode:
                sys.exit(f"race: torch run {spec.run_id} failed:\n{done.stderr[-2000:]}")
            results.append({**json.loads(done.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - t_run,
                            "run_id": spec.run_id, "stage": spec.stage})
        wall_b = time.perf_counter() - t0
        (work / "torch.json").write_text(json.dumps(results))
        t = results[0]
        print(f"(b) {wall_b:8.1f} s  ({wall_b / 60:.1f} min)  torch {t['torch']}, set_num_threads {t['threads']}, "
              f"{'compiled' if args.compile else 'eager'}", flush=True)
        for stage in ("tune", "main"):
            mine = [r for r in results if r["stage"] == stage]
            print(f"    {stage}: {len(mine)} runs, {sum(r['wall'] for r in mine):.1f} s, of which "
                  f"{sum(r['wall'] - r['seconds'] for r in mine):.1f} s process start-up (importing torch)", flush=True)
        print(f"\nsweep wall: scaling sweep {wall_a:.1f} s, torch loop {wall_b:.1f} s: "
              f"{wall_b / wall_a:.2f}x in the project's favour\n", flush=True)

        print(f"{'run':36s} {'project':>9s} {'torch':>9s} {'diff':>9s}")
        diffs = []
        for (spec, row), res in zip(runs, results):
            if spec.stage != "main":
                continue
            diffs.append(res["val_loss"] - row["val_loss"])
            print(f"{spec.run_id:36s} {row['val_loss']:9.4f} {res['val_loss']:9.4f} {diffs[-1]:+9.5f}")
        rms, n_pairs = seed_rms(main_runs)
        rms_t = math.sqrt(statistics.fmean(x * x for x in diffs))
        print(f"\nfinal val loss, torch - project over {len(diffs)} runs: mean {statistics.fmean(diffs):+.4f}, "
              f"RMS {rms_t:.4f}, largest {max(diffs, key=abs):+.4f} nats")
        print(f"seed noise: RMS of seed 1 - seed 0 over the {n_pairs} cells trained at two seeds: {rms:.4f} nats")
        if n_pairs:
            print(f"torch within seed noise: {'yes' if rms_t <= 2 * rms else 'no'} "
                  f"(RMS {rms_t:.4f} vs seeds' {rms:.4f}; 'yes' needs at most twice)")
    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
