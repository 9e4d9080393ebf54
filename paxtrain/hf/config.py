"""A Hugging Face `config.json` as a recipe's model settings, and back.

Each supported architecture is one `Architecture`: the recipe that builds it, the map of its
tensors, and the translation of its `config.json` into the recipe's keyword arguments (and
back, for export). A setting the recipe cannot reproduce (another activation, attention biases,
an unknown RoPE scaling) is refused with its key and value, never dropped: the model would run
and be wrong.

    >>> settings = llama_settings({"hidden_size": 64, "intermediate_size": 128,
    ...     "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100})
    >>> settings["num_kv_heads"], settings["rope_theta"], settings["tie_embeddings"]
    (4, 10000.0, False)
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

from paxtrain.errors import CheckpointError
from paxtrain.hf.gpt2 import GPT2
from paxtrain.hf.llama import LLAMA
from paxtrain.hf.tensors import NameMap
from paxtrain.nn.rotary import rope_scaling

CONFIG_FILE = "config.json"

NOT_A_CHECKPOINT_MSG = """\
hf:{directory} is not a Hugging Face checkpoint directory: {problem}. Give a local directory \
that `save_pretrained` (or `paxtrain export --format hf`) wrote, with config.json and \
model.safetensors, e.g. `init_from=hf:tests/fixtures/hf/llama`."""

BAD_CONFIG_MSG = "{path} is not a JSON object ({reason}): fetch the checkpoint's config.json again."

UNSUPPORTED_MSG = """\
{path} describes a {architecture}, which paxtrain does not import: it reads {supported}. \
Convert the checkpoint to one of those, or add the architecture to paxtrain/hf/."""

MISSING_KEY_MSG = "{path} lacks `{key}`, which the {architecture} settings need."

UNSUPPORTED_SETTING_MSG = """\
{path} sets `{key}: {value!r}`, which the {recipe} recipe does not reproduce (it needs \
{expected}): importing it would give a model that runs and is wrong. Use a checkpoint without \
it."""

NOT_TIED_MSG = """\
This transformer_lm model has its own head with a bias, which GPT-2 (`GPT2LMHeadModel`, whose \
head is the token embedding) cannot hold: build it with `model.tie_embeddings=true` (in Python \
`tie_embeddings=True`) to import GPT-2 weights into it or to export it as GPT-2."""


NO_ARCHITECTURE_MSG = """\
{model} has no Hugging Face architecture to export as: `--format hf` writes the models of \
{recipes}."""


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One importable architecture: its recipe (`_target_`), tensor map and settings.

    Example:
        >>> ARCHITECTURES["GPT2LMHeadModel"].recipe
        'paxtrain.recipes.transformer_lm.TransformerLM'
    """

    name: str
    model_type: str
    recipe: str
    names: NameMap
    settings: Callable[[dict[str, Any]], dict[str, Any]]
    config: Callable[[Any], dict[str, Any]]


class _Config(dict):
    """config.json's mapping, which names its file and architecture in its errors."""

    def __init__(self, values: dict[str, Any], path: str, architecture: str, recipe: str):
        super().__init__(values)
        self.path, self.architecture, self.recipe = path, architecture, recipe

    def need(self, key: str) -> Any:
        if key not in self:
            raise CheckpointError(
                MISSING_KEY_MSG.format(path=self.path, key=key, architecture=self.architecture)
            )
        return self[key]

    def expect(self, key: str, allowed: tuple[Any, ...], default: Any) -> None:
        value = self.get(key, default)
        if value not in allowed:
            raise CheckpointError(
                UNSUPPORTED_SETTING_MSG.format(
                    path=self.path, key=key, value=value, recipe=self.recipe,
                    expected=" or ".join(repr(a) for a in allowed),
                )
            )  # fmt: skip


def _checked(config: dict[str, Any], architecture: str, recipe: str) -> _Config:
    if isinstance(config, _Config):
        return config
    return _Config(config, CONFIG_FILE, architecture, recipe)


def llama_settings(config: dict[str, Any]) -> dict[str, Any]:
    """`LlamaLM`'s keyword arguments for a `LlamaForCausalLM` config (transformers 4's
    `rope_theta`/`rope_scaling` keys or 5's `rope_parameters`).

    Example:
        >>> llama_settings({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        ...     "num_attention_heads": 4, "vocab_size": 100, "hidden_act": "gelu"})
        Traceback (most recent call last):
        paxtrain.errors.CheckpointError: config.json sets `hidden_act: 'gelu'`, which the llama_lm ...
    """
    c = _checked(config, "LlamaForCausalLM", "llama_lm")
    heads, dim = c.need("num_attention_heads"), c.need("hidden_size")
    c.expect("hidden_act", ("silu",), "silu")
    c.expect("attention_bias", (False,), False)
    c.expect("mlp_bias", (False,), False)
    c.expect("head_dim", (None, dim // heads), None)
    rope = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", c.get("rope_theta", 10000.0))
    try:  # the rule's own check: an unknown rope_type is refused, never read as plain RoPE
        scaling = rope_scaling(rope)
    except ValueError as error:
        raise CheckpointError(f"{c.path}: {error}") from None
    return {
        "vocab_size": c.need("vocab_size"),
        "num_layers": c.need("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": c.get("num_key_value_heads") or heads,
        "model_dim": dim,
        "mlp_dim": c.need("intermediate_size"),
        "rope_theta": float(theta),
        "rope_scaling": None if scaling is None else scaling.as_config(),
        "norm_eps": float(c.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(c.get("tie_word_embeddings", False)),
    }


def gpt2_settings(config: dict[str, Any]) -> dict[str, Any]:
    """`TransformerLM`'s keyword arguments for a `GPT2LMHeadModel` config.

    Example:
        >>> gpt2_settings({"n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 64,
        ...                "vocab_size": 100})["mlp_ratio"]
        4
    """
    c = _checked(config, "GPT2LMHeadModel", "transformer_lm")
    dim = c.need("n_embd")
    c.expect("activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new")
    c.expect("scale_attn_weights", (True,), True)
    c.expect("scale_attn_by_inverse_layer_idx", (False,), False)
    c.expect("tie_word_embeddings", (True,), True)
    inner = c.get("n_inner") or 4 * dim
    c.expect("n_inner", (None, *(dim * r for r in range(1, 17) if dim * r == inner)), None)
    return {
        "vocab_size": c.need("vocab_size"),
        "seq_len": c.need("n_positions"),
        "num_layers": c.need("n_layer"),
        "num_heads": c.need("n_head"),
        "model_dim": dim,
        "mlp_ratio": inner // dim,
        "norm_eps": float(c.get("layer_norm_epsilon", 1e-5)),
        "tie_embeddings": True,
    }


def _first_block(model: Any) -> Any:
    blocks = model.blocks
    return blocks.block if hasattr(blocks, "block") else blocks.layers[0]


def llama_config(model: Any) -> dict[str, Any]:
    """The `config.json` of a `LlamaLM` (without `max_position_embeddings`, which the model
    does not know).

    Example:
        >>> from paxtrain.recipes.llama_lm import LlamaLM
        >>> config = llama_config(LlamaLM(vocab_size=100, num_heads=4, num_kv_heads=2, model_dim=16))
        >>> llama_settings(config)["num_kv_heads"], config["architectures"]
        (2, ['LlamaForCausalLM'])
    """
    block = _first_block(model)
    attention = block.attention
    scaling = attention.rope_scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": model.vocab_size,
        "hidden_size": model.model_dim,
        "intermediate_size": block.mlp.hidden_dim,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": attention.num_heads,
        "num_key_value_heads": attention.num_kv_heads,
        "head_dim": attention.head_dim,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": block.attention_norm.eps,
        "rope_theta": attention.rope_theta,
        "rope_scaling": None if scaling is None else scaling.as_config(),
        "tie_word_embeddings": model.head is None,
    }


def gpt2_config(model: Any) -> dict[str, Any]:
    """The `config.json` of a `TransformerLM` built with `tie_embeddings`.

    Example:
        >>> from paxtrain.recipes.transformer_lm import TransformerLM
        >>> model = TransformerLM(100, seq_len=16, num_heads=2, model_dim=16, tie_embeddings=True)
        >>> gpt2_settings(gpt2_config(model))["seq_len"]
        16
    """
    if model.head is not None:
        raise CheckpointError(NOT_TIED_MSG)
    block = _first_block(model)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": model.vocab_size,
        "n_positions": model.seq_len,
        "n_embd": model.model_dim,
        "n_layer": model.num_layers,
        "n_head": block.num_heads,
        "n_inner": block.mlp.layers[0].out_dim,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": block.attention_norm.eps,
        "tie_word_embeddings": True,
    }


ARCHITECTURES = {
    "LlamaForCausalLM": Architecture(
        "LlamaForCausalLM", "llama", "paxtrain.recipes.llama_lm.LlamaLM", LLAMA,
        llama_settings, llama_config,
    ),
    "GPT2LMHeadModel": Architecture(
        "GPT2LMHeadModel", "gpt2", "paxtrain.recipes.transformer_lm.TransformerLM", GPT2,
        gpt2_settings, gpt2_config,
    ),
}  # fmt: skip


def read_config(directory: str | pathlib.Path) -> tuple[Architecture, dict[str, Any]]:
    """The architecture and the recipe settings of a checkpoint directory's `config.json`.

    Example:
        >>> import tempfile
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
        >>> read_config(folder)
        Traceback (most recent call last):
        paxtrain.errors.CheckpointError: .../config.json describes a BertModel, which paxtrain ...
    """
    directory = pathlib.Path(directory)
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        problem = "no such directory"
    elif not path.is_file():
        problem = f"it has no {CONFIG_FILE}"
    else:
        problem = None
    if problem:
        raise CheckpointError(NOT_A_CHECKPOINT_MSG.format(directory=directory, problem=problem))
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(BAD_CONFIG_MSG.format(path=path, reason=error)) from None
    if not isinstance(values, dict):
        raise CheckpointError(BAD_CONFIG_MSG.format(path=path, reason=type(values).__name__))
    names = values.get("architectures") or [values.get("model_type", "model of no known type")]
    by_type = {a.model_type: a for a in ARCHITECTURES.values()}
    architecture = ARCHITECTURES.get(names[0]) or by_type.get(names[0])
    if architecture is None:
        raise CheckpointError(
            UNSUPPORTED_MSG.format(
                path=path, architecture=names[0], supported=" and ".join(ARCHITECTURES)
            )
        )
    recipe = architecture.recipe.split(".")[2]
    return architecture, architecture.settings(_Config(values, str(path), names[0], recipe))


def architecture_of(model: Any) -> Architecture:
    """The architecture a recipe's model exports as (by its class), or a CheckpointError.

    Example:
        >>> from paxtrain.recipes.llama_lm import LlamaLM
        >>> architecture_of(LlamaLM(vocab_size=10, num_heads=2, num_kv_heads=1, model_dim=8)).name
        'LlamaForCausalLM'
    """
    target = f"{type(model).__module__}.{type(model).__qualname__}"
    for architecture in ARCHITECTURES.values():
        if architecture.recipe == target:
            return architecture
    recipes = ", ".join(a.recipe for a in ARCHITECTURES.values())
    raise CheckpointError(NO_ARCHITECTURE_MSG.format(model=target, recipes=recipes))
