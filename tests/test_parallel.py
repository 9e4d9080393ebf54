"""paxtrain.parallel: meshes, layouts, the pmap strategy and multi-process training.

The main pytest process has one CPU device, so the multi-device checks run in subprocesses:
`parallel_scripts/eight_devices.py` on 8 virtual CPU devices, and `two_processes.py` twice, as two
processes of 2 devices each joined over 127.0.0.1. Both print JSON that the tests below compare
with one device trained here, in the main process, on the same toy model and batches.
"""

import doctest
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import cpu_env
from jax.sharding import AbstractMesh, PartitionSpec
from parallel_scripts import toy

import paxtrain as pax
from paxtrain import parallel
from paxtrain.cli.build import build_trainer
from paxtrain.config.composition import compose
from paxtrain.config.packaged import find_config, packaged_config_names
from paxtrain.parallel import (
    batch,
    distributed,
    jit_strategy,
    mesh,
    plan,
    pmap_strategy,
    sharding,
    strategy,
)
from paxtrain.train import make_train_step

SCRIPTS = os.path.join(os.path.dirname(__file__), "parallel_scripts")
SCAN_ACCUM = {"steps_per_call": 2, "grad_accum_steps": 2}
JIT_CASES = ["data_parallel", "fsdp", "tensor", "data_fsdp_tensor", "fsdp_scan_accum"]


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def run_script(name: str, *args: str, **env: str) -> dict:
    """`parallel_scripts/NAME` on 8 virtual CPU devices; the JSON of its last line."""
    done = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, name), *args],
        env=cpu_env(8, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return last_json_line(done.stdout)


@pytest.fixture(scope="module")
def one_device():
    """Losses and final model of the toy trained on this process's single device."""
    results = {}
    for name, options in {"default": None, "scan_accum": SCAN_ACCUM}.items():
        losses, state, _, _ = toy.train(step_options=options)
        results[name] = (losses, toy.leaves_by_path(toy.host(state.model)))
    return results


@pytest.fixture(scope="module")
def eight_devices():
    return run_script("eight_devices.py")


def start_two_processes(command: list[str], **env: str) -> list[subprocess.Popen]:
    """Starts `command` as two processes of 2 CPU devices each, joined over 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            command,
            env=cpu_env(
                2,
                JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                JAX_NUM_PROCESSES="2",
                JAX_PROCESS_ID=str(i),
                **env,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]


def run_two_processes(command: list[str], expect: int = 0, **env: str) -> list[str]:
    """Runs `command` as two joined processes (`start_two_processes`); returns their stdouts
    once both exited with `expect`."""
    procs = start_two_processes(command, **env)
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs):
        assert proc.returncode == expect, stderr[-3000:]
    return [stdout for stdout, _ in outputs]


@pytest.fixture(scope="module")
def two_processes():
    stdouts = run_two_processes([sys.executable, os.path.join(SCRIPTS, "two_processes.py")])
    return [last_json_line(stdout) for stdout in stdouts]


def assert_matches(losses, model, expected):
    expected_losses, expected_model = expected
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    assert model.keys() == expected_model.keys()
    for path, value in model.items():
        np.testing.assert_allclose(value, expected_model[path], rtol=1e-5, atol=1e-6, err_msg=path)


# ---------------------------------------------------------------- 8 devices, every strategy
@pytest.mark.parametrize("case", [*JIT_CASES, "pmap"])
def test_every_strategy_trains_like_one_device(eight_devices, one_device, case):
    assert eight_devices["device_count"] == 8
    result = eight_devices["cases"][case]
    expected = one_device["scan_accum" if case == "fsdp_scan_accum" else "default"]
    assert len(result["losses"]) == toy.STEPS
    assert_matches(result["losses"], result["model"], expected)


def test_parameters_are_split_over_the_mesh(eight_devices):
    fsdp, tensor = eight_devices["cases"]["fsdp"], eight_devices["cases"]["tensor"]
    # FSDP (fsdp=4): a [16, 32] weight is split along its largest axis; tiny leaves are not.
    assert fsdp["specs"][".model.mlp.layers[0].weight"] == [None, "fsdp"]
    assert fsdp["shard_shapes"][".model.mlp.layers[0].weight"] == [16, 8]
    assert fsdp["specs"][".model.head.bias"] == [None]
    assert fsdp["specs"][".step"] == []
    # Tensor parallel (tensor=4): column-parallel projections, row-parallel output.
    assert tensor["shard_shapes"][".model.attention.query_proj.weight"] == [16, 4]
    assert tensor["shard_shapes"][".model.attention.query_proj.bias"] == [4]
    assert tensor["shard_shapes"][".model.attention.output_proj.weight"] == [4, 16]
    assert tensor["specs"][".model.attention.output_proj.bias"] == [None]
    assert tensor["shard_shapes"][".model.mlp.layers[2].weight"] == [8, 16]
    # Both at once: each weight split over both axes.
    both = eight_devices["cases"]["data_fsdp_tensor"]
    assert both["specs"][".model.attention.query_proj.weight"] == ["fsdp", "tensor"]
    assert both["shard_shapes"][".model.attention.query_proj.weight"] == [8, 8]


@pytest.mark.parametrize("case", JIT_CASES)
def test_optimizer_moments_are_sharded_like_their_parameters(eight_devices, case):
    specs = eight_devices["cases"][case]["specs"]
    params = [p for p in specs if p.startswith(".model.") and p != ".model.input_mean"]
    assert params
    for path in params:
        for moment in ("mu", "nu"):
            mirror = path.replace(".model.", f".optimizer.opt_state[0].{moment}.", 1)
            assert specs[mirror] == specs[path], mirror


@pytest.mark.parametrize("case", JIT_CASES)
def test_steps_keep_the_state_layout_and_compile_once(eight_devices, case):
    result = eight_devices["cases"][case]
    assert result["shardings_kept"]
    assert result["cache_size"] == 1


def test_batches_are_split_over_data_and_fsdp(eight_devices):
    cases = eight_devices["cases"]
    assert cases["data_parallel"]["batch_shard_shape"] == [2, toy.TIME, toy.DIM]  # 16 / 8
    assert cases["tensor"]["batch_shard_shape"] == [8, toy.TIME, toy.DIM]  # 16 / data=2
    assert cases["fsdp"]["batch_shard_shape"] == [2, toy.TIME, toy.DIM]  # 16 / (2 x 4)
    assert cases["fsdp_scan_accum"]["batch_shard_shape"] == [2, 2, toy.TIME, toy.DIM]
    assert eight_devices["process_batch_slice"] == str(slice(0, 16))


def test_a_restored_checkpoint_keeps_values_and_layout(eight_devices):
    assert eight_devices["checkpoint"] == {
        "values_equal": True,
        "shardings_kept": True,
        "cache_size": 1,
    }


def test_a_ragged_eval_batch_evaluates_like_on_one_device(eight_devices):
    ragged = eight_devices["ragged_eval"]
    np.testing.assert_allclose(ragged["mesh"], ragged["one_device"], rtol=1e-5)


def test_no_compile_cache_on_several_cpu_devices(eight_devices):
    # Cached programs with collectives deadlock there (the topology tests of
    # test_parallel_trainer.py abort with a warm cache).
    assert eight_devices["compile_cache"] == "None"


def test_pmap_state_has_a_device_axis(eight_devices):
    assert eight_devices["cases"]["pmap"]["step_shape"] == [8]


def test_multi_device_errors_name_the_problem_and_the_fix(eight_devices):
    errors = eight_devices["errors"]
    assert errors["batch_not_divisible"] == batch.BATCH_DIVISIBLE_MSG.format(
        size=12,
        where="axis 0 of batch['x']",
        parts=8,
        layout="mesh data=8 x fsdp=1",
        suggestion="8 or 16",
    )
    assert errors["pmap_batch_not_divisible"] == batch.BATCH_DIVISIBLE_MSG.format(
        size=12, where="axis 0 of batch['x']", parts=8, layout="pmap over 8 devices",
        suggestion="8 or 16",
    )  # fmt: skip
    assert errors["rule_not_divisible"] == sharding.RULE_DIVISIBLE_MSG.format(
        pattern=r"head\.weight$", axis=1, path="model.head.weight", shape=(16, 1),
        names="tensor", size=8, dim=1,
    )  # fmt: skip
    assert errors["pmap_with_fsdp"] == pmap_strategy.PMAP_MESH_MSG.format(
        layout="data=4, fsdp=2, tensor=1"
    )
    # A tensor axis that no rule uses would only duplicate work: refused, naming a parameter.
    assert errors["tensor_axis_unused"] == sharding.UNUSED_TENSOR_AXIS_MSG.format(
        size=2, path="model.attention.query_proj.weight", example=r"query_proj\.weight$"
    )
    # Evaluation batches are checked when training starts, not at the first evaluation.
    assert errors["eval_batch_without_batch_axis"] == batch.BATCH_RANK_MSG.format(
        path="['weight']", shape=(), axis=0
    )
    assert errors["mesh_size"] == mesh.MESH_SIZE_MSG.format(
        data=3, fsdp=1, tensor=1, needed=3, available=8, platform="cpu",
        example="data=-1, fsdp=1, tensor=1", overrides="mesh.data=-1",
    )  # fmt: skip
    assert "needs a multiple of 3 devices, but 8 are available" in errors["mesh_remaining"]


# ------------------------------------------------------------------ two processes, one job
@pytest.mark.slow
def test_two_processes_train_like_one_device(two_processes, one_device):
    main, other = sorted(two_processes, key=lambda r: r["process_index"])
    for result in (main, other):
        assert result["source"] == "explicit" and result["process_count"] == 2
        assert result["device_count"] == 4
        # The weight spans both processes; each holds its half.
        assert not result["weight_fully_addressable"]
        assert result["weight_shard_shape"] == [16, 16]
        np.testing.assert_allclose(result["losses"], one_device["default"][0], rtol=1e-5)
        np.testing.assert_allclose(result["pmap_losses"], one_device["default"][0], rtol=1e-5)
        # 20 steps summing over the 4 devices of both processes, the state read between them.
        assert result["pmap_reads"] == {"count": 4.0**20, "on_first_device": True}
        assert result["decided"] == [True, False]
    assert main["is_main"] and not other["is_main"]
    assert (main["batch_slice"], other["batch_slice"]) == (str(slice(0, 8)), str(slice(8, 16)))
    # Through the Trainer, each process reads only its own rows (after one whole batch at
    # start-up, which sizes the global batch), in one block or two, and the steps still match.
    own_rows = {
        ("default", 0): [[0, 8]], ("default", 1): [[8, 16]],
        ("interleaved", 0): [[0, 4], [8, 12]], ("interleaved", 1): [[4, 8], [12, 16]],
    }  # fmt: skip
    for (mesh_name, process), blocks in own_rows.items():
        run = next(r for r in two_processes if r["process_index"] == process)["trainer"][mesh_name]
        np.testing.assert_allclose(run["losses"], one_device["default"][0], rtol=1e-5)
        asked = run["asked"]
        assert asked[0] is None and len(asked) > toy.STEPS * len(blocks)
        assert asked[1:] == blocks * ((len(asked) - 1) // len(blocks))
    assert_matches(main["losses"], main["models"]["jit"], one_device["default"])
    assert_matches(main["pmap_losses"], main["models"]["pmap"], one_device["default"])


# ------------------------------------------------------------- in this process: pure logic
def abstract_mesh(data=1, fsdp=1, tensor=1) -> AbstractMesh:
    return AbstractMesh((data, fsdp, tensor), parallel.AXES)


def test_fsdp_splits_the_largest_divisible_axis_of_large_leaves():
    fsdp4 = abstract_mesh(fsdp=4)
    spec = parallel.partition_spec
    assert spec(".w", (6, 4096, 1024), fsdp4) == PartitionSpec(None, "fsdp", None)
    assert spec(".w", (4098, 1024), fsdp4) == PartitionSpec(None, "fsdp")  # 4098 % 4 != 0
    assert spec(".w", (3, 5), fsdp4, fsdp_min_size=1) == PartitionSpec(None, None)
    assert spec(".w", (64, 64), fsdp4) == PartitionSpec(None, None)  # below the default size
    assert spec(".w", (64, 64), fsdp4, fsdp_min_size=64) == PartitionSpec("fsdp", None)
    assert spec(".step", (), fsdp4) == PartitionSpec()
    # No fsdp axis larger than 1: nothing is split.
    assert spec(".w", (4096, 4096), abstract_mesh(data=8)) == PartitionSpec(None, None)


def test_tensor_rules_come_first_and_fsdp_takes_a_free_axis():
    mesh3d = abstract_mesh(data=2, fsdp=2, tensor=2)
    spec = parallel.partition_spec
    query = ".model.blocks.layers[3].attention.query_proj.weight"
    assert spec(query, (512, 2048), mesh3d) == PartitionSpec("fsdp", "tensor")
    mirror = ".optimizer.opt_state[0].mu.blocks.layers[3].attention.query_proj.weight"
    assert spec(mirror, (512, 2048), mesh3d) == spec(query, (512, 2048), mesh3d)
    assert spec(".model.attention.output_proj.bias", (512,), mesh3d) == PartitionSpec(None)
    # With tensor=1 the rules step aside, and FSDP may take the largest axis.
    fsdp2 = abstract_mesh(fsdp=2)
    assert spec(query, (512, 2048), fsdp2) == PartitionSpec(None, "fsdp")
    # Custom rules: regexes on the path, first match wins.
    rules = [(r"embed\.weight$", PartitionSpec("tensor", None)), *parallel.DEFAULT_TENSOR_RULES]
    got = spec(".model.embed.weight", (50000, 64), abstract_mesh(tensor=2), rules)
    assert got == PartitionSpec("tensor", None)


def test_tensor_rule_errors_name_the_rule_and_the_fix():
    rule = [(r"bias$", PartitionSpec(None, "tensor"))]
    with pytest.raises(ValueError) as error:
        parallel.partition_spec(".fc.bias", (8,), abstract_mesh(tensor=2), rule)
    assert str(error.value) == sharding.RULE_RANK_MSG.format(
        pattern="bias$", spec=rule[0][1], rank=2, path=".fc.bias", shape=(8,), ndim=1
    )
    typo = [(r"weight$", PartitionSpec(None, "tensr"))]
    with pytest.raises(ValueError, match="names mesh axes \\['tensr'\\] that the mesh lacks"):
        parallel.partition_spec(".fc.weight", (8, 8), abstract_mesh(tensor=2), typo)


def test_make_mesh_on_one_device_and_its_errors():
    assert parallel.make_mesh().shape == {"data": 1, "fsdp": 1, "tensor": 1}
    assert parallel.make_mesh(data=1, fsdp=-1).shape["fsdp"] == 1
    with pytest.raises(ValueError) as error:
        parallel.make_mesh(data=2)
    assert str(error.value) == mesh.MESH_SIZE_MSG.format(
        data=2, fsdp=1, tensor=1, needed=2, available=1, platform="cpu",
        example="data=-1, fsdp=1, tensor=1", overrides="mesh.data=-1",
    )  # fmt: skip
    for sizes in ({"data": -1, "fsdp": -1}, {"tensor": 0}, {"data": 1.5}):
        with pytest.raises(ValueError, match="positive integers, with at most one -1"):
            parallel.make_mesh(**sizes)


def test_a_mesh_error_suggests_a_layout_that_fits_never_the_one_that_failed():
    for sizes, overrides in (
        ({"fsdp": 2}, "`mesh.fsdp=1`"),
        ({"data": -1, "tensor": 3}, "`mesh.tensor=1`"),
        ({"data": 4, "fsdp": -1}, "`mesh.data=-1 mesh.fsdp=1`"),
    ):
        with pytest.raises(ValueError) as error:
            parallel.make_mesh(**sizes)
        assert "`make_mesh(data=-1, fsdp=1, tensor=1)`" in str(error.value)
        assert f"(in a config: {overrides})" in str(error.value)


def test_batch_divisibility_check_runs_on_the_host():
    parallel.check_batch_divisible({"x": np.zeros((12, 3))}, 4)
    with pytest.raises(ValueError, match=r"global batch size 6 \(axis 1 of batch\['x'\]\)"):
        parallel.check_batch_divisible({"x": np.zeros((2, 6))}, 4, batch_axis=1)
    with pytest.raises(ValueError, match="has shape \\(\\), with no batch axis 0"):
        parallel.check_batch_divisible({"lr": np.float32(0.1)}, 1)


def test_one_device_plan_places_state_and_batches():
    losses, state, train_step, plan_ = toy.train("jit", steps=2)
    assert plan_.unreplicate(state) is state
    assert plan_.step_kwargs == {
        "compile_step": plan_.compile_step,
        "reduce_gradients": plan_.reduce_gradients,
    }
    assert train_step._jitted._cache_size() == 1
    with pytest.raises(ValueError, match="Unknown parallel strategy 'dp'"):
        parallel.setup(state, "dp")


def test_every_strategy_is_found_by_name_and_has_every_method():
    state = toy.fresh_state(toy.make_train_step(toy.loss_fn))
    for name, cls in plan.STRATEGIES.items():
        assert not cls.__abstractmethods__, name
        assert cls.name == name and type(parallel.setup(state, name)) is cls


def test_on_one_device_the_pmap_strategy_trains_like_jit():
    jit_losses, jit_state, _, jit_plan = toy.train("jit", steps=2)
    pmap_losses, pmap_state, _, pmap_plan = toy.train("pmap", steps=2)
    np.testing.assert_allclose(pmap_losses, jit_losses, rtol=1e-6)
    jit_model = toy.leaves_by_path(jit_plan.unreplicate(jit_state).model)
    pmap_model = toy.leaves_by_path(pmap_plan.unreplicate(pmap_state).model)
    for path, value in jit_model.items():
        np.testing.assert_allclose(pmap_model[path], value, rtol=1e-5, atol=1e-7, err_msg=path)


def test_the_step_is_compiled_and_its_gradients_reduced_by_the_given_functions():
    compiled = []

    def compile_step(step, *, donate, flat_state=False):
        compiled.append((donate, flat_state))
        return jax.jit(step)

    def no_gradients(grad_fn):
        def zeroed(state, batch, key):
            loss, model, metrics, grads = grad_fn(state, batch, key)
            return loss, model, metrics, jax.tree_util.tree_map(jax.numpy.zeros_like, grads)

        return zeroed

    train_step = make_train_step(
        toy.loss_fn, donate=False, compile_step=compile_step, reduce_gradients=no_gradients
    )
    state = toy.fresh_state(train_step)
    new, metrics = train_step(state, toy.batch_of(0))
    assert compiled == [(False, False)]
    assert float(metrics["grad_norm"]) == 0.0
    # Adam's update of zero gradients is zero: the parameters are bitwise unchanged.
    before = toy.leaves_by_path(state.model.parameters())
    after = toy.leaves_by_path(new.model.parameters())
    assert all(np.array_equal(after[k], before[k]) for k in before)


# --------------------------------------------------------------- multi-process detection
SLURM = {
    "SLURM_JOB_ID": "17",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURM_NTASKS": "4",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1",
}


def test_distributed_settings_come_from_arguments_or_the_environment():
    detect = parallel.detect_distributed
    assert detect(environ={}) is None
    assert detect(num_processes=1, environ={}) is None
    assert detect("10.0.0.1:1234", 2, 1, environ={}) == parallel.DistributedSettings(
        "explicit", "10.0.0.1:1234", 2, 1
    )
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert detect(environ=env) == parallel.DistributedSettings("explicit", "h:1", 4, 3)
    assert detect(environ=SLURM).source == "slurm"
    assert detect(environ={**SLURM, "SLURM_NTASKS": "1"}) is None
    assert detect(environ={"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}).source == "tpu"
    assert detect(environ={"TPU_WORKER_HOSTNAMES": "localhost"}) is None
    assert detect(environ={"OMPI_COMM_WORLD_SIZE": "8"}).source == "mpi"


def test_distributed_errors_name_what_is_missing():
    detect = parallel.detect_distributed
    with pytest.raises(ValueError) as error:
        detect(num_processes=2, environ={})
    assert str(error.value) == distributed.MISSING_SETTINGS_MSG.format(
        missing="coordinator_address and process_id", verb="are"
    )
    with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes=2\); got 2"):
        detect("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="num_processes must be an integer, got 'two'"):
        detect(environ={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two"})
    sbatch_without_srun = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"}
    with pytest.raises(RuntimeError) as error:
        detect(environ=sbatch_without_srun)
    assert str(error.value) == distributed.SLURM_INCOMPLETE_MSG.format(
        ntasks=4, missing="SLURM_STEP_NODELIST", verb="is"
    )


def test_single_process_needs_no_initialization():
    assert parallel.initialize_distributed() is None
    assert parallel.is_main_process()


@pytest.mark.parametrize(
    "module",
    [mesh, sharding, batch, strategy, jit_strategy, pmap_strategy, plan, distributed, parallel],
)
def test_docstring_examples_run(module):
    globs = {"jax": jax, "np": np, "parallel": parallel, "make_mesh": parallel.make_mesh}
    result = doctest.testmod(module, extraglobs=globs, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


# ------------------------------------------------------------ tensor rules from a config
def test_tensor_rules_read_as_a_config_writes_them():
    rules = parallel.as_rules([[r"cell\.input_to_gates\.weight$", [None, "tensor"]]])
    assert rules == ((r"cell\.input_to_gates\.weight$", PartitionSpec(None, "tensor")),)
    assert parallel.as_rules([["w$", [["fsdp", "tensor"]]]])[0][1] == PartitionSpec(
        ("fsdp", "tensor")
    )
    for bad in (["w$"], [["w$", "tensor"]], [[1, [None]]], [["w$", [None, 3]]]):
        with pytest.raises(ValueError) as error:
            parallel.as_rules(bad)
        assert str(error.value) == sharding.RULE_FORMAT_MSG.format(index=0, rule=bad[0])
    with pytest.raises(ValueError, match=r"rule 0: '\(' is not a valid regex"):
        parallel.as_rules([["(", [None]]])


def test_an_unused_tensor_axis_is_refused_and_a_rule_for_the_model_fixes_it():
    state = {"model": {"cell": {"weight": np.zeros((64, 256)), "bias": np.zeros(256)}}}
    tensor2 = abstract_mesh(tensor=2)
    shardings = parallel.state_shardings(state, tensor2)
    with pytest.raises(ValueError) as error:
        parallel.check_tensor_axis_used(shardings, tensor2)
    assert str(error.value) == sharding.UNUSED_TENSOR_AXIS_MSG.format(
        size=2, path="model.cell.weight", example=r"cell\.weight$"
    )
    rules = parallel.as_rules([[r"cell'\]\['weight", [None, "tensor"]]])
    shardings = parallel.state_shardings(state, tensor2, rules)
    assert shardings["model"]["cell"]["weight"].spec == PartitionSpec(None, "tensor")
    parallel.check_tensor_axis_used(shardings, tensor2)
    # tensor=1: nothing to use, nothing to check.
    parallel.check_tensor_axis_used(
        parallel.state_shardings(state, abstract_mesh()), abstract_mesh()
    )


# ------------------------------------------------------------------ sharded initialization
def test_a_state_built_from_a_function_is_never_whole_on_one_device():
    result = run_script("sharded_init.py")
    assert result["equal"]  # bitwise the state of the eager build
    assert result["spec"] == "P('fsdp', None)"
    # FSDP over 8: each device keeps about an eighth (small leaves stay replicated) ...
    assert result["share"] < result["state_bytes"] / 7
    # ... and building it needs at most 1.5x that per device, where the eager build put the
    # whole state (8x the share) on one device before placing it.
    assert result["build_peak"] <= 1.5 * result["share"]


@pytest.mark.slow  # the sharded start itself: the test above, in the default step
def test_paxtrain_fit_builds_sharded_and_init_from_reads_into_the_shards(tmp_path):
    """Through the config (`build_trainer`, as `paxtrain fit`), with `mesh.fsdp=8`."""
    root = os.path.dirname(os.path.dirname(SCRIPTS))
    result = run_script("sharded_init_config.py", str(tmp_path), PYTHONPATH=root)
    fresh, tuned = result["fresh"], result["tuned"]
    for start in (fresh, tuned):
        assert start["sharded_builds"] == 1
        assert start["spec"] == "P(None, 'fsdp')"
        # No device held more than 1.5x its final share at any point of the start-up (the
        # eager build had the whole model on device 0 once `build_trainer` returned).
        assert start["peak"] <= 1.5 * start["share"]
    assert fresh["equal_eager"]  # bitwise the parameters of the eager build, same seed
    assert tuned["loaded_equal_saved"] and tuned["others_equal_eager"] and tuned["frozen"]
    assert tuned["loaded"] > 10


# The recipes as their configs describe them, smaller.
SMALL_RECIPES = {
    "char_rnn": ["data.max_chars=20000"],
    "image_classifier": ["model.channels=[4,8]"],
    "llama_lm": ["data.max_chars=20000", "model.model_dim=32", "model.num_layers=1"],
    "transformer_lm": ["data.max_chars=20000", "model.model_dim=32", "model.num_layers=1"],
}


@pytest.mark.optimized_xla
@pytest.mark.parametrize("name", packaged_config_names())
def test_every_recipe_builds_traced_as_it_builds_eagerly(name, tmp_path):
    """The model function `paxtrain fit` hands the trainer runs under `jax.jit` (no host-side
    randomness or concrete values at build) and gives the eager build's parameters bitwise."""
    cfg = compose(find_config(name), [*SMALL_RECIPES[name], f"run_dir={tmp_path}"])
    model = build_trainer(cfg, tmp_path)[1]
    traced = jax.jit(parallel.seeded(model, cfg.seed))()
    pax.seed_rng_key(cfg.seed)
    eager = model()
    assert jax.tree_util.tree_structure(traced) == jax.tree_util.tree_structure(eager)
    for a, b in zip(jax.tree_util.tree_leaves(traced), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
