"""The documentation runs as written: every docstring example (doctest) and the README's code.

A failing docstring is reported with its module, line, the example and what it printed. The
examples see the names the docs assume are imported: `jax`, `jnp`, `np`, `optax`, `pax`
(paxtrain) and `nn` (paxtrain.nn), plus the public names of the module's package (`make_mesh`
in `paxtrain/parallel/*.py`). `paxtrain.nn`'s examples run in `tests/test_nn_docs.py`.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import io
import pathlib
import pkgutil
import re
import shlex

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import paxtrain
import paxtrain.nn
from paxtrain import cli

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

SKIPPED_MODULES = {
    "paxtrain.__main__",  # importing it runs the command line
}
# Modules whose examples are wrong today and whose file another engineer owns right now; the
# test fails (strict xfail) once they run, so the entry is removed then.
KNOWN_BROKEN: dict[str, str] = {}


# Modules whose examples need an optional extra: skipped where it is not installed.
NEEDS_EXTRA = {"paxtrain.data.grain_source": "grain"}


def _modules() -> list[str]:
    names = ["paxtrain"] + [m.name for m in pkgutil.walk_packages(paxtrain.__path__, "paxtrain.")]
    return [n for n in names if n not in SKIPPED_MODULES and not n.startswith("paxtrain.nn")]


def _param(name: str):
    if name in KNOWN_BROKEN:
        return pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_BROKEN[name], strict=True))
    if name in NEEDS_EXTRA and importlib.util.find_spec(NEEDS_EXTRA[name]) is None:
        return pytest.param(name, marks=pytest.mark.skip(reason=f"needs {NEEDS_EXTRA[name]}"))
    return name


@pytest.mark.parametrize("module_name", [_param(n) for n in _modules()])
def test_docstring_examples_run(module_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write (runs/...) write here
    module = importlib.import_module(module_name)
    globs = {"jax": jax, "jnp": jnp, "np": np, "optax": optax, "pax": paxtrain, "nn": paxtrain.nn}
    package = importlib.import_module(module_name.rpartition(".")[0] or module_name)
    globs.update({name: getattr(package, name) for name in getattr(package, "__all__", ())})
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in finder.find(module, module_name, extraglobs=globs):
        runner.run(test, out=report.write)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, (
        f"{failed} of {attempted} examples failed in {module_name}:\n{report.getvalue()}"
    )


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    """The README's Python blocks, run one after the other in one namespace, as a reader would."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    blocks = _blocks("python")
    assert len(blocks) >= 2
    with contextlib.redirect_stdout(io.StringIO()) as out:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md python block {i}", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.step == trainer.max_steps
    assert any(line.strip() == str(trainer.max_steps) for line in out.getvalue().splitlines())


def _readme_commands(program: str) -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == [program]:
                commands.append(words[1:])
    return commands


FIT_COMMANDS = [c for c in _readme_commands("paxtrain") if c[0] == "fit"]


@pytest.mark.parametrize("args", FIT_COMMANDS, ids=[" ".join(c[1:]) for c in FIT_COMMANDS])
def test_readme_fit_commands_compose(args, monkeypatch, capsys):
    """Each `paxtrain fit` line of the README names keys that exist: composed with `--cfg job`."""
    monkeypatch.chdir(ROOT)
    assert cli.main([*args, "--cfg", "job"]) == 0, capsys.readouterr().err


def test_readme_resume_and_eval_follow_a_fit_of_that_run_directory():
    """Within a README shell block, `paxtrain resume/eval RUN` and `init_from=RUN` name a run
    directory a `paxtrain fit ... run_dir=RUN` line before them writes (with checkpoints);
    `init_from=hf:DIR` names a Hugging Face checkpoint directory instead."""
    checked, resumed = 0, set()
    for block in _blocks("bash"):
        written: set[str] = set()
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] != ["paxtrain"]:
                continue
            settings = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
            if words[1] in ("resume", "eval"):
                assert words[2] in written, f"README: `{line.strip()}` follows no fit of {words[2]}"
                checked, resumed = checked + 1, resumed | {words[2]}
            if "init_from" in settings and not settings["init_from"].startswith("hf:"):
                assert settings["init_from"] in written, f"README: `{line.strip()}`"
            if words[1] == "fit" and "run_dir" in settings:
                written.add(settings["run_dir"])
    assert checked >= 2
    # The Python tour's Trainer (no checkpoints, no config.yaml) writes elsewhere.
    python_run_dirs = set(re.findall(r'run_dir="([^"]+)"', "".join(_blocks("python"))))
    assert python_run_dirs and not python_run_dirs & resumed
