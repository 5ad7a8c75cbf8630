"""The CMR encoder (a ViT over cine CMR) and its masked autoencoder.

The cine (B, F, H, W) is cut into tube patches of (pt, p, p): pt = F stacks
all frames as channels of a 2D ViT (the authors' default), pt < F gives the
3D variant. One code path serves both.
"""

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from cardionets_jax.models import layers


def cmr_to_float(video):
  """uint8 [0, 255] -> [-1, 1] (docs/method.md, Preprocessing: x / 127.5 - 1)."""
  return video.astype(jnp.float32) / 127.5 - 1.0


def patchify(video, patch):
  """(B, F, H, W) -> (B, tokens, pt * ph * pw), tokens ordered (t, h, w)."""
  b, f, h, w = video.shape
  pt, ph, pw = patch
  x = video.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6)
  return x.reshape(b, (f // pt) * (h // ph) * (w // pw), pt * ph * pw)


def unpatchify(tokens, patch, video_shape):
  """Inverse of `patchify`; video_shape is (F, H, W)."""
  f, h, w = video_shape
  pt, ph, pw = patch
  b = tokens.shape[0]
  x = tokens.reshape(b, f // pt, h // ph, w // pw, pt, ph, pw)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6)
  return x.reshape(b, f, h, w)


def patch_shape(num_frames, patch_size, patch_frames=None):
  return (patch_frames or num_frames, patch_size, patch_size)


def num_tokens(video_shape, patch):
  return (video_shape[0] // patch[0]) * (video_shape[1] // patch[1]) * (video_shape[2] // patch[2])


POOLS = ("cls_prenorm", "cls", "mean", "tokens")


class CmrEncoder(nn.Module):
  """ViT over tube patches of a cine (timm's VisionTransformer with the frames as channels);
  `__call__` gives pooled features.

  pool: "cls_prenorm" the CLS token of the last block before the final LayerNorm (what the
  release aligns to: timm's `forward_features` with the norm left out); "cls" the final-normed
  CLS token; "mean" the mean of the final-normed patch tokens; "tokens" every final-normed patch
  token, flattened in patch order (B, N * width): the grid itself, where each chamber is, which
  a pooled vector of an MAE encoder does not keep (docs/method.md, Stage 1).
  """
  num_frames: int
  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_frames: Optional[int] = None
  pool: str = "cls_prenorm"
  norm_eps: float = 1e-6          # timm's ViT
  exact_gelu: bool = True
  dtype: Any = jnp.float32
  stack: layers.Stack = layers.Stack()   # scan / remat of the transformer blocks

  @property
  def patch(self):
    return patch_shape(self.num_frames, self.patch_size, self.patch_frames)

  @property
  def num_patches(self):
    return num_tokens((self.num_frames, self.image_size, self.image_size), self.patch)

  @property
  def feature_dim(self):
    """Length of the features `__call__` returns."""
    return self.width * (self.num_patches if self.pool == "tokens" else 1)

  def setup(self):
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
    self.patch_embed = layers.logical_dense(self.width, ("patch", "embed"), dtype=self.dtype)
    self.pos_embed = layers.learned_embedding(self, "pos_embed", (1, self.num_patches, self.width),
                                              (None, "seq", "embed"))
    # timm's cls_token with its position embedding (pos_embed[:, 0]) folded in.
    self.cls = layers.learned_embedding(self, "cls", (1, 1, self.width), (None, None, "embed"))
    self.transformer = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, dtype=self.dtype,
                                          norm_eps=self.norm_eps, exact_gelu=self.exact_gelu,
                                          stack=self.stack)

  def embed(self, video):
    """uint8 cine -> position-embedded patch tokens (B, N, width)."""
    x = patchify(cmr_to_float(video), self.patch).astype(self.dtype)
    x = self.patch_embed(x) + self.pos_embed.astype(self.dtype)
    return layers.constrain(x, "batch", "seq", "embed")

  def encode(self, tokens, train=False, normalize=True):
    """Prepends CLS and runs the transformer: (B, n, D) -> (B, 1 + n, D), final-normed unless
    `normalize` is False."""
    cls = jnp.broadcast_to(self.cls.astype(tokens.dtype), (tokens.shape[0], 1, self.width))
    return self.transformer(jnp.concatenate([cls, tokens], axis=1), train, normalize=normalize)

  def __call__(self, video, train=False):
    h = self.encode(self.embed(video), train, normalize=self.pool != "cls_prenorm")
    if self.pool == "tokens":
      features = h[:, 1:].reshape(h.shape[0], -1)
    elif self.pool == "mean":
      features = jnp.mean(h[:, 1:], axis=1)
    else:
      features = h[:, 0]
    return features.astype(jnp.float32)


class MaskedAutoencoder(nn.Module):
  """MAE: encode a random 1 - mask_ratio of the patches, rebuild the rest."""
  encoder: CmrEncoder
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  decoder_mlp_dim: int
  mask_ratio: float = 0.75
  dtype: Any = jnp.float32

  def setup(self):
    enc = self.encoder
    patch_dim = enc.patch[0] * enc.patch[1] * enc.patch[2]
    self.decoder_embed = layers.logical_dense(self.decoder_width, ("embed", None), dtype=self.dtype)
    self.mask_token = layers.learned_embedding(self, "mask_token", (1, 1, self.decoder_width),
                                               (None, None, "embed"))
    self.decoder_pos_embed = layers.learned_embedding(
        self, "decoder_pos_embed", (1, enc.num_patches + 1, self.decoder_width), (None, "seq", "embed"))
    self.decoder = layers.Transformer(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim,
                                      dtype=self.dtype, norm_eps=enc.norm_eps,
                                      exact_gelu=enc.exact_gelu, stack=enc.stack)
    self.predict = layers.logical_dense(patch_dim, ("embed", "patch"), dtype=self.dtype)

  def __call__(self, video, train=False):
    """Returns (pred, mask): per-patch pixels (B, N, patch_dim) and 1 where masked."""
    x = self.encoder.embed(video)
    b, n, _ = x.shape
    n_keep = max(1, int(round(n * (1.0 - self.mask_ratio))))
    noise = jax.random.uniform(self.make_rng("mask"), (b, n))
    order = jnp.argsort(noise, axis=1)          # random permutation per example
    restore = jnp.argsort(order, axis=1)
    visible = jnp.take_along_axis(x, order[:, :n_keep, None], axis=1)
    h = self.encoder.encode(visible, train)

    d = self.decoder_embed(h)
    mask_tokens = jnp.broadcast_to(self.mask_token.astype(d.dtype), (b, n - n_keep, d.shape[-1]))
    tokens = jnp.take_along_axis(jnp.concatenate([d[:, 1:], mask_tokens], axis=1),
                                 restore[:, :, None], axis=1)
    d = jnp.concatenate([d[:, :1], tokens], axis=1) + self.decoder_pos_embed.astype(d.dtype)
    pred = self.predict(self.decoder(d, train))[:, 1:]
    mask = (restore >= n_keep).astype(jnp.float32)
    return pred.astype(jnp.float32), mask

  def features(self, video):
    return self.encoder(video)
