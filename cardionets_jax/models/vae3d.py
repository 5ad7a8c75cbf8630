"""The 3-D convolutional KL-VAE for cine CMR (CardioNets stage 3); the PatchGAN: discriminator.py.

The release's Reducio-style VAE (LDM's AutoencoderKL with 3-D kernels), channels last:

  encoder: conv_in -> per level `num_res_blocks` ResBlocks, then a strided down-sampling conv
           after every level but the last -> ResBlock, self-attention, ResBlock -> GroupNorm,
           swish, conv to 2 * latent_channels -> quant_conv (1x1x1): the posterior's moments.
  decoder: post_quant_conv (1x1x1) -> conv_in -> ResBlock, self-attention, ResBlock -> per
           level, deepest first, `decoder_res_blocks` ResBlocks, then a nearest-neighbour
           up-sampling + 3x3x3 conv that undoes the encoder's down-sampling at that depth ->
           GroupNorm, swish, conv to one channel. No tanh: the loss is L1 in [-1, 1], callers clamp.

Down-sampling is LDM's asymmetric one: no padding before, one zero row / column (and frame) after,
then a stride-2 conv. A level that keeps time (`temporal_down[level]` False) uses a (1, 3, 3)
kernel; the one that halves it (the last, in the release) a 3x3x3 kernel.

The latent the decoder is trained on is `latent_layer_norm(z)`: each example's sample normalised
over all of (F', H', W', C), no affine (`latent_norm="layer_norm"`, the release). The generator
models that normalised latent, and `decode` takes it as it is.

With `base` sizes (128 channels, multipliers (1, 2, 4, 4), temporal_down (False, False, True),
2 encoder / 4 decoder ResBlocks per level, 8-head mid attention) a (50, 96, 96) cine maps to a
(25, 12, 12, 16) latent: the release's `vae_kl_ft2_fs8_z16`. Conv primitives, logical axis
names and `conv_impl`: conv3d.py.
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from cardionets_jax import losses
from cardionets_jax.models import conv3d
from cardionets_jax.models import layers
from cardionets_jax.models.conv3d import ConvBlock, conv, constrain, group_norm
from cardionets_jax.models.vit import cmr_to_float

Dtype = Any

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
LATENT_NORMS = ("layer_norm", "none")


class ResBlock3D(ConvBlock):
  """(GroupNorm, swish, 3x3x3 conv) twice, plus the input (1x1x1 conv if channels change)."""
  _: dataclasses.KW_ONLY
  features: int

  @nn.compact
  def __call__(self, x):
    h = nn.swish(group_norm(x.shape[-1], self.dtype, "norm1")(x))
    h = conv(self, self.features, name="conv1")(h)
    h = nn.swish(group_norm(self.features, self.dtype, "norm2")(h))
    h = conv(self, self.features, name="conv2")(h)
    if x.shape[-1] != self.features:
      x = conv(self, self.features, 1, name="skip")(x)
    return constrain(x.astype(self.dtype) + h)


class MidAttention3D(ConvBlock):
  """x + proj(attention(GroupNorm(x))) over all F' x H' x W' positions, `num_heads` heads.

  q, k, v and the output projection are 1x1x1 convs; channel c belongs to head c // head_dim."""
  _: dataclasses.KW_ONLY
  num_heads: int

  @nn.compact
  def __call__(self, x):
    b, f, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"{c} channels do not split into {self.num_heads} attention heads")
    y = group_norm(c, self.dtype, "norm")(x)
    heads = lambda n: conv(self, c, 1, name=n)(y).reshape(b, f * h * w, self.num_heads, -1)
    out = jax.nn.dot_product_attention(heads("q"), heads("k"), heads("v"))
    out = conv(self, c, 1, name="proj_out")(out.reshape(b, f, h, w, c))
    return constrain(x.astype(self.dtype) + out)


def _mid(module, h):
  """ResBlock, attention (when `mid_attention_heads`), ResBlock at the latent resolution."""
  c, block = h.shape[-1], layers.rematted(ResBlock3D, module.remat)
  h = block(features=c, dtype=module.dtype, conv_impl=module.conv_impl, name="mid_block1")(h)
  if module.mid_attention_heads:
    h = MidAttention3D(num_heads=module.mid_attention_heads, dtype=module.dtype,
                       conv_impl=module.conv_impl, name="mid_attention")(h)
  return block(features=c, dtype=module.dtype, conv_impl=module.conv_impl, name="mid_block2")(h)


class Downsample3D(ConvBlock):
  """Pad one zero after (height, width, and time if `temporal`), then a stride-2 conv: (3, 3, 3)
  over time when `temporal`, else (1, 3, 3) with time kept."""
  _: dataclasses.KW_ONLY
  temporal: bool

  @nn.compact
  def __call__(self, x):
    kernel = (3 if self.temporal else 1, 3, 3)
    strides = (2 if self.temporal else 1, 2, 2)
    padding = ((0, 1) if self.temporal else (0, 0), (0, 1), (0, 1))
    return constrain(conv(self, x.shape[-1], kernel, strides, padding=padding, name="conv")(x))


class Upsample3D(ConvBlock):
  """Nearest-neighbour repeat by (2 if temporal else 1, 2, 2), then a 3x3x3 conv."""
  _: dataclasses.KW_ONLY
  temporal: bool

  @nn.compact
  def __call__(self, x):
    if self.temporal:
      x = jnp.repeat(x, 2, axis=1)
    x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    return constrain(conv(self, x.shape[-1], name="conv")(x))


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


def wrap_cycle(x, frames):
  """(B, F, ...) -> (B, F + 2 * frames, ...): a gated cine is one RR interval, so its own last
  `frames` frames come before its first and its first ones after its last."""
  return jnp.concatenate([x[:, -frames:], x, x[:, :frames]], axis=1) if frames else x


def cut_context(x, frames):
  """(B, F + 2 * frames, ...) -> (B, F, ...): the frames between the context."""
  return x[:, frames:x.shape[1] - frames] if frames else x


def latent_layer_norm(z, eps=1e-5):
  """Each example's latent normalised over all its axes (F', H', W', C); no affine."""
  axes = tuple(range(1, z.ndim))
  z = z.astype(jnp.float32)
  mean = jnp.mean(z, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(z - mean), axis=axes, keepdims=True)
  return (z - mean) * jax.lax.rsqrt(var + eps)


def decoder_latent(z, latent_norm):
  """A posterior sample (or mean) -> the latent the decoder reads, for a VAE whose
  `latent_norm` is "layer_norm" (the release's) or "none"."""
  return latent_layer_norm(z) if latent_norm == "layer_norm" else z


# ---------------------------------------------------------------------------
# Encoder, decoder, VAE.


class Encoder3D(ConvBlock):
  """(B, F, H, W, 1) float in [-1, 1] -> (B, F', H', W', 2 * latent_channels) float32 (before
  the quant conv)."""
  _: dataclasses.KW_ONLY
  base_channels: int
  channel_mult: Sequence[int]
  num_res_blocks: int
  latent_channels: int
  temporal_down: Sequence[bool]
  mid_attention_heads: int
  remat: str = "none"

  @nn.compact
  def __call__(self, x):
    _check_levels(self.channel_mult, self.temporal_down)
    last, block = len(self.channel_mult) - 1, layers.rematted(ResBlock3D, self.remat)
    h = constrain(conv(self, self.base_channels, name="conv_in")(x.astype(self.dtype)))
    for level, mult in enumerate(self.channel_mult):
      for i in range(self.num_res_blocks):
        h = block(features=self.base_channels * mult, dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"down{level}_block{i}")(h)
      if level < last:
        h = Downsample3D(temporal=bool(self.temporal_down[level]), dtype=self.dtype,
                         conv_impl=self.conv_impl, name=f"down{level}_downsample")(h)
    h = nn.swish(group_norm(h.shape[-1], self.dtype, "norm_out")(_mid(self, h)))
    return conv(self, 2 * self.latent_channels, name="conv_out")(h).astype(jnp.float32)


class Decoder3D(ConvBlock):
  """Latent (B, F', H', W', C) (after the post-quant conv) -> (B, F, H, W) float32, roughly in
  [-1, 1] (not clamped)."""
  _: dataclasses.KW_ONLY
  base_channels: int
  channel_mult: Sequence[int]
  decoder_res_blocks: int
  temporal_down: Sequence[bool]
  mid_attention_heads: int
  remat: str = "none"

  @nn.compact
  def __call__(self, z):
    _check_levels(self.channel_mult, self.temporal_down)
    top = self.base_channels * self.channel_mult[-1]
    block = layers.rematted(ResBlock3D, self.remat)
    h = _mid(self, constrain(conv(self, top, name="conv_in")(z.astype(self.dtype))))
    for level in reversed(range(len(self.channel_mult))):
      for i in range(self.decoder_res_blocks):
        h = block(features=self.base_channels * self.channel_mult[level], dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"up{level}_block{i}")(h)
      if level > 0:   # undoes the encoder's down-sampling after level - 1
        h = Upsample3D(temporal=bool(self.temporal_down[level - 1]), dtype=self.dtype,
                       conv_impl=self.conv_impl, name=f"up{level}_upsample")(h)
    h = nn.swish(group_norm(h.shape[-1], self.dtype, "norm_out")(h))
    self.sow("intermediates", "last_layer_input", h)  # the adaptive GAN weight's gradients
    out = conv(self, 1, name="conv_out", out_axis="conv_out")(h)
    return out[..., 0].astype(jnp.float32)


class VAE3D(nn.Module):
  """KL-VAE over cine CMR. `__call__` needs a "sample" rng when sample=True.

  `quant_convs`: the 1x1x1 convs after the encoder and before the decoder (the release's);
  `latent_norm`: what the decoder is trained on, "layer_norm" (`latent_layer_norm`, the
  release's) or "none" (the raw sample). `cyclic_context` c > 0: a whole cine is encoded and
  decoded with c frames of its own cycle either side (`wrap_cycle`) instead of the convs' zero
  padding (the release's, c = 0), so that its first and last frames have neighbours; c must be a
  multiple of the temporal down-sampling factor. `remat` (models/layers.py REMAT_POLICIES)
  recomputes each ResBlock's activations in the backward pass instead of storing them."""
  base_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  decoder_res_blocks: int = 4
  latent_channels: int = 16
  temporal_down: Sequence[bool] = (False, False, True)
  mid_attention_heads: int = 8
  quant_convs: bool = True
  latent_norm: str = "layer_norm"
  cyclic_context: int = 0
  remat: str = "none"
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  def setup(self):
    if self.latent_norm not in LATENT_NORMS:
      raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {self.latent_norm!r}")
    factor = _down_factors(self.channel_mult, self.temporal_down)[0]
    if self.cyclic_context % factor:
      raise ValueError(f"cyclic_context {self.cyclic_context} must be a multiple of the temporal "
                       f"down-sampling factor {factor}")
    self.latent_context = self.cyclic_context // factor
    common = dict(base_channels=self.base_channels, channel_mult=tuple(self.channel_mult),
                  temporal_down=tuple(self.temporal_down),
                  mid_attention_heads=self.mid_attention_heads, remat=self.remat,
                  dtype=self.dtype, conv_impl=self.conv_impl)
    self.encoder = Encoder3D(latent_channels=self.latent_channels,
                             num_res_blocks=self.num_res_blocks, **common)
    self.decoder = Decoder3D(decoder_res_blocks=self.decoder_res_blocks, **common)
    if self.quant_convs:
      one = lambda features, name: conv3d.conv3d(features, 1, dtype=self.dtype, name=name)
      self.quant_conv = one(2 * self.latent_channels, "quant_conv")
      self.post_quant_conv = one(self.latent_channels, "post_quant_conv")

  def latent_shape(self, video_shape):
    return latent_shape(video_shape, self.channel_mult, self.temporal_down, self.latent_channels)

  def encode(self, video):
    """(B, F, H, W) uint8 whole cines (or float already in [-1, 1]) -> DiagonalGaussian."""
    moments = self._moments(wrap_cycle(video, self.cyclic_context))
    return DiagonalGaussian.from_moments(cut_context(moments, self.latent_context))

  def _moments(self, video):
    if video.ndim != 4:
      raise ValueError(f"expected a (B, F, H, W) cine, got shape {video.shape}")
    self.latent_shape(video.shape[1:])   # raises on sizes that do not divide
    x = cmr_to_float(video) if video.dtype == jnp.uint8 else video
    moments = self.encoder(x[..., None])
    return self.quant_conv(moments) if self.quant_convs else moments

  def normalize(self, z):
    """A posterior sample (or mean) -> the latent the decoder reads."""
    return decoder_latent(z, self.latent_norm)

  def decode(self, z):
    """A whole cine's decoder-space latent (B, F', H', W', C) -> (B, F, H, W) float32."""
    recon = self._decode(wrap_cycle(z, self.latent_context))
    return cut_context(recon, self.cyclic_context)

  def _decode(self, z):
    if self.quant_convs:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z)

  def __call__(self, video, sample=True):
    """Whole cines -> (recon (B, F, H, W) float32, posterior)."""
    return self.window(wrap_cycle(video, self.cyclic_context), sample)

  def window(self, video, sample=True):
    """A training window: the F frames scored with `cyclic_context` frames of the same cycle
    either side (B, F + 2c, H, W) -> (recon of the F, their posterior). The decoder reads the
    window's whole latent, as `decode` reads a whole cine's wrapped one."""
    moments = self._moments(video)
    posterior = DiagonalGaussian.from_moments(moments)
    z = posterior.sample(self.make_rng("sample")) if sample else posterior.mode()
    recon = cut_context(self._decode(self.normalize(z)), self.cyclic_context)
    return recon, DiagonalGaussian.from_moments(cut_context(moments, self.latent_context))

  def flops(self, video_shape):
    return vae_flops(video_shape, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                                     if f.name not in ("parent", "name", "dtype", "conv_impl")})


def vae_flops(video_shape, **sizes):
  """Forward FLOPs (encode + decode) per example: 2 * out_voxels * kernel volume * c_in * c_out
  summed over every conv, plus the attention products (2 * 2 * N^2 * C), counted while tracing
  the model's shapes, so the count follows the model. Norms, activations and the sampling are
  left out (a few % at most)."""
  model = VAE3D(**sizes, parent=None)   # not a submodule of a caller (`VAE3D.flops`)
  counted = []

  def count(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(module, conv3d.Conv3D):
      kt, kh, kw = module.kernel_size
      counted.append(2 * (out.size // out.shape[-1]) * kt * kh * kw * args[0].shape[-1]
                     * module.features)
    elif context.method_name == "__call__" and isinstance(module, MidAttention3D):
      b, f, h, w, c = args[0].shape
      counted.append(2 * 2 * b * (f * h * w) ** 2 * c)
    return out

  video = jax.ShapeDtypeStruct((1,) + tuple(video_shape), jnp.float32)
  with nn.intercept_methods(count):   # init runs the forward once: that pass is the count
    jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v, sample=False), video)
  return int(sum(counted))
