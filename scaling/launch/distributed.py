"""Multi-host runs: one run spread over several processes (hosts), joined by `jax.distributed`.

Called by `scaling run` before anything else touches JAX (the device list is global after it).

- explicit: `--coordinator HOST:PORT --num-processes N --process-id I` (localhost tests, Kubernetes,
  any launcher that knows the ranks);
- `auto` (the default): `jax.distributed.initialize()` with no arguments when this process is one
  task of a SLURM step with more than one task (`srun`, or a submitit job with `tasks_per_node > 1`
  or `nodes > 1`); JAX reads the coordinator, rank and local GPU from the SLURM environment;
- `on`: `jax.distributed.initialize()` with no arguments whatever the environment (a Cloud TPU pod
  slice, Open MPI, or Kubernetes with JAX's own detection);
- `off`: one process (what the local launcher asks for its children, which would otherwise inherit
  the SLURM variables of an `salloc` shell).

On CPU, cross-process collectives go through gloo (JAX's default `jax_cpu_collectives_implementation`
since 0.4.3x; set here if a build defaults to none).
"""

from __future__ import annotations

import os

MODES = ("auto", "on", "off")


class DistributedError(Exception):
    pass


def slurm_tasks() -> int:
    """Tasks in this SLURM step (1 outside SLURM). The variables are those JAX's detection reads."""
    needed = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if not all(v in os.environ for v in needed):
        return 1
    try:
        return int(os.environ["SLURM_NTASKS"])
    except ValueError:
        return 1


def check_flags(mode: str = "auto", *, coordinator: str | None = None, num_processes: int | None = None,
                process_id: int | None = None) -> None:
    """Raises DistributedError for multi-host flags that do not go together (before anything else of
    the run is looked at)."""
    explicit = (coordinator, num_processes, process_id)
    if all(x is None for x in explicit):
        return
    if any(x is None for x in explicit):
        raise DistributedError("--coordinator, --num-processes and --process-id go together")
    if mode == "off":
        raise DistributedError("--distributed off contradicts --coordinator")
    if not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id must be in [0, {num_processes}), got {process_id}")
    if ":" not in coordinator:
        raise DistributedError(f"--coordinator must be HOST:PORT, got {coordinator!r}")


def initialize(mode: str = "auto", *, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: int = 300) -> bool:
    """Join the other processes of this run, if there are any. Returns True if JAX is now multi-process.

    Raises DistributedError for flags that do not go together."""
    check_flags(mode, coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    explicit = (coordinator, num_processes, process_id)
    if all(x is None for x in explicit) and (mode == "off" or (mode == "auto" and slurm_tasks() <= 1)):
        return False

    import jax
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout_s)
    else:
        jax.distributed.initialize(initialization_timeout=timeout_s)
    return jax.process_count() > 1
