"""Diffusion: the schedule against float64 closed forms, the loss, and a head that learns a mixture."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cardionets_jax.models import diffusion
from tests.conftest import optimized

T = 1000


def f64_abar(t, s=0.008):
  """Improved-DDPM's alpha-bar(t) = cos^2((t / T + s) / (1 + s) pi / 2) / (its value at 0)."""
  f = lambda u: np.cos((u / T + s) / (1 + s) * np.pi / 2) ** 2
  return f(np.asarray(t, np.float64)) / f(0.0)


def test_schedule_matches_the_float64_closed_form():
  sched = diffusion.make_schedule(T)
  t = np.arange(T)
  betas = np.minimum(1 - f64_abar(t + 1) / f64_abar(t), 0.999)
  np.testing.assert_allclose(sched.betas, betas, rtol=1e-6)
  # alpha-bar telescopes to f(t + 1) / f(0) wherever beta was not clipped (all but the last step).
  np.testing.assert_allclose(sched.alphas_cumprod[:-1], f64_abar(t + 1)[:-1], rtol=2e-5, atol=1e-12)
  abar = np.cumprod(1 - betas)
  prev = np.append(1.0, abar[:-1])
  # q(x_{t-1} | x_t, x0) for t >= 1 as the product of N(x_t; sqrt(a_t) x, b_t) and
  # N(x; sqrt(prev) x0, 1 - prev); at t = 0 it is x0 itself.
  precision = 1 / (1 - prev[1:]) + (1 - betas[1:]) / betas[1:]
  np.testing.assert_allclose(sched.posterior_variance[1:], 1 / precision, rtol=1e-5)
  np.testing.assert_allclose(sched.posterior_mean_coef1[1:], np.sqrt(prev[1:]) / (1 - prev[1:]) / precision,
                             rtol=1e-5)
  np.testing.assert_allclose(sched.posterior_mean_coef2[1:], np.sqrt(1 - betas[1:]) / betas[1:] / precision,
                             rtol=1e-5)
  np.testing.assert_allclose([sched.posterior_variance[0], sched.posterior_mean_coef1[0],
                              sched.posterior_mean_coef2[0]], [0.0, 1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(sched.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / abar - 1), rtol=1e-5)


def test_respaced_schedule_keeps_alpha_bar_at_the_kept_steps():
  full = diffusion.schedule_arrays(T)
  spaced = diffusion.make_schedule(T, 100)
  kept = np.asarray(spaced.timesteps)
  np.testing.assert_array_equal(kept, np.round(np.linspace(0, 999, 100)).astype(int))
  np.testing.assert_allclose(spaced.alphas_cumprod, full["alphas_cumprod"][kept], rtol=1e-6)
  # The respaced betas compose to the same alpha-bar.
  np.testing.assert_allclose(np.cumprod(1 - diffusion.schedule_arrays(T, 100)["betas"]),
                             full["alphas_cumprod"][kept], rtol=1e-9)


def test_loss_of_an_oracle_is_the_variance_term_alone():
  """A network that returns the true noise, with variance values +1 (log beta_t): the MSE is 0 and
  the bound is KL(N(mu, posterior var) || N(mu, beta_t)) in bits, or the NLL at t = 0."""
  sched = diffusion.make_schedule(T)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
  key = jax.random.PRNGKey(0)
  t_key, _ = jax.random.split(key)
  t = np.asarray(jax.random.randint(t_key, (64,), 0, T))  # the timesteps training_losses draws

  def oracle(x_t, timesteps):
    a = sched.sqrt_alphas_cumprod[timesteps][:, None]
    eps = (x_t - a * x0) / sched.sqrt_one_minus_alphas_cumprod[timesteps][:, None]
    return jnp.concatenate([eps, jnp.ones_like(eps)], axis=-1)

  loss = np.asarray(diffusion.training_losses(sched, oracle, x0, key))
  full = diffusion.schedule_arrays(T)
  beta, post = full["betas"][t], full["posterior_variance"][t]
  kl_bits = 0.5 * (-1 + np.log(beta / np.where(t > 0, post, 1)) + post / beta) / math.log(2)
  # At t = 0 the oracle's mean is x0 itself: the NLL is the normaliser of N(0, beta_0) per dim.
  nll_bits = 0.5 * np.log(2 * np.pi * beta) / math.log(2)
  expected = np.where(t > 0, kl_bits, nll_bits)
  np.testing.assert_allclose(loss, expected, rtol=2e-3, atol=2e-4)


def test_sampler_with_the_exact_noise_predictor_recovers_a_gaussian():
  """For x0 ~ N(m, s^2) the optimal noise prediction is known in closed form; the ancestral
  sampler driven by it, on the full and on a respaced schedule, gives back N(m, s^2)."""
  m, s = jnp.array([-2.0, 1.0]), jnp.array([0.3, 0.6])
  full = diffusion.make_schedule(T)

  def exact(x, t):
    abar = full.alphas_cumprod[t][:, None]
    eps = jnp.sqrt(1 - abar) * (x - jnp.sqrt(abar) * m) / (abar * s ** 2 + 1 - abar)
    return eps, jnp.zeros_like(eps)

  for steps in (T, 100):
    sched = diffusion.make_schedule(T, steps)
    x = np.asarray(diffusion.sample(sched, exact, jax.random.normal(jax.random.PRNGKey(0), (20000, 2)),
                                    jax.random.PRNGKey(1)))
    np.testing.assert_allclose(x.mean(0), m, atol=0.02, err_msg=f"{steps} steps")
    np.testing.assert_allclose(x.std(0), s, rtol=0.05, err_msg=f"{steps} steps")


MEANS = np.array([[-2.0, 1.0], [2.0, 2.0], [0.5, -2.0]])
STDS = np.array([[0.3, 0.6], [0.5, 0.2], [0.4, 0.4]])


def test_head_learns_a_gaussian_mixture_and_the_sampler_recovers_it():
  """The head alone, conditioned on the component (one-hot z), trained on a 2-D three-component
  mixture; 100 respaced steps then recover each component's mean within 0.1 and std within 15%.
  Implied x0 is clipped to [-5, 5] (see `p_mean_variance`)."""
  head = diffusion.DiffusionHead(width=128, depth=2, out_channels=4)
  sched = diffusion.make_schedule(T)
  key = jax.random.PRNGKey(0)
  params = head.init(key, jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 3)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, 1500, 0.05))
  opt = tx.init(params)

  def step(params, opt, key):
    c_key, x_key, l_key = jax.random.split(key, 3)
    comp = jax.random.randint(c_key, (256,), 0, 3)
    x0 = jnp.asarray(MEANS)[comp] + jnp.asarray(STDS)[comp] * jax.random.normal(x_key, (256, 2))
    z = jax.nn.one_hot(comp, 3)
    loss_fn = lambda p: jnp.mean(diffusion.training_losses(
        sched, lambda x, t: head.apply({"params": p}, x, t, z), x0, l_key))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(params, updates), opt, loss

  # The 1500 steps as one optimised loop: running it, not compiling it, is this test's time.
  train = lambda params, opt: jax.lax.fori_loop(
      0, 1500, lambda i, po: step(*po, jax.random.fold_in(key, i))[:2], (params, opt))
  params, opt = optimized(train, params, opt)(params, opt)

  sampler = diffusion.make_schedule(T, 100)
  n = 4000

  def draw(k, z):
    net = lambda x, t: jnp.split(head.apply({"params": params}, x, t, z), 2, axis=-1)
    return diffusion.sample(sampler, net, jax.random.normal(k, (n, 2)), k, clip_x0=5.0)

  one_hot = lambda c: jnp.asarray(np.eye(3)[[c] * n], jnp.float32)
  draw = optimized(draw, jax.random.PRNGKey(0), one_hot(0))
  for c in range(3):
    x = np.asarray(draw(jax.random.PRNGKey(100 + c), one_hot(c)))
    np.testing.assert_allclose(x.mean(0), MEANS[c], atol=0.1, err_msg=f"component {c} mean")
    np.testing.assert_allclose(x.std(0), STDS[c], rtol=0.15, err_msg=f"component {c} std")


def test_respaced_steps_are_the_releases():
  # The release's space_timesteps(1000, "100"): round(i * 999 / 99) accumulated in floats.
  stride, taken, cur = 999 / 99, [], 0.0
  for _ in range(100):
    taken.append(round(cur))
    cur += stride
  np.testing.assert_array_equal(diffusion.spaced_timesteps(1000, 100), sorted(set(taken)))
  assert list(diffusion.spaced_timesteps(1000, 100)[:8]) == [0, 10, 20, 30, 40, 50, 61, 71]
