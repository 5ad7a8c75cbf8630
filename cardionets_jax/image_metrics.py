"""Image quality metrics for (generated or reconstructed) cines: PSNR and SSIM, in pure JAX.

Every function takes images whose last two axes are (H, W) and any leading axes (e.g. (B, F, H, W)
cines), is jit-able and vmap-able, and returns one value per image (the leading axes), or per
example averaged over frames (`cine_psnr`, `cine_ssim`: (B, F, H, W) -> (B,)).

`ssim` reproduces `skimage.metrics.structural_similarity(x2d, y2d, data_range=R)` (scikit-image
>= 0.24) to ~2e-7 in float32 (PSNR to ~1e-5 dB):

  * local (weighted) means / variances / covariance over a win_size x win_size uniform window
    (or, with gaussian=True, a Gaussian of standard deviation sigma truncated at 3.5 sigma, i.e.
    `scipy.ndimage.gaussian_filter(..., truncate=3.5)`: 11 taps for sigma = 1.5), filtering the
    whole image with the borders extended as scipy.ndimage's 'reflect' mode does (half-sample
    symmetric: d c b a | a b c d | d c b a, which is numpy's / jnp.pad's 'symmetric');
  * variances normalised by N - 1 (N = win_size**2, use_sample_covariance=True) for the uniform
    window, by N for the Gaussian one (as Wang et al. 2004, and as skimage's docs ask for it);
  * the SSIM map averaged over the interior only, after cropping (win_size - 1) // 2 pixels at
    each border (for the Gaussian window win_size = 2 * int(3.5 * sigma + 0.5) + 1).

Numerics. The computation runs in float32 (or float64 for float64 inputs under jax x64). Images
are first divided by data_range, so that C1 = K1^2 and C2 = K2^2 and the magnitudes are O(1)
whatever the range (255 for uint8). The local variances are not taken as E[x^2] - E[x]^2, which
cancels in float32 where a region is flat and far from zero (errors ~1e-5 in mean SSIM on
plateaus at +-0.95, and identical images no longer give exactly 1); instead each is the weighted
sum of squared deviations from the local mean over the window's offsets (two passes: the local
mean by a separable filter, then the deviations), exact to a few float32 ulps. That costs
win_size^2 fused elementwise passes (49, or 121 for the Gaussian window) and ~1 s of compilation
per shape; the metric is meant for evaluation, not for a training loss. Filters are separable 1-D convolutions written as weighted sums of shifted
slices of the reflect-padded image: elementwise float32 arithmetic, so no backend (TPU/GPU
convolutions default to reduced precision) can degrade them, and XLA fuses the lot. Means over the
image are taken one axis at a time to keep float32 summation error at O((H + W) eps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_GAUSSIAN_TRUNCATE = 3.5   # skimage's choice for SSIM: 11 taps at sigma = 1.5


def _compute_dtype(*arrays):
  """float32, or the inputs' float64 when jax x64 is on (bf16/f16/ints are promoted to f32)."""
  dtypes = [jnp.asarray(a).dtype for a in arrays]
  if any(d == jnp.float64 for d in dtypes) and jax.config.jax_enable_x64:
    return jnp.float64
  return jnp.float32


def _prepare(x, y, data_range):
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.shape != y.shape:
    raise ValueError(f"images must have the same shape, got {x.shape} and {y.shape}")
  if x.ndim < 2:
    raise ValueError(f"images need at least 2 axes (H, W), got shape {x.shape}")
  dtype = _compute_dtype(x, y)
  r = jnp.asarray(data_range, dtype)
  return x.astype(dtype) / r, y.astype(dtype) / r


def _image_mean(a):
  """Mean over the last two axes, one axis at a time (float32 summation error ~ (H + W) eps)."""
  return jnp.mean(jnp.mean(a, axis=-1), axis=-1)


def _reflect_pad(a, pad, axis):
  """Pad one axis like scipy.ndimage mode='reflect' (half-sample symmetric: d c b a | a b c d)."""
  widths = [(0, 0)] * a.ndim
  widths[axis] = (pad, pad)
  return jnp.pad(a, widths, mode="symmetric")


def _filter1d(a, weights, axis):
  """Correlate one axis with the odd-length `weights` (centred), scipy 'reflect' borders."""
  taps = len(weights)
  pad = taps // 2
  n = a.shape[axis]
  padded = _reflect_pad(a, pad, axis)
  out = None
  for k, w in enumerate(weights):
    term = jax.lax.slice_in_dim(padded, k, k + n, axis=axis) * jnp.asarray(w, a.dtype)
    out = term if out is None else out + term
  return out


def _filter2d(a, weights):
  return _filter1d(_filter1d(a, weights, a.ndim - 1), weights, a.ndim - 2)


def _window(win_size, gaussian, sigma):
  """(1-D weights as python floats, win_size used for the crop and for N)."""
  if gaussian:
    if not sigma > 0:
      raise ValueError(f"sigma must be positive, got {sigma}")
    radius = int(_GAUSSIAN_TRUNCATE * float(sigma) + 0.5)   # as scipy.ndimage.gaussian_filter1d
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights = phi / phi.sum()
    if win_size is None:
      win_size = 2 * radius + 1
  else:
    if win_size is None:
      win_size = 7
    weights = np.full(int(win_size), 1.0 / int(win_size))
  win_size = int(win_size)
  if win_size < 1 or win_size % 2 != 1:
    raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
  return [float(w) for w in weights], win_size


def psnr(x, y, data_range):
  """Peak signal-to-noise ratio per image, over the last two axes, in dB.

  10 * log10(data_range^2 / MSE), MSE the mean of (x - y)^2 over (H, W); returns the leading
  axes' shape (e.g. (B, F) for (B, F, H, W) cines). It is +inf where the two images are identical
  (MSE == 0), as scikit-image's peak_signal_noise_ratio (which warns of the division by zero);
  average finite values only, or use a clipped MSE, when that can happen. data_range: the span of
  the intensities (2.0 for the project's [-1, 1] images, 255 for uint8).
  """
  xs, ys = _prepare(x, y, data_range)
  mse = _image_mean(jnp.square(xs - ys))   # the MSE of the images scaled to a unit range
  return -10.0 * jnp.log10(mse)


def ssim(x, y, data_range, win_size=None, k1=0.01, k2=0.03, gaussian=False, sigma=1.5,
         use_sample_covariance=None):
  """Mean structural similarity per image, over the last two axes, as scikit-image computes it.

  x, y: (..., H, W), the same shape; returns (...). Matches
  `skimage.metrics.structural_similarity(x2d, y2d, data_range=data_range)` with its defaults
  (win_size=None -> 7, uniform window, use_sample_covariance=True, K1=0.01, K2=0.03), and with
  gaussian=True matches `gaussian_weights=True, sigma=sigma, use_sample_covariance=False`
  (Wang et al. 2004; win_size=None -> 2 * int(3.5 * sigma + 0.5) + 1 = 11 at sigma = 1.5, which
  sets the border crop). use_sample_covariance=None means True for the uniform window and False
  for the Gaussian one; pass a bool to choose. H and W must be at least win_size (static shapes:
  checked at trace time). Identical images give exactly 1 up to float rounding.
  """
  weights, win_size = _window(win_size, gaussian, sigma)
  xs, ys = _prepare(x, y, data_range)
  height, width = xs.shape[-2:]
  if height < win_size or width < win_size:
    raise ValueError(f"win_size {win_size} exceeds the image extent {(height, width)}")
  if use_sample_covariance is None:
    use_sample_covariance = not gaussian
  n_window = win_size ** 2
  cov_norm = n_window / (n_window - 1) if use_sample_covariance else 1.0

  ux = _filter2d(xs, weights)
  uy = _filter2d(ys, weights)

  # Second moments about the local mean: sum over the window's offsets (di, dj) of
  # w_di * w_dj * (x[i + di, j + dj] - ux[i, j]) * (...), from the reflect-padded images.
  taps = len(weights)
  pad = taps // 2
  nd = xs.ndim
  xp = _reflect_pad(_reflect_pad(xs, pad, nd - 1), pad, nd - 2)
  yp = _reflect_pad(_reflect_pad(ys, pad, nd - 1), pad, nd - 2)
  vx = vy = vxy = None
  for i, wi in enumerate(weights):
    for j, wj in enumerate(weights):
      dx = xp[..., i:i + height, j:j + width] - ux
      dy = yp[..., i:i + height, j:j + width] - uy
      w = jnp.asarray(wi * wj * cov_norm, xs.dtype)
      tx, ty, txy = w * dx * dx, w * dy * dy, w * dx * dy
      if vx is None:
        vx, vy, vxy = tx, ty, txy
      else:
        vx, vy, vxy = vx + tx, vy + ty, vxy + txy

  c1 = float(k1) ** 2   # (K1 * R)^2 on images divided by R
  c2 = float(k2) ** 2
  numerator = (2.0 * ux * uy + c1) * (2.0 * vxy + c2)
  denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
  ssim_map = numerator / denominator
  crop = (win_size - 1) // 2
  ssim_map = ssim_map[..., crop:height - crop, crop:width - crop]
  return _image_mean(ssim_map)


def cine_psnr(x, y, data_range):
  """PSNR per example averaged over frames: (B, F, H, W) -> (B,) (+inf if a frame is exact)."""
  return jnp.mean(psnr(x, y, data_range), axis=-1)


def cine_ssim(x, y, data_range, **kwargs):
  """SSIM per example averaged over frames: (B, F, H, W) -> (B,); kwargs as for `ssim`."""
  return jnp.mean(ssim(x, y, data_range, **kwargs), axis=-1)


__all__ = ["psnr", "ssim", "cine_psnr", "cine_ssim"]
