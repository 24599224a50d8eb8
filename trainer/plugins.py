"""Finding code from outside this project: intervention rules and evaluation metrics.

An extension is one Python object, found in either of two ways:

* installed: a package declares it as an entry point, in the group
  ``smart_tuner.rules`` or ``smart_tuner.metrics``; installing the package is enough;
* named in the config by its import path, ``"package.module:object"``.

Both are read with the standard library (``importlib.metadata``, ``importlib``). The
settings of an extension are a pydantic model it declares; :func:`validate_section`
checks the user's YAML section against it and reports errors under the section's key,
as the built-in sections' errors are.
"""

from __future__ import annotations

import functools
import importlib
import sys
from importlib.metadata import entry_points
from typing import Any, Sequence, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails

RULES_GROUP = "smart_tuner.rules"
METRICS_GROUP = "smart_tuner.metrics"

_T = TypeVar("_T")


def import_object(path: str) -> Any:
    """The object at ``"package.module:object"`` (the object part may be dotted)."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:object'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for {path!r}: {exc}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{module_name!r} has no {attribute!r} (from {path!r})")
        target = getattr(target, part)
    return target


@functools.lru_cache(maxsize=8)
def _installed(group: str, search_path: tuple[str, ...]) -> tuple[tuple[str, str, Any], ...]:
    # Keyed by sys.path as well: a package put on the path later is found then.
    found = []
    for ep in entry_points(group=group):
        try:
            found.append((ep.name, ep.value, ep.load()))
        except Exception as exc:  # someone else's code: say which package broke, in one line
            raise ValueError(f"the installed {group} entry point {ep.name!r} ({ep.value}) does not load: "
                             f"{type(exc).__name__}: {exc}") from None
    return tuple(found)


def installed(group: str) -> list[tuple[str, str, Any]]:
    """(entry point name, its import path, the loaded object) of every installed extension in ``group``."""
    return list(_installed(group, tuple(sys.path)))


def collect(group: str, import_paths: Sequence[str], kind: type[_T], what: str,
            reserved: Sequence[str] = ()) -> dict[str, _T]:
    """Installed extensions of ``group`` plus those at ``import_paths``, by their ``name``.

    Each must be an instance of ``kind`` with a ``name``; an installed one's entry point
    carries the same name. A name in ``reserved`` (the built-ins' names) or used by two
    different objects is an error: a rule cannot silently replace another.
    """
    found: dict[str, _T] = {}
    sources: dict[str, str] = {}
    loaded: list[tuple[str, Any, str | None]] = [(value, obj, ep_name) for ep_name, value, obj in installed(group)]
    loaded += [(path, import_object(path), None) for path in import_paths]
    for source, obj, ep_name in loaded:
        if not isinstance(obj, kind):
            raise ValueError(f"{source} is a {type(obj).__name__}, not a {kind.__name__}")
        name: str = getattr(obj, "name")
        if ep_name is not None and ep_name != name:
            raise ValueError(f"entry point {ep_name!r} ({source}) names a {what} called {name!r}: use one name")
        if name in reserved:
            raise ValueError(f"{source}: {what} name {name!r} is taken by a built-in one")
        if name in found and found[name] is not obj:
            raise ValueError(f"two {what}s are called {name!r}: {sources[name]} and {source}")
        found[name] = obj
        sources[name] = source
    return found


def config_error(title: str, kind: str, message: str, loc: tuple[str, ...], value: Any) -> ValidationError:
    """A one-entry ValidationError for a config section (``loc`` says where), so a problem
    found while loading extensions reads like any other config error."""
    from pydantic_core import PydanticCustomError

    error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=loc, input=value)
    return ValidationError.from_exception_data(title, [error])


def validate_section(model: type[BaseModel], value: Any, *loc: str) -> BaseModel:
    """``value`` validated by ``model``; errors are reported under ``loc`` (where the section
    sits), so that they read ``...policies.my_rule.threshold: ...`` like a built-in section's."""
    try:
        return model.model_validate({} if value is None else value)
    except ValidationError as exc:
        details = [InitErrorDetails(type=e["type"], loc=(*loc, *e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
                   for e in exc.errors()]
        raise ValidationError.from_exception_data(exc.title, details) from None
