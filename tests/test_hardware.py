"""Peak FLOP/s: the device table, the measured probe and its cache, MFU."""

import json

import jax
import pytest

from scaling import hardware
from scaling.hardware import Peak, mfu, peak_flops, table_peak


@pytest.mark.parametrize(
    "kind, dtype, flops, rate",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4e12, "bf16"),
        ("NVIDIA H100 80GB HBM3", "float32", 494.7e12, "tf32"),
        ("NVIDIA H100 PCIe", "bfloat16", 756e12, "bf16"),
        ("NVIDIA H200", "bfloat16", 989.4e12, "bf16"),
        ("NVIDIA H200 NVL", "bfloat16", 835.5e12, "bf16"),
        ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12, "bf16"),
        ("NVIDIA A100-SXM4-80GB", "float32", 156e12, "tf32"),
        ("NVIDIA A100 80GB PCIe", "bfloat16", 312e12, "bf16"),
        ("NVIDIA A100-PCIE-40GB", "bfloat16", 312e12, "bf16"),
        ("NVIDIA L4", "bfloat16", 121e12, "bf16"),
        ("NVIDIA L4", "float32", 60e12, "tf32"),
        ("TPU v4", "bfloat16", 275e12, "bf16"),
        ("TPU v5 lite", "bfloat16", 197e12, "bf16"),
        ("TPU v5p", "bfloat16", 459e12, "bf16"),
        ("TPU v5", "float32", 459e12, "bf16"),  # older libtpu's name; f32 runs as bf16 on TPU
        ("TPU v6 lite", "bfloat16", 918e12, "bf16"),
    ],
)
def test_table_lookup(kind, dtype, flops, rate):
    peak = table_peak(kind, dtype)
    assert peak.flops_per_second == flops
    assert peak.source.startswith("table:") and peak.source.endswith(f"{rate} dense")


@pytest.mark.parametrize("kind", ["cpu", "TPU v4 lite", "NVIDIA A10G", "NVIDIA H100 NVL", "Chip X"])
def test_table_does_not_guess(kind):
    assert table_peak(kind, "bfloat16") is None


def test_dtype_spellings():
    import jax.numpy as jnp

    kind = "NVIDIA H100 80GB HBM3"
    assert table_peak(kind, jnp.bfloat16) == table_peak(kind, "bf16") == table_peak(kind, "bfloat16")
    assert table_peak(kind, jnp.float32) == table_peak(kind, "fp32") == table_peak(kind, "float32")
    with pytest.raises(ValueError, match="int8"):
        table_peak(kind, "int8")


@pytest.fixture
def probe_calls(monkeypatch, tmp_path):
    """Replace the timed probe by a counter; keep the cache in a temp folder."""
    calls = []

    def fake_measure(dtype):
        calls.append(dtype)
        return Peak(2e11, "measured:cpu-matmul-f32-4096")

    monkeypatch.setattr(hardware, "_measure_matmul_peak", fake_measure)
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path))
    return calls


def test_known_accelerator_uses_the_table_times_devices(monkeypatch, probe_calls):
    monkeypatch.setattr(hardware, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    peak = peak_flops("bfloat16", n_devices=8)
    assert peak == Peak(8 * 989.4e12, "table:NVIDIA H100 SXM bf16 dense")
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert peak_flops("bfloat16").flops_per_second == 4 * 989.4e12
    assert probe_calls == []


def test_unknown_device_falls_back_to_the_cached_probe(monkeypatch, tmp_path, probe_calls):
    monkeypatch.setattr(hardware, "device_kind", lambda: "Chip X")
    first = peak_flops()
    assert first == Peak(2e11, "measured:cpu-matmul-f32-4096")
    assert len(probe_calls) == 1

    cache = json.loads((tmp_path / "peak_flops.json").read_text())
    (key,) = cache
    assert "jax=" in key and "cores=" in key and "host=" in key and "cpu=" in key
    assert cache[key]["flops_per_second"] == 2e11
    assert [p.name for p in tmp_path.iterdir()] == ["peak_flops.json"]  # no temp file left

    assert peak_flops() == first  # from the cache
    assert len(probe_calls) == 1
    peak_flops(refresh=True)
    assert len(probe_calls) == 2


def test_cpu_peak_is_not_multiplied_by_simulated_devices(monkeypatch, probe_calls):
    assert hardware._platform() == "cpu"
    assert peak_flops(n_devices=8).flops_per_second == 2e11
    # On a CPU the probe runs in float32 whatever the compute dtype, and shares the cache entry.
    assert peak_flops("bfloat16").flops_per_second == 2e11
    assert probe_calls == ["float32"]


def test_unknown_accelerator_probe_is_per_device(monkeypatch, probe_calls):
    monkeypatch.setattr(hardware, "device_kind", lambda: "NVIDIA Future GPU")
    monkeypatch.setattr(hardware, "_platform", lambda: "gpu")
    assert peak_flops("bfloat16", n_devices=2).flops_per_second == 4e11
    assert probe_calls == ["bfloat16"]


def test_cache_is_per_machine(monkeypatch, probe_calls):
    peak_flops()
    monkeypatch.setattr(hardware, "_cores_visible", lambda: 97)
    peak_flops()
    assert len(probe_calls) == 2
    peak_flops(cache_dir=None)
    assert len(probe_calls) == 2


def test_corrupt_cache_is_measured_again(tmp_path, probe_calls):
    (tmp_path / "peak_flops.json").write_text("{not json")
    assert peak_flops().flops_per_second == 2e11
    assert len(probe_calls) == 1
    assert json.loads((tmp_path / "peak_flops.json").read_text())


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("SCALING_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hardware._cache_path(None) == tmp_path / "xdg" / "scaling" / "peak_flops.json"
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path / "mine"))
    assert hardware._cache_path(None) == tmp_path / "mine" / "peak_flops.json"
    assert hardware._cache_path(tmp_path / "arg") == tmp_path / "arg" / "peak_flops.json"


def test_real_probe_measures_a_matmul(monkeypatch):
    # The real timing code on small matrices, so the test stays fast.
    monkeypatch.setitem(hardware._PROBE_SIZES, "cpu", (64, 128))
    peak = hardware._measure_matmul_peak("float32")
    assert peak.flops_per_second > 1e6
    assert peak.source in ("measured:cpu-matmul-f32-64", "measured:cpu-matmul-f32-128")


def test_mfu():
    assert mfu(2.5e11, Peak(1e12, "table:x")) == 0.25
    assert mfu(0.0, Peak(1e12, "table:x")) == 0.0
    with pytest.raises(ValueError):
        mfu(1.0, Peak(0.0, "measured:cpu-matmul-f32-2048"))
