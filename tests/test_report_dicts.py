"""Every report's ``to_dict()`` is strict JSON, whatever NaN or infinity it holds.

The report classes are found, not listed: every class in a jaxcheck module with a
``to_dict`` method. Each is built from its type hints with a NaN in every float,
an infinity in every array, so a new report class is covered the day it is added.
"""

import dataclasses
import importlib
import json
import math
import pkgutil
import types
import typing

import numpy as np
import pytest

import jaxcheck


def raise_on_nan(name):
    raise ValueError(f"to_dict() produced the non-JSON constant {name}")


def _report_classes() -> list[type]:
    found = {}
    for info in pkgutil.walk_packages(jaxcheck.__path__, "jaxcheck."):
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and obj.__module__ == info.name
                and dataclasses.is_dataclass(obj)
                and callable(getattr(obj, "to_dict", None))
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


def _sample(tp, planted: list[str]):
    """A value of type ``tp`` with NaN and infinities wherever a float goes."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is float or tp is typing.Any:
        planted.append("nan")
        return math.nan
    if tp is bool:
        return False
    if tp is int:
        return 1
    if tp is str:
        return "x"
    if tp is type(None):
        return None
    if origin in (typing.Union, types.UnionType):
        return _sample(next(a for a in args if a is not type(None)), planted)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_sample(args[0], planted),)
        return tuple(_sample(a, planted) for a in args)
    if origin is dict:
        return {_sample(args[0], planted): _sample(args[1], planted)}
    if tp is np.ndarray:
        planted.append("inf")
        return np.array([[math.inf]])
    if dataclasses.is_dataclass(tp):
        return _build(tp, planted)
    raise TypeError(f"no sample for {tp!r}")


def _build(cls: type, planted: list[str]):
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    return cls(**{f.name: _sample(hints[f.name], planted) for f in fields})


CLASSES = _report_classes()


def test_the_report_classes_are_found():
    names = {cls.__name__ for cls in CLASSES}
    for expected in ("GradCheckReport", "LeafReport", "StepSweep", "KinkAnalysis"):
        assert expected in names
    for expected in ("DirectionsReport", "LossTermsReport", "OverfitResult"):
        assert expected in names
    assert len(CLASSES) >= 28


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__qualname__)
def test_to_dict_is_strict_json(cls):
    planted: list[str] = []
    d = _build(cls, planted).to_dict()
    text = json.dumps(d)
    assert json.loads(text, parse_constant=raise_on_nan) == d
    if planted and "non_finite" in d:
        # Each field set to null or "inf" says why.
        assert all(isinstance(v, str) and v for v in d["non_finite"].values())
    if "nan" in planted and "null" in text:
        assert "non_finite" in d, f"{cls.__name__}: a null without its reason"
