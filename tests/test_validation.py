"""Argument validation: ValueErrors that name the argument and the known values;
out-of-range traced timesteps give NaN rather than a clamped value."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import losses, process
from diffusion_jax.losses import bits_per_dim, loss_weight, training_losses
from diffusion_jax.process import (denoise, model_output_to_x0_eps, p_mean_variance,
                                   p_variance, predict_x0_from_eps, q_mean_variance,
                                   q_posterior_general, q_posterior_mean_variance, q_sample,
                                   split_model_output, threshold_x0)
from diffusion_jax.schedules import (SCHEDULES, SPACINGS, get_schedule, make_timesteps, respace,
                                     schedule_from_betas)

T = 20


@functools.lru_cache(maxsize=None)
def sched(zero=False):
  return get_schedule("cosine", T, rescale_to_zero_terminal_snr=zero)


def known(values):
  """The message fragment listing the known values, as a regex."""
  return re.escape(str(list(values)))


X = np.zeros((3, 4), np.float32)
TT = np.array([0, 5, T - 1], np.int32)
den = lambda x_t, t: jnp.zeros_like(x_t)


# ----------------------------------------------------------------------------
# num_timesteps, betas.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, 2.5, 10.0, "10", None, True, np.float32(7)])
def test_bad_num_timesteps(bad):
  with pytest.raises(ValueError, match=r"num_timesteps must be an integer >= 1.*" + re.escape(
      repr(bad))):
    get_schedule("cosine", bad)
  with pytest.raises(ValueError, match="num_timesteps"):
    make_timesteps(bad, 1)


def test_numpy_integer_num_timesteps_is_fine():
  assert get_schedule("cosine", np.int64(7)).num_timesteps == 7


@pytest.mark.parametrize("betas,index", [
    ([0.1, 0.0, 0.2], 1), ([0.1, -0.2], 1), ([0.1, 1.0, 0.3], 1), ([0.5, 1.5], 1),
    ([0.1, np.nan], 1), ([np.inf, 0.1], 0), ([0.1, 0.2, 1.0], 2)])
def test_betas_outside_open_unit_interval(betas, index):
  with pytest.raises(ValueError, match=re.escape("betas must lie in (0, 1)") +
                     rf".*betas\[{index}\]"):
    schedule_from_betas(betas)


def test_terminal_beta_one_only_with_zero_terminal_snr():
  s = schedule_from_betas([0.1, 0.2, 1.0], zero_terminal_snr=True)
  assert float(s.alphas_cumprod[-1]) == 0.0
  with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\), with the last one "
                     r"allowed to be 1.*betas\[1\]"):
    schedule_from_betas([0.1, 1.0, 0.5], zero_terminal_snr=True)
  with pytest.raises(ValueError, match="betas must lie"):
    schedule_from_betas([0.1, 1.2], zero_terminal_snr=True)


def test_bad_betas_shape_and_timesteps():
  with pytest.raises(ValueError, match="betas must be a non-empty 1-D array"):
    schedule_from_betas([])
  with pytest.raises(ValueError, match="betas must be a non-empty 1-D array"):
    schedule_from_betas([[0.1, 0.2]])
  with pytest.raises(ValueError, match=r"timesteps must have shape \(2,\)"):
    schedule_from_betas([0.1, 0.2], timesteps=[0, 1, 2])


def test_linear_schedule_too_short_is_rejected():
  # β_end = 0.02 · 1000/T ≥ 1 for T ≤ 20: not a valid schedule.
  with pytest.raises(ValueError, match="linear.*num_timesteps >= 21"):
    get_schedule("linear", 20)
  get_schedule("linear", 21)


def test_zero_terminal_snr_needs_two_steps():
  with pytest.raises(ValueError, match="rescale_to_zero_terminal_snr needs num_timesteps >= 2"):
    get_schedule("cosine", 1, rescale_to_zero_terminal_snr=True)


# ----------------------------------------------------------------------------
# Unknown names.
# ----------------------------------------------------------------------------


def test_known_name_lists():
  assert sorted(SCHEDULES) == ["cosine", "linear", "scaled_linear", "sigmoid"]
  assert tuple(SPACINGS) == ("linspace", "leading", "trailing", "quadratic")
  assert tuple(process.PREDICTIONS) == ("eps", "x0", "v", "flow")
  assert tuple(process.VARIANCES) == ("fixed_small", "fixed_large", "learned", "learned_range")
  assert tuple(losses.LOSS_TYPES) == ("simple", "hybrid", "vlb")
  assert tuple(losses.WEIGHTINGS) == ("none", "min_snr", "edm")
  for name in process.PREDICTIONS:
    assert process.check_prediction(name) == name
  for name in process.VARIANCES:
    assert process.check_variance(name) == name


def test_unknown_schedule():
  with pytest.raises(ValueError, match=r"Unknown schedule 'cosinus'; known schedules: " +
                     known(["cosine", "linear", "scaled_linear", "sigmoid"])):
    get_schedule("cosinus", 10)


def test_unknown_spacing():
  with pytest.raises(ValueError, match=r"Unknown spacing 'uniform'; known spacings: " +
                     known(["linspace", "leading", "trailing", "quadratic"])):
    make_timesteps(100, 10, "uniform")


PRED_MSG = r"Unknown prediction 'epsilon'; known predictions: " + known(["eps", "x0", "v", "flow"])
VAR_MSG = r"Unknown variance 'small'; known variances: " + known(
    ["fixed_small", "fixed_large", "learned", "learned_range"])


@pytest.mark.parametrize("call", [
    lambda: model_output_to_x0_eps(sched(), X, X, TT, "epsilon"),
    lambda: denoise(sched(), X, X, TT, prediction="epsilon"),
    lambda: p_mean_variance(sched(), X, X, TT, prediction="epsilon"),
    lambda: training_losses(sched(), den, X, TT, X, prediction="epsilon"),
    lambda: loss_weight(sched(), TT, X, prediction="epsilon", weighting="min_snr"),
    lambda: loss_weight(sched(), TT, X, prediction="epsilon", weighting="none"),
    lambda: bits_per_dim(sched(), den, X, jax.random.key(0), prediction="epsilon"),
], ids=["model_output_to_x0_eps", "denoise", "p_mean_variance",
        "training_losses", "loss_weight", "loss_weight_none", "bits_per_dim"])
def test_unknown_prediction(call):
  with pytest.raises(ValueError, match=PRED_MSG):
    call()


@pytest.mark.parametrize("call", [
    lambda: split_model_output(X, "small"),
    lambda: p_variance(sched(), None, TT, X, "small"),
    lambda: p_mean_variance(sched(), X, X, TT, variance="small"),
    lambda: training_losses(sched(), den, X, TT, X, variance="small"),
    lambda: bits_per_dim(sched(), den, X, jax.random.key(0), variance="small"),
], ids=["split_model_output", "p_variance", "p_mean_variance", "training_losses",
        "bits_per_dim"])
def test_unknown_variance(call):
  with pytest.raises(ValueError, match=VAR_MSG):
    call()


def test_unknown_loss_type_and_weighting():
  with pytest.raises(ValueError, match=r"Unknown loss_type 'l2'; known loss types: " +
                     known(["simple", "hybrid", "vlb"])):
    training_losses(sched(), den, X, TT, X, loss_type="l2")
  w_msg = r"Unknown weighting 'snr'; known weightings: " + known(["none", "min_snr", "edm"])
  with pytest.raises(ValueError, match=w_msg):
    training_losses(sched(), den, X, TT, X, weighting="snr")
  with pytest.raises(ValueError, match=w_msg):
    loss_weight(sched(), TT, X, prediction="eps", weighting="snr")


# ----------------------------------------------------------------------------
# Other bad arguments.
# ----------------------------------------------------------------------------


def test_hybrid_needs_learned_variance():
  with pytest.raises(ValueError, match=r"loss_type='hybrid' needs a learned variance "
                     r"\['learned', 'learned_range'\], got variance='fixed_small'"):
    training_losses(sched(), den, X, TT, X, loss_type="hybrid")


def test_eps_prediction_rejected_for_zero_terminal_snr():
  with pytest.raises(ValueError, match=r"prediction='eps' cannot recover x0.*use a prediction "
                     r"in \['x0', 'v', 'flow'\]"):
    p_mean_variance(sched(zero=True), X, X, TT, prediction="eps")
  p_mean_variance(sched(zero=True), X, X, TT, prediction="v")


@pytest.mark.parametrize("kw,msg", [
    (dict(dynamic_threshold=1.0), r"dynamic_threshold must be in \(0, 1\) or None, got 1.0"),
    (dict(dynamic_threshold=0.0), r"dynamic_threshold must be in \(0, 1\) or None, got 0.0"),
    (dict(clip_x0=0.0), r"clip_x0 must be > 0 or None, got 0.0"),
    (dict(clip_x0=-1.0), r"clip_x0 must be > 0 or None, got -1.0")])
def test_bad_threshold_arguments(kw, msg):
  with pytest.raises(ValueError, match=msg):
    threshold_x0(jnp.asarray(X), **kw)


def test_bad_min_snr_gamma_and_chunk_size():
  with pytest.raises(ValueError, match=r"min_snr_gamma must be > 0, got 0.0"):
    loss_weight(sched(), TT, X, prediction="v", weighting="min_snr", min_snr_gamma=0.0)
  for bad in (0, 2.0, None):
    with pytest.raises(ValueError, match=r"chunk_size must be an integer >= 1, got " +
                       re.escape(repr(bad))):
      bits_per_dim(sched(), den, X, jax.random.key(0), chunk_size=bad)


def test_learned_variance_needs_even_channels():
  with pytest.raises(ValueError, match=r"variance='learned_range' needs a model output with "
                     r"2x channels on the last axis; got shape \(2, 3\)"):
    split_model_output(jnp.zeros((2, 3)), "learned_range")


def test_bad_make_timesteps_and_respace():
  for bad in (0, 101, 2.0):
    with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 100\]"):
      make_timesteps(100, bad)
  with pytest.raises(ValueError, match="spacing='quadratic' gives repeated timesteps"):
    make_timesteps(1000, 500, "quadratic")
  s = sched()
  for bad in ([3, 3, 5], [5, 2], [-1, 4], [0, T], []):
    with pytest.raises(ValueError, match="timesteps must be"):
      respace(s, np.asarray(bad, np.int64))
  with pytest.raises(ValueError, match="integer array"):
    respace(s, np.array([0.0, 3.0]))


# ----------------------------------------------------------------------------
# Shapes.
# ----------------------------------------------------------------------------


def test_shape_mismatches():
  s = sched()
  x = jnp.zeros((3, 4))
  with pytest.raises(ValueError, match=r"Shape mismatch: .*'x0': \(3, 4\).*'noise': \(3, 5\)"):
    q_sample(s, x, TT, jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"Shape mismatch: .*'x0'.*'x_t'"):
    q_posterior_mean_variance(s, x, jnp.zeros((3, 2, 2)), TT)
  with pytest.raises(ValueError, match=r"Shape mismatch: .*'output'.*'x_t'"):
    p_mean_variance(s, jnp.zeros((3, 8)), x, TT)  # learned output with a fixed variance
  with pytest.raises(ValueError, match=r"Shape mismatch"):
    training_losses(s, den, x, TT, jnp.zeros((3, 4, 1)))


@pytest.mark.parametrize("t", [np.zeros((2,), np.int32), np.zeros((4,), np.int32),
                               np.zeros((3, 1), np.int32), np.int32(0)])
def test_t_shape_must_match_batch(t):
  with pytest.raises(ValueError, match=r"t must be an int array of shape \[B\] = \(3,\) "
                     r"matching x of shape \(3, 4\)"):
    q_sample(sched(), jnp.zeros((3, 4)), t, jnp.zeros((3, 4)))


def test_t_must_be_integer():
  with pytest.raises(ValueError, match="t must be an integer array of timestep indices"):
    q_mean_variance(sched(), jnp.zeros((3, 4)), jnp.array([0.0, 1.0, 2.0]))


# ----------------------------------------------------------------------------
# Out-of-range timesteps: concrete → ValueError, traced → NaN.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [T, -1, T + 100])
def test_concrete_t_out_of_range(bad):
  s = sched()
  t = np.array([0, bad, 3], np.int32)
  x = jnp.zeros((3, 4))
  msg = rf"t must lie in \[0, {T - 1}\] for this schedule \(T = {T}\)"
  with pytest.raises(ValueError, match=msg):
    q_sample(s, x, t, x)
  with pytest.raises(ValueError, match=msg):
    q_posterior_mean_variance(s, x, x, t)
  with pytest.raises(ValueError, match=msg):
    predict_x0_from_eps(s, x, t, x)
  with pytest.raises(ValueError, match=msg):
    training_losses(s, den, x, t, x)


def test_q_posterior_general_bad_s():
  s = sched()
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match=r"s must be < t elementwise"):
    q_posterior_general(s, x, x, np.array([5, 5]), np.array([4, 5]))
  with pytest.raises(ValueError, match=r"s must lie in \[-1, 19\]"):  # s = -2
    q_posterior_general(s, x, x, np.array([5, 5]), np.array([-2, 3]))
  with pytest.raises(ValueError, match=r"s must be an int array of shape \[B\] = \(2,\)"):
    q_posterior_general(s, x, x, np.array([5, 5]), np.array([1, 2, 3]))
  with pytest.raises(ValueError, match=r"t must lie in \[0, 19\]"):
    q_posterior_general(s, x, x, np.array([5, 20]), np.array([1, 2]))


@jax.jit
def _all_t_users(s, x, t):
  return (q_sample(s, x, t, x), q_mean_variance(s, x, t)[0],
          q_posterior_mean_variance(s, x, x, t)[0],
          p_mean_variance(s, x, x, t, variance="fixed_large").variance,
          predict_x0_from_eps(s, x, t, x),
          # A model sees NaN x_t (this one returns it as its eps prediction).
          training_losses(s, lambda x_t, tt: x_t, x, t, x)["loss"])


_jq_posterior_general = jax.jit(q_posterior_general)


@pytest.mark.parametrize("bad", [T, -1, -2, T + 7, np.iinfo(np.int32).min])
def test_traced_t_out_of_range_gives_nan(bad):
  s = sched()
  x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
  t = np.array([2, bad, T - 1], np.int32)
  for out in _all_t_users(s, x, t):
    out = np.asarray(out)
    assert np.all(np.isnan(out[1])), out[1]          # not clamped to 0 or T-1
    assert np.all(np.isfinite(out[[0, 2]]))          # the other examples are untouched
  # Same for the source index s of the two-time posterior (s = -1 is valid there).
  sv = np.array([2, bad - 1 if bad == -1 else bad, 4], np.int32)
  mean, var = _jq_posterior_general(s, x, x, np.array([5, 5, 5], np.int32), sv)
  assert np.all(np.isnan(np.asarray(mean)[1])) and np.all(np.isfinite(np.asarray(mean)[[0, 2]]))
  assert np.isnan(np.asarray(var)[1]).all()
