"""Peak FLOP/s of the devices a run uses, the denominator of MFU.

Known accelerators: a table of vendor-quoted dense (not 2:4-sparse) peaks per device, matched on
`jax.Device.device_kind`. Anything else (a CPU, an accelerator missing from the table): a short
measured probe, the best rate of large square matmuls through XLA, cached per machine.
`Peak.source` says which, and goes into the records' `peak_flops_source` column.

Which column of the table a dtype reads:

- "bfloat16" (also "float16"): the 16-bit tensor-core / MXU rate.
- "float32": the rate at which JAX runs float32 matmuls by default. JAX's default precision rounds
  float32 dot products to TF32 on NVIDIA Ampere and newer and to bfloat16 passes on TPU (JAX docs,
  "Matmul precision"), so the column holds NVIDIA's TF32 tensor-core figure and, for TPUs (Google
  quotes no float32 figure), the bfloat16 one; `source` names the rate used ("tf32", "bf16"). Under
  `jax_default_matmul_precision="highest"` the true float32 rates, lower by 8x to 16x, apply
  instead; they are in the comments beside each row.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of all devices of a run, and where the figure comes from.

    source: "table:<device> <rate> dense" for a table entry (per-device peak x device count),
        "measured:<platform>-matmul-<dtype>-<size>" for the probe.
    """

    flops_per_second: float
    source: str


@dataclass(frozen=True)
class _Row:
    name: str  # the part as its datasheet names it
    kinds: tuple[str, ...]  # regular expressions, matched in full against the lower-cased kind
    bf16: float  # dense FLOP/s per JAX device
    fp32: float  # dense FLOP/s per JAX device of float32 matmuls at JAX's default precision
    fp32_rate: str  # what the fp32 column is: "tf32" (NVIDIA tensor cores) or "bf16" (TPU MXU)


# Per JAX device, dense. NVIDIA datasheets print the tensor-core rates "with sparsity" (2:4
# structured sparsity doubles them); the dense rate is half of that figure, as the footnotes say.
# Rows are tried in order; the first that matches wins.
_TABLE: tuple[_Row, ...] = (
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 and PCIe, 40GB and 80GB alike): BF16 312 TFLOPS,
    # TF32 156 TFLOPS dense (624 / 312 with sparsity); FP32 (no tensor cores) 19.5 TFLOPS.
    _Row("NVIDIA A100", (r"nvidia a100[- ].*",), 312e12, 156e12, "tf32"),
    # NVIDIA H100 Tensor Core GPU datasheet and architecture whitepaper, H100 SXM5:
    # BF16 989.4 TFLOPS, TF32 494.7 TFLOPS dense (1,979 / 989 with sparsity); FP32 67 TFLOPS.
    # JAX names the SXM part "NVIDIA H100 80GB HBM3".
    _Row("NVIDIA H100 SXM", (r"nvidia h100 80gb hbm3", r"nvidia h100 sxm.*"), 989.4e12, 494.7e12,
         "tf32"),
    # Same datasheet, H100 PCIe: BF16 756 TFLOPS, TF32 378 TFLOPS dense (1,513 / 756 with
    # sparsity); FP32 51 TFLOPS. (H100 NVL is left out: its datasheet figures changed between
    # editions; it falls back to the probe.)
    _Row("NVIDIA H100 PCIe", (r"nvidia h100 pcie.*",), 756e12, 378e12, "tf32"),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: the H100 SXM5 GPU's rates,
    # BF16 1,979 / TF32 989 TFLOPS with sparsity -> 989.4 / 494.7 dense.
    _Row("NVIDIA GH200", (r"nvidia gh200.*",), 989.4e12, 494.7e12, "tf32"),
    # NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: BF16 1,671 / TF32 835 TFLOPS with
    # sparsity -> 835.5 / 417.5 dense; FP32 60 TFLOPS. Before the SXM row, which would match too.
    _Row("NVIDIA H200 NVL", (r"nvidia h200 nvl.*",), 835.5e12, 417.5e12, "tf32"),
    # Same datasheet, H200 SXM: BF16 1,979 / TF32 989 TFLOPS with sparsity -> 989.4 / 494.7
    # dense (the H100 SXM5's compute); FP32 67 TFLOPS.
    _Row("NVIDIA H200 SXM", (r"nvidia h200.*",), 989.4e12, 494.7e12, "tf32"),
    # NVIDIA L4 Tensor Core GPU datasheet: BF16 242 / TF32 120 TFLOPS with sparsity -> 121 / 60
    # dense; FP32 30.3 TFLOPS.
    _Row("NVIDIA L4", (r"nvidia l4",), 121e12, 60e12, "tf32"),
    # NVIDIA L40S GPU datasheet: BF16 733 / TF32 366 TFLOPS with sparsity -> 362.05 / 183 dense;
    # FP32 91.6 TFLOPS.
    _Row("NVIDIA L40S", (r"nvidia l40s",), 362.05e12, 183e12, "tf32"),
    # NVIDIA A10 Tensor Core GPU datasheet: BF16 250 / TF32 125 TFLOPS with sparsity -> 125 / 62.5
    # dense; FP32 31.2 TFLOPS. (The A10G is a different AWS part, not matched.)
    _Row("NVIDIA A10", (r"nvidia a10",), 125e12, 62.5e12, "tf32"),
    # Google Cloud TPU documentation (system architecture; v4, v5e, v5p, v6e pages), bf16 per chip.
    # TPU MXUs have no float32 rate: float32 matmuls at JAX's default precision run as one bfloat16
    # pass, so the fp32 column repeats the bf16 figure. v2 and v3 show each of a chip's two
    # TensorCores as its own JAX device, so their rows hold half a chip; v4 and later (megacore or
    # one TensorCore per chip) show one device per chip.
    _Row("Google TPU v2 (per core)", (r"tpu v2",), 22.5e12, 22.5e12, "bf16"),  # 45 TFLOPS/chip
    _Row("Google TPU v3 (per core)", (r"tpu v3",), 61.5e12, 61.5e12, "bf16"),  # 123 TFLOPS/chip
    _Row("Google TPU v4", (r"tpu v4",), 275e12, 275e12, "bf16"),  # not "TPU v4 lite" (v4i)
    _Row("Google TPU v5e", (r"tpu v5 lite", r"tpu v5e"), 197e12, 197e12, "bf16"),
    # Older libtpu names the v5p "TPU v5".
    _Row("Google TPU v5p", (r"tpu v5p", r"tpu v5"), 459e12, 459e12, "bf16"),
    _Row("Google TPU v6e", (r"tpu v6 lite", r"tpu v6e"), 918e12, 918e12, "bf16"),
)

_DTYPE_COLUMN = {
    "bfloat16": "bf16", "bf16": "bf16", "float16": "bf16", "fp16": "bf16", "f16": "bf16",
    "float32": "fp32", "fp32": "fp32", "f32": "fp32", "tf32": "fp32",
}

# The probe: square matmuls of these sizes, each timed this many times after a warm-up, the best
# time kept. On a CPU one 4096^3 matmul is 137 GFLOP, about half a second on two cores; the
# budget stops the repetitions early on a slower machine so the probe stays within ~10 s.
_PROBE_SIZES = {"cpu": (2048, 4096), "accelerator": (4096, 8192)}
_PROBE_REPEATS = 5
_PROBE_BUDGET_SECONDS = 8.0
# On an accelerator one matmul takes well under a millisecond: chain this many in one jitted call
# so dispatch overhead does not count.
_PROBE_CHAIN = {"cpu": 1, "accelerator": 16}
_CACHE_FILE = "peak_flops.json"


def device_kind() -> str:
    """`device_kind` of the first JAX device, e.g. "NVIDIA H100 80GB HBM3", "TPU v5 lite", "cpu"."""
    return jax.devices()[0].device_kind


def _platform() -> str:
    return jax.devices()[0].platform


def table_peak(kind: str, dtype: str = "float32") -> Peak | None:
    """The table's dense peak of one device of `kind`, or None when the table does not know it."""
    column = _dtype_column(dtype)
    normalized = " ".join(kind.lower().split())
    for row in _TABLE:
        if any(re.fullmatch(pattern, normalized) for pattern in row.kinds):
            if column == "bf16":
                return Peak(row.bf16, f"table:{row.name} bf16 dense")
            return Peak(row.fp32, f"table:{row.name} {row.fp32_rate} dense")
    return None


def peak_flops(
    dtype: str = "float32",
    *,
    n_devices: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    refresh: bool = False,
) -> Peak:
    """Peak FLOP/s of a run on `n_devices` devices (default: `jax.device_count()`, all hosts).

    A device kind in the table: the per-device figure x n_devices. Otherwise the measured probe
    (cached; `refresh=True` measures again). On a CPU the probe's rate is the whole host's and is
    NOT multiplied by n_devices: simulated CPU devices (--xla_force_host_platform_device_count)
    share the same cores, and XLA:CPU's matmul already uses all of them from one device. On an
    unknown accelerator the probe measures one device, multiplied by n_devices.
    """
    kind = device_kind()
    n_devices = jax.device_count() if n_devices is None else int(n_devices)
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    per_device = table_peak(kind, dtype)
    if per_device is not None:
        return Peak(per_device.flops_per_second * n_devices, per_device.source)

    on_cpu = _platform() == "cpu"
    # XLA:CPU has no faster 16-bit matmul path worth a separate probe; on a CPU the peak is the
    # float32 rate whatever the compute dtype.
    probe_dtype = "float32" if on_cpu else _canonical_dtype(dtype)
    measured = _cached_probe(kind, probe_dtype, _cache_path(cache_dir), refresh)
    if on_cpu:
        return measured
    return Peak(measured.flops_per_second * n_devices, measured.source)


def mfu(achieved_flops_per_second: float, peak: Peak) -> float:
    """Model FLOPs utilization: achieved model FLOP/s / peak FLOP/s (PaLM, Chowdhery et al. 2022)."""
    if not peak.flops_per_second > 0:
        raise ValueError(f"peak FLOP/s must be positive, got {peak.flops_per_second!r}")
    return float(achieved_flops_per_second) / peak.flops_per_second


def _dtype_column(dtype) -> str:
    name = str(getattr(dtype, "name", dtype)).lower()
    if name not in _DTYPE_COLUMN:
        try:
            name = jnp.dtype(dtype).name
        except TypeError:
            pass
    try:
        return _DTYPE_COLUMN[name]
    except KeyError:
        raise ValueError(
            f"no peak for dtype {dtype!r}: expected one of {sorted(_DTYPE_COLUMN)}"
        ) from None


def _canonical_dtype(dtype) -> str:
    return "bfloat16" if _dtype_column(dtype) == "bf16" else "float32"


# --- the measured probe -------------------------------------------------------------------------


def _cache_path(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("SCALING_CACHE_DIR")
    if not cache_dir:
        xdg = os.environ.get("XDG_CACHE_HOME")
        cache_dir = Path(xdg) / "scaling" if xdg else Path.home() / ".cache" / "scaling"
    return Path(cache_dir) / _CACHE_FILE


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores_visible() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _machine_key(kind: str, dtype: str) -> str:
    # What changes the measured rate: the machine, the CPU, the XLA that compiles the matmul, the
    # cores this process may use, and (for an unknown accelerator) the device and dtype.
    return " | ".join((
        f"host={socket.gethostname()}",
        f"cpu={_cpu_model()}",
        f"jax={jax.__version__}",
        f"cores={_cores_visible()}",
        f"device={kind}",
        f"dtype={dtype}",
    ))


def _read_cache(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError):  # absent or unreadable: measure again and rewrite it
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    # Temp file in the same folder, then os.replace: a reader sees the old file or the new one,
    # never half of one. Two processes measuring at once: the last write wins, both are valid.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _cached_probe(kind: str, dtype: str, path: Path, refresh: bool) -> Peak:
    key = _machine_key(kind, dtype)
    entries = _read_cache(path)
    entry = entries.get(key)
    if not refresh and isinstance(entry, dict):
        try:
            return Peak(float(entry["flops_per_second"]), str(entry["source"]))
        except (KeyError, TypeError, ValueError):
            pass  # a malformed entry: measure again
    start = time.perf_counter()
    peak = _measure_matmul_peak(dtype)
    entries[key] = {
        "flops_per_second": peak.flops_per_second,
        "source": peak.source,
        "probe_seconds": round(time.perf_counter() - start, 3),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        _write_cache(path, entries)
    except OSError as error:  # a read-only home must not stop a run; it only costs a re-measure
        warnings.warn(f"could not cache the peak FLOP/s probe in {path}: {error}", stacklevel=3)
    return peak


def _measure_matmul_peak(dtype: str, sizes: tuple[int, ...] | None = None) -> Peak:
    """Best FLOP/s of square matmuls on the first device, over sizes and repetitions.

    Each size (`sizes`, default _PROBE_SIZES) is compiled and run once (warm-up), then timed up to
    _PROBE_REPEATS times with block_until_ready; the best time of each size gives its rate and the
    best rate wins. Best, not mean: the peak is what the hardware can do, and noise only ever slows
    a run down.
    """
    kind = "cpu" if _platform() == "cpu" else "accelerator"
    chain = _PROBE_CHAIN[kind]
    jnp_dtype = jnp.dtype(dtype)
    short = {"float32": "f32", "bfloat16": "bf16"}[jnp_dtype.name]

    @jax.jit
    def chained_matmuls(a, b):
        # A chain of dependent matmuls; b is scaled by 1/sqrt(n) so values stay O(1).
        return jax.lax.fori_loop(0, chain, lambda _, x: x @ b, a)

    deadline = time.perf_counter() + _PROBE_BUDGET_SECONDS
    best_rate, best_size = 0.0, 0
    for size in sizes or _PROBE_SIZES[kind]:
        key_a, key_b = jax.random.split(jax.random.key(size))
        a = jax.random.normal(key_a, (size, size), jnp.float32).astype(jnp_dtype)
        b = (jax.random.normal(key_b, (size, size), jnp.float32) / size**0.5).astype(jnp_dtype)
        chained_matmuls(a, b).block_until_ready()  # compile and warm up
        flops = 2.0 * size**3 * chain
        for _ in range(_PROBE_REPEATS):
            started = time.perf_counter()
            chained_matmuls(a, b).block_until_ready()
            rate = flops / (time.perf_counter() - started)
            if rate > best_rate:
                best_rate, best_size = rate, size
            if time.perf_counter() > deadline:
                break
        if time.perf_counter() > deadline:
            break
    return Peak(best_rate, f"measured:{_platform()}-matmul-{short}-{best_size}")
