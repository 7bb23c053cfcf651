"""Old module paths kept for one release: attribute access forwards to the new home with a
``DeprecationWarning`` that names it."""
from __future__ import annotations

import importlib
import warnings
from typing import Callable, Dict, Optional, Sequence


def forwarder(old: str, new: str, homes: Sequence[str],
              aliases: Optional[Dict[str, str]] = None) -> Callable[[str], object]:
    """A module ``__getattr__`` for the deprecated module ``old``: a name (renamed by ``aliases``,
    old name to new) is looked up in the modules ``homes`` (in order) and returned with a warning
    to import it from ``new`` instead."""
    aliases = dict(aliases or {})

    def __getattr__(name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        name = aliases.get(name, name)
        for home in homes:
            mod = importlib.import_module(home)
            if hasattr(mod, name):
                warnings.warn(f"{old} is deprecated and will be removed in the next release; "
                              f"import {name} from {new} instead", DeprecationWarning, stacklevel=2)
                return getattr(mod, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved to {new})")

    return __getattr__


def deprecated_method(old: str, new: str) -> Callable:
    """A method named ``old`` that warns and calls the method ``new`` of the same object."""

    def method(self, *args, **kwargs):
        warnings.warn(f"{type(self).__name__}.{old} is deprecated and will be removed in the next release; "
                      f"call {new} (the same method under its public name)", DeprecationWarning, stacklevel=2)
        return getattr(self, new)(*args, **kwargs)

    method.__name__ = old
    method.__doc__ = f"Deprecated name of :meth:`{new}`."
    return method
