"""Every public name is documented with an example, and every example runs."""

import doctest
import importlib
import inspect
import pkgutil
import typing

import jax
import pytest

import jaxcheck

#: Every module of the package, the subpackages' (jaxcheck.training.*) included.
MODULES = sorted(m.name for m in pkgutil.walk_packages(jaxcheck.__path__, "jaxcheck."))
#: The public names: jaxcheck's and those of its subpackages.
PUBLIC = sorted(
    {("jaxcheck", name) for name in jaxcheck.__all__}
    | {(where, name) for name, where in jaxcheck._MOVED.items()}
    | {
        (package, name)
        for package in (
            "jaxcheck.training",
            "jaxcheck.derivatives",
            "jaxcheck.protocol",
        )
        for name in importlib.import_module(package).__all__
    }
)


def test_the_top_level_is_small_and_every_moved_name_says_where_it_went():
    assert len(jaxcheck.__all__) <= 25
    assert {"check_grads", "assert_grads", "GradCheckReport"} <= set(jaxcheck.__all__)
    for name, where in jaxcheck._MOVED.items():
        assert name not in jaxcheck.__all__
        assert hasattr(importlib.import_module(where), name), (where, name)
        with pytest.raises(AttributeError, match=f"from {where} import {name}"):
            getattr(jaxcheck, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        jaxcheck.nope  # noqa: B018


def test_module_list_reaches_into_subpackages():
    assert {
        "jaxcheck.examples",
        "jaxcheck.training",
        "jaxcheck.training.sanity",
    } <= set(MODULES)


@pytest.mark.parametrize("where, name", PUBLIC, ids=[f"{w}.{n}" for w, n in PUBLIC])
def test_public_names_are_documented(where, name):
    obj = getattr(importlib.import_module(where), name)
    if typing.get_origin(obj) is typing.Literal:  # a type alias: its values are its doc
        assert all(isinstance(value, str) for value in typing.get_args(obj))
        return
    doc = inspect.getdoc(obj)
    assert doc, f"{where}.{name} has no docstring"
    if inspect.isfunction(obj):
        assert "Examples:" in doc, f"{where}.{name} has no Examples: section"
        hints = inspect.get_annotations(obj)
        assert "return" in hints, f"{where}.{name} has no return type hint"


@pytest.mark.parametrize("module", MODULES)
def test_doctests(module):
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    globs = {"jax": jax, "jnp": jax.numpy, "np": __import__("numpy")}
    for test in finder.find(mod, module, globs=dict(mod.__dict__, **globs)):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {module}"
