#!/usr/bin/env bash
# Every figure of the sweep-efficiency work, one benchmark after another (7 to 12 minutes on two
# idle CPU cores): `make bench-efficiency`, or `bash benchmarks/efficiency.sh [BASELINE_REV]`.
# Each script prints its own table; benchmarks/NOTES.md records what they gave and why.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BASELINE=${1:-f231ae3}   # the revision before this work, for the step-speed comparison
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) on $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo; echo "## 1. step speed (MFU): bench_step.py --baseline $BASELINE --ceiling"
$PY benchmarks/bench_step.py --baseline "$BASELINE" --rounds 5 --ceiling
echo; echo "## 2. start-up: bench_startup.py sweeps/smoke.toml"
$PY benchmarks/bench_startup.py sweeps/smoke.toml
echo; echo "## 3. packed small models: bench_pack.py"
$PY benchmarks/bench_pack.py --steps 20 --rounds 3
echo; echo "## 4. WSD branching: bench_branch.py"
$PY benchmarks/bench_branch.py
echo; echo "## 5. scheduling and ETA: bench_schedule.py --workers 2"
$PY benchmarks/bench_schedule.py --workers 2
