"""The README's plain-JAX `sample_fn` example runs as printed."""

import re

import numpy as np

import _tiny


def test_readme_sample_fn_example_runs():
  text = (_tiny.ROOT / "README.md").read_text()
  section = text.split("## Using it from your own JAX code", 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert len(code.strip().splitlines()) < 10      # "in under 10 lines"
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)
  x0 = np.asarray(namespace["x0"])
  assert x0.shape == (16, 2) and x0.dtype == np.float32
  # The analytic model's data is the point (0.5, -1.0): every sample lands there.
  np.testing.assert_allclose(x0, np.broadcast_to([0.5, -1.0], x0.shape), atol=1e-3)
