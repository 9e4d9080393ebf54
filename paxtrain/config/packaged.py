"""The recipes' YAML configs, shipped inside the package (`paxtrain/configs/`) and found by name.

`paxtrain fit char_rnn` works from any directory; from the repository's root,
`paxtrain fit configs/char_rnn.yaml` reads the same file (`configs/` there links to them).
"""

from __future__ import annotations

import importlib.resources
import pathlib

from paxtrain.errors import ConfigError

UNKNOWN_CONFIG_MSG = (
    "{name!r} is neither a config file nor a config shipped with paxtrain: give the path of a "
    "YAML file, e.g. `paxtrain fit configs/char_rnn.yaml`, or the name of a packaged config: "
    "{names}."
)


def packaged_configs_dir() -> pathlib.Path:
    """The directory of the packaged configs (with their config groups: `model/`, `data/`...).

    Example:
        >>> (packaged_configs_dir() / "model" / "gru.yaml").is_file()
        True
    """
    # A wheel installs as files, so the directory is a real path Hydra can search.
    return pathlib.Path(importlib.resources.files("paxtrain").joinpath("configs"))


def packaged_config_names() -> list[str]:
    """The names `paxtrain fit NAME` accepts for the packaged configs.

    Example:
        >>> packaged_config_names()
        ['char_rnn', 'image_classifier', 'llama_lm', 'transformer_lm']
    """
    return sorted(path.stem for path in packaged_configs_dir().glob("*.yaml"))


def find_config(name_or_path: str) -> str:
    """`name_or_path` itself when it is a file, else the packaged config of that name.

    Raises ConfigError listing the packaged names when it is neither (a directory is returned
    as it is, for `compose` to say that a config is a file).

    Example:
        >>> find_config("char_rnn") == str(packaged_configs_dir() / "char_rnn.yaml")
        True
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_file():
        return name_or_path
    if name_or_path in packaged_config_names():
        return str(packaged_configs_dir() / f"{name_or_path}.yaml")
    if path.exists():
        return name_or_path
    names = ", ".join(packaged_config_names())
    raise ConfigError(UNKNOWN_CONFIG_MSG.format(name=name_or_path, names=names))
