"""The schedulers hpclab knows. Each module in this package that defines a Scheduler
subclass with a `name` is found here: adding a scheduler is adding one file."""

from __future__ import annotations

import importlib
import pkgutil

from .base import JobInfo, JobSpec, JobState, Scheduler

__all__ = ["JobInfo", "JobSpec", "JobState", "Scheduler", "get", "names", "registry"]


def registry() -> dict[str, type[Scheduler]]:
    found: dict[str, type[Scheduler]] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Scheduler) and "name" in vars(obj):
                found[obj.name] = obj
    return found


def names() -> tuple[str, ...]:
    return tuple(sorted(registry()))


def get(name: str) -> Scheduler:
    try:
        return registry()[name]()
    except KeyError:
        raise KeyError(f"unknown scheduler {name!r}; known: {', '.join(names())}") from None
