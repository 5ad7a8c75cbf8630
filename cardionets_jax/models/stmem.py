"""ST-MEM: spatio-temporal masked ECG modelling (Na et al., ICLR 2024), the encoder's pre-training.

Every lead keeps the same number of patches, k = int(n * (1 - mask_ratio)), chosen at random and
independently per lead. The encoder (`EcgEncoder`, its position embeddings added before the
masking) sees the kept patches of every present lead framed by their SEP tokens; its output is
final-normed token by token. A light decoder embeds them, puts a mask token at every hidden
position, adds its own position embeddings and rebuilds each lead's patches from that lead's
sequence alone (leads are decoded separately). The loss (`losses.mae_loss`) is over the hidden
patches of present leads.

Position embeddings: ST-MEM fixes both (encoder and decoder) to a 1-D sin-cos table with zero
rows at the SEP slots; `sincos_positions` makes it and the stage freezes them.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.models import ecg as ecg_models
from cardionets_jax.models import layers


def sincos_positions(num_patches, width):
  """(1, n + 2, width) float32: row 0 and row n + 1 (the SEP slots) zero, rows 1..n the sin-cos
  code of positions 0..n-1 (sines then cosines, as ST-MEM's table)."""
  half = width // 2
  omega = 1.0 / 10000 ** (np.arange(half, dtype=np.float64) / half)
  angles = np.arange(num_patches, dtype=np.float64)[:, None] * omega[None]
  table = np.zeros((num_patches + 2, width), np.float32)
  table[1:-1, :2 * half] = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  return table[None]


def num_kept(num_patches, mask_ratio):
  return max(1, int(num_patches * (1.0 - mask_ratio)))


class StMem(nn.Module):
  """`__call__(ecg, lead_mask)` -> (pred, target, mask): per-patch predictions and targets
  (B, L * n, patch_size) and the loss mask (B, L * n), 1 at hidden patches of present leads."""
  encoder: ecg_models.EcgEncoder
  decoder_width: int
  decoder_depth: int
  decoder_heads: int
  decoder_mlp_dim: int
  mask_ratio: float = 0.75
  dtype: Any = jnp.float32

  def setup(self):
    enc = self.encoder
    self.decoder_embed = layers.logical_dense(self.decoder_width, ("embed", None), dtype=self.dtype)
    self.mask_token = layers.learned_embedding(self, "mask_token", (1, 1, 1, self.decoder_width),
                                               (None, None, None, "embed"))
    self.decoder_pos_embed = layers.learned_embedding(
        self, "decoder_pos_embed", (1, enc.num_patches + 2, self.decoder_width),
        (None, "seq", "embed"))
    self.decoder = layers.Transformer(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim,
                                      dtype=self.dtype, norm_eps=enc.norm_eps,
                                      exact_gelu=enc.exact_gelu, stack=enc.stack)
    self.predict = layers.logical_dense(enc.patch_size, ("embed", "patch"), dtype=self.dtype)

  def _masking(self, b, num_leads, n):
    """(kept indices (B, L, k), restore order (B, L, n)): a random permutation per lead."""
    noise = jax.random.uniform(self.make_rng("mask"), (b, num_leads, n))
    order = jnp.argsort(noise, axis=2)
    return order[..., :num_kept(n, self.mask_ratio)], jnp.argsort(order, axis=2)

  def _decode(self, h, restore, k, n):
    """Encoder tokens (B, L * (k + 2), width) -> patch predictions (B, L, n, patch_size)."""
    b, num_leads = restore.shape[:2]
    d = self.decoder_embed(h).reshape(b, num_leads, k + 2, self.decoder_width)
    hidden = jnp.broadcast_to(self.mask_token.astype(d.dtype),
                              (b, num_leads, n - k, self.decoder_width))
    patches = jnp.take_along_axis(jnp.concatenate([d[:, :, 1:-1], hidden], axis=2),
                                  restore[..., None], axis=2)
    pos = self.decoder_pos_embed[0].astype(d.dtype)
    seq = jnp.concatenate([d[:, :, :1] + pos[0], patches + pos[1:n + 1], d[:, :, -1:] + pos[-1]],
                          axis=2)
    out = self.decoder(seq.reshape(b * num_leads, n + 2, self.decoder_width))
    return self.predict(out).reshape(b, num_leads, n + 2, -1)[:, :, 1:-1]

  def __call__(self, ecg, lead_mask=None, train=False):
    enc = self.encoder
    b, num_leads, t = ecg.shape
    present = ecg_models.present_leads(lead_mask, b, num_leads)
    x = enc.patch_tokens(ecg, present)                                  # (B, L, n, width)
    n = x.shape[2]
    keep, restore = self._masking(b, num_leads, n)
    kept = jnp.take_along_axis(x, keep[..., None], axis=2)
    tokens = enc.frame_leads(kept)
    key_mask = jnp.repeat(present, keep.shape[2] + 2, axis=1)
    h = enc.ln_final(enc.encode(tokens, None if lead_mask is None else key_mask, train))
    pred = self._decode(h, restore, keep.shape[2], n)
    target = ecg_models.normalize_ecg(ecg, present).reshape(b, num_leads, n, enc.patch_size)
    hidden = (restore >= keep.shape[2]) & present[:, :, None]
    return (pred.reshape(b, num_leads * n, -1).astype(jnp.float32),
            target.reshape(b, num_leads * n, -1), hidden.reshape(b, -1).astype(jnp.float32))
