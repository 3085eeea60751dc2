"""Method classes by name: the built-in baselines plus third-party adapters from entry points.

A package adds a method without forking nsdbench by declaring, in its pyproject.toml:

    [project.entry-points."nsdbench.methods"]
    my-method = "my_package.adapter:MyMethod"

The entry point names a `Method` subclass. Importing this module stays light: no torch, no method
code runs. `create_method` instantiates a class for one run with its resolved, type-checked settings.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from nsdbench.errors import UsageError
from nsdbench.methods.adapter import Method

ENTRY_POINT_GROUP = "nsdbench.methods"
BUILTIN_MODULES = (
    "nsdbench.methods.baselines",
    "nsdbench.methods.brain_diffuser",
    "nsdbench.methods.takagi",
    "nsdbench.methods.minddiffuser",
    "nsdbench.methods.second_sight",
)

_METHODS: dict[str, type[Method]] = {}
_SOURCES: dict[str, str] = {}
_BROKEN: dict[str, str] = {}  # entry points that failed to load: name -> one-line reason
_loaded = False


def _check_class(cls: Any) -> type[Method]:
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a subclass of nsdbench.methods.adapter.Method")
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`")
    if not (dataclasses.is_dataclass(cls.Settings) and cls.Settings.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__name__}.Settings must be a frozen dataclass")
    return cls


def register_method(cls: type[Method], source: str = "builtin", replace: bool = False) -> type[Method]:
    """Register a Method subclass under its `name`; usable as a class decorator."""
    cls = _check_class(cls)
    existing = _METHODS.get(cls.name)
    if existing is not None and not replace and existing is not cls:
        raise ValueError(f"method {cls.name!r} is already registered by {_SOURCES[cls.name]}")
    _METHODS[cls.name] = cls
    _SOURCES[cls.name] = source
    return cls


def unregister_method(name: str) -> None:
    _METHODS.pop(name, None)
    _SOURCES.pop(name, None)


@contextmanager
def scoped_registry(rediscover: bool = False) -> Iterator[None]:
    """Registrations made inside the block are undone when it ends (tests, notebooks trying a method);
    with `rediscover`, installed plugins' entry points are read again inside it."""
    global _loaded
    saved = dict(_METHODS), dict(_SOURCES), dict(_BROKEN), _loaded
    if rediscover:
        _loaded = False
        _BROKEN.clear()
    try:
        yield
    finally:
        for live, kept in zip((_METHODS, _SOURCES, _BROKEN), saved[:3], strict=True):
            live.clear()
            live.update(kept)
        _loaded = saved[3]


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


def list_methods() -> list[type[Method]]:
    """All registered method classes, sorted by name."""
    _load()
    return [_METHODS[n] for n in sorted(_METHODS)]


def method_source(name: str) -> str:
    _load()
    return _SOURCES.get(name, "")


def get_method(name: str) -> type[Method]:
    """The method class called `name`, or a one-line usage error listing the known names."""
    _load()
    if name in _METHODS:
        return _METHODS[name]
    if name in _BROKEN:
        raise UsageError(f"method {name!r}: {_BROKEN[name]}")
    known = ", ".join(sorted(_METHODS)) or "none"
    raise UsageError(f"unknown method {name!r} (known: {known}; see `nsdbench methods list`)")


# ---------------------------------------------------------------------------------------------- settings


def setting_types(cls: type[Method]) -> dict[str, Any]:
    """Field name -> resolved type annotation of the method's Settings dataclass."""
    hints = typing.get_type_hints(cls.Settings)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls.Settings)}


def coerce_setting(method: str, key: str, tp: Any, value: Any) -> Any:
    """`value` (a Python value or the text of `--set key=value`) as type `tp`, or a one-line usage error."""
    text = value if isinstance(value, str) else None
    try:
        return _coerce(tp, value)
    except (TypeError, ValueError):
        want = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        got = repr(text) if text is not None else f"{type(value).__name__} {value!r}"
        raise UsageError(f"method {method}: setting {key} expects {want}, got {got}") from None


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ValueError(value)
    if origin in (typing.Union, types.UnionType):
        none = value is None or (isinstance(value, str) and value.lower() == "none")
        if none and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if inner is not None:
            return tuple(_coerce(inner, v) for v in value)
        if args and len(args) != len(value):
            raise ValueError(value)
        return tuple(_coerce(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(value)
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(value)
        return int(value.strip()) if isinstance(value, str) else int(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(f"unsupported setting type {tp}")


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['k=v', ...] (the --set options) -> {k: 'v'}; a malformed item is a usage error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def resolve_settings(
    cls: type[Method], variant: str | None = None, overrides: Mapping[str, Any] | None = None
) -> Any:
    """The method's Settings: defaults, then a named variant, then explicit overrides (type-checked)."""
    types_ = setting_types(cls)
    values: dict[str, Any] = {}
    if variant:
        if variant not in cls.variants:
            known = ", ".join(sorted(cls.variants)) or "none"
            raise UsageError(f"method {cls.name!r} has no variant {variant!r} (known: {known})")
        values.update(cls.variants[variant])
    for key, value in dict(overrides or {}).items():
        if key not in types_:
            known = ", ".join(types_) or "none"
            raise UsageError(f"method {cls.name!r} has no setting {key!r} (settings: {known})")
        values[key] = value
    coerced = {k: coerce_setting(cls.name, k, types_[k], v) for k, v in values.items()}
    return cls.Settings(**coerced)


def create_method(
    name: str,
    variant: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    weights_mode: str = "pretrained",
) -> Method:
    """An instance of method `name` for one run."""
    cls = get_method(name)
    settings = resolve_settings(cls, variant, overrides)
    return cls(settings, device=device, dtype=dtype, weights_mode=weights_mode)
