"""The methods' math: what each method trains and sends, and its pure aggregation on tensors.
No Flower here (design principle 1); strategies/ wraps these functions.

Every module of this package is imported here; a method module registers its ``MethodSpec``
(``fedlr.methods.base.register``), so adding a method is adding one module."""

import importlib
import pkgutil

from fedlr.methods.base import MethodSpec, get_method, method_names, register

DEFAULT_METHOD = "fed_sb"  # method.name when an experiment names none

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DEFAULT_METHOD", "MethodSpec", "get_method", "method_names", "register"]
