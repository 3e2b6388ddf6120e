import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Keep test caches (data builds, peak probe, compiled steps) out of the user's cache folder,
    but share them across the session so each is built once."""
    if "SCALING_CACHE_DIR" not in os.environ:
        os.environ["SCALING_CACHE_DIR"] = str(tmp_path_factory.mktemp("scaling-cache"))
    yield


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY_SWEEP = """
[sweep]
name = "tiny"
out_dir = "{out}"
[data]
seq_len = 16
[model]
head_dim = 8
[train]
batch_tokens = 128
eval_points = 4
eval_sequences = 8
checkpoint_every = 10
{train_extra}
[optimizer]
lr = {lr}
[grid]
models = [{{ n_layer = 1, d_model = 16 }}{more_models}]
tokens = [{tokens}]
"""


def tiny_sweep(tmp_path: Path, *, tokens=3200, lr=3e-3, more_models="", train_extra="", name="tiny.toml") -> Path:
    out = tmp_path / "out"
    return write_sweep(tmp_path / name, TINY_SWEEP.format(out=out, tokens=tokens, lr=lr, more_models=more_models,
                                                        train_extra=train_extra))
