"""Every public name is documented with an example, and every example runs."""

import doctest
import importlib
import inspect
import pkgutil

import jax
import pytest

import jaxcheck

#: Every module of the package, the subpackages' (jaxcheck.training.*) included.
MODULES = sorted(m.name for m in pkgutil.walk_packages(jaxcheck.__path__, "jaxcheck."))
#: The public names: jaxcheck's and those of its subpackages.
PUBLIC = [("jaxcheck", name) for name in jaxcheck.__all__] + [
    ("jaxcheck.training", name) for name in jaxcheck.training.__all__
]


def test_module_list_reaches_into_subpackages():
    assert {
        "jaxcheck.examples",
        "jaxcheck.training",
        "jaxcheck.training.sanity",
    } <= set(MODULES)


@pytest.mark.parametrize("where, name", PUBLIC, ids=[f"{w}.{n}" for w, n in PUBLIC])
def test_public_names_are_documented(where, name):
    obj = getattr(importlib.import_module(where), name)
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
