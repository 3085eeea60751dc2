"""Method adapters by name: the built-in baselines plus third-party adapters from entry points.

A package adds a method without forking nsdbench by declaring, in its pyproject.toml:

    [project.entry-points."nsdbench.methods"]
    my-method = "my_package.adapter:MyMethod"

The entry point may name a Method instance, a class (instantiated without arguments) or a
zero-argument factory. Importing this module stays light: no torch, no method code runs.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from nsdbench.errors import UsageError
from nsdbench.methods.protocol import Method

ENTRY_POINT_GROUP = "nsdbench.methods"
BUILTIN_MODULES = ("nsdbench.methods.baselines",)

_METHODS: dict[str, Method] = {}
_SOURCES: dict[str, str] = {}
_BROKEN: dict[str, str] = {}  # entry points that failed to load: name -> one-line reason
_loaded = False


def _instantiate(obj: Any) -> Method:
    if isinstance(obj, type) or callable(obj) and not isinstance(obj, Method):
        obj = obj()
    if not isinstance(obj, Method):
        raise TypeError(f"{obj!r} does not implement the nsdbench Method protocol")
    return obj


def register_method(method: Any, source: str = "builtin", replace: bool = False) -> Method:
    """Register an adapter (instance, class or factory) under its `name`; usable as a class decorator."""
    inst = _instantiate(method)
    existing = _METHODS.get(inst.name)
    if existing is not None and not replace and type(existing) is not type(inst):
        raise ValueError(f"method {inst.name!r} is already registered by {_SOURCES[inst.name]}")
    _METHODS[inst.name] = inst
    _SOURCES[inst.name] = source
    return method


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)
    _SOURCES.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _METHODS:
            continue  # a built-in name wins over a plugin claiming the same name
        try:
            register_method(ep.load(), source=f"entry point {ep.value}")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the built-in methods
            _BROKEN[ep.name] = f"entry point {ep.value} failed to load: {type(exc).__name__}: {exc}"


def list_methods() -> list[Method]:
    """All registered adapters, sorted by name."""
    _load()
    return [_METHODS[n] for n in sorted(_METHODS)]


def method_source(name: str) -> str:
    _load()
    return _SOURCES.get(name, "")


def get_method(name: str) -> Method:
    """The adapter called `name`, or a one-line usage error listing the known names."""
    _load()
    if name in _METHODS:
        return _METHODS[name]
    if name in _BROKEN:
        raise UsageError(f"method {name!r}: {_BROKEN[name]}")
    known = ", ".join(sorted(_METHODS)) or "none"
    raise UsageError(f"unknown method {name!r} (known: {known}; see `nsdbench methods list`)")


def resolve_settings(method: Method, variant: str | None, overrides: dict[str, Any] | None = None) -> dict:
    """The method's defaults, updated by a named variant, then by explicit overrides."""
    settings = dict(method.defaults)
    if variant:
        if variant not in method.variants:
            known = ", ".join(sorted(method.variants)) or "none"
            raise UsageError(f"method {method.name!r} has no variant {variant!r} (known: {known})")
        settings.update(method.variants[variant])
    if overrides:
        unknown = sorted(set(overrides) - set(settings))
        if unknown:
            raise UsageError(
                f"method {method.name!r} has no setting {unknown[0]!r} "
                f"(settings: {', '.join(sorted(settings))})"
            )
        settings.update(overrides)
    return settings
