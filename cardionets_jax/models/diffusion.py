"""Gaussian diffusion for the MAR head: schedule, learned-variance loss, respaced sampler, head.

The schedule is improved-DDPM's cosine one over `num_train_steps` (1000);
the network predicts the noise and, per dimension, where its log-variance
lies between the posterior's (clipped) and beta_t. The loss is the noise MSE
plus the variational bound with the predicted mean frozen (so the bound only
trains the variance). Sampling runs on a respaced subset of the timesteps
(100 by default): the betas are recomputed from alpha-bar at the kept steps
and the network still sees the original timestep numbers. Every quantity is
computed in float64 numpy and stored float32.

At t = 0 the bound's term is the Gaussian negative log-density of x0 (the
latents are continuous, so the 8-bit discretised likelihood of pixel-space
diffusion does not apply).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from cardionets_jax.models import layers


def cosine_betas(num_steps, s=0.008, max_beta=0.999):
  """beta_t = 1 - abar(t + 1) / abar(t), abar(t) = cos^2((t / T + s) / (1 + s) * pi / 2)."""
  abar = lambda t: math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2
  return np.array([min(1 - abar(i + 1) / abar(i), max_beta) for i in range(num_steps)], np.float64)


def spaced_timesteps(num_train_steps, num_steps):
  """`num_steps` timesteps spread evenly over [0, num_train_steps - 1], first and last kept."""
  if not 1 <= num_steps <= num_train_steps:
    raise ValueError(f"Cannot respace {num_train_steps} diffusion steps into {num_steps}")
  if num_steps == 1:
    return np.array([num_train_steps - 1])
  return np.unique(np.round(np.linspace(0, num_train_steps - 1, num_steps)).astype(np.int64))


@struct.dataclass
class Schedule:
  """Per-step quantities (index i = 0 .. len-1); `timesteps[i]` is what the network is told."""
  timesteps: jax.Array
  betas: jax.Array
  alphas_cumprod: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_steps(self):
    return self.betas.shape[0]


def schedule_arrays(num_train_steps=1000, num_steps=None):
  """The schedule's quantities in float64 numpy; `num_steps` respaces it."""
  betas = cosine_betas(num_train_steps)
  timesteps = np.arange(num_train_steps)
  if num_steps is not None and num_steps != num_train_steps:
    timesteps = spaced_timesteps(num_train_steps, num_steps)
    kept = np.cumprod(1.0 - betas)[timesteps]
    betas = 1.0 - kept / np.append(1.0, kept[:-1])
  alphas_cumprod = np.cumprod(1.0 - betas)
  prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
  return dict(
      timesteps=timesteps,
      betas=betas,
      alphas_cumprod=alphas_cumprod,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      # The variance at t = 0 is 0: its log is taken from t = 1.
      posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
      posterior_mean_coef1=betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
  )


def make_schedule(num_train_steps=1000, num_steps=None):
  arrays = schedule_arrays(num_train_steps, num_steps)
  return Schedule(**{k: jnp.asarray(v, jnp.int32 if k == "timesteps" else jnp.float32)
                     for k, v in arrays.items()})


def _at(arr, i, x):
  """arr[i] broadcast against x (i: (N,) step indices, x: (N, C))."""
  return arr[i].reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(sched, x0, i, noise):
  return _at(sched.sqrt_alphas_cumprod, i, x0) * x0 + _at(sched.sqrt_one_minus_alphas_cumprod, i, x0) * noise


def q_posterior(sched, x0, x_t, i):
  """Mean and log-variance of q(x_{t-1} | x_t, x0)."""
  mean = _at(sched.posterior_mean_coef1, i, x_t) * x0 + _at(sched.posterior_mean_coef2, i, x_t) * x_t
  return mean, jnp.broadcast_to(_at(sched.posterior_log_variance_clipped, i, x_t), x_t.shape)


def p_mean_variance(sched, eps, var_values, x_t, i, clip_x0=None):
  """The model's p(x_{t-1} | x_t): mean from the predicted noise, log-variance
  interpolated between the clipped posterior's and log beta_t by (v + 1) / 2.

  `clip_x0` bounds the implied x0 to [-clip_x0, clip_x0] (ADM's
  clip_denoised): at the cosine schedule's last step alpha-bar is ~2e-9, so
  an error of 0.01 in the predicted noise puts x0 off by ~200 and, unclipped,
  the whole chain with it.
  """
  min_log = _at(sched.posterior_log_variance_clipped, i, x_t)
  max_log = _at(jnp.log(sched.betas), i, x_t)
  frac = (var_values + 1.0) / 2.0
  log_var = frac * max_log + (1.0 - frac) * min_log
  x0 = _at(sched.sqrt_recip_alphas_cumprod, i, x_t) * x_t - _at(sched.sqrt_recipm1_alphas_cumprod, i, x_t) * eps
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
  mean, _ = q_posterior(sched, x0, x_t, i)
  return mean, log_var


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def gaussian_nll(x, mean, log_var):
  """-log N(x; mean, e^log_var) per element, in nats."""
  return 0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * jnp.exp(-log_var))


def training_losses(sched, net_fn, x0, rng):
  """Per-row loss (N,) = noise MSE + variational bound in bits (means over the C dims).

  net_fn(x_t (N, C), timesteps (N,)) -> (N, 2C): the predicted noise, then the
  variance values in [-1, 1]. Timesteps are drawn uniformly per row.
  """
  x0 = x0.astype(jnp.float32)
  t_rng, n_rng = jax.random.split(rng)
  i = jax.random.randint(t_rng, (x0.shape[0],), 0, sched.num_steps)
  noise = jax.random.normal(n_rng, x0.shape, jnp.float32)
  x_t = q_sample(sched, x0, i, noise)
  out = net_fn(x_t, sched.timesteps[i]).astype(jnp.float32)
  eps, var_values = jnp.split(out, 2, axis=-1)
  mse = jnp.mean((noise - eps) ** 2, axis=-1)
  # The bound trains only the variance: the mean it sees is a constant.
  true_mean, true_log_var = q_posterior(sched, x0, x_t, i)
  mean, log_var = p_mean_variance(sched, jax.lax.stop_gradient(eps), var_values, x_t, i)
  kl = jnp.mean(normal_kl(true_mean, true_log_var, mean, log_var), axis=-1)
  nll = jnp.mean(gaussian_nll(x0, mean, log_var), axis=-1)
  vb = jnp.where(i == 0, nll, kl) / math.log(2.0)
  return mse + vb


def sample(sched, net_fn, noise, rng, temperature=1.0, clip_x0=None):
  """Ancestral sampling from x_T = `noise` down the (respaced) schedule in one `lax.scan`.

  net_fn(x (N, C), timesteps (N,)) -> (eps, var_values), each (N, C). The
  added noise is scaled by `temperature`; `clip_x0`: see `p_mean_variance`.
  """
  def body(x, inputs):
    i, key = inputs
    idx = jnp.full((x.shape[0],), i)
    eps, var_values = net_fn(x, sched.timesteps[idx])
    mean, log_var = p_mean_variance(sched, eps.astype(jnp.float32), var_values.astype(jnp.float32), x,
                                    idx, clip_x0)
    z = jax.random.normal(key, x.shape, jnp.float32)
    return mean + (i > 0) * jnp.exp(0.5 * log_var) * z * temperature, None

  steps = jnp.arange(sched.num_steps)[::-1]
  x, _ = jax.lax.scan(body, noise.astype(jnp.float32), (steps, jax.random.split(rng, sched.num_steps)))
  return x


# ---------------------------------------------------------------------------
# The head: an MLP of residual blocks with adaptive layer norm.


def timestep_embedding(t, dim, max_period=10_000):
  """Sinusoidal embedding (N,) -> (N, dim): cosines then sines, frequencies 1 .. 1/max_period."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _dense(features, axes, dtype, name, zero=False):
  init = nn.initializers.zeros if zero else layers.dense_init
  return layers.logical_dense(features, axes, dtype=dtype, name=name, kernel_init=init)


def _plain_norm(dtype, name):
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype, name=name)


class AdaLNBlock(nn.Module):
  """x + gate * MLP(LN(x) * (1 + scale) + shift); shift, scale, gate from the condition.

  The modulation starts at zero, so every block starts as the identity."""
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    shift, scale, gate = jnp.split(
        _dense(3 * self.width, ("embed", "mlp"), self.dtype, "modulation", zero=True)(nn.silu(y)), 3, -1)
    h = layers.layer_norm(self.dtype, "ln")(x) * (1 + scale) + shift
    h = _dense(self.width, ("embed", "mlp"), self.dtype, "fc1")(h)
    h = _dense(self.width, ("mlp", "embed"), self.dtype, "fc2")(nn.silu(h))
    return x + gate * h


class DiffusionHead(nn.Module):
  """Per-token denoiser: (x_t (N, C), timesteps (N,), condition z (N, D)) -> (N, 2C).

  The first C outputs are the predicted noise, the last C the variance
  values; the output layer starts at zero.
  """
  width: int
  depth: int
  out_channels: int
  freq_dim: int = 256
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, z):
    temb = timestep_embedding(t, self.freq_dim).astype(self.dtype)
    temb = _dense(self.width, ("embed", "mlp"), self.dtype, "time_fc2")(
        nn.silu(_dense(self.width, ("embed", "mlp"), self.dtype, "time_fc1")(temb)))
    y = temb + _dense(self.width, ("embed", "mlp"), self.dtype, "cond_proj")(z.astype(self.dtype))
    h = _dense(self.width, ("embed", "mlp"), self.dtype, "input_proj")(x.astype(self.dtype))
    for d in range(self.depth):
      h = AdaLNBlock(self.width, self.dtype, name=f"block{d}")(h, y)
    shift, scale = jnp.split(
        _dense(2 * self.width, ("embed", "mlp"), self.dtype, "final_modulation", zero=True)(nn.silu(y)), 2, -1)
    h = _plain_norm(self.dtype, "final_ln")(h) * (1 + scale) + shift
    return _dense(self.out_channels, ("mlp", "embed"), self.dtype, "out", zero=True)(h).astype(jnp.float32)


def head_flops(width, depth, in_channels, cond_dim, freq_dim=256):
  """Forward matmul FLOPs of `DiffusionHead` for one token."""
  macs = (freq_dim * width + width * width + cond_dim * width + in_channels * width
          + depth * (3 * width * width + 2 * width * width) + 2 * width * width + width * 2 * in_channels)
  return 2 * macs
