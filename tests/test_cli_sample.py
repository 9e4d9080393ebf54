"""`paxtrain sample RUN --prompt TEXT`: a run's model continues a prompt with its cache; the same
seed gives the same text; bad settings are one `paxtrain:` message and exit code 2."""

import pytest

from paxtrain.cli import main

TINY_LLAMA = [
    "trainer.max_steps=4",
    "trainer.log_every=2",
    "trainer.progress=off",
    "trainer.plot=false",
    "trainer.checkpoint.async_save=false",
    "data.seq_len=16",
    "data.batch_size=4",
    "data.eval_batches=1",
    "data.max_chars=20000",
    "model.model_dim=16",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.num_layers=1",  # half the program to compile; sampling works alike at any depth
    "optimizer.learning_rate.warmup_steps=1",
    "callbacks=[]",
]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "llama"
    assert main(["fit", "llama_lm", *TINY_LLAMA, f"run_dir={run_dir}"]) == 0
    return run_dir


def sample(capsys, *argv):
    code = main(["sample", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_text_continues_the_prompt_and_the_seed_fixes_it(llama_run, capsys):
    code, first, _ = sample(capsys, llama_run, "--prompt", "def f", "--max-new-tokens", 12)
    assert code == 0 and first.startswith("def f")
    assert len(first.rstrip("\n")) == len("def f") + 12  # one byte per token of the recipes'
    assert sample(capsys, llama_run, "--prompt", "def f", "--max-new-tokens", 12)[1] == first
    other = sample(capsys, llama_run, "--prompt", "def f", "--max-new-tokens", 12, "--seed", 5)
    assert other[1] != first


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--top-k", "0"], ["top_k is 0"]),
        (["--top-p", "1.5"], ["top_p is 1.5", "(0, 1]"]),
        (["--temperature", "-1"], ["temperature is -1.0"]),
        (["--prompt", "x" * 40], ["The prompt is 40 tokens", "longer than the 16", "data.seq_len"]),
        (["--prompt", ""], ["The prompt is empty"]),
        (["--step", "999"], ["999"]),
    ],
    ids=["top-k 0", "top-p 1.5", "negative temperature", "prompt too long", "empty prompt",
         "missing step"],
)  # fmt: skip
def test_bad_sampling_input_is_one_message_and_exit_code_2(llama_run, capsys, argv, words):
    argv = ["--prompt", "def ", *argv] if "--prompt" not in argv else argv
    code, out, err = sample(capsys, llama_run, *argv)
    assert code == 2 and err.startswith("paxtrain: ") and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "gpt"
    argv = ["fit", "transformer_lm", *TINY_LLAMA[:9], "model.model_dim=16", "model.num_heads=2",
            "model.num_layers=1", "optimizer.learning_rate.warmup_steps=1", "callbacks=[]",
            f"run_dir={run_dir}"]  # fmt: skip
    assert main(argv) == 0
    return run_dir


def test_a_transformer_lm_run_samples_with_its_cache_within_its_positions(gpt_run, capsys):
    code, text, _ = sample(capsys, gpt_run, "--prompt", "def f", "--max-new-tokens", 11)
    assert code == 0 and text.startswith("def f") and len(text.rstrip("\n")) == 16  # seq_len
    code, _, err = sample(capsys, gpt_run, "--prompt", "def f", "--max-new-tokens", 12)
    assert code == 2 and "Traceback" not in err, err
    assert "A decoder of 17 positions" in err and "seq_len=16" in err and "--max-new-tokens" in err
    # Without --max-new-tokens: as many as the 16 learned positions hold after the prompt.
    assert sample(capsys, gpt_run, "--prompt", "def f")[1] == text
    code, full, _ = sample(capsys, gpt_run, "--prompt", "x" * 16)
    assert code == 0 and full == "x" * 16 + "\n"


def test_a_model_without_a_cache_is_named(gpt_run, capsys, monkeypatch):
    from paxtrain.recipes.transformer_lm import TransformerLM

    monkeypatch.delattr(TransformerLM, "decoder")  # a model as TransformerLM was before its cache
    code, _, err = sample(capsys, gpt_run, "--prompt", "def ")
    assert code == 2 and "TransformerLM cannot be sampled with a cache" in err
