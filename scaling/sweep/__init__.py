"""Sweep files -> validated, immutable run specs: the TOML reader, grids and the shape rule, branch
and pack plans. Imports no training code.

    from scaling.sweep import load_sweep
    sweep = load_sweep("sweeps/kaplan.toml")   # SweepConfig: its runs (RunSpec), launcher settings
"""

from scaling.sweep.reader import SweepConfig, check_devices, check_runs, load_sweep

__all__ = ["SweepConfig", "check_devices", "check_runs", "load_sweep"]
