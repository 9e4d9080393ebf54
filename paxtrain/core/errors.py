"""Error messages of the module core.

Each message names the problem, shows the fix, and says why. They are constants so that tests
can match them and so that one wording is kept for one mistake.
"""


class PaxValueError(ValueError, TypeError):
    """A misuse PAX v0.4.3 reported with `ValueError`, where a `TypeError` is also natural.

    PAX code catches `ValueError` for these (`__slots__`, class-level arrays, a non-module where a
    module is expected, an input of the wrong width); code written for paxtrain may catch
    `TypeError`. Both clauses catch this class.

    Example:
        >>> issubclass(PaxValueError, ValueError) and issubclass(PaxValueError, TypeError)
        True
    """


IMMUTABLE_MSG = """\
Cannot set `{cls}.{attr}`: `{cls}` is immutable here.

paxtrain modules are immutable outside `pax.pure` / `pax.module_and_value`, and a module that a
JAX transformation (jit, scan, vmap, grad...) passes into your function is a fresh immutable copy.
Mutate a copy and return it instead:

    module, output = pax.module_and_value(module)(x)   # or: pax.purecall(module, x)

Inside a `jax.lax.scan` body, call the carried module the same way and return it as the carry."""

LEAK_MSG = """\
Cannot set `{cls}.{attr}`: the module was made mutable {where}, and this assignment runs {inside}.

Mutating a module that is not an input of the current pure call or transformation would leak
traced values out of it. Pass the module in as an argument and return it:

    @jax.jit
    def f(module, x):
        module, y = pax.module_and_value(module)(x)
        return module, y

    self.sub, y = f(self.sub, x)"""

UNDECLARED_ARRAY_MSG = """\
Cannot set `{cls}.{attr}` to a value holding arrays: `{attr}` is not a declared parameter or \
state.

Array attributes must be declared so that transformations and optimizers know what they are:

    self.register_parameter("{attr}", value)   # trained by the optimizer
    self.register_state("{attr}", value)       # carried along but not trained (counters, stats)

or assign inside `with self.add_parameters():` / `with self.add_states():`."""

MIXED_MODULE_FIELD_MSG = """\
Cannot set `{cls}.{attr}`: it mixes submodules with other values ({other}).

A field that holds submodules may hold only modules (and None) inside lists, tuples and dicts.
Keep the other values in a separate attribute."""

KIND_CONFLICT_MSG = """\
Cannot register `{cls}.{attr}` as a {new}: it is already registered as a {old}."""

RESERVED_ATTR_MSG = """\
Cannot set `{cls}.{attr}`: `{attr}` is managed by paxtrain. {fix}"""

SHARED_MODULE_MSG = """\
`{path_a}` and `{path_b}` are the same {cls} instance.

A module tree must not share submodules: after a transformation they would silently become two
independent copies. Create two modules, or keep one and call it twice."""

SHARED_ARRAY_MSG = """\
`{path_a}` and `{path_b}` are the same array object.

Shared weights silently become two independent arrays after a transformation or an optimizer
step. Keep the weight in one module and reuse that module instead."""

RNG_INSIDE_TRANSFORM_MSG = """\
`pax.next_rng_key()` was called inside a JAX transformation.

The global key lives outside traced code, so a key drawn here would leak a tracer and repeat on
every call of the compiled function. Keep the key in the model instead:

    rng = pax.RngSeq(seed=42)          # a module; its key is a state
    rng, key = pax.purecall(rng.next_rng_key)  # or pass keys in as arguments"""

MP_ALREADY_APPLIED_MSG = """\
`{cls}` already has the mixed-precision policy {policy}.

Remove it first with `pax.unwrap_mp_policy(module)`, then apply the new one."""

STRUCTURE_MISMATCH_MSG = """\
The two trees have different structures; the first difference is at `{path}`:
  left:  {left}
  right: {right}"""

NOT_A_POLICY_MSG = """\
paxtrain: apply_mp_policy expects an MpPolicy, a string such as \
"params=float32,compute=bfloat16,output=float32", or an object with param_dtype, compute_dtype \
and output_dtype dtypes (a jmp.Policy); got {kind}."""

DELETE_ATTR_MSG = """\
Cannot delete `{cls}.{attr}`: a module's attributes are its structure, so modules refuse `del` \
(as PAX did). Set it to None with `module.replace({attr}=None)`, or build the module without \
it."""

SLOTS_MSG = """\
`{cls}` defines `__slots__`: paxtrain modules keep their fields in `__dict__` (their pytree), so \
`__slots__` is refused (as in PAX). Remove `__slots__`."""

CLASS_ARRAY_MSG = """\
`{cls}.{attr}` is an array or module at class level: it would be shared by every instance and \
invisible to transformations and optimizers (PAX refused it too). Create it in `__init__` and \
declare it with `register_parameter` / `register_state`."""
