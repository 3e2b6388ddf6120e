"""Every weight's logical axes map to mesh axes under every preset; and the same losses on 1 device
and on a 4-device fsdp, dp or fsdp_tp mesh (simulated CPU devices)."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import jax
import optax
import pytest
from flax import nnx

from conftest import REPO, tiny_sweep
from scaling import model
from scaling.config import MESH_AXES, MESH_PRESETS, ModelConfig
from scaling.training import sharding as shd

CFG = ModelConfig(n_layer=2, d_model=64, n_head=4, d_ff=256, vocab_size=256, seq_len=32)


def _state(cfg: ModelConfig):
    return model.abstract_model(cfg)[1]


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_has_logical_axes_that_every_preset_maps(tie):
    cfg = dataclasses.replace(CFG, tie_embeddings=tie)
    state = _state(cfg)
    axes = shd.logical_axes(state)
    names = {"/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(state)}
    assert set(axes) == names and ("lm_head/kernel" in names) == (not tie)
    used = {a for logical in axes.values() for a in logical}
    for preset in MESH_PRESETS:
        table = shd.LOGICAL_TO_MESH[preset]
        assert set(table) == used, (preset, set(table) ^ used)  # an explicit entry per axis, none stale
        assert {m for m in table.values() if m is not None} <= set(MESH_AXES[preset]), preset
        sizes = dict.fromkeys(MESH_AXES[preset], 2)
        mesh = SimpleNamespace(axis_names=MESH_AXES[preset], shape=sizes)
        for name, logical in axes.items():
            shd.partition_spec(name, logical, (64,) * len(logical), mesh, preset)


def test_a_parameter_without_logical_axes_is_an_error():
    class Unannotated(nnx.Module):
        def __init__(self):
            self.renamed_fc = nnx.Linear(4, 8, rngs=nnx.Rngs(0))

    with pytest.raises(ValueError, match="renamed_fc/bias"):
        shd.logical_axes(nnx.state(Unannotated(), nnx.Param))


def test_a_logical_axis_missing_from_a_preset_is_an_error(monkeypatch):
    monkeypatch.setitem(shd.LOGICAL_TO_MESH, "fsdp", {k: v for k, v in shd.LOGICAL_TO_MESH["fsdp"].items()
                                                      if k != "mlp"})
    mesh = SimpleNamespace(axis_names=("fsdp",), shape={"fsdp": 4})
    with pytest.raises(ValueError, match=r"blocks/0/fc/kernel: logical axis 'mlp' has no entry in the fsdp"):
        shd.partition_spec("blocks/0/fc/kernel", shd.logical_axes(_state(CFG))["blocks/0/fc/kernel"], (64, 256),
                           mesh, "fsdp")


def test_tensor_parallel_specs_are_megatron_style():
    cfg = dataclasses.replace(CFG, vocab_size=257, tie_embeddings=False)
    state = _state(cfg)
    axes = shd.logical_axes(state)
    shapes = {"/".join(str(k) for k in path): v.shape for path, v in nnx.to_flat_state(state)}
    spec = lambda name, mesh, preset: tuple(shd.partition_spec(name, axes[name], shapes[name], mesh, preset))
    tp = SimpleNamespace(axis_names=("data", "fsdp", "tensor"), shape={"data": 1, "fsdp": 2, "tensor": 2})
    expected = {
        "blocks/0/qkv/kernel": ("fsdp", "tensor"), "blocks/0/qkv/bias": ("tensor",),  # column-parallel
        "blocks/0/proj/kernel": ("tensor", "fsdp"),  # row-parallel
        "blocks/0/proj/bias": (),  # added after the all-reduce: replicated
        "blocks/0/fc/kernel": ("fsdp", "tensor"), "blocks/0/fc/bias": ("tensor",),
        "blocks/0/fc_proj/kernel": ("tensor", "fsdp"), "blocks/0/fc_proj/bias": (),
        "wpe/embedding": (None, "fsdp"), "blocks/0/ln1/scale": (), "ln_f/bias": (),
        # vocabulary-parallel where the tensor axis divides the vocabulary; 257 does not
        "wte/embedding": (None, "fsdp"), "lm_head/kernel": ("fsdp", None),
    }
    assert {name: spec(name, tp, "fsdp_tp") for name in expected} == expected
    divisible = shd.partition_spec("wte/embedding", ("vocab", "embed"), (256, 64), tp, "fsdp_tp")
    assert tuple(divisible) == ("tensor", "fsdp")
    fsdp_only = SimpleNamespace(axis_names=("fsdp",), shape={"fsdp": 4})
    assert spec("blocks/0/fc/kernel", fsdp_only, "fsdp") == ("fsdp", None)  # the model-width side
    assert spec("blocks/0/fc_proj/kernel", fsdp_only, "fsdp") == (None, "fsdp")
    assert spec("blocks/0/fc/bias", fsdp_only, "fsdp") == ()
    dp = SimpleNamespace(axis_names=("data",), shape={"data": 4})
    assert all(spec(name, dp, "dp") == () for name in axes)


def test_optimizer_state_takes_the_shardings_of_the_parameters_it_mirrors():
    mesh = jax.make_mesh((1,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,))
    state = _state(CFG)
    params = shd.param_shardings(state, mesh, "fsdp")
    flat = {"/".join(str(k) for k in path): jax.ShapeDtypeStruct(v.shape, v.dtype)
            for path, v in nnx.to_flat_state(state)}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt = shd.optimizer_shardings(jax.eval_shape(tx.init, flat), params, mesh)
    adam = opt[1][0]
    assert adam.mu == params and adam.nu == params and tuple(adam.mu["blocks/0/fc/kernel"].spec) == ("fsdp", None)
    assert tuple(adam.count.spec) == ()
    with pytest.raises(ValueError, match="mirrors no parameter"):
        shd.optimizer_shardings({"stray": jax.ShapeDtypeStruct((3,), "float32")}, params, mesh)

SCRIPT = textwrap.dedent(r"""
    import dataclasses, json, re, sys
    import jax
    from scaling.training import sharding as shd, step as tr
    from scaling.config import MeshConfig
    from scaling.data.batches import Batcher
    from scaling.data.sources import open_source
    from scaling.sweep.reader import load_sweep

    def all_reduces(hlo):
        # (all-reduces in the loop over micro-batches, all-reduces in all) of a compiled module
        comps, cur = {}, None
        for line in hlo.splitlines():
            m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
            if m:
                cur = m.group(1)
                comps[cur] = []
            elif cur:
                comps[cur].append(line)
        called = lambda c: re.findall(r"(?:body|calls|to_apply|condition)=%([\w.\-]+)", "\n".join(comps.get(c, [])))
        loop = set(re.findall(r"body=%([\w.\-]+)", hlo))
        todo = list(loop)
        while todo:
            for c in called(todo.pop()):
                if c not in loop:
                    loop.add(c)
                    todo.append(c)
        count = lambda cs: sum(" all-reduce(" in l or " all-reduce-start(" in l for c in cs for l in comps.get(c, []))
        return count(loop), count(comps)

    assert jax.device_count() == 4, jax.devices()
    spec = load_sweep(sys.argv[1], device_count=4).runs[0]
    source = open_source("stdlib")
    out = {}
    for name, mesh_cfg, micro in [("one", MeshConfig("dp", 1), 0), ("fsdp4", MeshConfig("fsdp", 4), 0),
                                  ("dp4", MeshConfig("dp", 4), 0), ("dp4_accum", MeshConfig("dp", 4), 1),
                                  ("fsdp4_accum", MeshConfig("fsdp", 4), 2),
                                  ("fsdp2_tp2", MeshConfig("fsdp_tp", fsdp=2, tensor=2), 0),
                                  ("dp2_tp2_accum", MeshConfig("fsdp_tp", data=2, tensor=2), 2)]:
        s = dataclasses.replace(spec, mesh=mesh_cfg, train=dataclasses.replace(spec.train, micro_batch=micro))
        mesh = shd.make_mesh(mesh_cfg)
        program = tr.build_program(s, mesh)
        params = program.init_params()
        opt_state = program.init_opt_state(params)
        if name == "fsdp4":
            kernel = params["blocks/0/fc/kernel"]
            out["fsdp_shard_shape"] = list(kernel.addressable_shards[0].data.shape)
            out["kernel_shape"] = list(kernel.shape)
        if name == "fsdp2_tp2":
            out["tp_specs"] = {k: list(params[k].sharding.spec) for k in ("blocks/0/qkv/kernel", "blocks/0/fc_proj/kernel")}
        batcher = Batcher(source.train, s.model.seq_len, s.batch_size, 0)
        shape = (program.n_micro, s.batch_size // program.n_micro, s.model.seq_len + 1)
        losses = []
        for step in range(4):
            local = tr.micro_batches(batcher.batch(step), shd.batch_shards(mesh), program.n_micro)
            batch = tr.to_global(local, shd.batch_sharding(mesh), shape)
            params, opt_state, m = program.train_step(params, opt_state, batch)
            losses.append(float(m["loss"]))
        out[name] = losses
        if name == "dp4_accum":
            out["dp_all_reduces"] = all_reduces(program.jitted_step.lower(params, opt_state, batch, program.hyper)
                                                .compile().as_text())
    print(json.dumps(out))
""")


def test_fsdp_and_dp_on_four_devices_match_one_device(tmp_path):
    sweep = tiny_sweep(tmp_path)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(sweep)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # fsdp really splits parameters: each device holds a quarter of one dimension (the model width).
    assert out["fsdp_shard_shape"] != out["kernel_shape"]
    assert sorted(out["fsdp_shard_shape"]) == sorted([out["kernel_shape"][0], out["kernel_shape"][1] // 4]) or \
        sorted(out["fsdp_shard_shape"]) == sorted([out["kernel_shape"][0] // 4, out["kernel_shape"][1]])
    # fsdp_tp: heads and MLP units split over tensor (column- then row-parallel), the rest over fsdp.
    assert out["tp_specs"] == {"blocks/0/qkv/kernel": ["fsdp", "tensor"], "blocks/0/fc_proj/kernel": ["tensor", "fsdp"]}
    # dp: each device accumulates its micro-batches' gradients and the devices sum them once per
    # step, after the loop (train.make_train_step), not in every micro-step.
    in_loop, total = out["dp_all_reduces"]
    assert in_loop == 0 and total >= 1, out["dp_all_reduces"]
    for name in ("fsdp4", "dp4", "dp4_accum", "fsdp4_accum", "fsdp2_tp2", "dp2_tp2_accum"):
        for a, b in zip(out[name], out["one"]):
            assert abs(a - b) <= 1e-5, (name, out[name], out["one"])
    assert out["one"][-1] < out["one"][0]
