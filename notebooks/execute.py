"""Re-executes the notebooks in place, so that they are stored with their outputs.

    python notebooks/execute.py            # every notebook
    python notebooks/execute.py 01_quickstart.ipynb

Figures are stored as small PNGs (60 dpi). The test suite (tests/test_notebooks.py)
executes a copy of every notebook again and fails when one no longer runs; run this
after changing a notebook or the text of a report it prints.
"""

from __future__ import annotations

import os
import pathlib
import sys

import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).resolve().parent
#: A first cell, run and then removed, that keeps the stored figures small.
SETUP = (
    "import matplotlib\n"
    "matplotlib.rcParams['figure.dpi'] = 60\n"
    "%config InlineBackend.figure_formats = ['png']"
)


def execute(path: pathlib.Path) -> None:
    """Executes ``path`` top to bottom and writes it back with its outputs."""
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(HERE)}},
    )  # fmt: skip
    client.execute()
    nb.cells.pop(0)
    for n, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = n + 1
        for out in cell.outputs:
            if "execution_count" in out:
                out["execution_count"] = n + 1
    nbformat.write(nb, path)


def main(names: list[str]) -> None:
    os.environ.setdefault("JAXCHECK_NO_CACHE", "1")
    paths = [HERE / n for n in names] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        execute(path)
        print(f"{path.name}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main(sys.argv[1:])
