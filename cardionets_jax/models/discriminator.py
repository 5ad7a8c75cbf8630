"""The PatchGAN discriminator of the CMR VAE stage, built from the VAE's 3-D conv blocks.

Apart from vae3d.py because only the adversarial part of VAE training uses it; it shares the conv,
GroupNorm and activation-constraint helpers (and their logical axis names) with the VAE.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cardionets_jax.models.conv3d import conv as _conv, constrain as _constrain, group_norm
from cardionets_jax.models.vit import cmr_to_float

Dtype = Any


class PatchDiscriminator3D(nn.Module):
  """PatchGAN over cines: (B, F, H, W) in [-1, 1] -> per-patch logits (B, f, h, w) float32.

  3x3x3 convs: the first `num_layers` have stride 2 (so each output patch
  sees a 2^num_layers-fold down-sampled neighbourhood; any size n -> ceil(n /
  2) per stride), channels channels * min(2^n, 8); then one stride-1 conv and
  a stride-1 conv to one logit. LeakyReLU(0.2) throughout.

  Norm: GroupNorm on every conv but the first and last (where PatchGAN uses
  BatchNorm). It keeps no running statistics (no mutable collection in the
  train step), normalises each example on its own, so real and fake batches
  scored in separate calls cannot be told apart by batch statistics, and it
  does not depend on the per-device batch size under data sharding. Convs
  followed by a norm have no bias.
  """
  channels: int = 64
  num_layers: int = 3
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, video):
    x = cmr_to_float(video) if video.dtype == jnp.uint8 else video
    h = x[..., None].astype(self.dtype)
    h = nn.leaky_relu(_conv(self, self.channels, 3, 2, name="conv0")(h), 0.2)
    for n in range(1, self.num_layers + 1):
      c = self.channels * min(2 ** n, 8)
      stride = 2 if n < self.num_layers else 1
      h = _conv(self, c, 3, stride, name=f"conv{n}", use_bias=False)(h)
      h = nn.leaky_relu(group_norm(c, self.dtype, f"norm{n}")(h), 0.2)
      h = _constrain(h)
    logits = _conv(self, 1, 3, 1, name="conv_out", out_axis="conv_out")(h)
    return logits[..., 0].astype(jnp.float32)
