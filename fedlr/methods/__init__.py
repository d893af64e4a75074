"""The methods' math: what each method trains and sends, and its pure aggregation on tensors.
No Flower here (design principle 1); strategies/ wraps these functions."""

from fedlr.methods.base import MethodSpec, get_method

__all__ = ["MethodSpec", "get_method"]
