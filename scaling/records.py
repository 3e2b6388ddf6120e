"""Run records on disk: config.json, history.parquet, summary.parquet (DESIGN.md "Records").

Every file has one writer and is written to a temporary name in the same folder and then
`os.replace`d, so a reader never sees half a file and a kill leaves the previous version intact.
A per-run lock file keeps two sweep processes from training the same run at once. JAX-free: the
launchers and the CLI use what is here (a run's base columns, its failure record, one-line errors).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import math
import os
import tempfile
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from scaling.config import RunSpec
from scaling.flops import FLOPS_CONVENTION, param_counts

# The fixed columns and their types; probe columns `probe/<task>/<metric>` and evaluation-set columns
# `val/<set>/<metric>` (scaling/config_evals.py) are float64, added freely.
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("sweep", pa.string()), ("seed", pa.int64()), ("data_seed", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("grid", pa.string()),
    ("n_layer", pa.int64()), ("d_model", pa.int64()), ("n_head", pa.int64()), ("d_ff", pa.int64()),
    ("vocab_size", pa.int64()), ("seq_len", pa.int64()), ("n_params", pa.int64()),
    ("n_params_nonembed", pa.int64()), ("n_params_embed", pa.int64()),
    ("step", pa.int64()), ("tokens", pa.int64()), ("batch_tokens", pa.int64()), ("target_tokens", pa.int64()),
    ("flops", pa.float64()), ("flops_6nd", pa.float64()), ("flops_convention", pa.string()),
    ("flops_budget", pa.float64()),
    ("train_loss", pa.float64()), ("val_loss", pa.float64()), ("val_bits_per_byte", pa.float64()),
    ("val_loss_optimal", pa.float64()), ("val_entropy", pa.float64()), ("val_ece", pa.float64()),
    # A source's known scaling exponents (the facts source; NaN for the others): scaling/data/facts.py.
    ("true_exponent_data", pa.float64()), ("true_exponent_params", pa.float64()),
    ("lr", pa.float64()), ("grad_norm", pa.float64()),
    ("wall_seconds", pa.float64()), ("tokens_per_second", pa.float64()), ("mfu", pa.float64()),
    ("peak_flops", pa.float64()), ("peak_flops_source", pa.string()), ("device_kind", pa.string()),
    ("n_devices", pa.int64()), ("mesh", pa.string()),
    ("pack_size", pa.int64()),  # runs trained together in one program (scaling/training/pack.py); 1 alone
    # WSD branching (scaling/sweep/branch_plan.py): the trunk's run_id and the step this run left it at; null
    # for a run trained from step 0 on its own.
    ("branched_from", pa.string()), ("branch_step", pa.int64()),
    # Where the learning rate came from (fixed in the sweep file, or the rule `scaling tune` fitted) and
    # the run's stage (main, or a tuning run, which never enters a grid's fits).
    ("lr_source", pa.string()), ("stage", pa.string()),
    ("lr_peak", pa.float64()),  # the optimizer's lr, where the schedule peaks (`lr` is the scheduled value)
    # Repeated data (`[data] unique_tokens`, scaling/data/batches.py): the distinct training tokens the run
    # draws from (the whole train split when the key is unset) and tokens / unique_tokens so far.
    ("unique_tokens", pa.int64()), ("epochs", pa.float64()),
    ("recipe", pa.string()),  # the data recipe's name (`[recipes.<name>]`); null for a run without one
])

STATUSES = ("running", "complete", "diverged", "failed")


DONE = ("complete", "diverged")  # a run in either state is never trained or rewritten again


def run_dir(out_dir: str | Path, run_id: str) -> Path:
    return Path(out_dir) / "runs" / run_id


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Record files are made as `open` makes files (0o666 less the umask), so a group that shares a
# results folder on a cluster filesystem can read them; mkstemp alone would make them 0o600.
FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temporaries(folder: Path) -> None:
    """Temporary files and folders that an interrupted write left in a run folder: this module's
    `.<name>.*.tmp` files and orbax's `*.orbax-checkpoint-tmp*` folders (a full disk leaves them
    behind, and they keep it full)."""
    import shutil
    folder = Path(folder)
    for tmp in [*folder.glob(".*.tmp"), *folder.glob("checkpoints/*orbax-checkpoint-tmp*"),
                *folder.glob("branches/*/checkpoints/*orbax-checkpoint-tmp*")]:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def writable(out_dir: str | Path, *, create: bool) -> str | None:
    """None when records can be written under `out_dir`, else why not (one phrase). `create`: make
    the folder and try a file in it; else (a dry run, which writes nothing) try a file in the
    nearest folder that exists. The trial file is removed at once."""
    folder = Path(out_dir)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        fd, trial = tempfile.mkstemp(prefix=".write-check.", dir=folder if create else existing)
        os.close(fd)
        os.unlink(trial)
    except OSError as e:
        return f"cannot write there ({e.strerror or e})"
    return None


def write_json(path: Path, obj: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=str)
    _atomic_write(Path(path), write)


def to_table(rows: list[dict]) -> pa.Table:
    extra = sorted({k for r in rows for k in r} - set(SCHEMA.names))
    schema = pa.schema(list(SCHEMA) + [(k, pa.float64()) for k in extra])
    cols = {name: [_clean(r.get(name)) for r in rows] for name in schema.names}
    return pa.table(cols, schema=schema)


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


def write_rows(path: Path, rows: list[dict]) -> None:
    table = to_table(rows)
    _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_text(path: Path, text: str) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_table(path: Path, rows: list[dict]) -> None:
    """Rows of a side table (not the run schema, e.g. calibration.parquet), written atomically."""
    table = pa.Table.from_pylist(rows)
    _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def read_status(run_path: Path) -> str | None:
    """The run's status from its summary, or None when it has none (never started) or it is unreadable."""
    try:
        return pq.read_table(run_path / "summary.parquet", columns=["status"]).column("status")[0].as_py()
    except (FileNotFoundError, OSError, pa.ArrowException, IndexError):
        return None


class RunLock:
    """An exclusive, non-blocking lock on one run folder; released when the process dies."""

    def __init__(self, run_path: Path):
        run_path.mkdir(parents=True, exist_ok=True)
        self.path = run_path / ".lock"
        self.fd = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def base_row(spec: RunSpec) -> dict:
    """The columns that follow from the spec alone (no JAX needed)."""
    m, counts = spec.model, param_counts(**dataclasses.asdict(spec.model))
    return {
        "run_id": spec.run_id, "sweep": spec.sweep, "seed": spec.seed, "data_seed": spec.data.data_seed,
        "grid": spec.grid, "n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "d_ff": m.d_ff,
        "vocab_size": m.vocab_size, "seq_len": m.seq_len, "n_params": counts.n_params,
        "n_params_nonembed": counts.n_params_nonembed, "n_params_embed": counts.n_params_embed,
        "batch_tokens": spec.batch_size * m.seq_len, "target_tokens": spec.steps * spec.batch_size * m.seq_len,
        "flops_convention": FLOPS_CONVENTION,
        "flops_budget": spec.flops_budget if spec.flops_budget is not None else math.nan, "pack_size": 1,
        "branched_from": None, "branch_step": None,  # set where a run resumes from its trunk's seed
        "lr_source": spec.lr_source, "stage": spec.stage, "lr_peak": spec.optim.lr,
        # Known from the spec when set (whole windows of seq_len); else the split's size, which the run sets.
        "unique_tokens": None if spec.data.unique_tokens is None else spec.data.unique_tokens // m.seq_len * m.seq_len,
        "recipe": spec.data.recipe.name if spec.data.recipe is not None else None,
    }


def write_failure(spec: RunSpec, out_dir: str | Path, status: str, error: str) -> None:
    """Mark a run failed (or diverged) even when it died before training started."""
    path = run_dir(out_dir, spec.run_id)
    summary = path / "summary.parquet"
    row = read_rows(summary)[0] if read_status(path) else {**base_row(spec), "step": 0, "tokens": 0}
    write_rows(summary, [{**row, "status": status, "error": error}])


# errno values that say the results folder, not the run, is at fault, as the user should read them.
_STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}


def storage_problem(error: BaseException) -> str | None:
    """'no space left on the device (writing <file>)' and the like, when `error` or an exception it
    was raised from is a storage error: orbax reports a full disk as a ValueError whose text carries
    the OS error, pyarrow as an OSError, Python's own writes as OSError with the errno set."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            where = f" (writing {error.filename})" if error.filename else ""
            return _STORAGE_ERRNOS[error.errno] + where
        text = str(error)
        for code, phrase in _STORAGE_ERRNOS.items():
            if os.strerror(code) in text or f"[Errno {code}]" in text:
                return f"{phrase} (while writing the run's records or checkpoint)"
        error = error.__cause__ or error.__context__
    return None


def error_line(error: BaseException) -> str:
    """The one line that the records and the sweep's report give for a run's error."""
    problem = storage_problem(error)
    if problem:
        return problem
    return f"{type(error).__name__}: {error}".splitlines()[0][:400]


def record_error(spec: RunSpec, out_dir: str | Path, error: BaseException) -> str:
    """Mark a run failed by the exception being handled: its traceback in the run's error.txt, its
    first line (returned) in the  A full or read-only disk may refuse either write: the
    temporary files of the failed write are removed first (they would keep a disk full), and what
    cannot be written is left out; the returned line still reaches the sweep's report."""
    message = error_line(error)
    path = run_dir(out_dir, spec.run_id)
    remove_temporaries(path)
    try:
        write_text(path / "error.txt", traceback.format_exc())
    except OSError:
        pass
    try:
        write_failure(spec, out_dir, "failed", message)
    except OSError as e:
        return f"{message}; the failure could not be recorded either ({error_line(e)})"
    return message
