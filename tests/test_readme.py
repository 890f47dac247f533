"""Every example the README shows runs and prints what the README says, and its
two set-up commands are the ones CI uses.

The README's examples are ``pycon`` blocks (``>>>`` prompts followed by the
output): they run in order, in one namespace, as doctests, so a report whose
text changes fails here until the README shows the new text.
"""

import doctest
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```pycon\n(.*?)```", README, re.S)


def test_the_readme_has_examples_and_no_untested_python_block():
    assert len(BLOCKS) >= 3
    # A plain ```python block would be shown but not checked.
    assert "```python" not in README


def test_readme_examples_print_what_the_readme_shows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # reports wrap to the terminal width
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    globs: dict = {"__name__": "readme"}
    for n, block in enumerate(BLOCKS):
        test = parser.get_doctest(block, globs, f"README.md block {n + 1}", "README.md", 0)
        runner.run(test, clear_globs=False)
    result = runner.summarize(verbose=False)
    assert result.attempted > 10
    assert result.failed == 0, f"{result.failed} README example(s) print something else"


def test_the_first_example_is_a_real_model_that_passes():
    globs: dict = {"__name__": "readme"}
    test = doctest.DocTestParser().get_doctest(BLOCKS[0], globs, "first", "README.md", 0)
    doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, out=lambda s: None)
    report = test.globs["report"]
    assert report.passed
    # Random initialisation: every coordinate is tested, none untestable.
    assert report.num_checked == sum(leaf.num_ok for leaf in report.leaves)


def test_ci_runs_the_readme_test_command():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = [
        line.strip() for b in bash_blocks for line in b.splitlines() if line.strip()
    ]
    demo = [c for c in commands if "jaxcheck demo" in c]
    tests = [c for c in commands if "pytest" in c]
    assert len(demo) == 1 and len(tests) == 1
    assert tests[0] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    "notebook", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
)
def test_the_readme_links_every_notebook(notebook):
    assert f"(notebooks/{notebook})" in README
