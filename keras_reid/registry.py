"""The component registry: kinds, ``@register``, entry-point discovery and lookup.

Every component of keras-reid (datasets, generators, semantic filters, maskers,
pose estimators, backbones, losses and pipeline stages) is found here by kind and
name. Built-in components and third-party ones take the same path: a distribution
declares modules in the ``keras_reid.plugins`` entry-point group::

    [options.entry_points]
    keras_reid.plugins =
        my_plugins = my_package.my_module

and ``my_package.my_module`` registers its components when imported::

    from pydantic import BaseModel
    from keras_reid.registry import register

    class BlurConfig(BaseModel):
        sigma: float = 1.0

    @register("filter", "blurry", config=BlurConfig)
    class BlurFilter:
        '''Scores images by their sharpness.'''
        def __init__(self, config: BlurConfig): ...

Plugin modules are imported lazily, the first time the registry is asked for
something, and should keep heavy imports (TensorFlow, MediaPipe) inside the
functions that need them so that listing plugins stays fast.
"""
from __future__ import annotations

import difflib
import importlib
import sys
import threading
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable, Iterator

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "keras_reid.plugins"

KINDS: tuple[str, ...] = (
    "dataset",
    "generator",
    "filter",
    "masker",
    "pose",
    "backbone",
    "loss",
    "stage",
)


class RegistryError(LookupError):
    """A lookup or registration problem that a user can fix (bad name, name clash)."""


class EmptyConfig(BaseModel):
    """Configuration of a component that takes no parameters."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Entry:
    """One registered component."""

    kind: str
    name: str
    obj: Any
    config: type[BaseModel]
    description: str
    module: str
    provider: str = "unknown"

    def create(self, config: BaseModel | dict | None = None, **kwargs: Any) -> Any:
        """Instantiate the component with a validated config (a dict is validated first)."""
        if config is None or isinstance(config, dict):
            config = self.config.model_validate(dict(config or {}))
        return self.obj(config, **kwargs)


@dataclass
class ImportFailure:
    """A plugin module that could not be imported."""

    entry_point: str
    module: str
    provider: str
    reason: str
    details: str = field(repr=False, default="")


class Registry:
    """Holds the registered components of every kind.

    ``load()`` imports the modules named in the ``keras_reid.plugins`` entry-point
    group once; lookups call it implicitly.
    """

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        self.kinds: tuple[str, ...] = tuple(kinds)
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in self.kinds}
        self._failures: list[ImportFailure] = []
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()
        self._module_provider: dict[str, str] = {}

    # ------------------------------------------------------------------ registration
    def register(
        self,
        kind: str,
        name: str,
        *,
        config: type[BaseModel] | None = None,
        description: str | None = None,
        override: bool = False,
    ) -> Callable[[Any], Any]:
        """Decorator registering a class or factory as component ``name`` of ``kind``.

        The component is called as ``obj(config, **kwargs)`` with a validated
        instance of ``config`` (a pydantic model; defaults to ``obj.Config`` and then
        to a model that accepts no parameters). ``description`` defaults to the first
        paragraph of the docstring, on one line. Registering a taken name raises ``RegistryError``
        naming both providers unless ``override=True``.
        """
        self._check_kind(kind)

        def decorator(obj: Any) -> Any:
            cfg = config or getattr(obj, "Config", None) or EmptyConfig
            if not (isinstance(cfg, type) and issubclass(cfg, BaseModel)):
                raise TypeError(
                    f"config of {kind} '{name}' must be a pydantic BaseModel subclass, got {cfg!r}"
                )
            module = getattr(obj, "__module__", "?")
            desc = description or first_paragraph(obj.__doc__)
            entry = Entry(kind, name, obj, cfg, desc.strip(), module, self._provider_of(module))
            with self._lock:
                existing = self._entries[kind].get(name)
                same_origin = existing is not None and (
                    existing.obj is obj
                    or (existing.module == module
                        and getattr(existing.obj, "__qualname__", None)
                        == getattr(obj, "__qualname__", ""))
                )
                if existing is not None and not override and not same_origin:
                    raise RegistryError(
                        f"{kind} '{name}' is registered twice: by {existing.module} "
                        f"(from {existing.provider}) and by {module} (from {entry.provider}); "
                        "rename one of them, or pass override=True to replace it on purpose"
                    )
                self._entries[kind][name] = entry
            return obj

        return decorator

    # ------------------------------------------------------------------ discovery
    def load(self) -> None:
        """Import every module of the ``keras_reid.plugins`` entry-point group (once)."""
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                for ep in _entry_points():
                    provider = ep.dist.name if getattr(ep, "dist", None) is not None else "unknown"
                    self._module_provider[ep.value.split(":")[0]] = provider
                for ep in _entry_points():
                    module_name = ep.value.split(":")[0]
                    provider = self._module_provider.get(module_name, "unknown")
                    try:
                        importlib.import_module(module_name)
                    except RegistryError:
                        raise
                    except Exception as exc:  # a broken plugin must not break the others
                        self._failures.append(
                            ImportFailure(
                                ep.name, module_name, provider,
                                f"{type(exc).__name__}: {exc}", traceback.format_exc(),
                            )
                        )
                self._loaded = True
            finally:
                self._loading = False

    def reload(self) -> None:
        """Forget what was discovered and discover again (for tests and new installs)."""
        with self._lock:
            self._loaded = False
            self._failures = []
            metadata_cache_clear()
        self.load()

    @property
    def failures(self) -> list[ImportFailure]:
        """Plugin modules that failed to import, with their distribution and reason."""
        self.load()
        return list(self._failures)

    # ------------------------------------------------------------------ lookup
    def get(self, kind: str, name: str, *, path: str | None = None) -> Entry:
        """Return the entry for ``name``; unknown names raise ``RegistryError`` with a did-you-mean."""
        self._check_kind(kind)
        self.load()
        entries = self._entries[kind]
        if name in entries:
            return entries[name]
        names = sorted(entries)
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        where = f" at {path}" if path else ""
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        failed = [f for f in self._failures]
        extra = ""
        if failed:
            extra = " (plugin modules that failed to import: " + ", ".join(
                f"{f.module}: {f.reason}" for f in failed) + ")"
        if not names:  # e.g. the entry points of an older install (stages = keras_reid.stages)
            extra += ("; no plugin registers any: the installed entry points may be stale, "
                      "reinstall keras-reid (pip install -e . in a checkout)")
        raise RegistryError(
            f"unknown {kind} '{name}'{where}{hint} available {kind}s: "
            f"{', '.join(names) if names else '(none)'}{extra}"
        )

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All entries, or those of one kind, sorted by kind and name."""
        self.load()
        kinds = [kind] if kind else list(self.kinds)
        for k in kinds:
            self._check_kind(k)
        return [self._entries[k][n] for k in kinds for n in sorted(self._entries[k])]

    def names(self, kind: str) -> list[str]:
        """Sorted names registered for ``kind``."""
        return [e.name for e in self.entries(kind)]

    def create(self, kind: str, spec: dict | str, *, path: str | None = None, **kwargs: Any) -> Any:
        """Build a component from a spec ``{"type": name, **params}`` (or a bare name)."""
        if isinstance(spec, str):
            spec = {"type": spec}
        params = dict(spec)
        name = params.pop("type", None)
        if name is None:
            raise RegistryError(f"{kind} spec{' at ' + path if path else ''} has no 'type' key")
        return self.get(kind, name, path=path).create(params, **kwargs)

    @contextmanager
    def using(self, kind: str, spec: dict | str, **kwargs: Any) -> Iterator[Any]:
        """``with registry.using("pose", spec) as estimator:`` a component from :meth:`create`
        whose ``close()`` (MediaPipe Tasks objects and the like), if it has one, runs on exit."""
        obj = self.create(kind, spec, **kwargs)
        try:
            yield obj
        finally:
            close = getattr(obj, "close", None)
            if callable(close):
                close()

    def unregister(self, kind: str, name: str) -> None:
        """Remove a component (for tests)."""
        self._entries[kind].pop(name, None)

    # ------------------------------------------------------------------ helpers
    def _check_kind(self, kind: str) -> None:
        if kind not in self._entries:
            close = difflib.get_close_matches(kind, self.kinds, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RegistryError(f"unknown plugin kind '{kind}'{hint} kinds: {', '.join(self.kinds)}")

    def _provider_of(self, module: str) -> str:
        parts = module.split(".")
        for i in range(len(parts), 0, -1):
            prov = self._module_provider.get(".".join(parts[:i]))
            if prov:
                return prov
        top = parts[0]
        try:
            dists = metadata.packages_distributions().get(top)
        except Exception:  # pragma: no cover - metadata is best effort
            dists = None
        if dists:
            return dists[0]
        return "keras-reid" if top in ("keras_reid", "keras_reid_plugins") else (
            "__main__" if top == "__main__" else top)


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring on one line (the registry's default description)."""
    para = (doc or "").strip().split("\n\n", 1)[0]
    return " ".join(para.split())


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
    # one entry per module even if a distribution is visible twice on sys.path
    seen: dict[tuple[str, str], metadata.EntryPoint] = {}
    for ep in eps:
        seen.setdefault((ep.name, ep.value), ep)
    return sorted(seen.values(), key=lambda e: (e.value != "keras_reid.stages.builtin", e.name))


def metadata_cache_clear() -> None:
    """Forget cached distribution metadata so newly installed plugins are seen."""
    importlib.invalidate_caches()
    for finder in sys.meta_path:
        clear = getattr(finder, "invalidate_caches", None)
        if clear:
            try:
                clear()
            except Exception:  # pragma: no cover
                pass


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
create = REGISTRY.create
entries = REGISTRY.entries

__all__ = [
    "KINDS", "ENTRY_POINT_GROUP", "Registry", "RegistryError", "Entry", "ImportFailure",
    "EmptyConfig", "REGISTRY", "register", "get", "create", "entries",
]
