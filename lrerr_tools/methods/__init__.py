"""The detection methods `train-det --method NAME` knows: one module each in this package.

Every module here (but those in NOT_METHODS) defines one `Method` subclass decorated with `@register`;
`all_methods()` imports them all the first time it is asked, so adding a method is adding
its module (and its test), with no list to edit. Importing them pulls in torch, which is why
the CLI asks only in the commands that train, score or report.
"""

from __future__ import annotations

import importlib
import pkgutil

from lrerr_tools.errors import LrerrError
from lrerr_tools.methods.base import Method

NOT_METHODS = ("base", "describe")  # the interface and `lrerr-tools methods`: no method in them
_REGISTRY: dict[str, type[Method]] = {}
_LOADED = False


def register(cls: type[Method]) -> type[Method]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two methods are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def all_methods() -> dict[str, type[Method]]:
    """Every registered method by name, in name order."""
    global _LOADED
    if not _LOADED:
        for module in pkgutil.iter_modules(__path__):
            if module.name not in NOT_METHODS and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _LOADED = True
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    methods = all_methods()
    if name not in methods:
        raise LrerrError(f"--method must be one of {', '.join(methods)} (got {name!r}) — "
                         "`lrerr-tools methods` describes each")
    return methods[name]
