"""The Dockerfile, docker/build_and_smoke.sh and the launch scripts, checked by reading them.

Building and running the CPU image takes minutes, root and podman: docker/build_and_smoke.sh does
it (docker/README.md has the commands and timings). These tests pin, in a second, what the build
relies on: the base, the accelerator stages and their JAX extras, versions that agree with
pyproject.toml, the install, the non-root user, the entry point, the build context, and that the
script skips cleanly where podman is absent. hadolint lints the Dockerfile in .ci/run.
"""

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest

from paxtrain.config.composition import compose

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def instructions(path: pathlib.Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(ROOT / "Dockerfile")


def stages(dockerfile) -> list[tuple[str, list[tuple[str, str]]]]:
    """(FROM arguments, the stage's instructions) per stage, in order."""
    found = []
    for kind, arg in dockerfile:
        if kind == "FROM":
            found.append((arg, []))
        elif found:
            found[-1][1].append((kind, arg))
    return found


def global_args(dockerfile) -> dict[str, str]:
    """The ARGs before the first FROM: those FROM lines may use."""
    first_from = [kind for kind, _ in dockerfile].index("FROM")
    return dict(arg.split("=", 1) for kind, arg in dockerfile[:first_from] if kind == "ARG")


def env_of(instructions_: list[tuple[str, str]]) -> dict[str, str]:
    pairs = [arg.split() for kind, arg in instructions_ if kind == "ENV"]
    return dict(pair.split("=", 1) for line in pairs for pair in line)


def final_stage(dockerfile) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1][1]


def runs(dockerfile) -> str:
    return "\n".join(arg for kind, arg in final_stage(dockerfile) if kind == "RUN")


def test_base_is_a_slim_python_of_the_version_pyproject_requires(dockerfile):
    assert global_args(dockerfile)["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    assert PYPROJECT["requires-python"] == ">=3.11"


def test_accelerator_stages_differ_only_in_the_jax_extra_and_nvidia_variables(dockerfile):
    *accelerators, (final_from, _) = stages(dockerfile)
    assert global_args(dockerfile)["ACCELERATOR"] == "gpu"
    assert final_from == "${ACCELERATOR}-base"
    by_name = {}
    for from_arg, body in accelerators:
        base, name = re.fullmatch(r"(\S+) AS (\w+)-base", from_arg).groups()
        assert base == "${BASE_IMAGE}"
        assert {kind for kind, _ in body} <= {"ARG", "ENV"}, name  # no RUN, COPY, USER ...
        by_name[name] = body
    assert {name: env_of(body) for name, body in by_name.items()} == {
        "cpu": {"PAXTRAIN_JAX_EXTRA": "cpu"},
        "tpu": {"PAXTRAIN_JAX_EXTRA": "tpu"},
        "gpu": {
            "PAXTRAIN_JAX_EXTRA": "cuda${CUDA_MAJOR}",
            "NVIDIA_VISIBLE_DEVICES": "all",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        },
    }
    assert [arg for kind, arg in by_name["gpu"] if kind == "ARG"] == ["CUDA_MAJOR=12"]
    # Every extra the images can ask for exists in the JAX this project is tested with.
    extras = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    assert {"cuda12", "cuda13", "tpu", "cpu"} <= extras


def test_jax_bounds_match_pyproject(dockerfile):
    pinned = re.search(r'pip install "jax\[\$\{PAXTRAIN_JAX_EXTRA\}\](.+?)"', runs(dockerfile))
    assert f"jax{pinned.group(1)}" in PYPROJECT["dependencies"]
    # jaxlib follows jax (each jax release requires its own jaxlib): the same bounds.
    assert f"jaxlib{pinned.group(1)}" in PYPROJECT["dependencies"]


def test_the_project_is_installed_with_pip_and_its_recipes_extra(dockerfile):
    install = re.search(r'pip install "/opt/paxtrain\[(\w+)\]"', runs(dockerfile))
    assert install.group(1) in PYPROJECT["optional-dependencies"]
    copies = [arg.split() for kind, arg in final_stage(dockerfile) if kind == "COPY"]
    sources = {part for parts in copies for part in parts[:-1] if not part.startswith("--")}
    assert sources == {"pyproject.toml", "README.md", "paxtrain"}  # recipes and configs inside
    for source in sources:
        assert (ROOT / source).exists(), source
    # /workspace/configs links to the installed configs, as configs/ does in the repository.
    assert "packaged_configs_dir" in runs(dockerfile) and "/workspace/configs" in runs(dockerfile)


def test_runs_as_a_non_root_user_with_paxtrain_as_entrypoint(dockerfile):
    body = final_stage(dockerfile)
    kinds = [kind for kind, _ in body]
    users = [arg for kind, arg in body if kind == "USER"]
    assert users == ["1000:1000"]  # numeric, so that Kubernetes' runAsNonRoot can check it
    assert "groupadd --gid 1000 paxtrain" in runs(dockerfile)
    assert "useradd --create-home --uid 1000 --gid 1000 paxtrain" in runs(dockerfile)
    # The user is set after the last RUN, so nothing at run time is root's.
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    assert [json.loads(arg) for kind, arg in body if kind == "ENTRYPOINT"] == [["paxtrain"]]
    assert PYPROJECT["scripts"]["paxtrain"] == "paxtrain.cli:main"
    assert env_of(body)["PATH"] == "/opt/venv/bin:$PATH"


def test_build_context_leaves_out_local_state():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs", "**/__pycache__", "*.egg-info"} <= ignored
    assert not ignored & {"paxtrain", "pyproject.toml", "README.md"}


def test_build_and_smoke_skips_cleanly_without_podman(tmp_path):
    # A PATH with only what the script needs before it looks for podman.
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))
    script = ROOT / "docker" / "build_and_smoke.sh"
    result = subprocess.run(
        [shutil.which("bash"), str(script)],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        "build_and_smoke: skipped: podman and debootstrap are not installed"
        " (apt-get install -y podman debootstrap)\n"
    )


@pytest.mark.parametrize("max_steps", [30, 60])
def test_the_smoke_runs_overrides_are_a_valid_config(max_steps):
    # The script runs only where podman is; its config must not drift unnoticed elsewhere.
    script = (ROOT / "docker" / "build_and_smoke.sh").read_text()
    small = re.search(r"^SMALL=\((.*?)\)$", script, re.M | re.S).group(1).split()
    overrides = [*small, "run_dir=runs/smoke", f"trainer.max_steps={max_steps}"]
    cfg = compose(ROOT / "configs" / "char_rnn.yaml", overrides)
    assert (cfg.trainer.max_steps, cfg.optimizer.horizon, cfg.model.hidden_dim) == (
        max_steps,
        60,
        32,
    )


@pytest.mark.parametrize(
    "script", ["launch/slurm.sbatch", "launch/tpu_pod.sh", "docker/build_and_smoke.sh"]
)
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_slurm_runs_one_task_per_gpu_on_visible_gpus():
    sbatch = (ROOT / "launch" / "slurm.sbatch").read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", sbatch, re.M))
    assert options["ntasks-per-node"] == options["gpus-per-node"]
    # JAX picks GPU SLURM_LOCALID among those a task sees: tasks must see all of the node's.
    assert "gpus-per-task" not in options and "gpu-bind" not in options
    assert re.search(r"^srun .*paxtrain fit", sbatch, re.M)
