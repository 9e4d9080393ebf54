"""paxtrain installed from its wheel, used from a directory that knows nothing of the
repository: `fit` by a packaged config's name, `eval`, `resume`, an old run naming
`recipes.X`, and a packaged config copied into the user's own project."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
from cli_support import ROOT, TINY_CHAR_RNN

TINY = [
    *TINY_CHAR_RNN,
    "trainer.log_every=3",
    "trainer.eval_every=3",
    "trainer.checkpoint.every_steps=3",
    "trainer.plot=false",
    "callbacks.0.num_chars=20",
    "optimizer.horizon=12",  # the learning rate is not zero yet after the resume to step 9
]


def _run(command, cwd, env):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
    return result.stdout


def _printed_eval(stdout):
    """The `eval/NAME=VALUE` pairs `paxtrain eval` prints."""
    return {k: float(v) for k, v in re.findall(r"(eval/\w+)=([-\d.e+]+)", stdout)}


def _logged_eval(run_dir, step):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [logged] = [r for r in records if r["step"] == step and "eval/loss" in r]
    return {k: v for k, v in logged.items() if k.startswith("eval/")}


def _close(printed, logged):
    return printed.keys() == logged.keys() and all(
        printed[k] == pytest.approx(logged[k], rel=1e-5) for k in logged
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with paxtrain from a freshly built wheel; the dependencies are the test venv's."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # what a wheel is built from, as the Dockerfile copies it
    shutil.copytree(
        ROOT / "paxtrain", source / "paxtrain", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", root / "dist", source], check=True)
    [wheel] = (root / "dist").glob("paxtrain-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    # jax & co. from the test venv without a download: its site-packages joins the new venv's
    # path after the new venv's own, where the wheel installs paxtrain. (`--system-site-packages`
    # would give the base interpreter's packages, not the test venv's.)
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (pathlib.Path(purelib) / "test_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", wheel], check=True)
    cwd = root / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JAX_PLATFORMS": "cpu"}
    return venv / "bin", cwd, env, purelib


@pytest.mark.slow
def test_fit_eval_and_resume_from_any_directory_with_a_wheel_install(installed):
    bin_dir, cwd, env, purelib = installed
    where = _run([bin_dir / "python", "-c", "import paxtrain; print(paxtrain.__file__)"], cwd, env)
    assert where.startswith(f"{purelib}/paxtrain/"), where  # the wheel's, not the repository's

    out = _run([bin_dir / "paxtrain", "fit", "char_rnn", *TINY, "trainer.max_steps=6",
                "run_dir=runs/tiny"], cwd, env)  # fmt: skip
    run_dir = cwd / "runs" / "tiny"
    assert "finished at step 6" in out
    at_6 = _logged_eval(run_dir, 6)
    other = cwd.parent / "other"  # eval and resume from yet another directory
    other.mkdir()
    assert _close(_printed_eval(_run([bin_dir / "paxtrain", "eval", run_dir], other, env)), at_6)

    # A run written before the recipes moved into the package names `recipes.X`.
    old = cwd / "runs" / "old"
    shutil.copytree(run_dir, old)
    saved = (old / "config.yaml").read_text()
    (old / "config.yaml").write_text(saved.replace("paxtrain.recipes.", "recipes."))
    assert "_target_: recipes.char_rnn.CharRNN" in (old / "config.yaml").read_text()
    assert _close(_printed_eval(_run([bin_dir / "paxtrain", "eval", old], other, env)), at_6)

    out = _run([bin_dir / "paxtrain", "resume", run_dir, "trainer.max_steps=9"], other, env)
    assert "finished at step 9" in out
    at_9 = _logged_eval(run_dir, 9)
    assert at_9["eval/loss"] != at_6["eval/loss"]  # it trained on
    assert _close(_printed_eval(_run([bin_dir / "paxtrain", "eval", run_dir], other, env)), at_9)
    assert not (other / "runs").exists()  # the run stayed where it was


@pytest.mark.slow
def test_a_packaged_config_copied_into_a_project_composes(installed):
    bin_dir, cwd, env, purelib = installed
    project = cwd / "project"
    shutil.copytree(f"{purelib}/paxtrain/configs", project / "configs")
    out = _run([bin_dir / "paxtrain", "fit", "configs/char_rnn.yaml", "model=gru", "--cfg", "job"],
               project, env)  # fmt: skip
    assert "_target_: paxtrain.recipes.char_rnn.CharRNN" in out and "cell: gru" in out
