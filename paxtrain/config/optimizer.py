"""The `optimizer` config section: any optax optimizer and schedule, built by Hydra's `instantiate`.

    optimizer:
      _target_: optax.adamw                 # any optax factory, or an alias from ALIASES
      learning_rate:                        # a float, or a schedule section
        _target_: optax.warmup_cosine_decay_schedule
        init_value: 0.0
        peak_value: 3.0e-3
        warmup_steps: 100
        decay_steps: ${optimizer.horizon}
      clip_grad_norm: 1.0                   # paxtrain: optax.clip_by_global_norm first
      horizon: null                         # paxtrain: steps the schedule spans (see below)

`optimizer._target_=optax.lion`, `optax.contrib.muon`, an `optax.chain` (`_args_: [...]`) or
`optax.join_schedules` need no code. Every factory with a `learning_rate` parameter is wrapped in
`optax.inject_hyperparams` (the learning rate only), so the rate lives in the optimizer state and
is logged as `train/learning_rate`; its other arguments stay static.

Two keys are paxtrain's own. `clip_grad_norm` chains `optax.clip_by_global_norm` in front.
`horizon` is what `${optimizer.horizon}` resolves to: `trainer.max_steps` when null, and on a
resume the horizon the run's checkpoint recorded (`paxtrain.cli.build.schedule_horizon`), so a longer
resumed run keeps its schedule instead of jumping to another learning rate.

    >>> from omegaconf import OmegaConf
    >>> section = OmegaConf.create({"_target_": "lion", "learning_rate": 0.5})
    >>> tx = build_optimizer(section)
    >>> state = tx.init({"w": jnp.zeros(2)})
    >>> float(optax.tree.get(state, "learning_rate"))
    0.5
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import optax
from omegaconf import DictConfig, ListConfig, OmegaConf

from paxtrain.config.targets import NO_TARGET_MSG, NOT_FINITE_MSG, check_target, locate
from paxtrain.errors import ConfigError

# Short names of the common targets: the same `_target_` mechanism, spelled shorter.
ALIASES = {
    "adam": "optax.adam",
    "adamw": "optax.adamw",
    "sgd": "optax.sgd",
    "lion": "optax.lion",
    "adafactor": "optax.adafactor",
    "muon": "optax.contrib.muon",
    "constant": "optax.constant_schedule",
    "cosine": "optax.cosine_decay_schedule",
    "warmup_cosine": "optax.warmup_cosine_decay_schedule",
}


CLIP_KEY = "clip_grad_norm"


HORIZON_KEY = "horizon"


# The help of paxtrain's own keys of the section (`paxtrain options`).
OWN_KEYS = {
    CLIP_KEY: "clip the gradients' global norm to this first (optax.clip_by_global_norm).",
    HORIZON_KEY: "steps the schedule spans (`${optimizer.horizon}`); null: trainer.max_steps.",
}


DEFAULT_OPTIMIZER = {
    "_target_": "optax.adamw",
    "learning_rate": 1e-3,
    "weight_decay": 0.0,
    CLIP_KEY: 1.0,
}


# Keys whose number is a learning rate, in optax's factories and schedules.
_RATE_KEYS = ("learning_rate", "peak_value", "init_value", "end_value", "value")


WARMUP_MSG = (
    "`{key}.warmup_steps` is {warmup}, but the schedule spans only {steps} steps "
    "(`{key}.decay_steps`: `${{optimizer.horizon}}` is `trainer.max_steps` unless set): "
    "warm up for fewer steps, e.g. `{key}.warmup_steps={example}`."
)


BUILD_FAILED_MSG = "Config section `{key}` could not be built: {reason}"


NEGATIVE_LR_MSG = (
    "`{key}` is {value}: a negative learning rate climbs the loss instead of descending it. "
    "Is the sign a typo (`{key}={positive}`)?"
)


# Above this a learning rate is almost surely a typo (`3e3` for `3e-3`): an adaptive optimizer
# (Adam and its kin) moves every weight by about the learning rate each step. No hard bound:
# plain SGD on some problems (and LARS at large batch sizes) uses rates of 1 to 10.
LARGE_LR = 1.0


LARGE_LR_MSG = (
    "`{key}` is {value:g}: above {limit:g}, an adaptive optimizer such as Adam moves each weight "
    "by about that much every step, and the loss diverges (its steps are then skipped). Is the "
    "exponent a typo (`{key}={example:g}`)?"
)


OUT_OF_DOMAIN_MSG = "`{key}` is {value}: {reason}; it must be {domain}, e.g. `{key}={example}`."


class _Domain(NamedTuple):
    """Where a value of an optimizer key makes sense, why, and a typical value."""

    contains: Callable[[float], bool]
    domain: str
    reason: str
    example: float


_NORM = _Domain(lambda v: v > 0, "above 0", "a clipping norm of 0 zeroes every gradient and a "
                "negative one reverses it (gradient ascent)", 1.0)  # fmt: skip
_DECAY = _Domain(lambda v: 0 <= v < 1, "in [0, 1)", "the decay rate of a moving average (at 1 or "
                 "above it never forgets, or grows without bound)", 0.9)  # fmt: skip
_WEIGHT_DECAY = _Domain(lambda v: v >= 0, "0 or more", "a negative weight decay pushes the "
                        "weights away from 0 instead of toward it", 0.01)  # fmt: skip
_EPS = _Domain(lambda v: v >= 0, "0 or more", "it keeps a division away from 0, which a "
               "negative one can hit", 1e-8)  # fmt: skip
_STEPS = _Domain(lambda v: v >= 0, "0 or more", "it counts steps", 100)


# The domain of optimizer and schedule keys, by their name in optax's factories (or ours).
DOMAINS = {
    CLIP_KEY: _NORM, "max_norm": _NORM,
    "b1": _DECAY, "b2": _DECAY._replace(example=0.999), "momentum": _DECAY, "decay": _DECAY,
    "weight_decay": _WEIGHT_DECAY, "eps": _EPS, "eps_root": _EPS._replace(example=0.0),
    "warmup_steps": _STEPS, "decay_steps": _STEPS, "transition_steps": _STEPS,
    "transition_begin": _STEPS,
}  # fmt: skip


def validate_optimizer(cfg: DictConfig) -> None:
    """Checks (and completes, see `complete_optimizer`) the `optimizer` section of a merged
    config, in place: finite numbers, a warning for a negative learning rate, and a
    trial build (cheap: no arrays), so bad targets and values fail before anything compiles.

    Example:
        >>> cfg = OmegaConf.create({"trainer": {"max_steps": 10}, "optimizer": None})
        >>> validate_optimizer(cfg)
        >>> cfg.optimizer._target_, cfg.optimizer.horizon
        ('optax.adamw', None)
    """
    complete_optimizer(cfg)
    if cfg.optimizer[HORIZON_KEY] is None and cfg.trainer.max_steps < 1:
        return  # the Trainer refuses that max_steps, naming `trainer.max_steps`
    trial = with_horizon(cfg)
    _check_numbers(OmegaConf.to_container(trial.optimizer, resolve=True), "optimizer")
    build_optimizer(trial.optimizer)


def with_horizon(cfg: DictConfig, horizon: int | None = None) -> DictConfig:
    """A copy of `cfg` whose `optimizer.horizon`, what `${optimizer.horizon}` resolves to, is
    `horizon`, else the config's own, else `trainer.max_steps`. The config itself is left as the
    user wrote it: the run saves it so, and a resume finds the horizon it trained with in the
    checkpoint (`paxtrain.cli.build.schedule_horizon`).

    Example:
        >>> cfg = OmegaConf.create({"trainer": {"max_steps": 10}, "optimizer": {"horizon": None}})
        >>> with_horizon(cfg).optimizer.horizon, with_horizon(cfg, 30).optimizer.horizon
        (10, 30)
        >>> cfg.optimizer.horizon is None
        True
    """
    completed = cfg.copy()
    completed.optimizer[HORIZON_KEY] = (
        horizon or cfg.optimizer[HORIZON_KEY] or cfg.trainer.max_steps
    )
    return completed


def complete_optimizer(cfg: DictConfig) -> None:
    """Gives a merged config the default `optimizer` section if it has none, and the
    `horizon` key that schedules may interpolate (`${optimizer.horizon}`).

    Example:
        >>> cfg = OmegaConf.create({"optimizer": {"_target_": "lion", "learning_rate": 1e-4}})
        >>> complete_optimizer(cfg)
        >>> cfg.optimizer.horizon is None
        True
    """
    if cfg.optimizer is None:
        cfg.optimizer = DEFAULT_OPTIMIZER
    if isinstance(cfg.optimizer, DictConfig) and HORIZON_KEY not in cfg.optimizer:
        cfg.optimizer[HORIZON_KEY] = None


def _check_numbers(node: Any, key: str) -> None:
    if isinstance(node, dict):
        _check_warmup(node, key)
        for k, v in node.items():
            _check_numbers(v, f"{key}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_numbers(v, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(NOT_FINITE_MSG.format(key=key, value=node, example=1e-3))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        _check_domain(node, key)


def _check_domain(value: float, key: str) -> None:
    """A number against the domain of its key's name (`DOMAINS`); a learning rate that is
    negative or above `LARGE_LR` warns (either can be meant, rarely is)."""
    name = key.rpartition(".")[2]
    domain = DOMAINS.get(name)
    if domain is not None and not domain.contains(value):
        raise ConfigError(
            OUT_OF_DOMAIN_MSG.format(
                key=key, value=value, reason=domain.reason, domain=domain.domain,
                example=domain.example,
            )
        )  # fmt: skip
    if name not in _RATE_KEYS:
        return
    if value < 0:
        warnings.warn(NEGATIVE_LR_MSG.format(key=key, value=value, positive=-value), stacklevel=2)
    elif value > LARGE_LR:
        warnings.warn(
            LARGE_LR_MSG.format(key=key, value=value, limit=LARGE_LR, example=3e-3), stacklevel=2
        )


def _check_warmup(section: dict, key: str) -> None:
    """A warmup that outlasts its schedule (optax's `warmup_*_decay_schedule`s refuse it with
    "requires positive decay_steps, got -90", which names neither key): a short run of a
    config made for a long one, e.g. `trainer.max_steps=10` and `warmup_steps: 100`."""
    warmup, steps = section.get("warmup_steps"), section.get("decay_steps")
    numbers = all(isinstance(n, int) and not isinstance(n, bool) for n in (warmup, steps))
    if numbers and warmup >= steps:
        raise ConfigError(
            WARMUP_MSG.format(key=key, warmup=warmup, steps=steps, example=max(1, steps // 10))
        )


UNKNOWN_ALIAS_MSG = (
    "`{key}._target_` is {name!r}, neither a short name nor a module path.{hint} Short names: "
    "{aliases}; or any optax factory by its path, e.g. `{key}._target_=optax.adamw`."
)


def _target_path(name: str, key: str = "optimizer") -> str:
    """The import path of a `_target_`: an alias's (`adamw`: `optax.adamw`), a path as given.
    A bare name that is no alias is a `ConfigError` listing the aliases and the close matches
    among them and optax's factories.

    Example:
        >>> _target_path("lion")
        'optax.lion'
        >>> _target_path("adamx")
        Traceback (most recent call last):
        paxtrain.errors.ConfigError: `optimizer._target_` is 'adamx', ... Did you mean `adam`, `adamw`, `optax.adamax`...
    """
    if name in ALIASES or "." in name:
        return ALIASES.get(name, name)
    names = [*ALIASES, *(f"optax.{n}" for n in dir(optax) if not n.startswith("_"))]
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    close += [n for n in difflib.get_close_matches(f"optax.{name}", names, n=2) if n not in close]
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    raise ConfigError(
        UNKNOWN_ALIAS_MSG.format(key=key, name=name, hint=hint, aliases=", ".join(ALIASES))
    )


def _resolved(node: Any, key: str) -> Any:
    """`node` with aliases replaced by full paths, each `_target_` checked against its signature,
    and factories with a `learning_rate` parameter routed through `inject_learning_rate`."""
    if isinstance(node, list):
        return [_resolved(item, f"{key}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out = {k: _resolved(v, f"{key}.{k}") for k, v in node.items()}
    if "_target_" not in out:
        return out
    out["_target_"] = _target_path(str(out["_target_"]), key)
    check_target(out, key)
    target = locate(out["_target_"], key)
    if callable(target) and "learning_rate" in _parameters(target):
        out = {
            "_target_": f"{__name__}.inject_learning_rate",
            "factory": out.pop("_target_"),
            **out,
        }
    return out


def _parameters(target: Any) -> Any:
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return {}


def _spec(section: Any) -> dict[str, Any]:
    if isinstance(section, (DictConfig, ListConfig)):
        section = OmegaConf.to_container(section, resolve=True)
    return dict(section)


def build_optimizer(
    section: DictConfig | dict, key: str = "optimizer"
) -> optax.GradientTransformation:
    """The optax transformation an `optimizer` config section describes.

    Raises `ConfigError` naming the key for an unknown target or argument, or a value the
    factory refuses.

    Example:
        >>> tx = build_optimizer({"_target_": "optax.sgd", "learning_rate": 0.1, "clip_grad_norm": 1.0})
        >>> isinstance(tx, optax.GradientTransformation)
        True
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    spec = _spec(section)
    if "_target_" not in spec:
        raise ConfigError(NO_TARGET_MSG.format(key=key))
    clip = spec.pop(CLIP_KEY, None)
    spec.pop(HORIZON_KEY, None)
    resolved = _resolved(spec, key)
    try:
        transformation = instantiate(resolved, _convert_="all")
    except (InstantiationException, TypeError, ValueError) as error:
        reason = " ".join(str(error.__cause__ or error).split())
        raise ConfigError(BUILD_FAILED_MSG.format(key=key, reason=reason)) from None
    if not isinstance(transformation, optax.GradientTransformation):
        reason = f"it is a {type(transformation).__name__}, not an optax GradientTransformation"
        raise ConfigError(BUILD_FAILED_MSG.format(key=key, reason=reason))
    if clip is not None:
        transformation = optax.chain(optax.clip_by_global_norm(clip), transformation)
    return transformation


def learning_rates(cfg: DictConfig, horizon: int, steps: list[int]) -> list[float]:
    """The learning rate of `cfg`'s optimizer at each of `steps` (the schedule's value after
    that many updates), its schedule spanning `horizon` steps; a constant rate at each.

    Example:
        >>> cfg = OmegaConf.create({"trainer": {"max_steps": 10}, "optimizer": {
        ...     "_target_": "sgd", "learning_rate": {"_target_": "optax.linear_schedule",
        ...     "init_value": 1.0, "end_value": 0.0, "transition_steps": "${optimizer.horizon}"}}})
        >>> learning_rates(cfg, 10, [0, 5, 20]), learning_rates(cfg, 20, [5])
        ([1.0, 0.5, 0.0], [0.75])
    """
    from hydra.utils import instantiate

    rate = _spec(with_horizon(cfg, horizon).optimizer).get("learning_rate")
    if not isinstance(rate, dict):
        return [float(rate)] * len(steps)
    schedule = instantiate(_resolved(rate, "optimizer.learning_rate"), _convert_="all")
    return [float(schedule(step)) for step in steps]


def inject_learning_rate(factory: str, **kwargs: Any) -> optax.GradientTransformation:
    """`factory(**kwargs)` with its learning rate in the optimizer state (loggable, restorable).

    Example:
        >>> tx = inject_learning_rate("optax.adam", learning_rate=optax.linear_schedule(1.0, 0.0, 10))
        >>> float(tx.init({"w": jnp.zeros(1)}).hyperparams["learning_rate"])
        1.0
    """
    function = locate(_target_path(factory), "optimizer")
    static = [name for name in _parameters(function) if name != "learning_rate"]
    # float32 whatever the parameters' dtype: in bfloat16 a rate of 3e-4 would be 2.9945e-4.
    return optax.inject_hyperparams(function, static_args=static, hyperparam_dtype=jnp.float32)(
        **kwargs
    )
