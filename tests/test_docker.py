"""The Dockerfile and the launch scripts, checked by reading them (no Docker daemon here).

docker/README.md says plainly that no image has been built; these tests pin what can be checked
without building: the base image, the accelerator variants and their JAX extras, the install,
the non-root user, the entry point and the build context.
"""

import importlib.metadata
import json
import pathlib
import re
import subprocess
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


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


def args_of(dockerfile) -> dict[str, str]:
    return dict(arg.split("=", 1) for kind, arg in dockerfile if kind == "ARG" and "=" in arg)


def runs(dockerfile) -> str:
    return "\n".join(arg for kind, arg in dockerfile if kind == "RUN")


def test_base_image_is_a_slim_python(dockerfile):
    froms = [arg for kind, arg in dockerfile if kind == "FROM"]
    assert len(froms) == 1
    image = froms[0].replace("${PYTHON_VERSION}", args_of(dockerfile)["PYTHON_VERSION"])
    assert image == "python:3.11-slim-bookworm"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11"


def test_gpu_by_default_tpu_and_cpu_by_build_argument(dockerfile):
    args = args_of(dockerfile)
    assert args["ACCELERATOR"] == "gpu" and args["CUDA_MAJOR"] == "13"
    script = runs(dockerfile)
    branches = dict(re.findall(r"(\w+)\) extra=\"([^\"]+)\"", script))
    assert branches == {"gpu": "cuda${CUDA_MAJOR}", "tpu": "tpu", "cpu": "cpu"}
    assert "exit 1" in script  # an unknown ACCELERATOR fails the build
    # Every extra the image can ask for exists in the JAX this project is tested with.
    extras = set(importlib.metadata.metadata("jax").get_all("Provides-Extra"))
    assert {"cuda13", "cuda12", "tpu", "cpu"} <= extras


def test_jax_bounds_match_pyproject(dockerfile):
    pinned = re.search(r'pip install "jax\[\$\{extra\}\](.+?)"', runs(dockerfile)).group(1)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"jax{pinned}" in dependencies


def test_the_project_is_installed_with_pip(dockerfile):
    assert re.search(r"(^|&& )pip install \.( |$)", runs(dockerfile), re.M)
    copies = [arg.split() for kind, arg in dockerfile if kind == "COPY"]
    sources = {part for parts in copies for part in parts[:-1] if not part.startswith("--")}
    assert sources == {"pyproject.toml", "README.md", "paxtrain", "configs", "recipes"}
    for source in sources:
        assert (ROOT / source).exists(), source


def test_runs_as_a_non_root_user_with_paxtrain_as_entrypoint(dockerfile):
    kinds = [kind for kind, _ in dockerfile]
    users = [arg for kind, arg in dockerfile if kind == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert f"useradd --create-home --uid 1000 {users[-1]}" in runs(dockerfile)
    # The user is set after the last RUN, so nothing at run time is root's.
    assert kinds.index("USER") > max(i for i, kind in enumerate(kinds) if kind == "RUN")
    entrypoint = [json.loads(arg) for kind, arg in dockerfile if kind == "ENTRYPOINT"]
    assert entrypoint == [["paxtrain"]]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["paxtrain"] == "paxtrain.cli:main"


def test_build_context_leaves_out_local_state():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs", "**/__pycache__", "*.egg-info"} <= ignored
    assert not ignored & {"paxtrain", "configs", "recipes", "pyproject.toml", "README.md"}


def test_docker_readme_says_what_was_built():
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "**Nothing here has been built.**" in readme


@pytest.mark.parametrize("script", ["launch/slurm.sbatch", "launch/tpu_pod.sh"])
def test_launch_scripts_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / script)], check=True)


def test_slurm_runs_one_task_per_gpu_on_visible_gpus():
    sbatch = (ROOT / "launch" / "slurm.sbatch").read_text()
    options = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", sbatch, re.M))
    assert options["ntasks-per-node"] == options["gpus-per-node"]
    # JAX picks GPU SLURM_LOCALID among those a task sees: tasks must see all of the node's.
    assert "gpus-per-task" not in options and "gpu-bind" not in options
    assert re.search(r"^srun .*paxtrain fit", sbatch, re.M)
