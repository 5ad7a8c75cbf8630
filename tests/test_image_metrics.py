"""PSNR / SSIM against scikit-image (float64 reference), in float32 JAX."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cardionets_jax import image_metrics
from cardionets_jax.data.synthetic import simulate_subject

skmetrics = pytest.importorskip("skimage.metrics")

ATOL = 1e-4

ssim_jit = jax.jit(image_metrics.ssim,
                   static_argnames=("win_size", "k1", "k2", "gaussian", "sigma",
                                    "use_sample_covariance"))
psnr_jit = jax.jit(image_metrics.psnr)
cine_ssim_jit = jax.jit(image_metrics.cine_ssim)
cine_psnr_jit = jax.jit(image_metrics.cine_psnr)
filter2d = jax.jit(image_metrics._filter2d, static_argnums=1)


def sk_ssim(x, y, data_range, **kwargs):
  """skimage SSIM of every 2-D image of (..., H, W) float64 arrays, shape (...)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  lead = x.shape[:-2]
  flat = [skmetrics.structural_similarity(a, b, data_range=data_range, **kwargs)
          for a, b in zip(x.reshape((-1,) + x.shape[-2:]), y.reshape((-1,) + y.shape[-2:]))]
  return np.asarray(flat).reshape(lead)


def sk_psnr(x, y, data_range):
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  flat = [skmetrics.peak_signal_noise_ratio(a, b, data_range=data_range)
          for a, b in zip(x.reshape((-1,) + x.shape[-2:]), y.reshape((-1,) + y.shape[-2:]))]
  return np.asarray(flat).reshape(x.shape[:-2])


def f32(a):
  return jnp.asarray(np.asarray(a, np.float32))


def assert_close(got, want, atol=ATOL):
  got = np.asarray(got, np.float64)
  assert got.shape == np.shape(want)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=0, atol=atol)


@functools.lru_cache(maxsize=None)
def cines(n=3, frames=8, size=48):
  """(n, F, H, W) uint8 simulated cines."""
  return np.stack([simulate_subject(0, i, frames=frames, size=size)["cmr"] for i in range(n)])


def degraded_cines():
  """(name, clean, degraded) uint8-valued float64 (n, F, H, W) pairs."""
  rng = np.random.default_rng(7)
  clean = cines().astype(np.float64)
  blurred = ndimage.gaussian_filter(clean, sigma=(0, 0, 1.0, 1.0), mode="nearest")
  return [
      ("noise", clean, np.clip(np.round(clean + rng.normal(0, 6.0, clean.shape)), 0, 255)),
      ("heavy_noise", clean, np.clip(clean + rng.normal(0, 40.0, clean.shape), 0, 255)),
      ("blur", clean, blurred),
      ("shift", clean, np.roll(clean, (1, -2), axis=(-2, -1))),
      ("blur_noise", clean, np.clip(blurred + rng.normal(0, 3.0, clean.shape), 0, 255)),
  ]


# --------------------------------------------------------------------------------------------
# Filters


def test_filters_match_scipy_reflect_mode():
  rng = np.random.default_rng(0)
  a = rng.uniform(-1, 1, (7, 11))      # the window spans the whole short side
  weights, win = image_metrics._window(None, False, 1.5)
  assert win == 7
  np.testing.assert_allclose(filter2d(f32(a), tuple(weights)),
                             ndimage.uniform_filter(a, size=7, mode="reflect"), atol=1e-6)
  weights, win = image_metrics._window(None, True, 1.5)
  assert win == 11 and len(weights) == 11
  np.testing.assert_allclose(filter2d(f32(a), tuple(weights)),
                             ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect"),
                             atol=1e-6)


def test_reflect_pad_is_half_sample_symmetric():
  a = jnp.arange(4.0)   # a b c d
  np.testing.assert_array_equal(image_metrics._reflect_pad(a, 3, 0),
                                [2, 1, 0, 0, 1, 2, 3, 3, 2, 1])


# --------------------------------------------------------------------------------------------
# Random images


@pytest.mark.parametrize("shape", [(3, 16, 16), (3, 32, 48), (2, 41, 23), (2, 64, 64)])
def test_random_images_match_skimage(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.uniform(-1, 1, shape)
  pairs = [rng.uniform(-1, 1, shape)]
  pairs += [np.clip(x + rng.normal(0, s, shape), -1, 1) for s in (0.01, 0.1, 0.5)]
  y = np.stack(pairs, axis=1)                       # (N, 4, H, W)
  x = np.broadcast_to(x[:, None], y.shape)
  assert_close(ssim_jit(f32(x), f32(y), 2.0), sk_ssim(x, y, 2.0))
  assert_close(psnr_jit(f32(x), f32(y), 2.0), sk_psnr(x, y, 2.0))


@pytest.mark.parametrize("kwargs", [dict(win_size=5), dict(win_size=11), dict(k1=0.05, k2=0.1)])
def test_non_default_window_and_constants(kwargs):
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (3, 24, 20))
  y = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1)
  sk_kwargs = {"win_size": kwargs.get("win_size"), "K1": kwargs.get("k1", 0.01),
               "K2": kwargs.get("k2", 0.03)}
  assert_close(ssim_jit(f32(x), f32(y), 2.0, **kwargs), sk_ssim(x, y, 2.0, **sk_kwargs))


# --------------------------------------------------------------------------------------------
# Simulated cines


@pytest.mark.parametrize("scale", ["unit", "uint8"])
def test_simulated_cines_match_skimage(scale):
  for name, clean, degraded in degraded_cines():
    if scale == "unit":
      x, y, data_range = clean / 127.5 - 1.0, degraded / 127.5 - 1.0, 2.0
    else:
      x, y, data_range = clean, degraded, 255.0
    want_ssim = sk_ssim(x, y, data_range)            # (n, F)
    want_psnr = sk_psnr(x, y, data_range)
    assert 0.05 < want_ssim.mean() < 0.99, name      # a real comparison, not a degenerate one
    xj, yj = f32(x), f32(y)
    assert_close(ssim_jit(xj, yj, data_range), want_ssim)
    assert_close(psnr_jit(xj, yj, data_range), want_psnr)
    assert_close(cine_ssim_jit(xj, yj, data_range), want_ssim.mean(axis=1))
    assert_close(cine_psnr_jit(xj, yj, data_range), want_psnr.mean(axis=1))


def test_uint8_inputs_directly():
  _, clean, degraded = degraded_cines()[0]
  x, y = clean.astype(np.uint8), degraded.astype(np.uint8)
  assert_close(ssim_jit(x, y, 255.0), sk_ssim(x, y, 255.0))
  assert_close(psnr_jit(x, y, 255.0), sk_psnr(x, y, 255.0))


def test_float32_is_accurate_on_flat_bright_regions():
  """Flat plateaus at +-0.95 with tiny noise: E[x^2] - E[x]^2 would lose the variances."""
  rng = np.random.default_rng(11)
  blocks = np.where(rng.uniform(size=(4, 8, 8)) > 0.5, 0.95, -0.95)
  x = np.kron(blocks, np.ones((8, 8)))
  y = x + 1e-4 * rng.normal(size=x.shape)
  y2 = x + 3e-3 * rng.normal(size=x.shape)
  for other in (y, y2):
    assert_close(ssim_jit(f32(x), f32(other), 2.0), sk_ssim(x, other, 2.0), atol=2e-6)


# --------------------------------------------------------------------------------------------
# Gaussian window


@pytest.mark.parametrize("sample_cov", [False, True])
def test_gaussian_window_matches_skimage(sample_cov):
  rng = np.random.default_rng(5)
  _, clean, degraded = degraded_cines()[0]
  x = np.concatenate([clean[0] / 127.5 - 1.0, rng.uniform(-1, 1, (2, 48, 48))])
  y = np.concatenate([degraded[0] / 127.5 - 1.0,
                      np.clip(x[-2:] + rng.normal(0, 0.1, (2, 48, 48)), -1, 1)])
  want = sk_ssim(x, y, 2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=sample_cov)
  kwargs = dict(gaussian=True) if not sample_cov else dict(gaussian=True,
                                                             use_sample_covariance=True)
  assert_close(ssim_jit(f32(x), f32(y), 2.0, **kwargs), want)
  # The Gaussian window is a different metric from the uniform one.
  assert np.abs(want - sk_ssim(x, y, 2.0)).max() > 1e-3


# --------------------------------------------------------------------------------------------
# Edge cases, transforms, shapes


def test_identical_images():
  x = f32(np.random.default_rng(1).uniform(-1, 1, (2, 3, 16, 20)))
  assert np.all(np.asarray(ssim_jit(x, x, 2.0)) == 1.0)
  assert np.all(np.asarray(ssim_jit(x, x, 2.0, gaussian=True)) == 1.0)
  assert np.all(np.isposinf(np.asarray(psnr_jit(x, x, 2.0))))
  assert np.all(np.isposinf(np.asarray(cine_psnr_jit(x, x, 2.0))))
  np.testing.assert_array_equal(cine_ssim_jit(x, x, 2.0), np.ones(2))
  const = jnp.full((2, 3, 16, 20), 0.3)
  assert np.all(np.asarray(ssim_jit(const, const, 2.0)) == 1.0)


def test_shapes_jit_and_vmap():
  rng = np.random.default_rng(2)
  x = f32(rng.uniform(-1, 1, (2, 3, 16, 20)))
  y = f32(rng.uniform(-1, 1, (2, 3, 16, 20)))

  def shape(fn, a, b):
    return jax.eval_shape(lambda a, b: fn(a, b, 2.0), a, b).shape

  assert shape(image_metrics.ssim, x, y) == (2, 3)
  assert shape(image_metrics.psnr, x, y) == (2, 3)
  assert shape(image_metrics.ssim, x[0, 0], y[0, 0]) == ()
  assert shape(image_metrics.cine_ssim, x, y) == (2,)
  assert shape(image_metrics.cine_psnr, x, y) == (2,)
  assert shape(image_metrics.ssim, x[None], y[None]) == (1, 2, 3)
  # vmap over the batch and the frames, with a traced data_range, equals the batched call.
  per_image = jax.jit(jax.vmap(jax.vmap(image_metrics.ssim, (0, 0, None)), (0, 0, None)))
  direct = ssim_jit(x, y, 2.0)
  np.testing.assert_allclose(per_image(x, y, jnp.float32(2.0)), direct, atol=1e-6)
  assert_close(direct, sk_ssim(x, y, 2.0))
  per_example = jax.vmap(lambda a, b: image_metrics.cine_psnr(a[None], b[None], 2.0)[0])(x, y)
  np.testing.assert_allclose(per_example, cine_psnr_jit(x, y, 2.0), rtol=1e-6)
  assert_close(cine_ssim_jit(x, y, 2.0), sk_ssim(x, y, 2.0).mean(axis=1))
  # SSIM is symmetric; PSNR drops as the error grows.
  np.testing.assert_allclose(ssim_jit(y, x, 2.0), direct, atol=1e-6)
  assert np.all(np.asarray(psnr_jit(x, x + 0.01, 2.0)) > np.asarray(psnr_jit(x, x + 0.1, 2.0)))


def test_invalid_arguments():
  x = jnp.zeros((6, 16))
  with pytest.raises(ValueError, match="exceeds"):
    image_metrics.ssim(x, x, 2.0)
  with pytest.raises(ValueError, match="odd"):
    image_metrics.ssim(jnp.zeros((16, 16)), jnp.zeros((16, 16)), 2.0, win_size=4)
  with pytest.raises(ValueError, match="same shape"):
    image_metrics.psnr(jnp.zeros((8, 8)), jnp.zeros((8, 9)), 2.0)


def release_ssim(x, y):
  """The release's compute_ssim on [0, 1] frames: an 11 x 11 Gaussian (sigma 1.5, normalised
  2-D exp(-(dx^2 + dy^2) / 2 sigma^2)), valid convolution, c1 = 1e-4, c2 = 9e-4, mean of the map."""
  from scipy.signal import convolve2d
  coords = np.arange(11) - 5
  g = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 1.5 ** 2))
  g /= g.sum()
  f = lambda a: convolve2d(a, g, mode="valid")
  mx, my = f(x), f(y)
  sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
  cs = (2 * sxy + 9e-4) / (sxx + syy + 9e-4)
  return float(np.mean((2 * mx * my + 1e-4) / (mx ** 2 + my ** 2 + 1e-4) * cs))


def test_the_releases_ssim_as_the_evaluators_compute_it():
  from cardionets_jax.evaluators import reconstruction
  rng = np.random.default_rng(3)
  x = rng.uniform(-1, 1, (2, 3, 40, 36))
  y = np.clip(x + 0.3 * rng.normal(size=x.shape), -1, 1)
  ssim, _, ssim_gaussian = reconstruction.scores(jnp.asarray(x), jnp.asarray(y))
  want = [np.mean([release_ssim((a + 1) / 2, (b + 1) / 2) for a, b in zip(xs, ys)])
          for xs, ys in zip(x, y)]
  np.testing.assert_allclose(ssim_gaussian, want, atol=1e-5)
  # Not the default SSIM: the window, the covariance and the value range all differ.
  assert np.all(np.abs(np.asarray(ssim) - want) > 0.05)
