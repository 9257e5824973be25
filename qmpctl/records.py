"""Named tuples declared like ``typing.NamedTuple``, without importing ``typing`` at run time.

``import typing`` costs about 3 ms, and each ``typing.NamedTuple`` class
compiles its string annotations into forward references: several
milliseconds of every call, where ``qmpctl status`` may cost at most 1.4x a
bare Python client (tests/bench/bench.py). The modules every
call imports therefore take :class:`NamedTuple` from here and name types
from ``typing`` only under ``if TYPE_CHECKING:``. Type checkers read the
``TYPE_CHECKING`` branch, so for them this *is* ``typing.NamedTuple``; at run
time a class body becomes a :func:`collections.namedtuple` with the same
fields, defaults, methods and docstring.
"""

from __future__ import annotations

from collections import namedtuple
from itertools import pairwise

TYPE_CHECKING = False
"""False at run time; mypy treats any name ``TYPE_CHECKING`` as true."""

_NOT_COPIED = frozenset({"__annotations__", "__module__", "__qualname__", "__dict__", "__weakref__"})

if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    class _RecordType(type):
        """Turns ``class X(NamedTuple): field: type = default`` into a namedtuple class."""

        def __new__(mcls, typename, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, typename, bases, namespace)
            fields = list(namespace.get("__annotations__", {}))
            defaults = [namespace[name] for name in fields if name in namespace]
            for before, after in pairwise(fields):
                if before in namespace and after not in namespace:
                    raise TypeError(f"{typename}: field {after} without a default cannot follow {before}, "
                                    "which has one")
            record = namedtuple(typename, fields, defaults=defaults, module=namespace.get("__module__"))
            record.__qualname__ = namespace.get("__qualname__", typename)
            for key, value in namespace.items():
                if key not in _NOT_COPIED and key not in fields:
                    setattr(record, key, value)
            return record

    class NamedTuple(metaclass=_RecordType):
        """Base of the run-time named tuples (see the module's docstring)."""
