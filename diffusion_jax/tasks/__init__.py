"""Training tasks, chosen by name: the one registry of `config.task`.

Each task is a `Task` object (`tasks/base.py`) in its own module. Adding a
task is one module plus one line here.
"""

from diffusion_jax._checks import check_choice
from diffusion_jax.errors import ConfigError
from diffusion_jax.tasks import classifier, consistency, diffusion, distill
from diffusion_jax.tasks.base import Sampling, StepHook, Task

__all__ = ["TASKS", "get_task", "Task", "Sampling", "StepHook"]

TASKS: dict[str, Task] = {t.name: t for t in (
    diffusion.TASK,
    classifier.TASK,
    distill.TASK,
    consistency.TASK,
)}


def get_task(name: str) -> Task:
  """The registered task `name` (config.task); a ConfigError lists the tasks."""
  try:
    return TASKS[check_choice("task", name, TASKS)]
  except ValueError as e:
    raise ConfigError(f"task={name!r} is not valid: {e}") from None
