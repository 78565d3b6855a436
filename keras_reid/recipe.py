"""YAML recipes: loading (``base:`` inheritance, ``--set`` overrides, ``${VAR:-default}``),
validation against the registered components' schemas, and the resolved form.

A recipe is data, never code (``yaml.safe_load`` semantics only)::

    name: quickstart
    seed: 0
    strategy: {type: one_device}
    datasets:
      synth: {type: synthetic, root: "${KERAS_REID_DATA:-data}/synthetic-quickstart", ids: 60}
    stages:
      train: {type: train_reid, dataset: synth, epochs: 6, backbone: {type: resnet50}}
      evaluate: {type: evaluate, dataset: synth, models: [train]}

Every problem is reported as a :class:`~keras_reid.errors.RecipeError` whose message
starts with the YAML location (``file:line``), then the key path, the bad value and
what was expected.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable

import yaml
from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from keras_reid.distribute import StrategyConfig
from keras_reid.errors import RecipeError
from keras_reid.registry import REGISTRY, Registry, RegistryError
from keras_reid.training.precision import Precision

Path_ = tuple  # a key path: tuple of str keys / int indices

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


# ---------------------------------------------------------------------------- schema helpers
def component(kind: str, default: Any = ..., description: str = "") -> Any:
    """A config field holding a registered component spec ``{type: NAME, **params}`` (or a list
    of them). ``default``: a spec or list (copied per config), None (optional component), or
    omitted (required). The recipe validator checks each spec against its plugin's own config.
    """
    extra = {"plugin_kind": kind}
    if default is ... or default is None:
        return Field(default, description=description, json_schema_extra=extra)
    return Field(default_factory=lambda: copy.deepcopy(default), description=description,
                 json_schema_extra=extra)


def ref(target: str, default: Any = ..., description: str = "") -> Any:
    """A config field naming an entry of the recipe's ``datasets`` or ``stages`` (checked)."""
    return Field(default, description=description, json_schema_extra={"ref": target})


class ComponentSpec(BaseModel):
    """``{type: NAME, ...params}``: the params are validated by the plugin's config."""

    model_config = ConfigDict(extra="allow")
    type: str


IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
"""Recipe, stage and dataset names: letters, digits, '_' and '-' (they become folder names)."""


def _identifier(value: str) -> str:
    if not re.match(IDENTIFIER, value):
        raise ValueError("a name of letters, digits, '_' and '-' (it becomes a folder name in the run "
                         "folder)")
    return value


Identifier = Annotated[str, AfterValidator(_identifier)]


class RecipeModel(BaseModel):
    """The top level of a recipe."""

    model_config = ConfigDict(extra="forbid")

    name: Identifier = Field(description="run name; the run folder is <runs_dir>/<name> unless "
                             "`keras-reid run --run-dir` names it")
    description: str = ""
    seed: int = 0
    runs_dir: str = Field(
        "runs", validation_alias=AliasChoices("runs_dir", "run_dir"),
        description="the folder that holds run folders (each run writes <runs_dir>/<name>); "
        "`run_dir:`, its older name, is read the same way. `keras-reid run --run-dir` "
        "instead names one run's folder itself")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    jit_compile: bool = False
    precision: Precision = Field(
        "float32", description="dtype policy of every training stage (a training stage's own "
        "precision: overrides it): float32, mixed_float16 (with loss scaling) or mixed_bfloat16")
    datasets: dict[Identifier, ComponentSpec] = Field(default_factory=dict)
    stages: dict[Identifier, ComponentSpec]
    compare: list[tuple[str, str]] = Field(
        default_factory=list, description="pairs [a, b] of model names the evaluate stages report; "
        "repeated runs (--seeds, --sweep) give the paired difference a - b per metric (mean, "
        "standard error, n), a single run prints it")


# ---------------------------------------------------------------------------- YAML with locations
@dataclass
class LoadedYaml:
    """YAML data plus the ``file:line`` of every key path."""

    data: Any
    locations: dict[Path_, str] = field(default_factory=dict)


MAX_RECIPE_BYTES = 1_000_000
"""A recipe file larger than this is refused (recipes are a few kilobytes)."""
MAX_RECIPE_VALUES = 100_000
"""A recipe that expands (through YAML aliases) to more values than this is refused."""


def _node_to_data(node: yaml.Node, loader: yaml.SafeLoader, path: Path_, fname: str,
                  locs: dict[Path_, str], budget: list[int] | None = None) -> Any:
    budget = budget if budget is not None else [MAX_RECIPE_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise RecipeError(f"{fname}: the recipe expands to more than {MAX_RECIPE_VALUES:,} values "
                          "(YAML aliases nested in each other?); write it without the repeated aliases")
    locs[path] = f"{fname}:{node.start_mark.line + 1}"
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        merged: list[dict] = []
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given here win
                value = _node_to_data(value_node, loader, path, fname, locs, budget)
                parts = value if isinstance(value, list) else [value]
                if not all(isinstance(p, dict) for p in parts):
                    raise RecipeError(f"{fname}:{key_node.start_mark.line + 1}: '<<' merges a mapping "
                                      "(or a list of them), e.g. <<: *defaults")
                merged.extend(parts)
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise RecipeError(f"{fname}:{key_node.start_mark.line + 1}: a {type(key).__name__} cannot "
                                  "be a key; keys are names or numbers")
            if key in out:
                raise RecipeError(f"{fname}:{key_node.start_mark.line + 1}: "
                                  f"{_fmt_path(path + (key,))}: duplicate key; remove one of them")
            locs[path + (key,)] = f"{fname}:{key_node.start_mark.line + 1}"
            out[key] = _node_to_data(value_node, loader, path + (key,), fname, locs, budget)
            locs[path + (key,)] = f"{fname}:{key_node.start_mark.line + 1}"
        for part in merged:
            for key, value in part.items():
                out.setdefault(key, copy.deepcopy(value))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_node_to_data(v, loader, path + (i,), fname, locs, budget)
                for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> LoadedYaml:
    """Parse one YAML file with safe semantics, recording the line of every key."""
    path = Path(path)
    if path.is_dir():
        examples = sorted(p.name for p in path.glob("*.yaml"))[:3]
        hint = f" (it holds {', '.join(examples)})" if examples else ""
        raise RecipeError(f"'{path}' is a folder, not a recipe file; name a .yaml file in it{hint}")
    if not path.is_file():
        raise RecipeError(f"recipe file '{path}' does not exist; check the path "
                          "(recipes shipped with keras-reid are in the recipes/ folder)")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path} is {size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES:,} bytes "
                          "(is this the right file?)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start}); save the recipe as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        locs: dict[Path_, str] = {}
        data = _node_to_data(node, loader, (), str(path), locs) if node is not None else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"{where}: invalid YAML: {problem}; fix the syntax at that line") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a recipe must be a YAML mapping (key: value), "
                          f"got {type(data).__name__}")
    return LoadedYaml(data, locs)


def _deep_merge(base: Any, over: Any, base_locs: dict, over_locs: dict, path: Path_ = ()) -> Any:
    """Merge ``over`` into ``base``; a component mapping whose ``type`` changes is replaced
    whole (the old component's parameters mean nothing to the new one)."""
    if (isinstance(base, dict) and isinstance(over, dict)
            and over.get("type", base.get("type")) == base.get("type")):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v, base_locs, over_locs, path + (k,)) if k in base else v
            if k not in base:
                _copy_locs(over_locs, base_locs, path + (k,))
        base_locs[path] = over_locs.get(path, base_locs.get(path))
        return out
    _drop_locs(base_locs, path)
    _copy_locs(over_locs, base_locs, path)
    return over


def _copy_locs(src: dict, dst: dict, prefix: Path_) -> None:
    n = len(prefix)
    for p, loc in src.items():
        if p[:n] == prefix:
            dst[p] = loc


def _drop_locs(locs: dict, prefix: Path_) -> None:
    n = len(prefix)
    for p in [p for p in locs if p[:n] == prefix and len(p) > n]:
        del locs[p]


def load_with_bases(path: str | Path, _seen: tuple = ()) -> LoadedYaml:
    """Load a recipe file and merge it over its ``base:`` chain (relative to the file)."""
    path = Path(path).resolve() if Path(path).exists() else Path(path)
    if path in _seen:
        chain = " -> ".join(str(p) for p in _seen + (path,))
        raise RecipeError(f"{path}:1: base: recipes include each other in a cycle ({chain}); "
                          "remove one base")
    loaded = load_yaml(path)
    base_ref = loaded.data.pop("base", None)
    if base_ref is None:
        return loaded
    refs = base_ref if isinstance(base_ref, list) else [base_ref]
    merged = LoadedYaml({}, {})
    for r in refs:
        if not isinstance(r, str):
            raise RecipeError(f"{loaded.locations.get(('base',), path)}: base: expected a file name "
                              f"or a list of file names, got {r!r}")
        base_path = (path.parent / r)
        if not base_path.exists():
            raise RecipeError(f"{loaded.locations.get(('base',), path)}: base: file '{r}' not found "
                              f"next to {path.name} (looked for {base_path})")
        if base_path.is_dir():
            raise RecipeError(f"{loaded.locations.get(('base',), path)}: base: '{r}' is a folder, not "
                              "a recipe file; name a .yaml file in it")
        b = load_with_bases(base_path, _seen + (path,))
        merged.data = _deep_merge(merged.data, b.data, merged.locations, b.locations)
    merged.data = _deep_merge(merged.data, loaded.data, merged.locations, loaded.locations)
    return merged


# ---------------------------------------------------------------------------- overrides and env
def parse_override(text: str) -> tuple[Path_, Any]:
    """Parse ``a.b.0.c=value`` into a key path and a YAML-typed value (``2`` -> int, ``[1,2]`` -> list)."""
    if "=" not in text:
        raise RecipeError(f"--set {text}: expected KEY=VALUE, e.g. --set stages.train.epochs=2")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"--set {text}: the key '{key}' is not a dotted path like stages.train.epochs")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    parts: list[Any] = [int(p) if p.isdigit() else p for p in key.split(".")]
    return tuple(parts), parsed


def apply_override(loaded: LoadedYaml, text: str) -> None:
    """Apply one ``--set KEY=VALUE`` to the loaded recipe, recording its location as ``--set``."""
    path, value = parse_override(text)
    set_value(loaded, path, value, f"--set {text}")


def set_value(loaded: LoadedYaml, path: Path_, value: Any, where: str) -> None:
    """Set the value at key ``path`` of the loaded recipe (missing mappings on the way are
    created), recording ``where`` (e.g. ``--set stages.a.epochs=2``) as its location, so that
    validation errors about it name the option that set it."""
    node = loaded.data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise RecipeError(f"{where}: {_fmt_path(path[:i + 1])} is not an index of a "
                                  f"list of {len(node)} items")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise RecipeError(f"{where}: {_fmt_path(path[:i])} is a value, not a mapping")
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise RecipeError(f"{where}: {_fmt_path(path)} is not an index of the list")
        node[last] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise RecipeError(f"{where}: {_fmt_path(path[:-1])} is a value, not a mapping")
    _drop_locs(loaded.locations, path)
    loaded.locations[path] = where


def interpolate(data: Any, locations: dict[Path_, str], env: dict[str, str] | None = None,
                path: Path_ = ()) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string; unset without default is an error."""
    env = os.environ if env is None else env
    if isinstance(data, dict):
        return {k: interpolate(v, locations, env, path + (k,)) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, locations, env, path + (i,)) for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data
    escaped = data.split("$${")           # $${ is a literal ${
    if len(escaped) > 1:
        return "${".join(str(interpolate(part, locations, env, path)) for part in escaped)
    leftover = _ENV_PATTERN.sub("", data)
    if "${" in leftover:
        bad = leftover[leftover.index("${"):][:40]
        raise RecipeError(
            f"{_loc(locations, path)}: {_fmt_path(path)}: '{bad}' is not a variable reference; "
            "write ${VAR} or ${VAR:-default} (VAR: letters, digits, _) or $${ for a literal ${")

    def sub(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        value = env.get(var)
        if value:
            return value
        if default is not None:
            return default
        raise RecipeError(
            f"{_loc(locations, path)}: {_fmt_path(path)}: environment variable {var} is not set; "
            f"export {var}=... (for datasets: the folder that holds them) or give a default "
            f"with ${{{var}:-default}}")

    out = _ENV_PATTERN.sub(sub, data)
    if out != data:
        # a value that became a number or boolean stays a string unless it was the whole value
        try:
            typed = yaml.safe_load(out) if _ENV_PATTERN.fullmatch(data) else out
        except yaml.YAMLError:
            typed = out
        return typed if isinstance(typed, (int, float, bool)) and not isinstance(typed, str) else out
    return out


# ---------------------------------------------------------------------------- validation
@dataclass
class Recipe:
    """A validated recipe: the resolved data, its locations, and typed stage configs."""

    data: dict
    locations: dict[Path_, str]
    model: RecipeModel
    source: str = ""
    stage_configs: dict[str, BaseModel] = field(default_factory=dict)
    dataset_configs: dict[str, BaseModel] = field(default_factory=dict)
    uses_seed: dict[str, bool] = field(default_factory=dict)
    """Per stage: does its own work depend on the recipe's seed (its stage type's
    ``uses_seed(config)``; a stage missing here is taken to use it)."""

    @property
    def name(self) -> str:
        return self.model.name

    def stage_type(self, stage: str) -> str:
        return self.model.stages[stage].type

    def to_yaml(self) -> str:
        """The resolved recipe as YAML (what is saved in the run folder)."""
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False)

    def references(self, stage: str, target: str) -> list[str]:
        """Names under ``target`` (``"datasets"`` or ``"stages"``) that ``stage``'s config refers
        to, nested sub-configs included."""
        cfg = self.stage_configs.get(stage)
        out: list[str] = []
        for _, extra, item in (walk_fields(cfg) if cfg is not None else ()):
            if extra.get("ref") == target and item is not None and item not in out:
                out.append(item)
        return out

    def seed_free(self, stage: str) -> bool:
        """True when neither ``stage`` nor any stage it reads (transitively, through its
        references) uses the recipe's seed: its outputs are the same for every seed."""
        todo, seen = [stage], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if self.uses_seed.get(name, True):
                return False
            todo += self.references(name, "stages")
        return True

    def upstream(self, stage: str) -> list[str]:
        """``stage`` and the stages it reads, transitively, in recipe order."""
        todo, seen = [stage], set()
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += self.references(name, "stages")
        return [n for n in self.model.stages if n in seen]

    def stage_hash(self, stage: str) -> str:
        """A hash of one stage's identity: its resolved config, the datasets, the stages before
        it, the seed, ``jit_compile`` and ``precision`` (a stage's own precision is in its config).

        A seed-free stage (:meth:`seed_free`: it and everything it reads ignore the seed) is
        hashed without the seed and over the stages it reads instead of every stage before it,
        so repeats with different seeds (or sweeps over later stages) share it.
        """
        names = list(self.model.stages)
        if self.seed_free(stage):
            payload = {
                "datasets": self.data.get("datasets", {}),
                "stages": [[n, self.data["stages"][n]] for n in self.upstream(stage)],
                "strategy_jit": self.data.get("jit_compile", False),
            }
        else:
            upto = names[: names.index(stage) + 1]
            payload = {
                "seed": self.model.seed,
                "datasets": self.data.get("datasets", {}),
                "stages": [[n, self.data["stages"][n]] for n in upto],
                "strategy_jit": self.data.get("jit_compile", False),
            }
        if self.model.precision != "float32":  # absent when float32: earlier run folders keep their hashes
            payload["precision"] = self.model.precision
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def reported_models(self, registry: Registry = REGISTRY) -> dict[str, str]:
        """``{model name: stage}`` for every model the recipe's evaluating stages report in
        metrics.json (their stage type's ``reported_models(config)``), in recipe order."""
        out: dict[str, str] = {}
        for name, spec in self.model.stages.items():
            fn = getattr(registry.get("stage", spec.type).obj, "reported_models", None)
            if fn is not None and name in self.stage_configs:
                for model in fn(self.stage_configs[name]):
                    out.setdefault(model, name)
        return out


def _fmt_path(path: Iterable[Any]) -> str:
    parts = []
    for p in path:
        parts.append(f"[{p}]" if isinstance(p, int) else (("." if parts else "") + str(p)))
    return "".join(parts) or "(top level)"


def _loc(locations: dict[Path_, str], path: Path_) -> str:
    p = tuple(path)
    while p and p not in locations:
        p = p[:-1]
    return locations.get(p, locations.get((), "recipe"))


def _fmt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pydantic_error(exc: ValidationError, prefix: Path_, locations: dict[Path_, str],
                    model: type[BaseModel], what: str) -> RecipeError:
    err = exc.errors()[0]
    loc = prefix + tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = err["loc"][-1]
        sub = _submodel_at(model, err["loc"][:-1])
        allowed = sorted(sub.model_fields) if sub is not None else []
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return RecipeError(f"{_loc(locations, loc)}: {_fmt_path(loc)}: unknown key for {what}{hint} "
                           f"allowed keys: {', '.join(allowed)}")
    if kind == "missing":
        return RecipeError(f"{_loc(locations, loc)}: {_fmt_path(loc)}: required by {what} but missing; "
                           f"add it to the recipe")
    value = err.get("input")
    hint = ""
    if kind == "literal_error" and isinstance(value, str):
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
    return RecipeError(f"{_loc(locations, loc)}: {_fmt_path(loc)}: got {_fmt_value(value)}, "
                       f"expected {_expectation(err)} ({what}){hint}")


def _expectation(err: dict) -> str:
    msg = err.get("msg", "")
    ctx = err.get("ctx") or {}
    if err["type"] == "literal_error" and "expected" in ctx:
        return f"one of {ctx['expected']}"
    msg = re.sub(r"^(Input should be|Value error, )\s*", "", msg)
    return msg[0].lower() + msg[1:] if msg else "a valid value"


def _submodel_at(model: type[BaseModel], loc: Iterable[Any]) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        fld = current.model_fields.get(part)
        if fld is None:
            return None
        ann = fld.annotation
        candidates = [ann] + list(typing.get_args(ann))
        nxt = None
        for c in candidates:
            for cc in [c] + list(typing.get_args(c)):
                if isinstance(cc, type) and issubclass(cc, BaseModel):
                    nxt = cc
                    break
            if nxt:
                break
        current = nxt
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _validate_component(kind: str, spec: Any, path: Path_, locations: dict[Path_, str],
                        registry: Registry) -> BaseModel:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise RecipeError(f"{_loc(locations, path)}: {_fmt_path(path)}: got {_fmt_value(spec)}, expected "
                          f"a mapping like {{type: NAME, ...}} naming a registered {kind}")
    if "type" not in spec:
        raise RecipeError(f"{_loc(locations, path)}: {_fmt_path(path)}: missing 'type'; name a registered "
                          f"{kind}: {', '.join(registry.names(kind)) or '(none)'}")
    try:
        entry = registry.get(kind, spec["type"], path=_fmt_path(path + ("type",)))
    except RegistryError as exc:
        raise RecipeError(f"{_loc(locations, path + ('type',))}: {exc}") from None
    params = {k: v for k, v in spec.items() if k != "type"}
    try:
        cfg = entry.config.model_validate(params)
    except ValidationError as exc:
        raise _pydantic_error(exc, path, locations, entry.config, f"{kind} '{entry.name}'") from None
    _reject_booleans_as_numbers(params, cfg, path, locations, f"{kind} '{entry.name}'")
    _validate_nested(cfg, path, locations, registry)
    return cfg


def _reject_booleans_as_numbers(raw: Any, value: Any, path: Path_, locations: dict[Path_, str],
                                owner: str) -> None:
    """Pydantic's lax mode reads ``epochs: true`` as 1; a boolean where a number is expected is
    a recipe error (``raw``: the recipe's values, ``value``: what validation made of them)."""
    if isinstance(raw, bool) and isinstance(value, (int, float)) and not isinstance(value, bool):
        raise RecipeError(f"{_loc(locations, path)}: {_fmt_path(path)}: got {raw!r}, expected a number "
                          f"({owner})")
    if isinstance(raw, dict):
        for key, item in raw.items():
            if isinstance(value, BaseModel) and hasattr(value, str(key)):
                sub = getattr(value, str(key))
            elif isinstance(value, dict) and key in value:
                sub = value[key]
            else:
                continue
            _reject_booleans_as_numbers(item, sub, path + (key,), locations, owner)
    elif isinstance(raw, (list, tuple)) and isinstance(value, (list, tuple)) and len(raw) == len(value):
        for i, (item, sub) in enumerate(zip(raw, value)):
            _reject_booleans_as_numbers(item, sub, path + (i,), locations, owner)


def walk_fields(cfg: BaseModel, path: Path_ = ()) -> Iterable[tuple[Path_, dict, Any]]:
    """Yields ``(key path, json_schema_extra, value)`` for every field value of ``cfg``, one per
    list item, recursing into nested config models (and lists of them)."""
    for name, fld in type(cfg).model_fields.items():
        extra = fld.json_schema_extra if isinstance(fld.json_schema_extra, dict) else {}
        value = getattr(cfg, name)
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            sub = path + (name,) + ((i,) if i is not None else ())
            yield sub, extra, item
            if isinstance(item, BaseModel):
                yield from walk_fields(item, sub)


def _validate_nested(cfg: BaseModel, path: Path_, locations: dict[Path_, str], registry: Registry,
                     refs: dict[str, set[str]] | None = None) -> None:
    for sub, extra, item in walk_fields(cfg, path):
        kind = extra.get("plugin_kind")
        if kind and item is not None:
            _validate_component(kind, item, sub, locations, registry)
        target = extra.get("ref")
        if target and refs is not None and item is not None and item not in refs[target]:
            known = refs[target]
            close = difflib.get_close_matches(str(item), sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(
                f"{_loc(locations, sub)}: {_fmt_path(sub)}: '{item}' is not a name under "
                f"{target}{hint} defined {target}: {', '.join(sorted(known)) or '(none)'}")


def validate(data: dict, locations: dict[Path_, str], registry: Registry = REGISTRY,
             source: str = "") -> Recipe:
    """Validate resolved recipe data against the top-level schema and every component's schema."""
    try:
        model = RecipeModel.model_validate(data)
    except ValidationError as exc:
        raise _pydantic_error(exc, (), locations, RecipeModel, "the recipe") from None
    if not model.stages:
        raise RecipeError(f"{_loc(locations, ('stages',))}: stages: the recipe has no stages; add at "
                          "least one (e.g. a train_reid stage)")
    recipe = Recipe(data=data, locations=locations, model=model, source=source)
    for name in model.datasets:
        path = ("datasets", name)
        recipe.dataset_configs[name] = _validate_component(
            "dataset", data["datasets"][name], path, locations, registry)
    seen: list[str] = []
    for name in model.stages:
        path = ("stages", name)
        cfg = _validate_component("stage", data["stages"][name], path, locations, registry)
        _validate_nested(cfg, path, locations, registry,
                         refs={"datasets": set(model.datasets), "stages": set(seen)})
        check = getattr(registry.get("stage", model.stages[name].type).obj, "check_config", None)
        if check is not None:
            problem = check(cfg, recipe)
            if problem:
                sub_path, message = problem
                full = path + tuple(sub_path)
                raise RecipeError(f"{_loc(locations, full)}: {_fmt_path(full)}: {message}")
        recipe.stage_configs[name] = cfg
        uses_seed = getattr(registry.get("stage", model.stages[name].type).obj, "uses_seed", None)
        recipe.uses_seed[name] = True if uses_seed is None else bool(uses_seed(cfg))
        seen.append(name)
    _validate_compare(recipe, locations, registry)
    return recipe


def _validate_compare(recipe: Recipe, locations: dict[Path_, str], registry: Registry) -> None:
    """Each ``compare:`` pair names two different models the evaluate stages report."""
    if not recipe.model.compare:
        return
    reported = recipe.reported_models(registry)
    for i, pair in enumerate(recipe.model.compare):
        for j, name in enumerate(pair):
            if name not in reported:
                path = ("compare", i, j)
                close = difflib.get_close_matches(name, list(reported), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ";"
                raise RecipeError(
                    f"{_loc(locations, path)}: {_fmt_path(path)}: '{name}' is not a model an evaluate "
                    f"stage reports{hint} reported models: {', '.join(reported) or '(none)'}")
        if pair[0] == pair[1]:
            path = ("compare", i)
            raise RecipeError(f"{_loc(locations, path)}: {_fmt_path(path)}: compares '{pair[0]}' with "
                              "itself; name two different models, e.g. [augmented, baseline]")


def load_recipe(path: str | Path, overrides: Iterable[str] = (), *, env: dict | None = None,
                registry: Registry = REGISTRY) -> Recipe:
    """Load, merge, override, interpolate and validate a recipe file; returns a :class:`Recipe`.

    Raises :class:`RecipeError` (exit code 2) with ``file:line`` for any problem.
    """
    loaded = load_with_bases(path)
    for text in overrides:
        apply_override(loaded, text)
    data = interpolate(loaded.data, loaded.locations, env)
    return validate(data, loaded.locations, registry, source=str(path))
