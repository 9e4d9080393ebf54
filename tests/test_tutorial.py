"""The seed tutorial, run as written with `import pax` bound to paxtrain.

Each `In [N]:` cell is executed in one namespace; its printed output must match the output shown
under it (ids and tracer reprs aside). Lines the tutorial comments out because they fail are
uncommented and must raise a ValueError with a message that shows the fix.
"""

import contextlib
import io
import pathlib
import re
import sys

import pytest

import paxtrain

TUTORIAL = pathlib.Path(__file__).parent / "data" / "jax_transformations_tutorial.md"


def _cells() -> list[str]:
    """The code of each cell: its lines up to the first prose or output line after a blank line.

    In the tutorial, code lines start in lower case, `#`, `@` or with indentation, while prose
    and printed output start with a capital, a backtick or a parenthesis.
    """
    parts = re.split(r"^In \[\d+\]:\n", TUTORIAL.read_text(), flags=re.M)[1:]
    cells = []
    for part in parts:
        lines = part.splitlines()
        end = next(
            i
            for i in range(1, len(lines) + 1)
            if i == len(lines) or (lines[i - 1] == "" and re.match(r"[A-Z`(]", lines[i]))
        )
        cells.append("\n".join(lines[:end]))
    return cells


@pytest.fixture
def pax_alias(monkeypatch):
    monkeypatch.setitem(sys.modules, "pax", paxtrain)


def _run(code: str, namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(TUTORIAL), "exec"), namespace)
    return out.getvalue()


def _failing_lines(code: str) -> list[str]:
    return [
        line.lstrip("# ").split("  <--")[0].split(" # <--")[0]
        for line in code.splitlines()
        if line.startswith("# ") and "<--" in line and ("not work" in line or "exception" in line)
    ]


def test_tutorial_has_five_cells():
    assert len(_cells()) == 5
    assert all(cell.strip() for cell in _cells())


def test_tutorial_runs_as_written(pax_alias):
    namespace: dict = {}
    outputs = [_run(code, namespace) for code in _cells()]
    # Cell 1: a dict passed to jit is copied; the counter outside is unchanged.
    assert "(before) id" in outputs[0] and "counter 1" in outputs[0].splitlines()[0]
    assert outputs[0].splitlines()[-1].endswith("counter 1")
    assert outputs[2].strip() == "Counter = 10"
    assert outputs[4].strip().splitlines() == ["Counter = 0", "Counter = 1"]


@pytest.mark.parametrize(("cell_index", "num_failing"), [(1, 2), (3, 1)])
def test_tutorial_failing_lines_raise_with_fix(pax_alias, cell_index, num_failing):
    namespace: dict = {}
    for code in _cells()[: cell_index + 1]:
        _run(code, namespace)
    failing = _failing_lines(_cells()[cell_index])
    assert len(failing) == num_failing
    for line in failing:
        with pytest.raises(ValueError, match="module_and_value") as info:
            exec(line, namespace)
        assert "Cannot set `Counter.counter`" in str(info.value)
