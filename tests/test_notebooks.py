"""Execute every teaching notebook (jupytext py:percent files in notebooks/) in a real kernel.

Each notebook is converted with jupytext and run cell by cell by nbclient, as Jupyter would: a
notebook whose cells raise fails the test. The notebooks' own asserts check what they teach.
"""

from __future__ import annotations

import pathlib

import jupytext
import nbclient
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.py"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no py:percent notebooks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    # every code cell ran (an error would have raised CellExecutionError above)
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip())
