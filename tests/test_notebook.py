"""demos/tutorial.ipynb runs from top to bottom, and the committed copy carries its outputs.

The notebook is executed with nbclient in a fresh python3 kernel, from demos/ as Jupyter
would, with MNIST from the test copy; a cell that raises fails the test with that cell's
error. The committed file is not touched; refresh its outputs after editing it with

    PYTHONPATH=$PWD python tests/test_notebook.py     # runs it and writes it back, outputs included
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, also when run as a script
from conftest import ROOT, require_module, require_python3_kernel  # noqa: E402

NOTEBOOK = ROOT / "demos" / "tutorial.ipynb"
MAX_BYTES = 1_500_000  # it must stay readable on a code host


@pytest.fixture(scope="module")
def nbformat():
    return require_module("nbformat", "nbformat (pip install nbclient)")


@pytest.fixture(scope="module")
def executed(nbformat, mnist_dir, dot_binary, tmp_path_factory):
    """The notebook after a fresh run (the committed file is left as it is)."""
    require_python3_kernel()
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(NOTEBOOK, as_version=4)
    mp = pytest.MonkeyPatch()
    mp.setenv("TINYGRAD_MNIST_DATA", str(mnist_dir))
    mp.setenv("TMPDIR", str(tmp_path_factory.mktemp("kernel-tmp")))
    try:
        execute(nb)
    except CellExecutionError as e:
        pytest.fail(f"a cell of {NOTEBOOK.name} raised:\n{e}", pytrace=False)
    finally:
        mp.undo()
    return nb


def execute(nb):
    """Run every cell in a fresh python3 kernel from demos/, as Jupyter would; raises
    nbclient's CellExecutionError at the first cell that fails. No timing metadata is kept,
    so a re-run changes only what the cells print."""
    from nbclient import NotebookClient
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    NotebookClient(nb, timeout=300, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs_of(cell, mime=None):
    """The text of a cell's outputs: streams, or the given MIME type of rich outputs."""
    for o in cell.outputs:
        if mime is None and o.output_type == "stream":
            yield o.text
        elif mime is not None and mime in o.get("data", {}):
            yield o.data[mime]


def cell_with(nb, source_snippet):
    found = [c for c in code_cells(nb) if source_snippet in c.source]
    assert len(found) == 1, f"expected one code cell containing {source_snippet!r}"
    return found[0]


def test_every_cell_runs_without_error(executed):
    for cell in code_cells(executed):
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"cell {cell.source[:60]!r} raised {errors[0].ename}"


def test_graphs_are_drawn_inline(executed):
    svgs = [svg for c in code_cells(executed) for svg in outputs_of(c, "image/svg+xml")]
    assert len(svgs) >= 3
    assert any(">Tanh<" in s for s in svgs) and any(">Affine<" in s for s in svgs)


def test_hand_finite_difference_and_backward_agree(executed):
    text = "".join(outputs_of(cell_with(executed, "by_hand =")))
    for line in text.strip().splitlines():  # "de/da: by hand -0.002682   finite ... backward() ..."
        numbers = [float(w) for w in line.split() if w[:1] in "+-" and w[1:2].isdigit()]
        assert len(numbers) == 3 and max(numbers) - min(numbers) < 1e-5, line


def test_gradcheck_passes_and_catches_the_wrong_rule(executed):
    assert list(outputs_of(cell_with(executed, "gradcheck(lambda a, b"), "text/plain")) == ["True"]
    caught = "".join(outputs_of(cell_with(executed, "class Cube(Function)")))
    assert caught.startswith("GradcheckError: input 0 ('x')") and "numerical 3" in caught


def test_the_training_runs_learn(executed):
    loop = "".join(outputs_of(cell_with(executed, "optimizer.step()")))
    assert float(loop.split("validation accuracy ")[1].split("%")[0]) > 90
    run = "".join(outputs_of(cell_with(executed, "run = train(")))
    assert float(run.split("test accuracy ")[1].split("%")[0]) > 95
    pictures = cell_with(executed, '"learning_curves"')
    assert len(list(outputs_of(pictures, "image/png"))) == 3


def test_one_backprop_step_moves_the_digit_toward_its_label(executed):
    text = "".join(outputs_of(cell_with(executed, "ex = explain(")))
    label = int(text.split("true label ")[1].split(",")[0])
    before, after = text.split(f"p({label}) ")[1].split("%")[:2]
    assert float(after.split("-> ")[1]) > float(before)
    assert len(list(outputs_of(cell_with(executed, "plot_explanation("), "image/png"))) == 1


def test_the_weight_change_is_the_digit_times_one_number_per_unit(executed):
    text = "".join(outputs_of(cell_with(executed, "np.outer(x_in, scale)")))
    residual, largest = (float(w.strip("()")) for w in text.split() if "e-" in w)
    assert residual < 1e-4 * largest


def test_the_committed_notebook_has_its_outputs_and_stays_small(nbformat):
    assert NOTEBOOK.stat().st_size < MAX_BYTES
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), \
        "commit the notebook run once from top to bottom: jupyter execute --inplace demos/tutorial.ipynb"
    pictures = [p for c in cells for mime in ("image/png", "image/svg+xml") for p in outputs_of(c, mime)]
    assert len(pictures) >= 8
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]


if __name__ == "__main__":
    import nbformat as nbf
    nbf.write(execute(nbf.read(NOTEBOOK, as_version=4)), NOTEBOOK)
    print(f"{NOTEBOOK}: executed, {NOTEBOOK.stat().st_size / 1e6:.2f} MB")
