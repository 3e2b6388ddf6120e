"""`scaling` command line: sweep, tune, run, status, prepare, bench, fit, table, compare, reproduce, report.

User mistakes print one line on stderr and exit with status 2; no tracebacks.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import signal
import sys
import time

from rich.console import Console

from scaling.config import LAUNCHERS, ConfigError, ConfigValueError
from scaling.launch import jobfile
from scaling.launch.display import RunProgress as _RunProgress, plan_table, status_table
from scaling.launch.eta import EtaFile
from scaling.launch.distributed import DistributedError, check_flags
from scaling.launch.jobfile import check_writable
from scaling.launch.local import run_local
from scaling.launch.ray_launcher import run_ray
from scaling.launch.report import LaunchError, SweepReport, pending_runs
from scaling.sweep.instruments import announce_small_probes
from scaling.sweep.reader import check_devices, load_sweep
from scaling.sweep.tuning import beyond_edges, n_params, read_rule, tune_dir, tune_runs

USAGE_ERROR = 2
# Commands of the analysis package, which parses their arguments itself (main hands them over whole).
ANALYSIS_COMMANDS = {"fit": "fit Kaplan or Chinchilla laws, with 95%% intervals",
                     "table": "a results folder's runs and laws as markdown, CSV or LaTeX",
                     "compare": "the compute multiplier of one sweep over another",
                     "reproduce": "how your records compare with reference records of the same runs",
                     "report": "one self-contained HTML page of a sweep: runs, fits, figures, provenance"}


def _fail(message: str) -> int:
    print(f"scaling: {message}", file=sys.stderr)
    return USAGE_ERROR


def _console():
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _device_count() -> int:
    import jax  # here, not at the top: the commands that need no devices start without JAX
    return jax.device_count()


def _load(path: str, only: list[str] | None = None, args=None):
    """The sweep with command-line launcher settings applied, checked against the devices one run
    will get: this machine's for the local launcher, the sweep file's [slurm] / [ray] request else."""
    sweep = load_sweep(path, **_overrides(args))
    if args is not None:
        sweep = _with_launcher_flags(sweep, args)
    devices = sweep.devices_per_run(getattr(args, "launcher", None) or sweep.launcher)
    check_devices(sweep, _device_count() if devices is None else devices)
    runs = sweep.select(only) if only else sweep.runs
    if not runs:
        raise ConfigError(path, "", f"no run matches --only {' '.join(only)}")
    check_writable(sweep.path, sweep.out_dir, create=not getattr(args, "dry_run", False))
    return sweep, runs


def _overrides(args) -> dict:
    """load_sweep's keywords for the command line's --set KEY=VALUE and --out DIR."""
    return {"overrides": tuple(getattr(args, "set", None) or ()), "out_dir": getattr(args, "out", None)}


def _with_launcher_flags(sweep, args):
    """[slurm] and [ray] settings replaced by the flags given. (No launcher module is imported here:
    submitit reconfigures logging when imported, which only the slurm launcher needs.)"""
    slurm = {k: v for k, v in dict(partition=args.partition, account=args.account, nodes=args.nodes,
                                   gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                                   mem_gb=args.mem_gb, time_min=args.time_min).items() if v is not None}
    try:
        if slurm:
            sweep = dataclasses.replace(sweep, slurm=dataclasses.replace(sweep.slurm, **slurm))
        if args.ray_address:
            sweep = dataclasses.replace(sweep, ray=dataclasses.replace(sweep.ray, address=args.ray_address))
    except ConfigValueError as e:  # a flag that the config refuses, alone or with the file's other settings
        flag = f"--{e.field.replace('_', '-')}" if e.field in slurm else f"slurm.{e.field}"
        raise ConfigError(sweep.path, flag, e.message) from None
    return sweep


def cmd_sweep(args) -> int:
    """Tuning first where the sweep asks for it and has no rule yet; the grid; then the replicas that
    its results name ([replicate] at = "minima")."""
    first = load_sweep(args.sweep, for_tuning=True, **_overrides(args))
    announce_small_probes(first)
    if first.lr_tuned and first.tune is not None and read_rule(first.out_dir) is None:
        print(f"sweep {first.name}: no learning-rate rule yet: tuning first ({tune_dir(first.out_dir)})")
        code = cmd_tune(args)
        if code or args.dry_run:
            if args.dry_run:
                print("\n# then the grid, each run at the rule's learning rate for its size")
            return code
    t0 = time.perf_counter()
    code, sweep, runs = _sweep_once(args)
    if code is not None:
        return code
    if sweep.replicate is not None and not args.only and not args.dry_run:
        done = {spec.run_id for spec in runs}
        again, more = _load(args.sweep, None, args)  # the replicas the finished runs now name
        extra = tuple(spec for spec in more if spec.run_id not in done)
        if extra:
            print(f"sweep {sweep.name}: {len(extra)} replica(s) at the runs the grid's results name")
            code, _, _ = _sweep_once(args, again, extra)
            if code is not None:
                return code
            print(f"sweep {sweep.name}: {len(runs) + len(extra)} runs with the replicas, in "
                  f"{time.perf_counter() - t0:.1f} s")
    return 0


def _sweep_once(args, sweep=None, runs=None):
    """Train `runs` of the sweep (default: all of them, or --only's) with the chosen launcher: (exit
    code where the sweep stops here, else None; the sweep; the runs)."""
    if sweep is None:
        sweep, runs = _load(args.sweep, args.only, args)
    else:
        sweep = dataclasses.replace(sweep, runs=runs)
    launcher = args.launcher or sweep.launcher
    if args.dry_run:
        _print_plan(sweep, runs)
        if launcher == "slurm":
            from scaling.launch import slurm  # submitit reconfigures logging when imported: only for slurm
            todo = pending_runs(sweep, runs, SweepReport())
            print(f"\n# The batch script that --launcher slurm would submit for the {len(todo)} unfinished runs:")
            print(slurm.sbatch_script(sweep, len(todo), args.max_parallel or sweep.max_parallel) if todo else
                  "# (none: every run is complete)")
        return 0, sweep, runs
    t0 = time.perf_counter()
    try:
        if launcher == "slurm":
            from scaling.launch.slurm import run_slurm  # (as above)
            report = run_slurm(sweep, runs, max_parallel=args.max_parallel, wait=args.wait, quiet=args.quiet)
        elif launcher == "ray":
            report = run_ray(sweep, runs, max_parallel=args.max_parallel, quiet=args.quiet)
        else:
            eta_file = EtaFile(sweep.out_dir)  # for `scaling status` in another shell
            try:
                report = run_local(sweep, runs, max_parallel=args.max_parallel, quiet=args.quiet, on_eta=eta_file)
            finally:
                eta_file.close()
    except LaunchError as e:
        return _fail(str(e)), sweep, runs
    if report.stopped_by:
        print(f"scaling: stopped by {signal_name(report.stopped_by)}: {len(report.interrupted)} run(s) stopped at "
              f"their last checkpoint, {len(report.complete)} complete; run `scaling sweep {args.sweep}` again to "
              "resume", file=sys.stderr)
        return 128 + report.stopped_by, sweep, runs
    for line in report.lines():
        print(line)
    verb = "submitted" if not report.awaited else "ran"
    print(f"sweep {sweep.name} ({launcher}): {verb} {len(report.submitted) or len(runs) - len(report.skipped)} of "
          f"{len(runs)} runs in {time.perf_counter() - t0:.1f} s; records in {sweep.out_dir}")
    if report.failed:
        return 1, sweep, runs
    if not report.awaited:
        return 0, sweep, runs  # submitted, not finished: the replicas come with a later `scaling sweep`
    return None, sweep, runs


def cmd_tune(args) -> int:
    """The learning rate per model size (scaling/sweep/tuning.py): every shape of the grid at every
    [tune] lrs value, packed; then the best per size and the rule LR*(N), saved for lr = "tuned"."""
    sweep = load_sweep(args.sweep, for_tuning=True, **_overrides(args))
    if sweep.tune is None:
        raise ConfigError(args.sweep, "tune", "no [tune] table: give the learning rates to try, e.g. "
                          "[tune] lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2]")
    runs = tuple(tune_runs(sweep.runs, sweep.tune))
    folder = str(tune_dir(sweep.out_dir))
    tuning = dataclasses.replace(sweep, out_dir=folder, runs=runs, pack=True, branch=False, launcher="local",
                                 replicate=None)
    check_devices(tuning, _device_count())
    check_writable(sweep.path, folder, create=not args.dry_run)
    if args.dry_run:
        _print_plan(tuning, runs)
        return 0
    from analysis.tuning import save_tuning  # pandas and matplotlib: only here
    every, todo, failed = runs, runs, False
    for round_ in range(sweep.tune.widen + 1):
        report = run_local(dataclasses.replace(tuning, runs=todo), todo, max_parallel=args.max_parallel,
                           quiet=args.quiet)
        if report.stopped_by:
            print(f"scaling: stopped by {signal_name(report.stopped_by)}; run `scaling tune {args.sweep}` again to "
                  "resume", file=sys.stderr)
            return 128 + report.stopped_by
        for line in report.lines():
            print(line)
        failed |= bool(report.failed)
        todo = () if round_ == sweep.tune.widen else _widened(folder, sweep, every)
        if not todo:
            break
        print("tune: best at the edge of what was tried, so one step beyond: "
              + ", ".join(f"N={n_params(spec):,} at lr {spec.optim.lr:.3g}" for spec in todo))
        every += todo
    try:
        print(save_tuning(folder, {spec.run_id for spec in every}, bootstrap=getattr(args, "bootstrap", 1000)),
              end="")
    except ValueError as e:
        return _fail(f"{folder}: no rule: {e}")
    return 1 if failed else 0


def _widened(folder: str, sweep, every) -> tuple:
    """The tuning runs one grid step beyond the edge, for each size whose best learning rate (of its
    complete runs so far) is the smallest or largest it tried."""
    from analysis.records import load_runs
    from analysis.tuning import LR, N_COLUMN, best_lrs
    records = load_runs(folder)
    records = records[records["run_id"].isin({spec.run_id for spec in every})]
    try:
        best = best_lrs(records)
    except ValueError:  # nothing complete: nothing to widen
        return ()
    tried = {int(n): list(group[LR]) for n, group in records.groupby(N_COLUMN)}
    edge = best[~best["interior"]]
    more = beyond_edges(tried, dict(zip(edge[N_COLUMN].astype(int), edge["lr_grid"])))
    done = {spec.run_id for spec in every}
    return tuple(spec for spec in tune_runs(sweep.runs, sweep.tune, lrs=more) if spec.run_id not in done)


def _print_plan(sweep, runs) -> None:
    table, total = plan_table(sweep, runs)
    console = _console()
    console.print(table)
    console.print(total)


def cmd_run(args) -> int:
    """One run, or several together in this process: the jobs a launcher wrote (--spec), or runs of
    a sweep file named by a person (SWEEP --run-id)."""
    # A run's process: the training tier, and JAX with it, load only here.
    from scaling.launch import job as job_mod
    from scaling.training.run import preemption

    jsonl = args.progress == "jsonl"
    if jsonl:  # a launcher's child: it stops with its parent
        job_mod.die_with_parent()
    if bool(args.spec) == bool(args.sweep or args.run_id):
        return _fail("scaling run: give a sweep file and --run-id, or --spec files (what a launcher writes)")
    if args.sweep and not args.run_id:
        return _fail("scaling run: --run-id is required with a sweep file")
    multihost = args.distributed == "on" or args.coordinator or args.num_processes or args.process_id is not None
    try:
        check_flags(args.distributed, coordinator=args.coordinator, num_processes=args.num_processes,
                    process_id=args.process_id)
    except DistributedError as e:
        return _fail(str(e))
    jobs = [jobfile.read(p) for p in args.spec] if args.spec else job_mod.resolve(args.sweep, args.run_id, **_overrides(args))
    if len(jobs) > 1 and multihost:
        return _fail("several runs train together in one process: not with --distributed on or the multi-host flags")
    progress = _RunProgress(jsonl)
    try:
        with preemption.stop_on_signals():
            if len(jobs) == 1:
                results = [job_mod.run_one(jobs[0], on_step=progress.step, distributed=args.distributed,
                                           coordinator=args.coordinator, num_processes=args.num_processes,
                                           process_id=args.process_id)]
            else:
                results = job_mod.run_together(jobs, on_step=progress.step)
    except DistributedError as e:
        return _fail(str(e))
    except preemption.Stopped as e:
        progress.close()
        if jsonl:
            for job in jobs:
                print(json.dumps({"event": "done", "run_id": job.spec.run_id, "status": "interrupted", "error": None}),
                      flush=True)
        else:
            print(f"scaling: stopped by {signal_name(e.signum)} at the run's last checkpoint; run the same command "
                  "again to resume", file=sys.stderr)
        return e.exit_code
    progress.close()
    for job, result in zip(jobs, results):
        result = {**result, "run_id": job.spec.run_id}
        if jsonl:
            print(json.dumps({"event": "done", "run_id": result["run_id"], "status": result["status"],
                              "error": result.get("error")}), flush=True)
        else:
            print(_outcome_line(result))
    return 0 if all(r["status"] in ("complete", "diverged") for r in results) else 1


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _outcome_line(result: dict) -> str:
    if result.get("already"):
        return f"{result['run_id']} is already {result['status']}: nothing to do"
    return f"{result['status']} {result['run_id']}" + (f": {result['error']}" if result.get("error") else "")


def cmd_status(args) -> int:
    """A results folder's runs; or, given a sweep file, every run of its grid (scaling/launch/display.py)."""
    try:
        table, line = status_table(args.results, _overrides(args))
    except LaunchError as e:
        return _fail(str(e))
    console = _console()
    console.print(table)
    console.print(line)
    return 0


def cmd_prepare(args) -> int:
    """Text, .jsonl or .parquet -> a prepared corpus folder for source = "tokens" (scaling/data/prepare.py)."""
    from scaling.data.prepare import DataError, prepare_command
    try:
        return prepare_command(args)
    except DataError as e:
        return _fail(str(e))


def cmd_bench(args) -> int:
    from scaling.bench import main as bench_main  # imports JAX
    return bench_main(args)


def _analysis(name: str, argv: list[str]) -> int:
    if name == "reproduce_command":
        from analysis.reproduce import reproduce_command
        return reproduce_command(argv)
    if name == "report_command":
        from analysis.report import report_command
        return report_command(argv)
    from analysis import cli  # pandas and matplotlib: only for the analysis commands
    return getattr(cli, name)(argv)


class _Parser(argparse.ArgumentParser):
    """A usage mistake is one line on stderr and exit status 2, as a bad sweep file is (argparse's own
    prints the usage too)."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"scaling: {self.prog}: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="scaling", description="Scaling-law experiment runner.")
    p.add_argument("--version", action="version", version=f"scaling {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sweep", help="train every run of a sweep file",
                       description="Train every run of a sweep file that is not complete yet (tuning the learning "
                                   "rate first where it asks, then the replicas it names); each run writes its "
                                   "records to <out_dir>/runs/<run_id>/.")
    s.add_argument("sweep", help="sweep file (TOML)")
    s.add_argument("--dry-run", action="store_true", help="list the runs (shape, N, D, FLOPs, estimated time)")
    s.add_argument("--only", action="append", metavar="PATTERN",
                   help="run a subset: a glob over key=value labels or run ids, e.g. 'd_model=128*' (repeat to AND)")
    s.add_argument("--max-parallel", type=_at_least(1), default=None, help="runs at once (default: the sweep file's)")
    s.add_argument("--quiet", "-q", action="store_true", help="plain log lines instead of progress bars")
    s.add_argument("--launcher", choices=LAUNCHERS, default=None,
                   help="where the runs go (default: the sweep file's [sweep] launcher, else local)")
    _override_flags(s)
    s.add_argument("--wait", action="store_true",
                   help="slurm: wait for the jobs and report each run's outcome (default: submit and return)")
    g = s.add_argument_group("slurm (override the sweep file's [slurm] table)")
    g.add_argument("--partition")
    g.add_argument("--account")
    g.add_argument("--nodes", type=_at_least(1), help="nodes per run")
    g.add_argument("--gpus-per-node", type=_at_least(0), help="GPUs per node (one process each)")
    g.add_argument("--cpus-per-task", type=_at_least(1))
    g.add_argument("--mem-gb", type=_positive_float, help="memory per node, GB")
    g.add_argument("--time-min", type=_at_least(1), help="time limit per job, minutes (a longer run is requeued "
                   "and resumes from its checkpoint)")
    s.add_argument("--ray-address", help="ray: the cluster to use (default: the sweep file's [ray] address, 'auto')")
    s.set_defaults(func=cmd_sweep)

    t = sub.add_parser("tune", help="tune the learning rate per model size; save the rule lr = \"tuned\" uses",
                       description="Train every model shape of the sweep's grid at every [tune] lrs value (packed), "
                                   "pick the best per size and fit LR*(N) as a power law; saved in "
                                   "<out_dir>/tune/lr_rule.json for [optimizer] lr = \"tuned\".")
    t.add_argument("sweep", help="sweep file (TOML) with a [tune] table")
    t.add_argument("--dry-run", action="store_true", help="list the tuning runs")
    t.add_argument("--max-parallel", type=_at_least(1), default=None, help="processes at once (default: the sweep's)")
    t.add_argument("--bootstrap", type=_at_least(0), default=1000, help="replicates for the rule's interval")
    t.add_argument("--quiet", "-q", action="store_true", help="plain log lines instead of progress bars")
    _override_flags(t)
    t.set_defaults(func=cmd_tune)

    r = sub.add_parser("run", help="train runs: those a launcher wrote (--spec), or runs of a sweep file by id",
                       description="Train one run (or several together in this process) and write its records. "
                                   "A launcher passes the spec files it wrote; a person names runs of a sweep file.")
    r.add_argument("sweep", nargs="?", help="a sweep file, with --run-id")
    r.add_argument("--run-id", action="append", default=[],
                   help="a run of the sweep file; repeat it to train several runs together in this process (packed)")
    r.add_argument("--spec", action="append", default=[], metavar="SPEC_JSON",
                   help="a run's resolved spec, <out_dir>/runs/<run_id>/spec.json, as a launcher writes it; repeat "
                        "it to train several together")
    r.add_argument("--progress", choices=("rich", "jsonl"), default="rich")
    _override_flags(r)
    d = r.add_argument_group("multi-host: one run over several processes (give all three, on every process)")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address, reachable from every process")
    d.add_argument("--num-processes", type=_at_least(1), metavar="N")
    d.add_argument("--process-id", type=_at_least(0), metavar="I")
    d.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                   help="auto: join the other tasks of a SLURM step with several tasks; on: "
                        "jax.distributed.initialize() with JAX's own detection (TPU pods, Open MPI); off: one process")
    r.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="a table of a results folder's runs, or of every run of a sweep file",
                        description="Show each run's status, step, loss and speed, from a results folder or for "
                                    "every run of a sweep file (pending ones too), and the ETA of a running sweep.")
    st.add_argument("results", help="a results folder (results/<sweep>) or a sweep file")
    _override_flags(st)
    st.set_defaults(func=cmd_status)

    pr = sub.add_parser("prepare", help="tokenize text, .jsonl or .parquet into a folder for source = \"tokens\"",
                        description="Write a tokenized corpus: train.bin and val.bin (split by document), the "
                                    "tokenizer and metadata.json (vocabulary, documents, tokens and UTF-8 bytes per "
                                    "split), for [data] source = \"tokens\", paths = [OUT]. A rerun with the same "
                                    "inputs and settings does nothing.")
    pr.add_argument("inputs", nargs="+", help="text files, globs ('corpus/**/*.txt'), folders, .jsonl or .parquet files")
    pr.add_argument("--out", required=True, metavar="DIR", help="the folder to write (replaced whole when done)")
    pr.add_argument("--tokenizer", default="bytes", metavar="bytes|bpe|PATH",
                    help="bytes (default); bpe: a byte-level BPE trained here on the train documents (the bpe "
                         "extra); or the path of an existing tokenizer.json")
    pr.add_argument("--vocab-size", type=_at_least(1), help="the BPE's vocabulary, with --tokenizer bpe")
    pr.add_argument("--field", default="text", help="the text field of .jsonl lines, the text column of .parquet")
    pr.add_argument("--val-fraction", type=_positive_float, default=0.02, help="share of documents held out")
    pr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_prepare)

    b = sub.add_parser("bench", help="tokens/s and MFU of a few model sizes on this machine",
                       description="Time the training step of a few model sizes on this machine's devices and "
                                   "print tokens/s and MFU against the devices' peak FLOP/s.")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--seq-len", type=int, default=128)
    b.add_argument("--batch-tokens", type=int, default=8192)
    b.set_defaults(func=cmd_bench)

    for name, what in ANALYSIS_COMMANDS.items():
        a = sub.add_parser(name, help=f"{what} (see `scaling {name} -h`)", add_help=False)
        a.add_argument("rest", nargs=argparse.REMAINDER)
        a.set_defaults(func=lambda args, n=name: _analysis(f"{n}_command", args.rest))
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("scaling")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        return "unknown (not installed)"


def _override_flags(parser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of the sweep file, its value read as TOML (optimizer.lr=1e-3, "
                             "'grid.tokens=[1e6,2e6]'); checked like the file's own; repeatable")
    parser.add_argument("--out", metavar="DIR", help="the results folder (instead of [sweep] out_dir)")


def _at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ANALYSIS_COMMANDS:  # argparse's REMAINDER would refuse a leading -h
        return _analysis(f"{argv[0]}_command", argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
