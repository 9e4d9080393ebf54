"""`paxtrain options CONFIG`: every key a config can set, with its type, value and help.

The schema's keys (`paxtrain.config.FitConfig`) come with the help of the parameter they set
(`trainer.*` from `Trainer`'s docstring, see `config.MIRRORS`) or of the schema itself; each
`_target_` section lists its target's parameters, from the signature and the docstring's
`Args:`, nested sections (`optimizer.learning_rate`) and lists of them (`callbacks[0]`) too.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import re
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf

from paxtrain.config.optimizer import ALIASES, OWN_KEYS
from paxtrain.config.schema import MIRRORS, FitConfig
from paxtrain.config.targets import locate

REQUIRED = "<required>"


# The model's parameters without a default may come from the data (`data.info`: vocab_size...).
FROM_DATA = "<data.info or required>"


_SECTION = re.compile(r"^(Args|Arguments|Attributes|Parameters):\s*$")


@dataclasses.dataclass(frozen=True)
class Option:
    """One settable key: its type, the value this config gives it, one line of help."""

    key: str
    type: str
    value: str
    help: str


def argument_help(obj: Any) -> dict[str, str]:
    """The first sentence of each entry of the `Args:`/`Attributes:` sections of `obj`'s
    docstring (a class's and its `__init__`'s), Google style.

    Example:
        >>> argument_help(optax.warmup_cosine_decay_schedule)["peak_value"]
        'Peak value for scalar to be annealed at end of warmup.'
    """
    texts: dict[str, str] = {}
    docs = [inspect.getdoc(obj)]
    if inspect.isclass(obj) and "__init__" in vars(obj):
        docs.append(inspect.getdoc(obj.__init__))
    for lines in (doc.splitlines() for doc in docs if doc):
        starts = [i + 1 for i, line in enumerate(lines) if _SECTION.match(line.strip())]
        for i in starts:
            indent, name = None, None
            for line in lines[i:]:
                depth = len(line) - len(line.lstrip())
                indent = depth if indent is None else indent
                if not line.strip() or depth < indent:
                    break
                if depth == indent:  # `name: text` or `name (type): text`
                    head, _, text = line.strip().partition(":")
                    name = head.split(" ")[0].lstrip("*")
                    texts[name] = text.strip()
                elif name:
                    texts[name] += " " + line.strip()
    return {name: _first_sentence(text) for name, text in texts.items()}


def _first_sentence(text: str, limit: int = 100) -> str:
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", text.replace("``", "`"), maxsplit=1)[0]
    return sentence if len(sentence) <= limit else sentence[: limit - 3] + "..."


def _type_name(hint: Any) -> str:
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "|".join(member.value for member in hint)
    if hint is inspect.Parameter.empty:
        return "any"
    name = hint.__name__ if isinstance(hint, type) else str(hint)
    name = re.sub(r"\b[\w.]+\.(?=\w)", "", name)  # typing.Union -> Union, jax.Array -> Array
    return name if len(name) <= 24 else name[:21] + "..."


def _shown(value: Any, key: str = "") -> str:
    if value is inspect.Parameter.empty:
        return FROM_DATA if key.startswith("model.") else REQUIRED
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    except Exception:  # unresolvable annotations: the signature's strings
        return {}


def _is_target(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def target_options(
    node: dict, key: str, aliases: dict[str, str], own: dict[str, str] | None = None
) -> list[Option]:
    """The options of a `_target_` section (a plain dict): `_target_`, then each parameter of
    the target with the section's value or the signature's default, the keys paxtrain reads
    itself (`own`: key -> help), then nested sections.

    Example:
        >>> [o.key for o in target_options({"_target_": "optax.sgd"}, "optimizer", {})][:3]
        ['optimizer._target_', 'optimizer.learning_rate', 'optimizer.momentum']
    """
    name = str(node["_target_"])
    target = locate(aliases.get(name, name), key)
    summary = (inspect.getdoc(target) or "").strip().split("\n")[0]
    options = [Option(f"{key}._target_", "str", name, _first_sentence(summary))]
    helps, hints = argument_help(target), _hints(target)
    parameters = inspect.signature(target).parameters
    nested = []
    for arg, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = node.get(arg, parameter.default)
        hint = hints.get(arg, parameter.annotation)
        shown = _shown(value, f"{key}.{arg}")
        options.append(Option(f"{key}.{arg}", _type_name(hint), shown, helps.get(arg, "")))
        nested += _sections(value, f"{key}.{arg}", aliases)
    for arg, help_line in (own or {}).items():  # e.g. optimizer.clip_grad_norm
        value = node.get(arg)
        kind = "any" if value is None else type(value).__name__
        options.append(Option(f"{key}.{arg}", kind, _shown(value), help_line))
    return options + nested


def _sections(value: Any, key: str, aliases: dict[str, str]) -> list[Option]:
    if _is_target(value):
        return target_options(value, key, aliases)
    if isinstance(value, list):
        return [o for i, v in enumerate(value) for o in _sections(v, f"{key}[{i}]", aliases)]
    return []


def config_options(cfg: DictConfig) -> list[Option]:
    """Every settable key of a composed config: the schema's, then its `_target_` sections'.

    Example:
        >>> cfg = OmegaConf.create({"trainer": {"max_steps": 7}})
        >>> next(o for o in config_options(cfg) if o.key == "trainer.max_steps")
        Option(key='trainer.max_steps', type='int', value='7', help='number of optimizer steps.')
    """

    merged = OmegaConf.merge(OmegaConf.structured(FitConfig), cfg)
    values = OmegaConf.to_container(merged, resolve=False, enum_to_str=True)
    return _schema_options(FitConfig, values, "", ALIASES, own={"optimizer": OWN_KEYS})


def _schema_options(
    schema: type, values: dict, prefix: str, aliases: dict[str, str], own: dict[str, dict]
) -> list[Option]:
    helps = argument_help(schema)
    for target in MIRRORS.get(schema, ()):
        helps = {**argument_help(locate(target, prefix.rstrip("."))), **helps}
    hints = typing.get_type_hints(schema)
    options, sections = [], []
    for field in dataclasses.fields(schema):
        key, value, hint = f"{prefix}{field.name}", values[field.name], hints[field.name]
        if dataclasses.is_dataclass(hint):
            sections += _schema_options(hint, value, f"{key}.", aliases, own)
        elif _is_target(value):
            sections += target_options(value, key, aliases, own.get(key))
        else:
            options.append(Option(key, _type_name(hint), _shown(value), helps.get(field.name, "")))
            sections += _sections(value, key, aliases)
    return options + sections


def format_options(options: list[Option]) -> str:
    """The options as aligned columns: key, type, value, help.

    Example:
        >>> print(format_options([Option("seed", "int", "0", "seed of everything.")]))
        seed  int  0  seed of everything.
    """
    widths = [max(len(getattr(o, f)) for o in options) for f in ("key", "type", "value")]
    return "\n".join(
        f"{o.key:<{widths[0]}}  {o.type:<{widths[1]}}  {o.value:<{widths[2]}}  {o.help}".rstrip()
        for o in options
    )
