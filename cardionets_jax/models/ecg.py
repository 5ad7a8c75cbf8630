"""The ECG encoder: ST-MEM's ViT over 12-lead ECG (Na et al., 2024).

Each example is z-scored (jointly over leads and time, as ST-MEM's
`standardize`), each lead cut into non-overlapping patches of `patch_size`
samples and embedded by LayerNorm(patch) -> Linear -> LayerNorm(width),
shared by all leads. A token gets a position embedding (patch index within its lead,
shared by all leads) and a lead embedding. Each lead's sequence is framed by a
learned SEP token before the first and after the last patch; the SEP tokens
carry the lead embedding too, and position embeddings of their own (index 0,
"before first", and the last index, "after last"). The 12 framed leads are
concatenated, S = num_leads * (n + 2) tokens, and run through the transformer.
Features are the mean over the patch tokens of the present leads, then the
final LayerNorm (ST-MEM's order, `pool="mean_then_norm"`); `"norm_then_mean"`
norms every token before the mean (this project's earlier encoder).

With the defaults (eps 1e-5, exact GELU, patch norms, mean then norm) the
module computes what ST-MEM's `ST_MEM_ViT.forward_encoding` computes on the
same weights (`cardionets_jax.convert.stmem` maps them).

Absent leads (`lead_mask` 0) are zeroed by the normalisation, excluded from
its statistics, never attended to (a key mask in every attention layer) and
left out of the pooling, so their signal cannot influence the features.

Token order: lead-major, [SEP, p_1 .. p_n, SEP] for lead 0, then lead 1, ...
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cardionets_jax.models import layers


def normalize_ecg(ecg, lead_mask=None, eps=1e-6):
  """Z-scores each example over (present leads, time).

  ecg: (B, L, T). lead_mask: None (all present), (L,) or (B, L); nonzero =
  present. Returns float32 (B, L, T): zero mean and unit (population) std over
  the present leads' samples; absent leads are exactly 0 (whatever they held,
  NaN included) and do not enter the statistics. The std is floored at `eps`,
  so a flat or fully absent record gives zeros rather than NaN.
  """
  x = jnp.asarray(ecg, jnp.float32)
  b, num_leads, t = x.shape
  present = present_leads(lead_mask, b, num_leads)[:, :, None]           # (B, L, 1) bool
  count = jnp.maximum(jnp.sum(present, axis=(1, 2), keepdims=True) * t, 1).astype(jnp.float32)
  x = jnp.where(present, x, 0.0)
  mean = jnp.sum(x, axis=(1, 2), keepdims=True) / count
  centered = jnp.where(present, x - mean, 0.0)
  var = jnp.sum(jnp.square(centered), axis=(1, 2), keepdims=True) / count
  return centered / jnp.sqrt(jnp.maximum(var, eps * eps))


def present_leads(lead_mask, batch, num_leads):
  """None | (L,) | (B, L) -> (B, L) bool."""
  if lead_mask is None:
    return jnp.ones((batch, num_leads), bool)
  m = jnp.asarray(lead_mask)
  if m.shape not in ((num_leads,), (batch, num_leads)):
    raise ValueError(f"lead_mask must have shape ({num_leads},) or ({batch}, {num_leads}), "
                     f"got {m.shape}")
  return jnp.broadcast_to(m != 0, (batch, num_leads))


def num_patches(num_samples, patch_size):
  return num_samples // patch_size


def num_tokens(num_samples, patch_size, num_leads=12):
  """Sequence length of the transformer: every lead's patches plus its two SEPs."""
  return num_leads * (num_patches(num_samples, patch_size) + 2)


def patch_token_positions(num_patches_per_lead, num_leads=12):
  """(S,) bool numpy: True at patch tokens, False at SEP tokens."""
  lead = np.ones(num_patches_per_lead + 2, bool)
  lead[0] = lead[-1] = False
  return np.tile(lead, num_leads)


def ecg_flops(num_samples, patch_size, width, depth, mlp_dim, num_leads=12):
  """Forward matmul FLOPs of `EcgEncoder` for one example."""
  n = num_patches(num_samples, patch_size)
  embed = 2 * num_leads * n * patch_size * width
  return embed + layers.transformer_flops(num_tokens(num_samples, patch_size, num_leads), width,
                                          depth, mlp_dim)


POOLS = ("mean_then_norm", "norm_then_mean")


class EcgEncoder(nn.Module):
  """ST-MEM ViT over (B, num_leads, T) ECG; `__call__` gives (B, width) features.

  T may be shorter than `num_samples` (a multiple of `patch_size`: the first
  T // patch_size position embeddings are used); longer raises ValueError,
  cropping is the caller's job. `dropout` applies to the embedded tokens and
  inside the transformer (needs a 'dropout' rng when training).
  """
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_leads: int = 12
  num_samples: int = 2250
  patch_size: int = 75
  dropout: float = 0.0
  norm_eps: float = 1e-5          # ST-MEM's (PyTorch's default); timm's ViT uses 1e-6
  exact_gelu: bool = True         # erf GELU (PyTorch's nn.GELU); False: the tanh approximation
  patch_norm: bool = True         # LayerNorms before and after the patch embedding
  pool: str = "mean_then_norm"    # see POOLS
  dtype: Any = jnp.float32
  stack: layers.Stack = layers.Stack()   # scan / remat of the transformer blocks

  @property
  def num_patches(self):
    return num_patches(self.num_samples, self.patch_size)

  @property
  def num_tokens(self):
    return num_tokens(self.num_samples, self.patch_size, self.num_leads)

  def setup(self):
    if self.pool not in POOLS:
      raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
    if self.patch_norm:
      self.patch_norm_in = layers.layer_norm(self.dtype, eps=self.norm_eps, axis="patch")
      self.patch_norm_out = layers.layer_norm(self.dtype, eps=self.norm_eps)
    self.patch_embed = layers.logical_dense(self.width, ("patch", "embed"), dtype=self.dtype)
    # Index 0: the SEP before a lead; 1..n: its patches; n + 1: the SEP after it.
    self.pos_embed = layers.learned_embedding(self, "pos_embed", (1, self.num_patches + 2, self.width),
                                              (None, "seq", "embed"))
    self.lead_embed = layers.learned_embedding(self, "lead_embed", (self.num_leads, self.width),
                                               (None, "embed"))
    self.sep_embed = layers.learned_embedding(self, "sep_embed", (self.width,), ("embed",))
    self.embed_dropout = nn.Dropout(self.dropout)
    self.transformer = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dropout,
                                          dtype=self.dtype, norm_eps=self.norm_eps,
                                          exact_gelu=self.exact_gelu, final_norm=False,
                                          stack=self.stack)
    self.ln_final = layers.layer_norm(self.dtype, eps=self.norm_eps)

  def _check(self, ecg):
    if ecg.ndim != 3 or ecg.shape[1] != self.num_leads:
      raise ValueError(f"ecg must be (batch, {self.num_leads}, samples), got {ecg.shape}")
    t = ecg.shape[2]
    if t > self.num_samples:
      raise ValueError(f"ecg has {t} samples, more than the encoder's num_samples="
                       f"{self.num_samples}; crop it first (e.g. a random or centre crop)")
    if t % self.patch_size or t == 0:
      raise ValueError(f"ecg length {t} is not a positive multiple of patch_size={self.patch_size}")
    return t // self.patch_size

  def patch_tokens(self, ecg, present):
    """Raw ECG (B, L, T), present (B, L) bool -> embedded patches (B, L, n, width) in `dtype`,
    position embeddings 1..n added."""
    n = self._check(ecg)
    b, num_leads = ecg.shape[:2]
    x = normalize_ecg(ecg, present).reshape(b, num_leads, n, self.patch_size).astype(self.dtype)
    if self.patch_norm:
      x = self.patch_norm_in(x)
    x = self.patch_embed(x)                                              # (B, L, n, width)
    if self.patch_norm:
      x = self.patch_norm_out(x)
    return x + self.pos_embed[0, 1:n + 1].astype(self.dtype)

  def frame_leads(self, x):
    """(B, L, k, width) patch tokens (any k: ST-MEM pre-training frames the kept ones) ->
    (B, L * (k + 2), width): each lead between its two SEPs, lead embeddings on all."""
    b, num_leads, _, width = x.shape
    pos = self.pos_embed[0].astype(self.dtype)                           # (n_max + 2, width)
    sep = self.sep_embed.astype(self.dtype)
    first = jnp.broadcast_to(sep + pos[0], (b, num_leads, 1, width))
    last = jnp.broadcast_to(sep + pos[-1], (b, num_leads, 1, width))
    x = jnp.concatenate([first, x, last], axis=2)                        # (B, L, k + 2, width)
    x = x + self.lead_embed.astype(self.dtype)[:, None, :]
    return layers.constrain(x.reshape(b, -1, width), "batch", "seq", "embed")

  def embed(self, ecg, lead_mask=None, train=False):
    """Raw ECG -> (tokens (B, S, width) in `dtype`, key mask (B, S) bool).

    The key mask is True at every token (SEP included) of a present lead.
    """
    present = present_leads(lead_mask, ecg.shape[0], ecg.shape[1])
    x = self.patch_tokens(ecg, present)
    key_mask = jnp.repeat(present, x.shape[2] + 2, axis=1)
    return self.embed_dropout(self.frame_leads(x), deterministic=not train), key_mask

  def encode(self, x, mask=None, train=False):
    """Framed tokens (B, S, width) -> transformer output, not yet normed."""
    return self.transformer(x, train, mask=mask)

  def tokens(self, ecg, lead_mask=None, train=False):
    """Output tokens (B, S, width) in `dtype`, each final-normed, and their mask (B, S).

    The mask is True at every token (SEP included) of a present lead; use
    `patch_token_positions` to drop the SEPs. Without a lead_mask no attention
    mask is applied at all (every lead present).
    """
    x, key_mask = self.embed(ecg, lead_mask, train)
    h = self.encode(x, None if lead_mask is None else key_mask, train)
    return self.ln_final(h), key_mask

  def __call__(self, ecg, lead_mask=None, train=False):
    """(B, num_leads, T) ECG -> (B, width) float32: the present leads' patch tokens pooled."""
    x, key_mask = self.embed(ecg, lead_mask, train)
    h = self.encode(x, None if lead_mask is None else key_mask, train)
    if self.pool == "norm_then_mean":
      h = self.ln_final(h)
    n = h.shape[1] // self.num_leads - 2
    pool = key_mask & jnp.asarray(patch_token_positions(n, self.num_leads))[None]
    h = jnp.where(pool[:, :, None], h.astype(jnp.float32), 0.0)
    count = jnp.maximum(jnp.sum(pool, axis=1, keepdims=True), 1).astype(jnp.float32)
    feats = jnp.sum(h, axis=1) / count
    if self.pool == "mean_then_norm":
      feats = self.ln_final(feats.astype(self.dtype))
    return layers.constrain(feats.astype(jnp.float32), "batch", "embed")
