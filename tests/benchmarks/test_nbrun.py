"""``benchmarks/device/nbrun.py``: notebook cells run in order without Jupyter, as stage b runs them on the GPU
machine, which has no IPython (a stand-in ``IPython.display`` prints what the notebook displays)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NBRUN = REPO / "benchmarks" / "device" / "nbrun.py"
# sys.modules["IPython"] = None makes every IPython import fail, as on a machine without it.
WITHOUT_IPYTHON = ("import runpy, sys; sys.modules['IPython'] = None; sys.argv = sys.argv[1:]; "
                   "runpy.run_path(sys.argv[0], run_name='__main__')")


def _notebook(path: Path, *cells: str) -> Path:
    cell = lambda src: {"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None}
    notebook = {"cells": [{"cell_type": "markdown", "source": "# t", "metadata": {}}] + [cell(c) for c in cells],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))
    return path


def _run(path: Path, without_ipython: bool = True):
    cmd = [sys.executable, "-c", WITHOUT_IPYTHON, str(NBRUN), path.name] if without_ipython else \
        [sys.executable, str(NBRUN), path.name]
    proc = subprocess.run(cmd, cwd=path.parent, capture_output=True, text=True, timeout=120)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


def test_cells_run_in_one_namespace_without_ipython(tmp_path):
    nb = _notebook(tmp_path / "ok.ipynb",
                   "!pip install -q nothing\n%matplotlib inline\nfrom IPython.display import HTML, display\nx = 41",
                   "if True:\n    %time y = 1\ndisplay(HTML('<b>report</b>'), x + 1)",
                   "from matplotlib.figure import Figure\nimport matplotlib.pyplot as plt\n"
                   "Figure().subplots().plot([1, 2]); plt.figure(); plt.plot([1])")  # matplotlib looks at IPython
    proc, record = _run(nb)
    assert proc.returncode == 0, proc.stderr
    assert record == {"notebook": "ok.ipynb", "status": "ok", "cells": 3, "cell": None,
                      "seconds": record["seconds"], "error": None}
    assert "<HTML: '<b>report</b>'>" in proc.stdout and "\n42\n" in proc.stdout
    progress = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"nbrun_cell"')]
    assert [p["nbrun_cell"] for p in progress] == [1, 2, 3]  # how far a run killed midway got


def test_a_failing_cell_is_named_and_stops_the_run(tmp_path):
    nb = _notebook(tmp_path / "bad.ipynb", "a = 1", "raise SystemExit('set REPO_URL')", "print('never')")
    proc, record = _run(nb, without_ipython=False)
    assert proc.returncode == 1 and "never" not in proc.stdout
    assert record["status"] == "failed" and record["cell"] == 2 and record["cells"] == 1
    assert record["error"] == "SystemExit: set REPO_URL"
