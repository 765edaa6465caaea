"""Input checks shared by every module.

Each check raises ``ValueError`` naming the argument, what it allows and what
it was given, in the style of scikit-learn's validation helpers.

Two layers (after scikit-learn's ``sklearn/utils/_param_validation.py``):

- imperative helpers, :func:`check_int`, :func:`check_float`,
  :func:`check_positive`, :func:`check_choice`, :func:`check_array`,
  :func:`check_device` and :func:`check_generator`, for checks that depend on
  other arguments or on data;
- declarations: constraint objects (:class:`Integer`, :class:`Real`,
  :class:`Options`, :class:`Array`, :class:`Device`, :class:`Seed`,
  :class:`Callable`, :class:`Boolean`, :class:`InstanceOf`,
  :class:`Optional`, :class:`AnyOf`) and the decorator
  :func:`validate_params`, which checks a call's arguments against them
  before the function runs and records them on the function, so that
  :func:`declared_functions` can find every declaration and the tests can
  generate a bad-input case for each.

>>> @validate_params({"n": Integer(low=1), "kind": Options("rnn", "gru")})
... def build(n, kind="rnn"):
...     return n, kind
>>> build(3)
(3, 'rnn')
>>> build(0)
Traceback (most recent call last):
ValueError: n must be >= 1; got 0
>>> build(2, kind="lstm")
Traceback (most recent call last):
ValueError: kind must be one of 'rnn', 'gru'; got 'lstm'
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import pkgutil
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType, ModuleType

import numpy as np

__all__ = [
    "check_generator", "check_int", "check_float", "check_positive", "check_choice", "check_array", "check_device",
    "Constraint", "Integer", "Real", "Options", "Array", "Device", "Seed", "Callable", "Boolean", "InstanceOf",
    "Optional", "AnyOf", "Sequence", "MAX_SEED", "as_constraint", "validate_params", "declared_functions", "value_text",
]


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed


def check_generator(seed, device="cpu"):
    """The library's one way to turn a seed into randomness (after scikit-learn's ``check_random_state``).

    ``seed`` is an int >= 0 (a new ``torch.Generator`` on ``device``, seeded
    with it) or a ``torch.Generator``, returned as it is so that callers can
    share one stream.
    """
    import torch

    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator(device=device).manual_seed(check_int("seed", seed, low=0, high=MAX_SEED))


def check_int(name: str, value, *, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int in ``[low, high]``; reject bools and floats."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer{_range_text(low, high)}; got {value!r}")
    value = int(value)
    _check_bounds(name, value, low, high, strict_low=False)
    return value


def check_float(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    strict_low: bool = False,
) -> float:
    """Return ``value`` as a finite float in the given range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number{_range_text(low, high, strict_low)}; got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    _check_bounds(name, value, low, high, strict_low)
    return value


def check_positive(name: str, value) -> float:
    """A finite float strictly greater than zero."""
    return check_float(name, value, low=0.0, strict_low=True)


def check_choice(name: str, value, choices: Iterable) -> object:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    try:
        found = value in choices
    except (TypeError, ValueError):  # an array compared with a choice has no single truth value
        found = False
    if not found:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def check_array(name: str, value, *, ndim: int | None = None, positive: bool = False) -> np.ndarray:
    """A finite float64 array, optionally of a given rank and strictly positive."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers; got {value_text(value)}") from err
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s); got {value_text(value, array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; got {value_text(value, array)}, with non-finite entries")
    if positive and np.any(array <= 0):
        raise ValueError(f"{name} must be > 0 everywhere; got {value_text(value, array)}, with minimum {float(array.min())!r}")
    return array


def check_device(name: str, value) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(value, str) or not (value == "cpu" or value == "cuda" or value.startswith("cuda:")):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N'; got {value!r}")
    if value != "cpu":
        import torch  # only here: CPU runs validate without importing torch

        if not torch.cuda.is_available():
            raise ValueError(f"{name} must be 'cpu' on this machine (torch sees no CUDA device); got {value!r}")
        index = int(value.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{name} must be 'cpu' or 'cuda:N' with N < {torch.cuda.device_count()}; got {value!r}")
    return value


def _range_text(low, high, strict_low: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if strict_low else '>='} {low}"
    if low is None:
        return f" <= {high}"
    return f" in {'(' if strict_low else '['}{low}, {high}]"


def _check_bounds(name, value, low, high, strict_low):
    too_low = low is not None and (value <= low if strict_low else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        raise ValueError(f"{name} must be{_range_text(low, high, strict_low)}; got {value!r}")


_SHORT = 80  # a given value longer than this is described by its type and shape, not its repr


def value_text(value, array: np.ndarray | None = None) -> str:
    """``repr(value)`` when short, else its type and shape: what an error message says was given.

    Large arrays, dataclasses and sequences of them are described without formatting them: ``AnyOf`` builds this
    text for every alternative that a valid value does not match, so it must stay cheap.
    """
    shape = getattr(value, "shape", None) if array is None else array.shape
    try:
        size = None if shape is None else math.prod(tuple(shape))
    except TypeError:                                                     # a .shape that is not a sequence of ints
        shape = size = None
    if size is not None and size > _SHORT // 2:                           # its repr would be over _SHORT anyway
        return f"{type(value).__name__} of shape {tuple(shape)}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"a {type(value).__name__}"
    if isinstance(value, (list, tuple)) and value and (dataclasses.is_dataclass(value[0]) or hasattr(value[0], "shape")):
        return f"a {type(value).__name__} of {len(value)} {type(value[0]).__name__}"
    text = repr(value)
    if len(text) <= _SHORT:
        return text
    return f"{type(value).__name__} of shape {tuple(shape)}" if shape is not None else f"{text[:_SHORT - 3]}..."


# ---------------------------------------------------------------------------
# Constraints: what a parameter allows, as data
# ---------------------------------------------------------------------------


class _Invalid:
    """A value that no ordinary constraint allows (the default bad example)."""

    def __repr__(self):
        return "<invalid value>"


INVALID = _Invalid()


class Constraint:
    """What one parameter allows.

    ``check(name, value)`` returns the value, converted (an ``int`` for
    :class:`Integer`, a float64 array for :class:`Array`, ...), or raises
    ``ValueError("<name> must be <allowed>; got <value!r>")``;
    ``describe()`` is the ``<allowed>`` part; ``invalid_example()`` is a
    value the constraint rejects, from which the tests build a bad call.
    """

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, name: str, value):
        raise NotImplementedError

    def invalid_example(self):
        return INVALID

    def is_satisfied_by(self, value) -> bool:
        """Whether :meth:`check` accepts ``value``."""
        try:
            self.check("value", value)
        except ValueError:
            return False
        return True

    def _fail(self, name, value):
        raise ValueError(f"{name} must be {self.describe()}; got {value_text(value)}")

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if v is not None and v is not False)
        return f"{type(self).__name__}({fields})"


class Integer(Constraint):
    """An integer (not a bool, not a float) in ``[low, high]``; returned as ``int``. :func:`check_int`."""

    def __init__(self, low: int | None = None, high: int | None = None):
        if low is not None and high is not None and low > high:
            raise ValueError(f"Integer: low must be <= high; got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def describe(self):
        return "an integer" + _range_text(self.low, self.high)

    def check(self, name, value):
        return check_int(name, value, low=self.low, high=self.high)

    def invalid_example(self):
        if self.low is not None:
            return self.low - 1
        if self.high is not None:
            return self.high + 1
        return 0.5


class Real(Constraint):
    """A finite real number in ``[low, high]`` (``(low, high]`` with ``strict_low``); returned as ``float``. :func:`check_float`."""

    def __init__(self, low: float | None = None, high: float | None = None, *, strict_low: bool = False):
        if low is not None and high is not None and low > high:
            raise ValueError(f"Real: low must be <= high; got low={low!r}, high={high!r}")
        self.low, self.high, self.strict_low = low, high, strict_low

    def describe(self):
        return "a finite real number" + _range_text(self.low, self.high, self.strict_low)

    def check(self, name, value):
        return check_float(name, value, low=self.low, high=self.high, strict_low=self.strict_low)

    def invalid_example(self):
        if self.low is not None:
            return float(self.low) - 1.0
        if self.high is not None:
            return float(self.high) + 1.0
        return "not a number"


class Options(Constraint):
    """One of the given values (compared with ``==``). :func:`check_choice`."""

    def __init__(self, *choices):
        if not choices:
            raise ValueError("Options: choices must hold at least one value; got none")
        self.choices = tuple(choices)

    def describe(self):
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, name, value):
        return check_choice(name, value, self.choices)

    def invalid_example(self):
        example = "not-an-option"
        while example in self.choices:
            example += "!"
        return example

    def __repr__(self):
        return f"Options({', '.join(map(repr, self.choices))})"


class Array(Constraint):
    """A finite float64 array (converted with ``np.asarray``), of rank ``ndim`` if given, > 0 with ``positive``. :func:`check_array`."""

    def __init__(self, ndim: int | None = None, *, positive: bool = False):
        self.ndim, self.positive = ndim, positive

    def describe(self):
        rank = f" with {self.ndim} dimension(s)" if self.ndim is not None else ""
        sign = ", > 0 everywhere" if self.positive else ""
        return f"a finite real array{rank}{sign}"

    def check(self, name, value):
        return check_array(name, value, ndim=self.ndim, positive=self.positive)

    def invalid_example(self):
        if self.ndim is not None:
            return [[1.0, 2.0]] if self.ndim == 1 else [1.0, 2.0]
        return [1.0, -1.0] if self.positive else [1.0, float("nan")]


class Device(Constraint):
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` that this machine has. :func:`check_device`."""

    def describe(self):
        return "'cpu', 'cuda' or 'cuda:N'"

    def check(self, name, value):
        return check_device(name, value)

    def invalid_example(self):
        return "tpu"


class Seed(Constraint):
    """An integer >= 0 (returned as ``int``) or a ``torch.Generator`` (returned as it is): what :func:`check_generator` takes."""

    def describe(self):
        return "an integer >= 0 or a torch.Generator"

    def check(self, name, value):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            if value >= 0:
                return int(value)
        else:
            torch = sys.modules.get("torch")  # a torch.Generator exists only once torch is imported
            if torch is not None and isinstance(value, torch.Generator):
                return value
        self._fail(name, value)

    def invalid_example(self):
        return -1


class Callable(Constraint):
    """Anything ``callable()``: a function, a lambda, a bound method, a module with ``forward``..."""

    def describe(self):
        return "a callable"

    def check(self, name, value):
        if not callable(value):
            self._fail(name, value)
        return value

    def invalid_example(self):
        return "not callable"


class Boolean(Constraint):
    """``True`` or ``False`` (a Python or NumPy bool; not 0 or 1); returned as ``bool``."""

    def describe(self):
        return "True or False"

    def check(self, name, value):
        if not isinstance(value, (bool, np.bool_)):
            self._fail(name, value)
        return bool(value)

    def invalid_example(self):
        return "yes"


class InstanceOf(Constraint):
    """An instance of one of ``types`` (``isinstance``), returned as it is."""

    def __init__(self, *types: type, description: str | None = None):
        if not types or not all(isinstance(t, type) for t in types):
            raise ValueError(f"InstanceOf: types must be one or more classes; got {types!r}")
        self.types, self.description = types, description

    def describe(self):
        if self.description is not None:
            return self.description
        names = [t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
                 for t in self.types]
        return "an instance of " + " or ".join(names)

    def check(self, name, value):
        if not isinstance(value, self.types):
            self._fail(name, value)
        return value

    def __repr__(self):
        return f"InstanceOf({', '.join(t.__qualname__ for t in self.types)})"


class _NoneOnly(Constraint):
    def describe(self):
        return "None"

    def check(self, name, value):
        if value is not None:
            self._fail(name, value)
        return None

    def invalid_example(self):
        return INVALID

    def __repr__(self):
        return "None"


class AnyOf(Constraint):
    """Any one of several constraints; the first that accepts the value converts it.

    ``validate_params`` reads a list ``[c1, c2, None]`` as ``AnyOf(c1, c2, None)``;
    ``None`` (or the type ``type(None)``) allows None.
    """

    def __init__(self, *constraints):
        if not constraints:
            raise ValueError("AnyOf: constraints must hold at least one constraint; got none")
        self.constraints = tuple(as_constraint(c) for c in constraints)

    def describe(self):
        return " or ".join(c.describe() for c in self.constraints)

    def check(self, name, value):
        for c in self.constraints:
            try:
                return c.check(name, value)
            except ValueError:
                continue
        self._fail(name, value)

    def invalid_example(self):
        for candidate in [c.invalid_example() for c in self.constraints] + [INVALID]:
            if not self.is_satisfied_by(candidate):
                return candidate
        raise ValueError(f"{self!r} has no invalid example: it allows every candidate")

    def __repr__(self):
        return f"AnyOf({', '.join(map(repr, self.constraints))})"


class Optional(AnyOf):
    """``None`` or what ``constraint`` allows."""

    def __init__(self, constraint):
        super().__init__(constraint, None)

    def __repr__(self):
        return f"Optional({self.constraints[0]!r})"


class Sequence(Constraint):
    """A tuple or list whose items each satisfy ``items``, of length in ``[min_len, max_len]``; returned as a tuple."""

    def __init__(self, items, *, min_len: int = 0, max_len: int | None = None):
        self.items, self.min_len, self.max_len = as_constraint(items), min_len, max_len

    def describe(self):
        if self.max_len == self.min_len:
            size = f"{self.min_len} item{'s' * (self.min_len != 1)}"
        elif self.max_len is None:
            size = f"at least {self.min_len} item{'s' * (self.min_len != 1)}" if self.min_len else "items"
        else:
            size = f"{self.min_len} to {self.max_len} items"
        return f"a tuple of {size}, each {self.items.describe()}"

    def check(self, name, value):
        if not isinstance(value, (tuple, list)):
            self._fail(name, value)
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            raise ValueError(f"{name} must be {self.describe()}; got {value_text(value)} ({len(value)} items)")
        return tuple(self.items.check(f"{name}[{i}]", item) for i, item in enumerate(value))

    def invalid_example(self):
        return () if self.min_len else (self.items.invalid_example(),)

    def __repr__(self):
        return f"Sequence({self.items!r}, min_len={self.min_len}, max_len={self.max_len})"


def as_constraint(spec) -> Constraint:
    """A :class:`Constraint` from a declaration: a constraint, ``None``, a class (:class:`InstanceOf`) or a list of these (:class:`AnyOf`)."""
    if isinstance(spec, Constraint):
        return spec
    if spec is None or spec is type(None):
        return _NoneOnly()
    if isinstance(spec, type):
        return InstanceOf(spec)
    if isinstance(spec, (list, tuple)):
        return AnyOf(*spec)
    raise TypeError(f"a parameter constraint must be a Constraint, None, a class or a list of these; got {spec!r}")


# ---------------------------------------------------------------------------
# Declarations on functions
# ---------------------------------------------------------------------------


def validate_params(constraints: Mapping[str, object]):
    """Decorator: check the named parameters of every call before the function runs.

    ``constraints`` maps parameter names to what they allow (see
    :func:`as_constraint`). Each call matches its arguments to the signature
    (read once with ``inspect.signature``), passes every *given* declared argument through
    its constraint's ``check`` (defaults are trusted; the tests check them)
    in signature order, and calls the function with the checked, converted
    values. Undeclared parameters are left to the function, which checks
    whatever depends on other arguments or on data.

    The wrapper keeps the function's name, docstring, module and signature
    (``functools.wraps``: autodoc and ``inspect.signature`` see the original)
    and carries the declarations as ``__param_constraints__`` (parameter
    name -> :class:`Constraint`, in signature order). A call that does not
    fit the signature fails with the function's own ``TypeError``. The
    overhead is about a microsecond per declared argument: for entry points,
    not for per-step inner loops.
    """
    declared = {name: as_constraint(spec) for name, spec in dict(constraints).items()}

    def decorate(func):
        signature = inspect.signature(func)
        unknown = [name for name in declared if name not in signature.parameters]
        if unknown:
            raise TypeError(f"validate_params: {func.__qualname__} has no parameter(s) {unknown}; "
                            f"it has {list(signature.parameters)}")
        variadic = [name for name in declared if signature.parameters[name].kind
                    in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
        if variadic:
            raise TypeError(f"validate_params: cannot declare *args or **kwargs of {func.__qualname__}; got {variadic}")
        ordered = {name: declared[name] for name in signature.parameters if name in declared}
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        index = {name: i for i, (name, p) in enumerate(signature.parameters.items()) if p.kind in positional}
        by_keyword = {name for name, p in signature.parameters.items() if p.kind != inspect.Parameter.POSITIONAL_ONLY}
        # (name, position or None, accepted as a keyword, check): binding by hand, a few times faster than Signature.bind
        plan = tuple((name, index.get(name), name in by_keyword, c.check) for name, c in ordered.items())
        variadic_args = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values())
        most_args = None if variadic_args else len(index)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            n_args, checked = len(args), None
            if most_args is not None and n_args > most_args:
                signature.bind(*args, **kwargs)  # raises the TypeError "too many positional arguments"
            for name, position, keyword, check in plan:
                if position is not None and position < n_args:
                    if name in kwargs:
                        signature.bind(*args, **kwargs)  # raises the TypeError "multiple values for argument"
                    if checked is None:
                        checked = list(args)
                    checked[position] = check(name, args[position])
                elif keyword and name in kwargs:
                    kwargs[name] = check(name, kwargs[name])
            return func(*(args if checked is None else checked), **kwargs)

        wrapper.__param_constraints__ = MappingProxyType(ordered)
        return wrapper

    return decorate


def declared_functions(package: str | ModuleType = "learning_dynamics") -> dict[str, object]:
    """Every function in ``package`` (and its subpackages) that carries :func:`validate_params` declarations.

    Returns ``{"<module>.<function>": function}`` with module paths relative
    to the package (``"operators.init_params"``, ``"tasks.recurrent.flip_flop"``),
    sorted. Only module-level functions defined in their module count (not
    re-exports); modules whose source never mentions ``validate_params`` are
    not imported, and ``__main__`` never is.
    """
    root = importlib.import_module(package) if isinstance(package, str) else package
    names = [root.__name__]
    if hasattr(root, "__path__"):
        names += [info.name for info in pkgutil.walk_packages(root.__path__, root.__name__ + ".")]
    found = {}
    for module_name in names:
        if module_name.rsplit(".", 1)[-1] == "__main__" or not _mentions_decorator(module_name):
            continue
        module = importlib.import_module(module_name)
        for attr, obj in vars(module).items():
            if inspect.isfunction(obj) and obj.__module__ == module_name and hasattr(obj, "__param_constraints__"):
                relative = module_name[len(root.__name__) + 1:]
                found[f"{relative}.{attr}" if relative else attr] = obj
    return dict(sorted(found.items()))


def _mentions_decorator(module_name: str) -> bool:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py") or module_name == __name__:
        return False
    with open(spec.origin, encoding="utf-8") as source:
        return "validate_params" in source.read()
