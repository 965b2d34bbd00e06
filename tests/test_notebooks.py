"""Execute every teaching notebook (jupytext py:percent files in notebooks/) in a real kernel.

Each notebook is converted with jupytext and run cell by cell by nbclient, as Jupyter would: a
notebook whose cells raise fails the test. The notebooks' own asserts check what they teach.

Fast mode by default: ``MINISEGNET_FAST=1`` (set here unless the environment says otherwise)
shrinks image sizes, training steps and timing repeats so that the whole set runs in a few minutes
on 2 cores. The full-size run is::

    MINISEGNET_FAST=0 pytest tests/test_notebooks.py

A notebook opened in Jupyter without the variable runs at full size.
"""

from __future__ import annotations

import os
import pathlib

import jupytext
import nbclient
import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no py:percent notebooks"


def test_notebook_numbers_are_unique():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)), f"two notebooks share a number: {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_form(path):
    """The form every notebook follows: a numbered title, checks of what it teaches, exercises."""
    nb = jupytext.read(path)
    md = [c.source for c in nb.cells if c.cell_type == "markdown"]
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert md and md[0].startswith(f"# {path.name[:2]} — "), \
        f"{path.name}: title '# NN — topic' first"
    assert "assert " in code, f"{path.name}: no assert checks what the notebook teaches"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Exercises"), \
        f"{path.name}: must end with a '## Exercises' cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINISEGNET_FAST", os.environ.get("MINISEGNET_FAST", "1"))
    nb = jupytext.read(path)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    # every code cell ran (an error would have raised CellExecutionError above)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert all(c.get("execution_count") for c in code)
