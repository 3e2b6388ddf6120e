"""Training behaviour a user relies on: accumulation, resume, determinism, records, divergence."""

import dataclasses
import math

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import tiny_sweep
from scaling import records
from scaling.training import sharding as shd
from scaling.training import step as tr
from scaling.config import MeshConfig, eval_steps
from scaling.data.batches import Batcher
from scaling.data.sources import open_source
from scaling.training.run import Halt, run_and_record, train_run
from scaling.sweep.reader import load_sweep


def _losses(spec, n_steps=3):
    mesh = shd.make_mesh(MeshConfig(size=1))
    program = tr.build_program(spec, mesh)
    params = program.init_params()
    opt_state = program.init_opt_state(params)
    source = open_source("stdlib")
    batcher = Batcher(source.train, spec.model.seq_len, spec.batch_size, 0)
    shape = (program.n_micro, spec.batch_size // program.n_micro, spec.model.seq_len + 1)
    out = []
    for s in range(n_steps):
        batch = tr.to_global(tr.micro_batches(batcher.batch(s), 1, program.n_micro), shd.batch_sharding(mesh), shape)
        params, opt_state, m = program.train_step(params, opt_state, batch)
        out.append(float(m["loss"]))
    return np.array(out), program.n_micro


def test_accumulation_equals_full_batch(tmp_path):
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    full, n_full = _losses(spec)
    accumulated, n_acc = _losses(dataclasses.replace(spec, train=dataclasses.replace(spec.train, micro_batch=2)))
    assert (n_full, n_acc) == (1, 4)
    assert np.all(np.isfinite(full))
    np.testing.assert_allclose(accumulated, full, rtol=0, atol=1e-5)
    assert full[-1] < full[0]  # it learns


def test_cpu_default_micro_batch_keeps_the_losses(tmp_path):
    # micro_batch = 0 on a CPU splits the batch into micro-batches of at most 256 tokens (for
    # speed); the losses are those of the whole batch in one pass, to float noise.
    assert tr.default_micro_batch(32, 64, "cpu") == 4  # kaplan, per core: 8 micro-steps of 256 tokens
    assert tr.default_micro_batch(64, 64, "gpu") == 64
    assert tr.default_micro_batch(10, 64, "cpu") == 2  # the largest divisor within the limit
    assert tr.default_micro_batch(4, 2048, "cpu") == 1
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    train = dataclasses.replace(spec.train, batch_tokens=2048, tokens=3 * 2048)
    auto, n_auto = _losses(dataclasses.replace(spec, train=train))
    whole, n_whole = _losses(dataclasses.replace(spec, train=dataclasses.replace(train, micro_batch=128)))
    assert (n_auto, n_whole) == (8, 1)
    np.testing.assert_allclose(auto, whole, rtol=0, atol=1e-5)


def test_training_is_deterministic_and_resume_is_bitwise(tmp_path):
    sweep = load_sweep(tiny_sweep(tmp_path), device_count=1)
    spec = sweep.runs[0]
    assert spec.steps == 25
    whole = train_run(spec, tmp_path / "a")
    with pytest.raises(Halt):
        train_run(spec, tmp_path / "b", halt_at=10)
    partial = pq.read_table(records.run_dir(tmp_path / "b", spec.run_id) / "history.parquet").to_pandas()
    assert partial["step"].max() < spec.steps
    resumed = train_run(spec, tmp_path / "b")
    assert resumed["status"] == whole["status"] == "complete"
    for key in ("train_loss", "val_loss", "val_entropy", "val_ece", "grad_norm"):
        assert resumed[key] == whole[key], key  # bitwise on CPU
    ha = pq.read_table(records.run_dir(tmp_path / "a", spec.run_id) / "history.parquet").to_pandas()
    hb = pq.read_table(records.run_dir(tmp_path / "b", spec.run_id) / "history.parquet").to_pandas()
    assert list(ha["step"]) == list(hb["step"]) == eval_steps(spec.steps, spec.train.eval_points)
    assert list(ha["val_loss"]) == list(hb["val_loss"])
    # Completed runs leave no checkpoints behind unless asked to.
    assert not (records.run_dir(tmp_path / "a", spec.run_id) / "checkpoints").exists()


def test_unreadable_checkpoint_is_an_error_not_a_restart(tmp_path):
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    out = tmp_path / "out"
    with pytest.raises(Halt):
        train_run(spec, out, halt_at=10)
    ckpt = records.run_dir(out, spec.run_id) / "checkpoints"
    for f in ckpt.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    result = run_and_record(spec, out)
    assert result["status"] == "failed"
    assert "cannot be read" in result["error"] and "delete" in result["error"]
    summary = pq.read_table(records.run_dir(out, spec.run_id) / "summary.parquet").to_pylist()[0]
    assert summary["status"] == "failed" and "cannot be read" in summary["error"]
    # The history written before the failure is kept, not reset.
    assert pq.read_table(records.run_dir(out, spec.run_id) / "history.parquet").num_rows >= 1


def test_records_schema_and_values(tmp_path):
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    out = tmp_path / "out"
    train_run(spec, out)
    path = records.run_dir(out, spec.run_id)
    assert {p.name for p in path.iterdir()} >= {"config.json", "history.parquet", "summary.parquet"}
    for name in ("history.parquet", "summary.parquet"):
        schema = pq.read_schema(path / name)
        for field in records.SCHEMA:
            assert schema.field(field.name).type == field.type, (name, field.name)
    summary = pq.read_table(path / "summary.parquet").to_pylist()
    assert len(summary) == 1
    s = summary[0]
    assert s["status"] == "complete" and s["error"] is None
    assert s["tokens"] == spec.steps * spec.batch_size * spec.model.seq_len == s["target_tokens"]
    assert s["flops_6nd"] == 6 * s["n_params_nonembed"] * s["tokens"]
    assert s["flops"] > s["flops_6nd"]  # attention and the output layer are counted
    assert s["n_params"] == s["n_params_nonembed"] + s["n_params_embed"]
    # A byte is a token, but the end-of-document NUL is no text byte: bits per byte are bits per token
    # times tokens / bytes of the windows scored (equal where no NUL is among their targets).
    assert s["val_loss"] / math.log(2) <= s["val_bits_per_byte"] < s["val_loss"] / math.log(2) * 1.1
    assert 0 < s["val_entropy"] < math.log(256) and 0 <= s["val_ece"] <= 1
    assert 0 < s["mfu"] < 1 and s["tokens_per_second"] > 0 and s["peak_flops"] > 0
    assert s["n_devices"] == 1 and s["mesh"] == "dp:data=1"
    hist = pq.read_table(path / "history.parquet").to_pandas()
    assert hist["tokens"].is_monotonic_increasing and hist["flops"].is_monotonic_increasing
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0] < math.log(256) + 0.5


def test_divergence_is_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = load_sweep(tiny_sweep(tmp_path, lr=1e6, train_extra="entropy_coef = -50.0"), device_count=1)
    result = run_and_record(sweep.runs[0], sweep.out_dir)
    assert result["status"] == "diverged", result
    summary = pq.read_table(records.run_dir(sweep.out_dir, sweep.runs[0].run_id) / "summary.parquet").to_pylist()[0]
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]


def test_eval_steps_are_log_spaced_and_end_at_the_last_step():
    steps = eval_steps(1000, 10)
    assert steps[0] == 1 and steps[-1] == 1000 and steps == sorted(set(steps))
    ratios = np.diff(np.log(steps))
    assert ratios.max() < 1.0


def test_schedules():
    from scaling.config import OptimConfig
    cos = tr.lr_schedule(OptimConfig(lr=1.0, warmup=0.1, min_lr_ratio=0.1, schedule="cosine"), 100)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(9)) == pytest.approx(1.0)
    assert float(cos(99)) == pytest.approx(0.1)
    wsd = tr.lr_schedule(OptimConfig(lr=1.0, warmup=0.0, decay=0.2, min_lr_ratio=0.0, schedule="wsd"), 100)
    assert float(wsd(50)) == 1.0 and float(wsd(79)) == 1.0 and float(wsd(99)) == pytest.approx(0.0)
    assert float(wsd(89)) == pytest.approx(1 - math.sqrt(10 / 20))


def test_runs_of_one_shape_share_one_compiled_step(tmp_path):
    """Length, learning rate, weight decay and seed are inputs of the compiled step and initialiser,
    not constants: a second run of the same shape finds the first one's programs in the cache."""
    spec = load_sweep(tiny_sweep(tmp_path), device_count=1).runs[0]
    other = dataclasses.replace(spec, seed=7, optim=dataclasses.replace(spec.optim, lr=1e-2, weight_decay=0.3),
                                train=dataclasses.replace(spec.train, tokens=spec.train.tokens * 3))
    assert other.steps != spec.steps
    mesh = shd.make_mesh(MeshConfig(size=1))

    def lowered(s):
        program = tr.build_program(s, mesh)
        params = jax.eval_shape(program.init_params)
        opt = jax.eval_shape(program.init_opt_state, params)
        batch = jax.ShapeDtypeStruct((program.n_micro, s.batch_size // program.n_micro, s.model.seq_len + 1),
                                     np.int32)
        return program.jitted_step.lower(params, opt, batch, program.hyper).as_text()

    assert lowered(spec) == lowered(other)
    # The values still act: a different learning rate trains differently.
    assert not np.allclose(_losses(spec, 3)[0], _losses(dataclasses.replace(spec, optim=other.optim), 3)[0])


def test_evenly_spaced_evaluations_and_their_run_ids(tmp_path):
    """eval_spacing = "linear" spreads the evaluations evenly (the same resolution all along
    training); "log" is the default however it is written, so it keeps every run's id."""
    assert eval_steps(1000, 5, "linear") == [1, 251, 500, 750, 1000]
    steps = eval_steps(1000, 21, "linear")
    assert len(steps) == 21 and len(set(np.diff(steps))) <= 2  # 49 or 50 steps apart, rounding aside
    from scaling.sweep import load_sweep
    ids = {}
    for spacing in (None, "log", "linear"):
        extra = f'eval_spacing = "{spacing}"' if spacing else ""
        spec = load_sweep(tiny_sweep(tmp_path, train_extra=extra, name=f"s{spacing}.toml")).runs[0]
        ids[spacing] = spec.run_id
        assert spec.train.eval_steps(spec.steps) == eval_steps(spec.steps, spec.train.eval_points, spacing or "log")
    assert ids[None] == ids["log"] != ids["linear"]
    train_run(spec, tmp_path / "trained")  # the last one, linear: its history has those steps
    history = pq.read_table(records.run_dir(tmp_path / "trained", spec.run_id) / "history.parquet")
    assert history.column("step").to_pylist() == eval_steps(spec.steps, spec.train.eval_points, "linear")


def test_every_program_is_cached_also_in_a_cache_folder_the_user_named(monkeypatch, tmp_path):
    """JAX_COMPILATION_CACHE_DIR (or jax.config) may name the folder; the run's small programs are
    cached there too (JAX's default keeps only compiles of 1 s or more), unless the user set the
    threshold in the environment."""
    from scaling.training.loop import enable_compilation_cache

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 100)
        monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
        monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "100")
        enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        assert jax.config.jax_persistent_cache_min_entry_size_bytes == 100  # the user's, kept
    finally:
        for k, v in saved.items():
            jax.config.update(k, v)
