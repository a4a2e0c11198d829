"""Recipe loading: YAML + `extends:` + `--set a.b=c` + `${var}` paths -> a validated `Recipe`.

Every error names the YAML file and the dotted field at fault, and lists allowed values
where there is a fixed set (unknown method names, unknown keys).
"""

from __future__ import annotations

import copy
import itertools
import os
import re
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import Field, ValidationError, create_model

from cmkd_cli.errors import UsageError
from cmkd_cli.schema import PathVariables, Recipe, Variant

RECIPE_DIR_ENV = "CMKD_RECIPES"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def recipe_dirs() -> list[Path]:
    """Where `--recipe NAME` looks: $CMKD_RECIPES (colon-separated), then the bundled recipes:
    `cmkd_cli/recipes/` in an installed wheel, else the source checkout's top-level `recipes/`."""
    dirs = [Path(p) for p in os.environ.get(RECIPE_DIR_ENV, "").split(os.pathsep) if p]
    package = Path(__file__).resolve().parent
    bundled = package / "recipes"
    dirs.append(bundled if bundled.is_dir() else package.parent / "recipes")
    return dirs


def list_recipes() -> dict[str, Path]:
    """Recipe name -> file; recipes in sub-folders are named `folder/name` (e.g. `zoo/fitnet`)."""
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.rglob("*.yaml")):
            found.setdefault(p.relative_to(d).with_suffix("").as_posix(), p)
    return found


def find_recipe(ref: str, relative_to: Path | None = None) -> Path:
    """A recipe by path (absolute, relative to cwd or to the extending file) or by name."""
    candidates = [Path(ref)]
    if relative_to is not None:
        candidates.insert(0, relative_to.parent / ref)
    for c in candidates:
        if c.suffix in (".yaml", ".yml") and c.is_file():
            return c
    known = list_recipes()
    if ref in known:
        return known[ref]
    where = f" (extended by {relative_to})" if relative_to else ""
    raise UsageError(
        f"recipe {ref!r}{where} is neither a file nor a known recipe; "
        f"known: {', '.join(sorted(known)) or 'none'}"
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load` that refuses a key given twice in one mapping (YAML would silently
    keep the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UsageError(
                    f"{self.name}: line {line}: key `{key}` appears twice in one mapping "
                    f"(first on line {seen[key]})"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_recipe_yaml(path: Path) -> dict[str, Any]:
    """The mapping of fields in one recipe file (its own keys; `extends:` not followed)."""
    try:
        with open(path) as fh:  # the stream's name goes into the loader's messages
            data = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise UsageError(
            f"{path}:{at} is not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge `override` into `base`: mappings merge key by key, anything else is replaced.

    A mapping whose `name` changes (e.g. `method: {name: kd}` over `{name: c2kd, ...}`) is
    replaced whole, so the old method's fields do not leak into the new one.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        if (
            isinstance(old, dict)
            and isinstance(value, dict)
            and not ("name" in value and "name" in old and value["name"] != old["name"])
        ):
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and resolve its `extends:` chain (cycles are an error)."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise UsageError(f"{path}: `extends` forms a cycle ({cycle})")
    data = read_recipe_yaml(path)
    for key in [k for k in data if isinstance(k, str) and k.startswith("x-")]:
        del data[key]  # `x-name:` blocks only hold YAML anchors (as in docker compose files)
    if isinstance(data.get("compare"), list):  # the short form: a list of variants
        data["compare"] = {"variants": data["compare"]}
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UsageError(f"{path}: field `extends` must be a recipe name or path")
    base = load_raw(find_recipe(parent, relative_to=path), (*_chain, path))
    return deep_merge(base, data)


def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML: 0.1, true, [1,2], null, text)."""
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set method.T=4")
    key, _, raw = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise UsageError(f"--set {item!r}: empty segment in the dotted key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_set(data: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            dotted = ".".join(parts[: i + 1])
            raise UsageError(f"{origin}: field `{dotted}` is a value, not a section")
        node = nxt
    last = parts[-1]
    if last == "name" and len(parts) > 1 and node.get("name") not in (None, value):
        node.clear()  # a new method/model: the old one's fields do not carry over
    if last in node:
        node[last] = deep_merge({last: node[last]}, {last: value})[last]
    else:
        node[last] = value


def apply_sets(data: dict[str, Any], sets: list[str]) -> dict[str, str]:
    """Apply `--set` items to a recipe's raw data; returns dotted field -> item (for errors)."""
    overrides = {}
    for item in sets:
        parts, value = parse_set(item)
        apply_set(data, parts, value, origin=f"--set {item}")
        overrides[".".join(parts)] = item
    return overrides


#: a variable set to one of these makes a field that is only `${name}` null (e.g. no file)
NONE_VALUES = ("none", "null")


def lookup_var(name: str, variables: dict[str, str]) -> str | None:
    """A variable's value: from `variables` (--var), else $CMKD_NAME, else $name."""
    for source in (
        variables.get(name),
        os.environ.get(f"CMKD_{name.upper()}"),
        os.environ.get(name),
    ):
        if source is not None:
            return source
    return None


def absolute_path(value: str) -> str:
    """A variable's value as an absolute path (`~` expanded; a URL or `none` as it is): a
    recipe's variables name paths, and a run must find them again from any directory."""
    if not value or "://" in value or value.strip().lower() in NONE_VALUES:
        return value
    return os.path.abspath(os.path.expanduser(value))


def path_variables(data: dict[str, Any], variables: dict[str, str]) -> PathVariables:
    """The `${name}` variables a raw recipe uses, each resolved (`lookup_var`) to an absolute
    path, and the fields outside `compare` that use them (dotted field -> template)."""
    fields: dict[str, str] = {}
    names: set[str] = set()

    def walk(obj: Any, field: str) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{field}.{k}" if field else str(k))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{field}[{i}]")
        elif isinstance(obj, str) and _VAR.search(obj):
            names.update(_VAR.findall(obj))
            if not field.startswith("compare"):
                fields[field] = obj

    walk(data, "")
    values = {}
    for name in sorted(names):
        value = lookup_var(name, variables)
        if value is not None:
            values[name] = absolute_path(value)
    return PathVariables(values=values, fields=fields)


_FIELD_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def rebind_variables(recipe: dict[str, Any], given: dict[str, str], origin: str) -> dict[str, Any]:
    """A stored recipe (as a dict) whose fields that used `${name}` variables are resolved
    again, with the `given` values (made absolute) over those the run recorded: what `cmkd
    eval --var data_root=/new/place` runs on when the data moved."""
    record = PathVariables.model_validate(recipe.get("variables") or {})
    unknown = sorted(set(given) - set(record.values))
    if unknown:
        used = ", ".join(f"{k}={v}" for k, v in record.values.items()) or "none recorded"
        raise UsageError(
            f"--var {unknown[0]}: {origin} was not made with a variable ${{{unknown[0]}}} "
            f"(its variables: {used})"
        )
    values = {**record.values, **{k: absolute_path(v) for k, v in given.items()}}
    out = copy.deepcopy(recipe)
    for field, template in record.fields.items():
        node: Any = out
        parts = [(key, int(i) if i else None) for key, i in _FIELD_PART.findall(field)]
        for (key, index), _ in zip(parts, parts[1:], strict=False):
            node = node[index] if index is not None else node[key]
        key, index = parts[-1]
        resolved = resolve_vars(template, values, field)
        if index is not None:
            node[index] = resolved
        else:
            node[key] = resolved
    out["variables"] = PathVariables(values=values, fields=record.fields).model_dump()
    return out


def resolve_vars(obj: Any, variables: dict[str, str], field: str = "") -> Any:
    """Replace `${name}` in strings from `variables`, then the environment (name or CMKD_NAME).

    A field that is exactly `${name}` becomes null when the value is `none` or `null`
    (`--var face_teacher=none`: no face checkpoint, so the teacher gets trained)."""
    if isinstance(obj, dict):
        return {
            k: resolve_vars(v, variables, f"{field}.{k}" if field else k) for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [resolve_vars(v, variables, f"{field}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            value = lookup_var(name, variables)
            if value is not None:
                return value
            raise UsageError(
                f"field `{field}`: variable ${{{name}}} is not set; pass --var {name}=PATH "
                f"(or {name}=none for no file) or set CMKD_{name.upper()}"
            )

        whole = _VAR.fullmatch(obj)
        if whole and sub(whole).strip().lower() in NONE_VALUES:
            return None
        return _VAR.sub(sub, obj)
    return obj


def _recipe_class() -> type[Recipe]:
    """`Recipe` with `method` as the union of every registered method's config (built once,
    on first use, when the methods are known)."""
    global _RECIPE
    if _RECIPE is None:
        from cmkd_cli.methods import METHODS  # torch: `cmkd recipes list` and --help never load it

        configs = tuple(cls.Config for _, cls in METHODS.items())
        union = Annotated[Union[configs], Field(discriminator="name")]  # noqa: UP007

        _RECIPE = create_model("Recipe", __base__=Recipe, method=(union, ...))
    return _RECIPE


_RECIPE: type[Recipe] | None = None


def format_validation_error(
    exc: ValidationError, origin: str, overrides: dict[str, str] | None = None
) -> str:
    """One sentence per problem: `origin: field `a.b`: message`; the origin is the `--set`
    item when the field came from one."""
    msgs = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
        # drop the union tag segment pydantic inserts (`method.kd.T` -> `method.T`)
        if len(loc) >= 2 and loc[0] == "method" and err["type"] != "union_tag_invalid":
            loc = [loc[0], *loc[2:]]
        dotted = ".".join(loc) or "(recipe)"
        if err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = (
                f"unknown method {ctx.get('tag')!r}; choose one of: {ctx.get('expected_tags', '')}"
            )
            dotted = ".".join([*loc, "name"]) if not dotted.endswith("name") else dotted
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        else:
            msg = err["msg"]
            if "input" in err and not isinstance(err["input"], dict):
                msg += f" (got {err['input']!r})"
        where = origin
        for key, item in (overrides or {}).items():
            if dotted == key or dotted.startswith(key + "."):
                where = f"--set {item}"
        msgs.append(f"{where}: field `{dotted}`: {msg}")
    return "; ".join(msgs)


def validate_recipe(
    data: dict[str, Any], origin: str, overrides: dict[str, str] | None = None
) -> Recipe:
    cls = _recipe_class()
    try:
        recipe = cls.model_validate(data)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, origin, overrides)) from None
    for variant in recipe.compare.variants:
        for point in grid_points(variant):
            variant_recipe(recipe, variant.name, origin, point)
    return recipe


def grid_points(variant: Variant) -> list[dict[str, Any]]:
    """A variant's `grid:` as dotted overrides, one per combination (the first field varies
    slowest); a variant without a grid has one empty point."""
    keys = list(variant.grid)
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*variant.grid.values())
    ]


def load_recipe(
    ref: str,
    sets: list[str] | None = None,
    variables: dict[str, str] | None = None,
) -> Recipe:
    """Load recipe `ref` (name or path), apply `--set` overrides and `${var}`s, validate."""
    path = find_recipe(ref)
    data = load_raw(path)
    overrides = apply_sets(data, sets or [])
    data.setdefault("name", path.stem)
    stored = data.pop("variables", None)  # a run's stored recipe (config.yaml) keeps its record
    record = path_variables(data, variables or {})
    data = resolve_vars(data, record.values)
    data["variables"] = record.model_dump() if record.fields or stored is None else stored
    return validate_recipe(data, origin=str(path), overrides=overrides)


def variant_recipe(
    recipe: Recipe,
    variant: str,
    origin: str = "recipe",
    point: dict[str, Any] | None = None,
) -> Recipe:
    """The recipe with one `compare:` variant's overrides applied (and `compare` cleared),
    then one `grid` point's (`point`, dotted field -> value)."""
    match = [v for v in recipe.compare.variants if v.name == variant]
    if not match:
        raise UsageError(f"{origin}: no compare variant {variant!r}")
    data = recipe.model_dump(mode="json")
    data["compare"] = {}
    where = f"{origin}: compare[{variant}]"
    for key, value in match[0].set.items():
        apply_set(data, key.split("."), value, origin=where)
    for key, value in (point or {}).items():
        apply_set(data, key.split("."), value, origin=f"{where}.grid")
    cls = _recipe_class()
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        at = where + (f".grid {point}" if point else "")
        raise UsageError(format_validation_error(exc, at)) from None


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
