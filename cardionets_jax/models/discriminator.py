"""The PatchGAN discriminator of the CMR VAE stage, built from the VAE's 3-D conv blocks.

Apart from vae3d.py because only the adversarial part of VAE training uses it; it shares the conv,
GroupNorm and activation-constraint helpers (and their logical axis names) with the VAE.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cardionets_jax.models.conv3d import ConvBlock, conv, constrain, group_norm
from cardionets_jax.models.vit import cmr_to_float

Dtype = Any
STYLES = ("release", "groupnorm")


def _scale_init(key, shape, dtype=jnp.float32):
  """pix2pix's norm-scale init, N(1, 0.02)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchStatNorm(nn.Module):
  """BatchNorm as it runs in training: each channel normalised with the statistics of the batch
  it is given (biased variance, eps 1e-5, as torch's BatchNorm3d in train mode), then an affine.

  No running averages: the discriminator only ever runs in training, so they would never be read.
  Under data sharding the statistics are those of the global batch (torch's SyncBatchNorm).
  """
  dtype: Dtype = jnp.float32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(_scale_init, ("norm",)), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (c,))
    x32 = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x32, axes)
    var = jnp.mean(jnp.square(x32 - mean), axes)
    return ((x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias).astype(self.dtype)


class PatchDiscriminator3D(ConvBlock):
  """PatchGAN over cines: (B, F, H, W) in [-1, 1] -> per-patch logits (B, f, h, w) float32.

  conv0 and the next `num_layers - 1` convs have stride 2 (channels `channels * min(2^n, 8)`), then
  one stride-1 conv and a stride-1 conv to one logit; LeakyReLU(0.2) after every conv but the
  last, a norm after every conv but the first and last (those convs have no bias).

  `style` "release" (the authors' 3-D pix2pix discriminator): kernel 4 with padding 1, (3, 4, 4)
  at the last stride-2 conv, (1, 4, 4) with no time padding for the two stride-1 convs;
  `BatchStatNorm`; convs initialised N(0, 0.02), norm scales N(1, 0.02).
  "groupnorm" (ours): 3x3x3 'same' convs, LeCun init, GroupNorm, which normalises each example on
  its own and so does not depend on the per-device batch size.
  """
  _: dataclasses.KW_ONLY
  channels: int = 64
  num_layers: int = 3
  style: str = "groupnorm"

  def _conv(self, n, features, name, **kw):
    """The n-th conv (0: the first; num_layers: the stride-1 one; num_layers + 1: the output)."""
    stride = 2 if n < self.num_layers else 1
    if self.style == "groupnorm":
      return conv(self, features, 3, stride, name=name, **kw)
    one = (1, 1)
    if n >= self.num_layers:
      kernel, padding = (1, 4, 4), ((0, 0), one, one)
    else:
      kernel, padding = ((3, 4, 4) if n == self.num_layers - 1 else 4), (one, one, one)
    return conv(self, features, kernel, stride, name=name, padding=padding,
                kernel_init=nn.initializers.normal(0.02), **kw)

  def _norm(self, channels, name):
    if self.style == "groupnorm":
      return group_norm(channels, self.dtype, name)
    return BatchStatNorm(self.dtype, name=name)

  @nn.compact
  def __call__(self, video):
    if self.style not in STYLES:
      raise ValueError(f"discriminator style must be one of {STYLES}, got {self.style!r}")
    x = cmr_to_float(video) if video.dtype == jnp.uint8 else video
    h = x[..., None].astype(self.dtype)
    h = nn.leaky_relu(self._conv(0, self.channels, "conv0")(h), 0.2)
    for n in range(1, self.num_layers + 1):
      c = self.channels * min(2 ** n, 8)
      h = self._conv(n, c, f"conv{n}", use_bias=False)(h)
      h = constrain(nn.leaky_relu(self._norm(c, f"norm{n}")(h), 0.2))
    logits = self._conv(self.num_layers + 1, 1, "conv_out", out_axis="conv_out")(h)
    return logits[..., 0].astype(jnp.float32)
