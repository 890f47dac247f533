"""Execute every notebook in notebooks/ so that none of them rots.

The notebooks are stored with their outputs (``python notebooks/execute.py``),
so that they read on the web; the tests execute a fresh copy of each.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
#: Notebooks executed by a test of their own that also checks what they print.
DEDICATED = {"03_protocol.ipynb": "tests/test_protocol.py"}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        cell.outputs, cell.execution_count = [], None
    if path.name in DEDICATED:
        pytest.skip(f"executed by {DEDICATED[path.name]}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed_and_small(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        "store the notebook executed, top to bottom: python notebooks/execute.py"
    )
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    assert path.stat().st_size < 400_000, "keep the stored figures small"
