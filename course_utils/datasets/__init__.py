"""Offline data for the course: generated from a seed, shipped by a pip dependency, or in ``data/``.

Nothing here downloads at run time. Each module of this package describes one data source
and exposes ``NOTEBOOKS`` (the notebooks that use it) and ``available() -> (bool, str)``,
which ``python -m course_utils.doctor`` calls to tell a learner whether the data is there and,
if not, exactly what to do.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def data_sources() -> list[ModuleType]:
    """Every module of this package that describes a data source (has ``available``)."""
    modules = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "available"):
            modules.append(module)
    return modules
