"""A 3-D convolutional KL-VAE for cine CMR (CardioNets stage 3); the PatchGAN: discriminator.py.

LDM-style (Rombach et al., AutoencoderKL) with 3-D kernels, channels last:

  encoder: conv_in -> per level `num_res_blocks` ResBlocks, then a strided
           3x3x3 down-sampling conv (stride (2 if temporal_down[level] else 1,
           2, 2)) after every level but the last -> 2 middle ResBlocks ->
           GroupNorm, swish, conv to 2 * latent_channels (mean, logvar).
  decoder: conv_in -> 2 middle ResBlocks -> per level, deepest first,
           `num_res_blocks + 1` ResBlocks (the LDM decoder's extra block),
           then a nearest-neighbour up-sampling + 3x3x3 conv that undoes the
           encoder's down-sampling at that depth -> GroupNorm, swish, conv to
           one channel. No tanh: the loss is L1 in [-1, 1] and callers clamp.

Left out on purpose: the single-head self-attention of LDM's middle block
(the model stays a plain conv net, whose FLOPs `vae_flops` counts exactly;
at the base size the middle runs at 25 x 12 x 12 = 3,600 positions, so it
could be added as a `layers.Attention` over those tokens if wanted), and the
1x1x1 quant_conv / post_quant_conv pairs of LDM (linear maps right after /
before another linear conv: parameters without expressiveness).

With `base` sizes (128 channels, multipliers (1, 2, 4, 4), temporal_down
(True, False, False)) a (50, 96, 96) cine maps to a (25, 12, 12, 16) latent.

Parameters carry logical axis names; a conv kernel is
("conv_t", "conv_h", "conv_w", "conv_in", "mlp") and its bias ("mlp",), so
the rule ("mlp" -> "tensor") shards output channels and the other names,
absent from the rules, are replicated. Convs whose output is a single
channel use "conv_out" there instead (a size-1 axis cannot be sharded).
GroupNorm scale and bias are ("norm",). Activations are constrained to
("batch", "frames", "height", "width", "channels"). `dtype` is the compute
dtype; params are float32; posteriors and decodings come out float32.

`conv_impl` picks how a 3-D conv is computed, never the parameters: "lax"
(one 3-D conv_general_dilated), "taps" (the time taps stacked on channels,
one 2-D conv: ~5x faster on XLA's CPU backend, forward and backward) or
"auto" (taps on CPU, lax on GPU / TPU).
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from cardionets_jax import losses
from cardionets_jax.models import layers
from cardionets_jax.models.vit import cmr_to_float

Dtype = Any

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

ACTIVATION_AXES = ("batch", "frames", "height", "width", "channels")


# ---------------------------------------------------------------------------
# Building blocks.


def _triple(v):
  return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


CONV_IMPLS = ("auto", "lax", "taps")


def _conv_taps(x, kernel, strides, padding):
  """A 3-D conv as one 2-D conv: the kt time taps are stacked on the channel axis.

  The same sum of products as the 3-D conv (up to float summation order),
  but XLA's CPU backend runs 2-D convs several times faster than 3-D ones,
  forward and backward. Costs a kt-fold copy of the input.
  """
  kt, kh, kw, c_in, c_out = kernel.shape
  st, sh, sw = strides
  (p0, p1), ph, pw = padding
  b, t = x.shape[:2]
  xp = jnp.pad(x, ((0, 0), (p0, p1), (0, 0), (0, 0), (0, 0)))
  t_out = (t + p0 + p1 - kt) // st + 1
  taps = [jax.lax.slice_in_dim(xp, i, i + st * (t_out - 1) + 1, st, axis=1) for i in range(kt)]
  x2 = jnp.concatenate(taps, axis=-1) if kt > 1 else taps[0]
  x2 = x2.reshape((b * t_out,) + x2.shape[2:])
  k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * c_in, c_out)
  y = jax.lax.conv_general_dilated(x2, k2, (sh, sw), (ph, pw),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y.reshape((b, t_out) + y.shape[1:])


def conv3d_apply(x, kernel, strides=(1, 1, 1), padding=None, impl="auto"):
  """(B, T, H, W, Cin) * (kt, kh, kw, Cin, Cout) -> (B, T', H', W', Cout).

  padding: ((lo, hi),) * 3, default kernel // 2 each side. impl: "lax" (one
  3-D conv_general_dilated), "taps" (`_conv_taps`) or "auto" (taps on the
  CPU backend, lax elsewhere, where cuDNN / the TPU run 3-D convs natively
  and the taps' 3x copy of the input would only cost memory). 1x1x1 convs
  are a plain channel contraction either way.
  """
  kernel_size = kernel.shape[:3]
  strides = tuple(strides)
  if padding is None:
    padding = tuple((k // 2, k // 2) for k in kernel_size)
  if impl not in CONV_IMPLS:
    raise ValueError(f"impl must be one of {CONV_IMPLS}, got {impl!r}")
  if kernel_size == (1, 1, 1) and strides == (1, 1, 1) and all(p == (0, 0) for p in padding):
    return jnp.einsum("bthwc,cd->bthwd", x, kernel[0, 0, 0])
  if impl == "auto":
    impl = "taps" if jax.default_backend() == "cpu" else "lax"
  if impl == "taps":
    return _conv_taps(x, kernel, strides, padding)
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))


class Conv3D(nn.Module):
  """A 3-D conv, padded by kernel // 2 on each side (params "kernel", "bias").

  With a 3x3x3 kernel and stride 2 that maps an even size n to n / 2 (any
  size n to ceil(n / 2)); with stride 1 it keeps the size. Kernel axes
  ("conv_t", "conv_h", "conv_w", "conv_in", out_axis), bias (out_axis,).
  """
  features: int
  kernel_size: Sequence[int] = (3, 3, 3)
  strides: Sequence[int] = (1, 1, 1)
  use_bias: bool = True
  out_axis: str = "mlp"
  impl: str = "auto"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    axes = ("conv_t", "conv_h", "conv_w", "conv_in", self.out_axis)
    kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes)
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    y = conv3d_apply(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, impl=self.impl)
    if self.use_bias:
      bias_init = nn.with_logical_partitioning(nn.initializers.zeros, (self.out_axis,))
      bias = self.param("bias", bias_init, (self.features,), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


def conv3d(features, kernel=3, strides=1, *, dtype, name, out_axis="mlp", use_bias=True,
           impl="auto"):
  return Conv3D(features, _triple(kernel), _triple(strides), use_bias, out_axis, impl, dtype,
                name=name)


def _conv(module, features, kernel=3, strides=1, *, name, **kw):
  """`conv3d` with the calling module's dtype and conv_impl."""
  return conv3d(features, kernel, strides, dtype=module.dtype, impl=module.conv_impl, name=name,
                **kw)


def num_groups(channels, max_groups=32):
  """The largest group count <= max_groups that divides `channels`."""
  return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


def group_norm(channels, dtype, name):
  return nn.GroupNorm(
      num_groups=num_groups(channels), epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32,
      name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)))


def _constrain(x):
  return layers.constrain(x, *ACTIVATION_AXES)


class _ConvBlock(nn.Module):
  """The compute dtype and conv implementation `_conv` reads; subclasses add their own fields,
  keyword-only (after the defaults here)."""
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"


class ResBlock3D(_ConvBlock):
  """(GroupNorm, swish, 3x3x3 conv) twice, plus the input (1x1x1 conv if channels change)."""
  _: dataclasses.KW_ONLY
  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.swish(group_norm(x.shape[-1], self.dtype, "norm1")(x))
    h = _conv(self, self.features, name="conv1")(h)
    h = nn.swish(group_norm(self.features, self.dtype, "norm2")(h))
    h = _conv(self, self.features, name="conv2")(h)
    if x.shape[-1] != self.features:
      x = _conv(self, self.features, 1, name="skip")(x)
    return _constrain(x.astype(self.dtype) + h)


class Downsample3D(_ConvBlock):
  """A strided 3x3x3 conv: stride (2 if temporal else 1, 2, 2), channels kept."""
  _: dataclasses.KW_ONLY
  temporal: bool

  @nn.compact
  def __call__(self, x):
    strides = (2 if self.temporal else 1, 2, 2)
    return _constrain(_conv(self, x.shape[-1], 3, strides, name="conv")(x))


class Upsample3D(_ConvBlock):
  """Nearest-neighbour repeat by (2 if temporal else 1, 2, 2), then a 3x3x3 conv."""
  _: dataclasses.KW_ONLY
  temporal: bool

  @nn.compact
  def __call__(self, x):
    if self.temporal:
      x = jnp.repeat(x, 2, axis=1)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return _constrain(_conv(self, x.shape[-1], name="conv")(x))


def _check_levels(channel_mult, temporal_down):
  if len(channel_mult) < 1:
    raise ValueError("channel_mult needs at least one level")
  if len(temporal_down) != len(channel_mult) - 1:
    raise ValueError(f"temporal_down needs one entry per down-sampling, i.e. "
                     f"len(channel_mult) - 1 = {len(channel_mult) - 1}; got {tuple(temporal_down)}")


def _down_factors(channel_mult, temporal_down):
  _check_levels(channel_mult, temporal_down)
  return 2 ** sum(bool(t) for t in temporal_down), 2 ** (len(channel_mult) - 1)


def latent_shape(video_shape, channel_mult, temporal_down, latent_channels):
  """(F, H, W) -> (F', H', W', C) of the latent; ValueError unless it divides evenly."""
  f, h, w = (int(s) for s in video_shape)
  ft, fs = _down_factors(channel_mult, temporal_down)
  if f % ft or h % fs or w % fs:
    raise ValueError(
        f"cine shape {(f, h, w)} must be divisible by ({ft}, {fs}, {fs}) "
        f"(channel_mult={tuple(channel_mult)}, temporal_down={tuple(temporal_down)})")
  return (f // ft, h // fs, w // fs, int(latent_channels))


# ---------------------------------------------------------------------------
# The posterior.


@struct.dataclass
class DiagonalGaussian:
  """A diagonal Gaussian posterior over latents (B, F', H', W', C), float32."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments):
    """Splits (..., 2C) into mean (first C channels) and logvar, clipped to [-30, 20]."""
    mean, logvar = jnp.split(jnp.asarray(moments, jnp.float32), 2, axis=-1)
    return cls(mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))

  @property
  def std(self):
    return jnp.exp(0.5 * self.logvar)

  def sample(self, rng):
    return self.mean + self.std * jax.random.normal(rng, self.mean.shape, jnp.float32)

  def mode(self):
    return self.mean

  def kl(self):
    """KL(q || N(0, I)) per example (B,): summed over all latent dims."""
    return losses.kl_divergence(self.mean, self.logvar)


# ---------------------------------------------------------------------------
# Encoder, decoder, VAE.


class Encoder3D(_ConvBlock):
  """(B, F, H, W, 1) float in [-1, 1] -> moments (B, F', H', W', 2 * latent_channels) float32."""
  _: dataclasses.KW_ONLY
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  temporal_down: Sequence[bool]

  @nn.compact
  def __call__(self, x):
    _check_levels(self.channel_mult, self.temporal_down)
    last = len(self.channel_mult) - 1
    h = _constrain(_conv(self, self.base_channels, name="conv_in")(x.astype(self.dtype)))
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = ResBlock3D(features=self.base_channels * mult, dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"down{level}_block{i}")(h)
      if level < last:
        h = Downsample3D(temporal=bool(self.temporal_down[level]), dtype=self.dtype,
                         conv_impl=self.conv_impl, name=f"down{level}_downsample")(h)
    for i in (1, 2):
      h = ResBlock3D(features=h.shape[-1], dtype=self.dtype, conv_impl=self.conv_impl,
                     name=f"mid_block{i}")(h)
    h = nn.swish(group_norm(h.shape[-1], self.dtype, "norm_out")(h))
    moments = _conv(self, 2 * self.latent_channels, name="conv_out")(h)
    return moments.astype(jnp.float32)


class Decoder3D(_ConvBlock):
  """Latent (B, F', H', W', C) -> (B, F, H, W) float32, roughly in [-1, 1] (not clamped)."""
  _: dataclasses.KW_ONLY
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  temporal_down: Sequence[bool]

  @nn.compact
  def __call__(self, z):
    _check_levels(self.channel_mult, self.temporal_down)
    top = self.base_channels * self.channel_mult[-1]
    h = _constrain(_conv(self, top, name="conv_in")(z.astype(self.dtype)))
    for i in (1, 2):
      h = ResBlock3D(features=top, dtype=self.dtype, conv_impl=self.conv_impl,
                     name=f"mid_block{i}")(h)
    for level in reversed(range(len(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = ResBlock3D(features=self.base_channels * self.channel_mult[level], dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"up{level}_block{i}")(h)
      if level > 0:   # undoes the encoder's down-sampling after level - 1
        h = Upsample3D(temporal=bool(self.temporal_down[level - 1]), dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"up{level}_upsample")(h)
    h = nn.swish(group_norm(h.shape[-1], self.dtype, "norm_out")(h))
    out = _conv(self, 1, name="conv_out", out_axis="conv_out")(h)
    return out[..., 0].astype(jnp.float32)


class VAE3D(nn.Module):
  """KL-VAE over cine CMR. `__call__` needs a "sample" rng when sample=True."""
  base_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  latent_channels: int = 16
  temporal_down: Sequence[bool] = (True, False, False)
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  def setup(self):
    common = dict(base_channels=self.base_channels, channel_mult=tuple(self.channel_mult),
                  num_res_blocks=self.num_res_blocks, temporal_down=tuple(self.temporal_down),
                  dtype=self.dtype, conv_impl=self.conv_impl)
    self.encoder = Encoder3D(latent_channels=self.latent_channels, **common)
    self.decoder = Decoder3D(**common)

  def latent_shape(self, video_shape):
    return latent_shape(video_shape, self.channel_mult, self.temporal_down, self.latent_channels)

  def encode(self, video):
    """(B, F, H, W) uint8 cine (or float already in [-1, 1]) -> DiagonalGaussian."""
    if video.ndim != 4:
      raise ValueError(f"expected a (B, F, H, W) cine, got shape {video.shape}")
    self.latent_shape(video.shape[1:])   # raises on sizes that do not divide
    x = cmr_to_float(video) if video.dtype == jnp.uint8 else video
    return DiagonalGaussian.from_moments(self.encoder(x[..., None]))

  def decode(self, z):
    """(B, F', H', W', C) -> (B, F, H, W) float32."""
    return self.decoder(z)

  def __call__(self, video, sample=True):
    """Returns (recon (B, F, H, W) float32, posterior)."""
    posterior = self.encode(video)
    z = posterior.sample(self.make_rng("sample")) if sample else posterior.mode()
    return self.decode(z), posterior

  def flops(self, video_shape):
    return vae_flops(video_shape, base_channels=self.base_channels,
                     channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                     latent_channels=self.latent_channels, temporal_down=self.temporal_down)


def _conv_plan(video_shape, base_channels, channel_mult, num_res_blocks, latent_channels,
               temporal_down):
  """(output voxels, kernel volume, c_in, c_out) for every conv of encoder + decoder."""
  latent_shape(video_shape, channel_mult, temporal_down, latent_channels)
  size = list(video_shape)
  plan = []

  def conv(c_in, c_out, k=27):
    plan.append((math.prod(size), k, c_in, c_out))

  def res(c_in, c_out):
    conv(c_in, c_out)
    conv(c_out, c_out)
    if c_in != c_out:
      conv(c_in, c_out, 1)
    return c_out

  last = len(channel_mult) - 1
  conv(1, base_channels)
  c = base_channels
  for level, mult in enumerate(channel_mult):
    for _ in range(num_res_blocks):
      c = res(c, base_channels * mult)
    if level < last:
      size = [size[0] // (2 if temporal_down[level] else 1), size[1] // 2, size[2] // 2]
      conv(c, c)
  c = res(res(c, c), c)
  conv(c, 2 * latent_channels)
  # decoder
  conv(latent_channels, c)
  c = res(res(c, c), c)
  for level in reversed(range(len(channel_mult))):
    for _ in range(num_res_blocks + 1):
      c = res(c, base_channels * channel_mult[level])
    if level > 0:
      size = [size[0] * (2 if temporal_down[level - 1] else 1), size[1] * 2, size[2] * 2]
      conv(c, c)
  conv(c, 1)
  return plan


def vae_flops(video_shape, *, base_channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
              latent_channels=16, temporal_down=(True, False, False)):
  """Forward conv FLOPs (encode + decode) per example: sum of 2 * out_voxels * k^3 * c_in * c_out.

  Norms, activations and the sampling are left out (a few % at most).
  """
  return sum(2 * n * k * ci * co for n, k, ci, co in _conv_plan(
      tuple(video_shape), base_channels, tuple(channel_mult), num_res_blocks, latent_channels,
      tuple(temporal_down)))
