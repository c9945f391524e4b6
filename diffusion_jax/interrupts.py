"""Ctrl-C (SIGINT) and SIGTERM (preemption) as requests to stop cleanly.

The CLI installs the handlers (`install`); the long loops (training steps,
sampling and evaluation batches) call `check()` between units of work. A
signal then only sets a flag, so it never lands inside XLA's compilation or
a device call (where Python's KeyboardInterrupt can crash the process): the
loop finishes its current step, the training loop writes a checkpoint, and
`Interrupted` ends the run with one line and status 128 + signal (130 for
SIGINT, 143 for SIGTERM). A second signal exits at once.

Without `install()` (library use, notebooks) nothing changes: Ctrl-C raises
KeyboardInterrupt as usual.
"""

from __future__ import annotations

import os
import signal
import sys

from diffusion_jax.errors import UserError

__all__ = ["Interrupted", "install", "requested", "check"]

_received: list[int] = []


class Interrupted(UserError):
  """The run stopped on a signal; `exit_code` is 128 + the signal number."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def _handler(signum, frame) -> None:
  del frame
  if _received:  # A second signal: the user insists.
    print(f"\ndiffusion_jax: {signal.Signals(signum).name} again; exiting now.",
          file=sys.stderr, flush=True)
    os._exit(128 + signum)
  _received.append(signum)
  print(f"\ndiffusion_jax: {signal.Signals(signum).name} received; stopping after the "
        "current step (again to exit at once).", file=sys.stderr, flush=True)


def install() -> None:
  """Handles SIGINT and SIGTERM as stop requests (main thread only)."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _handler)


def requested() -> int | None:
  """The signal number of a pending stop request, or None."""
  return _received[0] if _received else None


def check(what: str) -> None:
  """Raises `Interrupted` (message: "interrupted <what>") if a stop was requested."""
  signum = requested()
  if signum is not None:
    raise Interrupted(f"interrupted {what}", signum)
