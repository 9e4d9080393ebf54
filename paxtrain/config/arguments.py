"""From a constructor's rule to the config key that broke it.

The objects a config builds (the `Trainer`, its hooks and settings) check their own arguments and
raise `paxtrain.errors.ArgumentError(argument, message)`; the config layer checks none of those
rules again. While it builds them (`naming_keys`), it turns such an error into a `ConfigError`
that names the key instead of the parameter: `keep_best=1` becomes
`trainer.checkpoint.keep_best=1`, as a user writes it on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import traceback
import typing
from collections.abc import Iterator

from paxtrain.config.schema import MIRRORS, FitConfig
from paxtrain.config.targets import locate
from paxtrain.errors import ArgumentError, ConfigError

KEYED_MSG = "`{key}`: {message}"


def _sections(schema: type = FitConfig, prefix: str = "") -> dict[str, type]:
    """Each schema section's full key ("" for the top), with its dataclass."""
    found = {prefix: schema}
    for name, hint in typing.get_type_hints(schema).items():
        if dataclasses.is_dataclass(hint):
            found.update(_sections(hint, f"{prefix}{name}."))
    return found


def _raised_in(error: BaseException) -> list[type]:
    """The classes of the objects whose methods the error passed through, innermost first."""
    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    return [type(frame.f_locals["self"]) for frame in frames[::-1] if "self" in frame.f_locals]


def _section_of(argument: str, error: ArgumentError) -> str | None:
    """The section (`trainer.checkpoint.`) whose key `argument` is, or None: the one section
    with such a key, or among several (`monitor`), the one configuring the object that raised."""
    candidates = [
        section
        for section, schema in _sections().items()
        if argument in {field.name for field in dataclasses.fields(schema)}
    ]
    if len(candidates) > 1:
        mirrored = _mirrored_classes()
        for cls in _raised_in(error):
            schema = next((s for c, s in mirrored if issubclass(cls, c)), None)
            owner = [s for s in candidates if _sections()[s] is schema]
            if owner:
                return owner[0]
    return candidates[0] if candidates else None


def _mirrored_classes() -> list[tuple[type, type]]:
    """Each class a schema mirrors (`schema.MIRRORS`: one target or several), with the schema."""
    pairs = []
    for schema, targets in MIRRORS.items():
        for target in (targets,) if isinstance(targets, str) else targets:
            built = locate(target, "")
            if isinstance(built, type):  # a function (`default_hooks`) raises as no object
                pairs.append((built, schema))
    return pairs


def _keyed(message: str, section: str, names: set[str]) -> str:
    """`message` with the parameters of `section` it mentions written as their keys:
    `name=value` as the override `section.name=value`, `` `name` `` and a leading `name`
    (`max_steps is 0`) as `` `section.name` ``."""
    words = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    # A value ends before a space, a quote or punctuation; a sentence's full stop is not in it.
    # Not a key's last part (`trainer.precision=`): one the message names already.
    value = r"(?:[^\s,;:)`'\"]*[^\s,;:)`'\".])?"
    assignment = re.compile(rf"(?<![.\w])`?({words})=(['\"]?)({value})\2`?")
    message = assignment.sub(lambda m: f"`{section}{m[1]}={m[3]}`", message)
    named = re.compile(rf"(?<![.\w])`({words})`")
    message = named.sub(lambda m: f"`{section}{m[1]}`", message)
    # A message that starts with the parameter's name is about it: `max_steps is 0; ...`.
    leading = re.compile(rf"^({words})(?= is\b| \(| must\b)")
    return leading.sub(lambda m: f"`{section}{m[1]}`", message)


def config_error(error: ArgumentError) -> ConfigError:
    """The `ConfigError` naming the config key of the argument that `error` refuses.

    Example:
        >>> print(config_error(ArgumentError("keep_best", "keep_best=1 needs monitor='loss'.")))
        `trainer.checkpoint.keep_best=1` needs `trainer.checkpoint.monitor=loss`.
        >>> print(config_error(ArgumentError("precision", "precision 'x' is not a precision.")))
        `trainer.precision`: precision 'x' is not a precision.
    """
    argument, _, index = error.argument.partition("[")  # `loggers[1]`: the list's key, then [1]
    section = _section_of(argument, error)
    if section is None:
        return ConfigError(KEYED_MSG.format(key=error.argument, message=error))
    names = {field.name for field in dataclasses.fields(_sections()[section])}
    message = _keyed(str(error), section, names)
    key = f"{section}{argument}" + (f"[{index}" if index else "")
    if f"`{key}" not in message:
        message = KEYED_MSG.format(key=key, message=message)
    return ConfigError(message)


@contextlib.contextmanager
def naming_keys() -> Iterator[None]:
    """Turns an `ArgumentError` raised while the config's objects are built into the
    `ConfigError` naming its key (`config_error`); a decorator too.

    Example:
        >>> with naming_keys():
        ...     raise ArgumentError("ema_decay", "ema_decay is 2.0; it must be in [0, 1).")
        Traceback (most recent call last):
        paxtrain.errors.ConfigError: `trainer.ema_decay` is 2.0; it must be in [0, 1).
    """
    try:
        yield
    except ArgumentError as error:
        raise config_error(error) from None
