"""Argument checks shared by the library: the one home of the check helpers.

Library functions validate their arguments with these helpers, which raise
`ArgumentError`, a `ValueError` that remembers the argument's name. The
config layer (`configuration.py`) builds the library's components inside
`config_errors(...)`, which re-raises an `ArgumentError` as a
`errors.ConfigError` naming the config setting the argument came from, so a
rule is written once, in the library, and every caller reports it well.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping

import jax
import numpy as np

from diffusion_jax.errors import ConfigError

__all__ = ["ArgumentError", "is_concrete", "is_int", "check_choice", "check_int",
           "check_number", "check_optional_positive", "config_errors"]


class ArgumentError(ValueError):
  """An invalid library argument; `argument` is its name (e.g. "num_steps")."""

  def __init__(self, argument: str, message: str):
    super().__init__(message)
    self.argument = argument


def is_concrete(a) -> bool:
  """Whether `a` is a concrete value (not a tracer inside jit/vmap/scan)."""
  return not isinstance(a, jax.core.Tracer)


def is_int(v) -> bool:
  """A Python or NumPy integer, not a bool."""
  return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _is_number(v) -> bool:
  return not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))


def check_choice(name: str, value, allowed: Iterable[str], kind: str | None = None) -> str:
  """`value` must be one of `allowed` (a registry's names). `kind` names the
  values in the message (default: `name` as a plural, "loss_type" -> "loss types")."""
  allowed = list(allowed)
  if not isinstance(value, str) or value not in allowed:
    kind = kind or name.replace("_", " ") + "s"
    raise ArgumentError(name, f"Unknown {name} {value!r}; known {kind}: {allowed}.")
  return value


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
  """An integer in [low, high] (either bound may be None)."""
  if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
    if high is None:
      want = "an integer" if low is None else f"an integer >= {low}"
    else:
      want = f"an integer in [{low}, {high}]"
    raise ArgumentError(name, f"{name} must be {want}, got {value!r}.")
  return int(value)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False,
                 optional: bool = False) -> float | None:
  """A real number in the interval given by low/high (closed unless *_open);
  with `optional`, None is allowed too (and returned)."""
  if optional and value is None:
    return None
  ok = _is_number(value) and np.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    g = lambda v: f"{v:g}"
    if high is None and low is None:
      want = "a finite number"
    elif high is None:
      want = f"> {g(low)}" if low_open else f">= {g(low)}"
    elif low is None:
      want = f"< {g(high)}" if high_open else f"<= {g(high)}"
    else:
      want = (f"in {'(' if low_open else '['}{g(low)}, {g(high)}{')' if high_open else ']'}")
    raise ArgumentError(name, f"{name} must be {want}{' or None' if optional else ''}, "
                              f"got {value!r}.")
  return float(value)


def check_optional_positive(name: str, value) -> float | None:
  """None, or a number > 0 (e.g. a clipping bound)."""
  return check_number(name, value, 0.0, low_open=True, optional=True)


@contextlib.contextmanager
def config_errors(config, **settings: str) -> Iterator[None]:
  """Re-raises library `ValueError`s as `ConfigError`s naming config settings.

  `settings` maps a library argument name to the config path it was read
  from, e.g. `config_errors(config, num_steps="sample.num_steps")`. An
  `ArgumentError` for a mapped argument becomes "sample.num_steps=0: <the
  library's message>"; any other `ValueError` raised by the library is
  prefixed with all the settings involved. Programming errors (other
  exception types) pass through with their traceback.
  """
  try:
    yield
  except ConfigError:
    raise
  except ValueError as e:
    path = settings.get(getattr(e, "argument", None))
    if path is not None:
      raise ConfigError(f"{path}={_lookup(config, path)!r}: {e}") from None
    where = ", ".join(f"{p}={_lookup(config, p)!r}" for p in dict.fromkeys(settings.values()))
    raise ConfigError(f"{where}: {e}" if where else str(e)) from None


def _lookup(config, path: str) -> Any:
  node = config
  for part in path.split("."):
    if not isinstance(node, Mapping) and not hasattr(node, "keys"):
      return None
    node = node.get(part) if hasattr(node, "get") else None
  return node
