"""The same losses on 1 device and on a 4-device fsdp, dp or fsdp_tp mesh (simulated CPU devices)."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO, tiny_sweep

SCRIPT = textwrap.dedent(r"""
    import dataclasses, json, re, sys
    import jax
    from scaling import sharding as shd, train as tr
    from scaling.config import MeshConfig
    from scaling.data import Batcher, open_source
    from scaling.sweep import load_sweep

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
    # fsdp really splits parameters: each device holds a quarter of the largest dimension.
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
