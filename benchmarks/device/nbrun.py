"""Run one notebook's code cells in order in one namespace, without Jupyter: the GPU check's stage b.

    cd notebooks && PYTORCH_UTILS_SMOKE=1 python ../benchmarks/device/nbrun.py strixbee_level1.ipynb

Why not nbval: the GPU machine has no Jupyter, and its wheels do not fit beside the data. A notebook cell is plain
Python except for IPython lines: shell escapes (``!pip ...``) and magics (``%matplotlib``), which are replaced by
``pass`` (keeping the indentation, so an ``if`` around them stays valid), and ``IPython.display``, which a machine
without IPython gets as a stand-in that prints what a notebook displays. The last stdout line is one JSON record:
``{"notebook", "status": "ok"|"failed", "cells", "seconds", "cell", "error"}`` (``cell``: 1-based index among the
code cells of the one that raised); before it, ``{"nbrun_cell": i, "seconds"}`` after each cell, so a run killed
midway still says how far it got. Exit status 1 when a cell raised.
"""
import json
import re
import sys
import time
import traceback
from pathlib import Path

IPYTHON_LINE = re.compile(r"^(\s*)[!%].*$")


def cell_sources(path: Path):
    """The code cells' sources, IPython-only lines turned into ``pass``."""
    cells = json.loads(path.read_text())["cells"]
    sources = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        sources.append("\n".join(IPYTHON_LINE.sub(r"\1pass", line) for line in text.splitlines()))
    return sources


def ipython_display_stand_in() -> None:
    """Where IPython is missing (the GPU machine), register a stand-in ``IPython.display``: ``display`` prints each
    object, ``HTML`` / ``Markdown`` / ``Image`` keep their data. Jupyter and Colab always have the real one."""
    try:
        import IPython.display  # noqa: F401
        return
    except ImportError:
        pass
    import types

    class _Shown:
        def __init__(self, data=None, **kwargs):
            self.data, self.kwargs = data, kwargs

        def __repr__(self):
            return f"<{type(self).__name__}: {str(self.data)[:80]!r}>"

    def display(*objs, **kwargs) -> None:
        for obj in objs:
            print(obj)

    display_module = types.ModuleType("IPython.display")
    display_module.display = display
    for name in ("HTML", "Markdown", "Image"):
        setattr(display_module, name, type(name, (_Shown,), {}))
    package = types.ModuleType("IPython")
    package.display = display_module
    # What real IPython answers outside a kernel; matplotlib and pyplot read both when "IPython" is imported.
    package.get_ipython, package.version_info = (lambda: None), (8, 24, 0, "stand-in")
    sys.modules.update({"IPython": package, "IPython.display": display_module})


def run_notebook(path: Path) -> dict:
    """Execute the code cells of ``path`` in order in one fresh namespace; return the result record."""
    import matplotlib

    matplotlib.use("Agg")  # figures are made and closed, never shown
    import matplotlib.pyplot as plt

    ipython_display_stand_in()
    namespace = {"__name__": "__main__", "__file__": str(path)}
    start = time.perf_counter()
    sources = cell_sources(path)
    for index, source in enumerate(sources, 1):
        try:
            exec(compile(source, f"<{path.name} cell {index}>", "exec"), namespace)
        except BaseException as exc:  # SystemExit included: a cell must not end the run silently
            traceback.print_exc()
            return {"notebook": path.name, "status": "failed", "cells": index - 1, "cell": index,
                    "seconds": round(time.perf_counter() - start, 2),
                    "error": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            print(json.dumps({"nbrun_cell": index, "seconds": round(time.perf_counter() - start, 2)}), flush=True)
        finally:
            plt.close("all")
    return {"notebook": path.name, "status": "ok", "cells": len(sources), "cell": None,
            "seconds": round(time.perf_counter() - start, 2), "error": None}


if __name__ == "__main__":
    result = run_notebook(Path(sys.argv[1]))
    sys.stdout.flush()
    print(json.dumps(result), flush=True)
    sys.exit(0 if result["status"] == "ok" else 1)
