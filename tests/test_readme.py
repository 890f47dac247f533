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
#: The note on what a first call cost depends on the machine and its load (it
#: is shown only when compiling took longer than evaluating): not compared.
TIMING_NOTE = re.compile(
    r"\n *note: first call of this function's structure:.*?disk too\)\.", re.S
)


class _Checker(doctest.OutputChecker):
    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        want, got = TIMING_NOTE.sub("", want), TIMING_NOTE.sub("", got)
        return super().check_output(want, got, optionflags)


def test_the_readme_has_examples_and_no_untested_python_block():
    assert len(BLOCKS) >= 3
    # A plain ```python block would be shown but not checked.
    assert "```python" not in README


def test_the_timing_note_is_the_only_thing_left_out_of_the_comparison():
    shown = (
        "  ok\n  note: first call of this function's structure: compiling took 0.26 s, "
    )
    shown += "evaluating 0.01 s; a later\n      check ... (kept on\n      disk too)."
    checker = _Checker()
    assert checker.check_output(shown, "  ok", 0)
    assert not checker.check_output(shown, "  FAIL", 0)


def test_readme_examples_print_what_the_readme_shows(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # reports wrap to the terminal width
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(
        checker=_Checker(), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    globs: dict = {"__name__": "readme"}
    for n, block in enumerate(BLOCKS):
        test = parser.get_doctest(
            block, globs, f"README.md block {n + 1}", "README.md", 0
        )
        runner.run(test, clear_globs=False)
        globs = test.globs  # the next block sees what this one defined
    result = runner.summarize(verbose=False)
    assert result.attempted > 10
    assert result.failed == 0, f"{result.failed} README example(s) print something else"


def test_the_first_example_is_a_real_model_that_passes():
    globs: dict = {"__name__": "readme"}
    test = doctest.DocTestParser().get_doctest(
        BLOCKS[0], globs, "first", "README.md", 0
    )
    doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(
        test, out=lambda s: None, clear_globs=False
    )
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
