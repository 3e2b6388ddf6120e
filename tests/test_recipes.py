"""Data recipes (`[recipes.<name>]`): filters, weights, determinism, the shared validation set, the
`data.recipe` axis and the `recipe` record column, and the refusals."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import write_sweep
from scaling import records
from scaling.cli import main
from scaling.config_recipe import RecipeComponent, RecipeConfig, RecipeFilters
from scaling.data import open_source
from scaling.sweep.reader import load_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def corpus(tmp_path):
    """Two folders of documents: `long/` (40 files of 300-2000 chars, an exact copy of a training and of a
    validation document, a short file) and `accents/` (20 files, each with a non-ASCII letter)."""
    for i in range(40):
        (tmp_path / "long").mkdir(exist_ok=True)
        (tmp_path / "long" / f"l{i:02d}.txt").write_text(f"long document {i:02d}. " * (15 + 5 * i))
    # (Split by sha256 of the name at val_fraction 0.1: l08 and again are training documents, l07 validation.)
    (tmp_path / "long" / "again.txt").write_text((tmp_path / "long" / "l08.txt").read_text())
    (tmp_path / "long" / "vcopy.txt").write_text((tmp_path / "long" / "l07.txt").read_text())
    (tmp_path / "long" / "tiny.txt").write_text("TINYDOC")
    (tmp_path / "accents").mkdir()
    for i in range(20):
        (tmp_path / "accents" / f"a{i:02d}.txt").write_text(f"caf\u00e9 number {i:02d} " * (20 + i))
    return tmp_path


def _recipe(*components, name="r", **filters) -> RecipeConfig:
    return RecipeConfig(name=name, components=tuple(RecipeComponent("text", (glob,), weight)
                                                    for glob, weight in components),
                        filters=RecipeFilters(**filters))


def _open(corpus, recipe):
    return open_source(recipe=recipe, base_dir=corpus, val_fraction=0.1)


def _train_text(source) -> str:
    return bytes(source.train).decode()


def _documents(source) -> list[str]:
    return [d for d in _train_text(source).split("\x00") if d]


def test_filters_drop_short_duplicate_and_off_charset_documents(corpus):
    plain = _documents(_open(corpus, _recipe(("long/*.txt", 1.0))))
    l07, l08 = ("long document 07. " * 50), ("long document 08. " * 55)
    assert "TINYDOC" in plain and plain.count(l08) == 2 and plain.count(l07) == 1
    short = _documents(_open(corpus, _recipe(("long/*.txt", 1.0), min_chars=100)))
    assert "TINYDOC" not in short and len(short) == len(plain) - 1
    deduped = _documents(_open(corpus, _recipe(("long/*.txt", 1.0), dedup=True)))
    # One copy of l08 kept; the copy of validation document l07 dropped too.
    assert deduped.count(l08) == 1 and l07 not in deduped and len(deduped) == len(plain) - 2
    mixed = _recipe(("long/*.txt", 1.0), ("accents/*.txt", 1.0), charset="ascii")
    with pytest.raises(Exception, match=r"components\[1\].*no training document left.*by charset"):
        _open(corpus, mixed)
    loose = _documents(_open(corpus, _recipe(("accents/*.txt", 1.0), charset="ascii", charset_fraction=0.9)))
    assert len(loose) > 10  # one non-ASCII letter in ~17 characters: over 90% ASCII
    assert _open(corpus, _recipe(("accents/*.txt", 1.0), charset="printable")).train.size > 0


def test_weights_set_the_byte_shares_of_every_prefix_of_the_stream(corpus):
    recipe = _recipe(("long/*.txt", 3.0), ("accents/*.txt", 1.0))
    text = _train_text(_open(corpus, recipe))
    for prefix in (text, text[: len(text) // 2]):
        docs = [d for d in prefix.split("\x00") if d]
        accents = sum(len(d.encode()) + 1 for d in docs if "caf" in d)
        share = accents / sum(len(d.encode()) + 1 for d in docs)
        assert share == pytest.approx(0.25, abs=0.03)
    flipped = _train_text(_open(corpus, _recipe(("long/*.txt", 1.0), ("accents/*.txt", 3.0))))
    docs = [d for d in flipped.split("\x00") if d]
    assert sum(len(d) + 1 for d in docs if "caf" in d) / sum(len(d) + 1 for d in docs) == pytest.approx(0.75, abs=0.03)


def test_the_build_is_deterministic_and_cached(corpus, tmp_path_factory, monkeypatch):
    recipe = _recipe(("long/*.txt", 2.0), ("accents/*.txt", 1.0), dedup=True)
    first = _open(corpus, recipe)
    monkeypatch.setenv("SCALING_CACHE_DIR", str(tmp_path_factory.mktemp("another-cache")))
    second = _open(corpus, recipe)
    assert bytes(first.train) == bytes(second.train) and first.content_hash == second.content_hash
    reseeded = _open(corpus, RecipeConfig(name="r", components=recipe.components, filters=recipe.filters, seed=1))
    assert bytes(reseeded.train) != bytes(first.train)  # another order (and cut) of the same documents
    assert set(_documents(reseeded)) <= set(_documents(_open(corpus, _recipe(("long/*.txt", 1.0), ("accents/*.txt", 1e-9),
                                                                              dedup=True))) + _documents(first))


def test_validation_is_the_first_components_unfiltered_documents(corpus):
    """Recipes that share their first component are scored on the same validation bytes, whatever
    their filters and other components; no validation file is trained on."""
    raw = _open(corpus, _recipe(("long/*.txt", 1.0)))
    filtered = _open(corpus, _recipe(("long/*.txt", 1.0), ("accents/*.txt", 1.0), min_chars=500, dedup=True))
    assert bytes(raw.val) == bytes(filtered.val) and raw.val.size > 0
    val_docs = {d for d in bytes(raw.val).decode().split("\x00") if d}
    # Only the planted copy (vcopy.txt) of a validation document is trained on, and dedup drops it.
    assert val_docs & set(_documents(raw)) == {"long document 07. " * 50}
    assert not val_docs & set(_documents(filtered))
    other = _open(corpus, RecipeConfig(name="o", components=(RecipeComponent("text", ("long/*.txt",)),
                                                               RecipeComponent("text", ("accents/*.txt",))), val_from=1))
    assert "caf" in bytes(other.val).decode() and "long document" not in bytes(other.val).decode()


def _sweep(tmp_path, corpus, recipes: str, data: str = "", axes: str = "") -> Path:
    return write_sweep(tmp_path / "recipes.toml", f"""
[sweep]
name = "recipes"
out_dir = "{tmp_path / 'out'}"
[data]
seq_len = 16
{data}
[model]
head_dim = 8
[train]
batch_tokens = 128
eval_points = 2
eval_sequences = 8
[grid]
models = [{{ n_layer = 1, d_model = 16 }}]
tokens = [1280]
{recipes}
{axes}
""".replace("CORPUS", str(corpus)))


RECIPES = """
[recipes.raw]
components = [{ source = "text", paths = ["CORPUS/long/*.txt"] }]
[recipes.clean]
components = [{ source = "text", paths = ["CORPUS/long/*.txt"], weight = 3 },
              { source = "text", paths = ["CORPUS/accents/*.txt"] }]
filters = { min_chars = 100, dedup = true }
"""


def test_the_recipe_axis_makes_distinct_runs_that_record_their_recipe(tmp_path, corpus):
    from scaling.training.run import train_run
    sweep = load_sweep(_sweep(tmp_path, corpus, RECIPES, axes='[axes]\n"data.recipe" = ["raw", "clean"]'),
                       device_count=1)
    assert [s.data.recipe.name for s in sweep.runs] == ["raw", "clean"]
    assert len({s.run_id for s in sweep.runs}) == 2
    assert sweep.select(["recipe=clean"]) == sweep.runs[1:]
    spec = sweep.runs[1]
    summary = train_run(spec, tmp_path / "out")  # 10 steps
    assert summary["recipe"] == "clean"
    history = pq.read_table(records.run_dir(tmp_path / "out", spec.run_id) / "history.parquet").to_pylist()
    assert history and all(row["recipe"] == "clean" for row in history)
    one = load_sweep(_sweep(tmp_path, corpus, RECIPES, data='recipe = "raw"'))
    assert one.runs[0].run_id == sweep.runs[0].run_id  # one recipe, however it is chosen


def test_a_sweep_without_recipes_keeps_its_run_ids():
    """The recipe enters run_id only when set: the shipped kaplan sweep still names its shipped run."""
    assert "L1-d16-t4e6-s0-1e1faab3" in {s.run_id for s in load_sweep(ROOT / "sweeps" / "kaplan.toml").runs}


@pytest.mark.parametrize("recipes, data, axes, key, expected", [
    (RECIPES.replace("dedup = true", 'dedup = true, length = 3'), "", '[axes]\n"data.recipe" = ["raw", "clean"]',
     "recipes.clean.filters.length", "unknown key (known here: charset, charset_fraction, dedup, min_chars)"),
    (RECIPES.replace("dedup = true", 'charset = "latin"'), 'recipe = "clean"', "", "recipes.clean.filters.charset",
     "expected one of ascii, printable, got 'latin'"),
    (RECIPES.replace("weight = 3", "weight = 0"), 'recipe = "clean"', "", "recipes.clean.components[0].weight",
     "expected a number > 0, got 0"),
    (RECIPES.replace('source = "text", paths = ["CORPUS/accents/*.txt"]', 'source = "web"'), 'recipe = "clean"', "",
     "recipes.clean.components[1].source", "expected one of stdlib, text, got 'web'"),
    (RECIPES.replace("min_chars = 100", "min_chars = 100000"), '', '[axes]\n"data.recipe" = ["raw", "clean"]',
     "recipes.clean", "no training document left after its filters"),
    (RECIPES, 'recipe = "dirty"', "", "data.recipe", "expected the name of a recipe (raw, clean), got 'dirty'"),
    (RECIPES, '', '[axes]\n"data.recipe" = ["raw", "nope"]', 'axes."data.recipe"[1]', "expected the name of a recipe"),
    (RECIPES, 'recipe = "raw"\nsource = "text"', "", "data.source", "a recipe's components are its sources"),
    (RECIPES.replace("CORPUS/long/*.txt", "CORPUS/none/*.txt"), 'recipe = "raw"', "", "recipes.raw",
     "glob matched no files"),
])
def test_bad_recipes_are_one_line_exit_2(tmp_path, corpus, capsys, recipes, data, axes, key, expected):
    path = _sweep(tmp_path, corpus, recipes, data, axes)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: {key}" in err and expected in err, err
