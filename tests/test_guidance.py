"""Classifier-free and classifier guidance as model_fn transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import guidance
from diffusion_jax.sampling import make_sample_fn, sampling_schedule

T = 100
SCHED = dj.get_schedule("cosine", T)


def fake_cond_model(params, x_t, t, cond):
  """A deterministic 'model' whose output depends on x_t, t, the label and params."""
  y = cond["label"].astype(jnp.float32)
  null = (cond["label"] == 10).astype(jnp.float32)
  scale = (1.0 + y * 0.1 - null * 2.0).reshape((-1,) + (1,) * (x_t.ndim - 1))
  return params * jnp.sin(x_t) * scale + 0.01 * t.reshape(scale.shape)


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_cfg_endpoints_and_linearity(variance):
  key = jax.random.key(0)
  channels = 2 if variance == "learned_range" else 1
  x = jax.random.normal(key, (4, 3, 3, 1))
  x_in = x
  model = fake_cond_model
  if channels == 2:  # Learned-variance layout: [main, variance] on the last axis.
    model = lambda p, x, t, c: jnp.concatenate(
        [fake_cond_model(p, x, t, c), jnp.tanh(fake_cond_model(p, x, t, c))], -1)
  t = jnp.array([0, 5, 50, 99], jnp.int32)
  y = jnp.array([1, 2, 3, 4], jnp.int32)
  guided = jax.jit(guidance.classifier_free_guidance(
      model, null_cond=guidance.null_label(10), variance=variance))
  cond_out = jax.jit(model)(1.5, x_in, t, {"label": y})
  uncond_out = jax.jit(model)(1.5, x_in, t, {"label": jnp.full_like(y, 10)})
  g0 = guided(1.5, x_in, t, {"label": y, "guidance_scale": jnp.float32(0.0)})
  g1 = guided(1.5, x_in, t, {"label": y, "guidance_scale": jnp.float32(1.0)})
  g3 = guided(1.5, x_in, t, {"label": y, "guidance_scale": jnp.array([3.0] * 4)})
  half = slice(0, 1)
  np.testing.assert_array_equal(g1[..., half], cond_out[..., half])
  np.testing.assert_array_equal(g0[..., half], uncond_out[..., half])
  np.testing.assert_allclose(
      g3[..., half], uncond_out[..., half] + 3.0 * (cond_out - uncond_out)[..., half],
      rtol=1e-6, atol=1e-6)
  if channels == 2:  # Variance channels stay the conditional ones.
    np.testing.assert_array_equal(g3[..., 1:], cond_out[..., 1:])


def test_cfg_one_batched_forward_and_no_retrace():
  calls = []

  def model(params, x_t, t, cond):
    calls.append(x_t.shape)  # Python side effect: runs once per trace.
    return fake_cond_model(params, x_t, t, cond)

  guided = guidance.classifier_free_guidance(model, null_cond=guidance.null_label(10))
  sample_fn = make_sample_fn(guided, SCHED, shape=(6, 2), sampler="ddim", num_steps=8)
  y = jnp.arange(6, dtype=jnp.int32)
  outs = [sample_fn(1.0, jax.random.key(1), cond={"label": y, "guidance_scale": jnp.float32(w)})
          for w in (0.0, 1.0, 2.5, 7.0)]
  assert calls == [(12, 2)], calls  # One trace; one forward of 2B examples per step.
  assert not np.allclose(outs[1], outs[3])


def test_classifier_gradient_matches_finite_differences():
  w = jax.random.normal(jax.random.key(3), (6, 4))

  def classifier_fn(params, x, t):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params)
    return h * (1.0 + t[:, None] / 100.0)

  x = jax.random.normal(jax.random.key(4), (2, 6)).astype(jnp.float32)
  t = jnp.array([3, 40], jnp.int32)
  y = jnp.array([1, 3], jnp.int32)
  g = jax.jit(functools.partial(guidance.grad_log_prob, classifier_fn))(w, x, t, y)

  def logp(xn):
    logits = np.tanh(xn @ np.asarray(w, np.float64)) * (1 + np.asarray(t)[:, None] / 100.0)
    logits = logits - logits.max(1, keepdims=True)
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return lp[np.arange(2), np.asarray(y)].sum()

  x64, h = np.asarray(x, np.float64), 1e-5
  fd = np.zeros_like(x64)
  for idx in np.ndindex(*x64.shape):
    e = np.zeros_like(x64)
    e[idx] = h
    fd[idx] = (logp(x64 + e) - logp(x64 - e)) / (2 * h)
  np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-4, atol=1e-5)


def test_mean_mode_shifts_the_mean_by_s_sigma_grad():
  """For ancestral sampling the guided mean is μ + s Σ ∇log p(y|x_t)."""
  grad_dir = jnp.array([0.3, -0.7])
  classifier_fn = lambda p, x, t: jnp.stack([x @ grad_dir, jnp.zeros(x.shape[0])], -1)
  model = lambda p, x, t, c: 0.5 * x + p
  x = jnp.array([[0.2, -1.0], [1.0, 2.0]])
  t = jnp.array([10, 60], jnp.int32)
  y = jnp.array([0, 0], jnp.int32)
  for prediction in ("eps", "x0", "v"):
    guided = guidance.classifier_guidance(model, classifier_fn, SCHED,
                                          prediction=prediction, mode="mean")
    out = guided({"model": 0.1, "classifier": None}, x, t,
                 {"label": y, "classifier_scale": jnp.float32(2.0)})
    base = dj.p_mean_variance(SCHED, model(0.1, x, t, None), x, t, prediction=prediction)
    new = dj.p_mean_variance(SCHED, out, x, t, prediction=prediction)
    g = guidance.grad_log_prob(classifier_fn, None, x, t, y)
    np.testing.assert_allclose(new.mean, base.mean + 2.0 * base.variance * g,
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# Analytic check: a Gaussian mixture whose components are the classes.
# ----------------------------------------------------------------------------

MU = np.array([-2.0, 0.5, 2.5])
WEIGHTS = np.array([0.6, 0.3, 0.1])
STD = 0.25


def _component_stats(schedule, t, x):
  ab = schedule.alphas_cumprod[t][:, None]                      # [B, 1]
  means = jnp.sqrt(ab) * jnp.asarray(MU)[None, :]               # [B, K]
  var = ab * STD ** 2 + 1.0 - ab                                # [B, 1]
  logp = (jnp.log(jnp.asarray(WEIGHTS)) - 0.5 * (x - means) ** 2 / var
          - 0.5 * jnp.log(2 * jnp.pi * var))                    # [B, K]
  return ab, means, var, logp


def mixture_eps(schedule, params, x, t, cond):
  """Exact ε(x_t) = -√(1-ᾱ) ∇ log p(x_t) of the 1-D mixture, x [B, 1]."""
  ab, means, var, logp = _component_stats(schedule, t, x)
  r = jax.nn.softmax(logp, axis=-1)
  score = jnp.sum(r * (means - x) / var, axis=-1, keepdims=True)
  return -jnp.sqrt(1.0 - ab) * score


def mixture_classifier(schedule, params, x, t):
  """Exact log p(y | x_t) up to a constant: the component log-joint."""
  return _component_stats(schedule, t, x)[3]


@pytest.mark.slow
@pytest.mark.parametrize("sampler,mode", [("ddim", "eps"), ("ddpm", "mean")])
def test_exact_classifier_guidance_samples_the_class(sampler, mode):
  num_steps = 100 if sampler == "ddim" else T
  sched_s = sampling_schedule(SCHED, num_steps, spacing="linspace")
  guided = guidance.classifier_guidance(
      functools.partial(mixture_eps, SCHED), functools.partial(mixture_classifier, SCHED),
      sched_s, mode=mode)
  n = 3000
  sample_fn = make_sample_fn(guided, SCHED, shape=(n, 1), sampler=sampler,
                             num_steps=num_steps, spacing="linspace")
  for y in (1, 2):
    cond = {"label": jnp.full((n,), y, jnp.int32), "classifier_scale": jnp.float32(1.0)}
    x = np.asarray(sample_fn({"model": None, "classifier": None}, jax.random.key(y),
                             cond=cond))[:, 0]
    nearest = np.argmin(np.abs(x[:, None] - MU[None, :]), axis=1)
    assert np.mean(nearest == y) > 0.98, np.bincount(nearest, minlength=3)
    own = x[nearest == y]
    assert abs(own.mean() - MU[y]) < 0.05
    assert abs(own.std() - STD) < 0.05 * STD + 3 * STD / np.sqrt(2 * own.size) + 0.02


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_guidances_compose_with_every_sampler(sampler):
  cfg = guidance.classifier_free_guidance(fake_cond_model, null_cond=guidance.null_label(10))
  classifier_fn = lambda p, x, t: x.reshape(x.shape[0], -1)[:, :10] * p
  both = guidance.classifier_guidance(cfg, classifier_fn, sampling_schedule(SCHED, 10),
                                      mode="mean" if sampler == "ddpm" else "eps")
  sample_fn = make_sample_fn(both, SCHED, shape=(4, 4, 4, 1), sampler=sampler,
                             num_steps=10, clip_x0=1.0)
  cond = {"label": jnp.array([0, 1, 2, 3], jnp.int32),
          "guidance_scale": jnp.float32(2.0), "classifier_scale": jnp.float32(0.5)}
  x = sample_fn({"model": 0.3, "classifier": 1.0}, jax.random.key(0), cond=cond)
  assert x.shape == (4, 4, 4, 1) and bool(jnp.all(jnp.isfinite(x)))


def test_bad_mode():
  with pytest.raises(ValueError, match="mode.*'eps', 'mean'"):
    guidance.classifier_guidance(fake_cond_model, lambda p, x, t: x, SCHED, mode="nope")
