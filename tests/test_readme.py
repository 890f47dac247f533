"""The README's example runs and its two set-up commands are the ones CI uses."""

import pathlib
import re

import jaxcheck

ROOT = pathlib.Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_example_runs_and_passes():
    block = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    report = namespace["report"]
    assert isinstance(report, jaxcheck.GradCheckReport)
    assert report.passed and report.num_checked == 8 * 4 + 4 + 4 * 3


def test_ci_runs_the_readme_test_command():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    commands = [
        line.strip() for b in bash_blocks for line in b.splitlines() if line.strip()
    ]
    demo = [c for c in commands if "jaxcheck demo" in c]
    tests = [c for c in commands if "pytest" in c]
    assert len(demo) == 1 and len(tests) == 1
    assert tests[0] in (ROOT / ".ci" / "run").read_text()
