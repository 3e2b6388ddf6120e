"""`[recipes.<name>]` tables (sweeps/README.md): data recipes, chosen for every run by `[data] recipe`
or varied across runs by `[axes] "data.recipe"`.

Each recipe checks its own values (scaling/config_recipe.py). Checked here: a recipe named by
`[data]` or `[axes]` exists, and each used recipe's files exist and leave documents after its
filters. That last needs the documents read, so a sweep with recipes
builds them while it is read (once: the build is cached, and every run then finds it); a sweep
without recipes reads nothing here.
"""
from __future__ import annotations

from scaling.config import ConfigError, RunSpec
from scaling.config_recipe import RecipeComponent, RecipeConfig, RecipeFilters
from scaling.sweep.table import Table


def read_recipes(root: Table) -> dict[str, RecipeConfig]:
    """Every [recipes.<name>] table, by name, in the file's order."""
    root.used.add("recipes")
    if "recipes" not in root.data:
        return {}
    table = root.sub("recipes")
    recipes = {name: _read_recipe(table.sub(name), name) for name in list(table.data)}
    table.finish()
    return recipes


def _read_recipe(table: Table, name: str) -> RecipeConfig:
    settings = table.values(RecipeConfig, ("val_from", "seed"))
    table.used.add("components")
    components = tuple(Table(table.file, table.key(f"components[{i}]"), entry).config(RecipeComponent)
                       for i, entry in enumerate(table.list("components")))
    table.used.add("filters")
    filters = table.sub("filters").config(RecipeFilters) if "filters" in table.data else RecipeFilters()
    table.finish()
    settings.keys["name"] = table.prefix  # a bad name is the table's own
    return settings.build(RecipeConfig, name=name, components=components, filters=filters)


def lookup(file: str, key: str, name, recipes: dict[str, RecipeConfig]) -> RecipeConfig:
    """The recipe called `name`, or ConfigError at `key`."""
    if not isinstance(name, str) or name not in recipes:
        known = ", ".join(recipes) if recipes else "none defined; add a [recipes.<name>] table"
        raise ConfigError(file, key, f"expected the name of a recipe ({known}), got {name!r}")
    return recipes[name]


def data_recipe(data_table: Table, recipes: dict[str, RecipeConfig]) -> RecipeConfig | None:
    """`[data] recipe = "name"`: the recipe of every run (None: no recipe, or one from [axes])."""
    data_table.used.add("recipe")
    if "recipe" not in data_table.data:
        return None
    for key in ("source", "paths"):
        if key in data_table.data:
            raise data_table.error(key, f"not with recipe = {data_table.data['recipe']!r}: a recipe's components "
                                   "are its sources")
    return lookup(data_table.file, data_table.key("recipe"), data_table.data["recipe"], recipes)


def check_recipes(file: str, runs: tuple[RunSpec, ...]) -> None:
    """Each recipe that a run uses builds: its files exist, and documents survive its filters. (A recipe
    no run uses is only checked as written: one file may hold several, picked by `--set data.recipe=NAME`.)"""
    from scaling.data import DataError, open_source
    used = {spec.data.recipe.name: spec for spec in runs if spec.data.recipe is not None}
    for name, spec in used.items():
        try:
            open_source(recipe=spec.data.recipe, vocab_size=spec.model.vocab_size,
                        val_fraction=spec.data.val_fraction, base_dir=spec.data.base_dir)
        except DataError as e:
            raise ConfigError(file, f"recipes.{name}", str(e)) from None
