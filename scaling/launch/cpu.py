"""One JAX device per CPU core for runs that train on the CPU.

JAX shows a CPU as one device whose operations XLA splits over all cores. A training step of the
small models of a scaling sweep is thousands of small operations, and that split gains next to
nothing: on a 2-core machine the kaplan sweep's largest step ran as fast on one core as on two
(benchmarks/NOTES.md, "Step speed"). One device per core instead makes the CPU a data-parallel mesh:
each core trains its share of the batch's rows and the gradients are summed once per step
(`train.make_train_step`), so the cores work side by side instead of waiting on each other.

The local launcher gives each run its share of the cores, `cores // max_parallel` devices, lowered
to the most that every run of the sweep can split its batch over (`check_devices`), and passes it
to its run processes as JAX_NUM_CPU_DEVICES. A count the user chose wins: JAX_NUM_CPU_DEVICES or
XLA_FLAGS=--xla_force_host_platform_device_count=N in the environment is left alone. Only the CPU
backend reads this setting; on a machine with accelerators the runs use those.
"""

from __future__ import annotations

import os

ENV = "JAX_NUM_CPU_DEVICES"  # read by JAX itself (the jax_num_cpu_devices option)


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM task's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def chosen_by_user() -> bool:
    return ENV in os.environ or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")


def devices_per_run(specs, runs_at_once: int = 1, cores: int | None = None) -> int:
    """The CPU devices each of `runs_at_once` concurrent runs gets: its share of the cores, or fewer
    where one of `specs` cannot split its batch (or fit its mesh) over that many."""
    from scaling.config import ConfigError
    from scaling.sweep.reader import check_runs
    share = max(1, (cores or cores_available()) // max(1, runs_at_once))
    for n in range(share, 1, -1):
        try:
            check_runs("", specs, n)
            return n
        except ConfigError:
            continue
    return 1


def run_env(specs, runs_at_once: int) -> dict[str, str]:
    """The environment that gives a run process its CPU devices (`devices_per_run`); empty where
    the user chose a count."""
    return {} if chosen_by_user() else {ENV: str(devices_per_run(specs, runs_at_once))}


def configure(specs) -> int | None:
    """In this process, before JAX starts a backend: the CPU devices a lone run of `specs` gets.
    Returns the count, or None where the user chose one or a backend has already started."""
    import jax
    if chosen_by_user():
        return None
    n = devices_per_run(specs)
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # "should be updated before backends are initialized"
        return None
    return n
