"""Every public name is documented with an example, and every example runs."""

import doctest
import importlib
import inspect
import pkgutil

import jax
import pytest

import jaxcheck

MODULES = sorted(
    m.name for m in pkgutil.iter_modules(jaxcheck.__path__, "jaxcheck.") if not m.ispkg
)


@pytest.mark.parametrize("name", jaxcheck.__all__)
def test_public_names_are_documented(name):
    obj = getattr(jaxcheck, name)
    doc = inspect.getdoc(obj)
    assert doc, f"jaxcheck.{name} has no docstring"
    if inspect.isfunction(obj):
        assert "Examples:" in doc, f"jaxcheck.{name} has no Examples: section"
        hints = inspect.get_annotations(obj)
        assert "return" in hints, f"jaxcheck.{name} has no return type hint"


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
