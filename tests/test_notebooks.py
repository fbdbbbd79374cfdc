"""Execute every notebook in ``colabs/`` top to bottom; any cell error fails the test.

Notebooks run with the ``python3`` kernel (ipykernel) in ``colabs/`` as working directory.
jupyter_client starts a kernel spec whose command is plain ``python`` with ``sys.executable``,
so the kernel runs in this test's environment; the test checks that by prepending a cell that
prints ``sys.prefix``. Notebooks read real weights and data, so they are skipped (with the path
in the reason) where the data pack or the MiniLM weights are unavailable.

``JAXBERT_NOTEBOOK_TINY=1`` is set for the kernel: notebooks whose real model is too slow for a
test run on a CPU (``04_llm_embedder.ipynb``: SmolLM2-135M) switch to a random tiny model there and
run every other cell unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COLABS = REPO_ROOT / "colabs"
NOTEBOOKS = sorted(COLABS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, data_dir, minilm_dir, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    # The kernel inherits the environment: point it at the same data pack the tests use.
    monkeypatch.setenv("JAXBERT_DATA", str(data_dir))
    monkeypatch.setenv("JAXBERT_NOTEBOOK_TINY", "1")
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(COLABS)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # the message holds the cell and traceback
        pytest.fail(f"{path.name}: a cell failed:\n{e}", pytrace=False)
    kernel_prefix = "".join(o.get("text", "") for o in nb.cells[0].outputs).strip()
    assert kernel_prefix == sys.prefix, (f"kernel 'python3' ran in {kernel_prefix!r}, not in this "
                                         f"environment {sys.prefix!r}")
