"""MAR: a masked autoregressive generator over VAE-latent tokens, with a per-token diffusion head.

Latents (T, H, W, C) are cut into (pt, ph, pw) patches: tokens of dimension
C * pt * ph * pw in (t, h, w) raster order, the values inside a token ordered (c, pt, ph, pw) as
the release's `patchify` orders them. The encoder sees a buffer of
condition tokens (the ECG embedding through two linear layers, or a learned
"no condition" vector for classifier-free guidance) and the known tokens; the
decoder puts a mask token at every unknown position; its output plus a
per-position embedding conditions the diffusion head of each token.

Shapes stay static under jit: the encoder takes the known tokens as
positions `known_idx` (B, K) with a validity mask, so in training K is the
most tokens a mask ratio of at least `min_mask_ratio` can leave (extra slots
are masked out of attention) and in sampling K is the step's exact count.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax.models import diffusion
from cardionets_jax.models import layers

Dtype = Any
COND_ACTIVATIONS = {"none": lambda x: x, "gelu": nn.gelu}
MASK_RATIOS_PER = ("batch", "example")


def patchify_latent(latent, patch):
  """(B, T, H, W, C) -> (B, T/pt * H/ph * W/pw, C * pt * ph * pw)."""
  b, t, h, w, c = latent.shape
  pt, ph, pw = patch
  if t % pt or h % ph or w % pw:
    raise ValueError(f"Latent {latent.shape[1:]} does not split into {tuple(patch)} patches")
  x = latent.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6)
  return x.reshape(b, (t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify_latent(tokens, patch, latent_shape):
  """The inverse of `patchify_latent`; latent_shape is (T, H, W, C)."""
  t, h, w, c = latent_shape
  pt, ph, pw = patch
  b = tokens.shape[0]
  x = tokens.reshape(b, t // pt, h // ph, w // pw, c, pt, ph, pw)
  return x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t, h, w, c)


def token_layout(latent_shape, patch):
  """(number of tokens, token dimension) of a latent."""
  t, h, w, c = latent_shape
  pt, ph, pw = patch
  return (t // pt) * (h // ph) * (w // pw), pt * ph * pw * c


class MAR(nn.Module):
  seq_len: int
  token_dim: int
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  decoder_width: int = 768
  decoder_depth: int = 12
  decoder_heads: int = 12
  decoder_mlp_dim: int = 3072
  buffer_size: int = 64
  dropout: float = 0.1
  head_width: int = 1024
  head_depth: int = 3
  cond_activation: str = "none"   # between the condition's two linear layers: "none" (the
                                  # release) or "gelu"
  inner_dropout: bool = True      # dropout also on attention weights and MLP hidden units (timm)
  dtype: Dtype = jnp.float32
  stack: layers.Stack = layers.Stack()   # scan / remat of the encoder's and decoder's blocks

  def setup(self):
    if self.cond_activation not in COND_ACTIVATIONS:
      raise ValueError(f"cond_activation must be one of {tuple(COND_ACTIVATIONS)}, "
                       f"got {self.cond_activation!r}")
    dense = lambda f, axes, name: layers.logical_dense(f, axes, dtype=self.dtype, name=name)
    embedding = lambda name, shape, axes: layers.learned_embedding(self, name, shape, axes)
    self.cond_fc1 = dense(self.width, ("embed", "mlp"), "cond_fc1")
    self.cond_fc2 = dense(self.width, ("mlp", "embed"), "cond_fc2")
    self.null_condition = embedding("null_condition", (self.width,), ("embed",))
    self.token_proj = dense(self.width, ("patch", "embed"), "token_proj")
    self.encoder_pos = embedding("encoder_pos", (self.buffer_size + self.seq_len, self.width),
                                 ("seq", "embed"))
    self.token_ln = layers.layer_norm(self.dtype, "token_ln")
    self.encoder = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, self.dropout,
                                      self.dtype, inner_dropout=self.inner_dropout, stack=self.stack,
                                      name="encoder")
    self.decoder_proj = dense(self.decoder_width, ("embed", "mlp"), "decoder_proj")
    self.mask_token = embedding("mask_token", (self.decoder_width,), ("embed",))
    self.decoder_pos = embedding("decoder_pos", (self.buffer_size + self.seq_len, self.decoder_width),
                                 ("seq", "embed"))
    self.decoder = layers.Transformer(self.decoder_depth, self.decoder_heads, self.decoder_mlp_dim,
                                      self.dropout, self.dtype, inner_dropout=self.inner_dropout,
                                      stack=self.stack, name="decoder")
    self.diffusion_pos = embedding("diffusion_pos", (self.seq_len, self.decoder_width), ("seq", "embed"))
    self.head = diffusion.DiffusionHead(self.head_width, self.head_depth, 2 * self.token_dim,
                                        dtype=self.dtype, name="head")

  def condition(self, embedding, keep):
    """(B, E) ECG embeddings -> (B, width); rows where keep is False get the null condition."""
    activation = COND_ACTIVATIONS[self.cond_activation]
    c = self.cond_fc2(activation(self.cond_fc1(embedding.astype(self.dtype))))
    return jnp.where(keep[:, None], c, self.null_condition.astype(self.dtype))

  def __call__(self, tokens, embedding, cond_keep, known_idx, known_valid, train=False):
    """Per-token conditions z (B, S, decoder_width) for the diffusion head.

    tokens (B, S, token_dim): only the rows at `known_idx` are read.
    known_idx (B, K) int, known_valid (B, K) bool: the known tokens.
    embedding (B, E), cond_keep (B,) bool: the condition, or the null one.
    """
    b = tokens.shape[0]
    cond = self.condition(embedding, cond_keep)
    known = jnp.take_along_axis(tokens, known_idx[..., None], axis=1).astype(self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cond[:, None], (b, self.buffer_size, self.width)),
                         self.token_proj(known)], axis=1)
    pos = jnp.concatenate([jnp.broadcast_to(self.encoder_pos[None, :self.buffer_size],
                                            (b, self.buffer_size, self.width)),
                           jnp.take(self.encoder_pos[self.buffer_size:], known_idx, axis=0)], axis=1)
    x = self.token_ln(x + pos.astype(self.dtype))
    x = layers.constrain(x, "batch", "seq", "embed")
    key_mask = jnp.concatenate([jnp.ones((b, self.buffer_size), bool), known_valid], axis=1)
    x = self.encoder(x, train, key_mask)

    x = self.decoder_proj(x)
    mask_token = self.mask_token.astype(x.dtype)
    known_out = jnp.where(known_valid[..., None], x[:, self.buffer_size:], mask_token)
    full = jnp.broadcast_to(mask_token, (b, self.seq_len, self.decoder_width))
    full = full.at[jnp.arange(b)[:, None], known_idx].set(known_out)
    x = jnp.concatenate([x[:, :self.buffer_size], full], axis=1) + self.decoder_pos.astype(x.dtype)
    x = layers.constrain(x, "batch", "seq", "embed")
    x = self.decoder(x, train)
    return x[:, self.buffer_size:] + self.diffusion_pos.astype(x.dtype)

  def denoise(self, x_t, timesteps, z):
    """The diffusion head on rows: (N, token_dim), (N,), (N, decoder_width) -> (N, 2 token_dim)."""
    return self.head(x_t, timesteps, z)

  def loss(self, tokens, embedding, cond_keep, mask, known_idx, known_valid, sched, rng,
           diffusion_mul=1, train=False):
    """Mean diffusion loss over the masked tokens (B, S) `mask`.

    Each token's loss is drawn `diffusion_mul` times (fresh timestep and
    noise), which trains the cheap head on more samples per transformer pass.
    """
    z = self(tokens, embedding, cond_keep, known_idx, known_valid, train)
    rows = lambda x: layers.constrain(
        jnp.tile(x.reshape((-1,) + x.shape[2:]), (diffusion_mul,) + (1,) * (x.ndim - 2)),
        "batch", *(None,) * (x.ndim - 2))
    per_row = diffusion.training_losses(
        sched, lambda x_t, t: self.denoise(x_t, t, rows(z)), rows(tokens), rng)
    weight = rows(mask.astype(jnp.float32))
    return jnp.sum(per_row * weight) / jnp.maximum(jnp.sum(weight), 1.0)


def training_mask(rng, batch, seq_len, min_ratio=0.7, mean=1.0, std=0.25, per="batch"):
  """A random generation order per example and a mask: the ratio is drawn from a normal(mean,
  std) truncated to [min_ratio, 1], once for the batch (`per="batch"`, the release) or per
  example; the first ceil(ratio * S) tokens in each order are masked.

  Returns (mask (B, S) bool: to predict, known_idx (B, K), known_valid (B, K))
  with K = S - ceil(min_ratio * S), the most tokens any ratio leaves known.
  """
  order_rng, ratio_rng = jax.random.split(rng)
  order = jnp.argsort(jax.random.uniform(order_rng, (batch, seq_len)), axis=1)
  lower = (min_ratio - mean) / std
  upper = (1.0 - mean) / std
  if per not in MASK_RATIOS_PER:
    raise ValueError(f"per must be one of {MASK_RATIOS_PER}, got {per!r}")
  draws = jax.random.truncated_normal(ratio_rng, lower, upper, (batch if per == "example" else 1,))
  ratio = jnp.broadcast_to(mean + std * draws, (batch,))
  min_masked = max_masked_known(seq_len, min_ratio)[0]
  num_masked = jnp.clip(jnp.ceil(ratio * seq_len).astype(jnp.int32), min_masked, seq_len)
  rank = jnp.argsort(order, axis=1)  # position -> its place in the order
  mask = rank < num_masked[:, None]
  k = seq_len - min_masked
  known_idx = order[:, seq_len - k:]
  known_valid = jnp.arange(seq_len - k, seq_len)[None] >= num_masked[:, None]
  return mask, known_idx, known_valid


def max_masked_known(seq_len, min_ratio):
  """(fewest masked tokens, most known tokens) for a mask ratio >= min_ratio."""
  fewest = int(math.ceil(min_ratio * seq_len - 1e-9))
  return fewest, seq_len - fewest


def mask_schedule(seq_len, num_iter):
  """Masked-token counts M_0 = S > M_1 > ... > M_num_iter = 0 of the cosine schedule.

  Step s predicts the tokens at places M_{s+1} .. M_s - 1 of the order; every
  step predicts at least one token, so with more steps than tokens it ends early.
  """
  counts = [seq_len]
  for s in range(num_iter):
    if s == num_iter - 1 or counts[-1] == 1:
      counts.append(0)
      break
    m = int(np.floor(seq_len * np.cos(np.pi / 2 * (s + 1) / num_iter)))
    counts.append(max(1, min(counts[-1] - 1, m)))
  return counts


def sample_tokens(model, params, embedding, rng, *, sched, num_iter, cfg_scale=1.0,
                  cfg_schedule="linear", temperature=1.0, clip_x0=None, conditioned=True):
  """Generates token sequences (B, S, token_dim); traceable under one `jax.jit`.

  `num_iter` autoregressive steps (unrolled: each has its own static token
  counts), each running the diffusion sampler over the tokens it predicts in
  one `lax.scan`. With `conditioned` False every row gets the null condition
  and guidance is off. Guidance: eps = eps_null + w (eps_cond - eps_null),
  w = cfg_scale ("constant") or rising linearly from 1 with the share of
  tokens known ("linear"); the variance comes from the conditioned pass.
  `clip_x0` bounds each diffusion step's implied token (`diffusion.p_mean_variance`).
  """
  apply = lambda method, *args: model.apply({"params": params}, *args, method=method)
  b = embedding.shape[0]
  seq_len = model.seq_len
  order_rng, rng = jax.random.split(rng)
  order = jnp.argsort(jax.random.uniform(order_rng, (b, seq_len)), axis=1)
  tokens = jnp.zeros((b, seq_len, model.token_dim), jnp.float32)
  guided = conditioned and cfg_scale != 1.0
  keep = jnp.full((b,), conditioned)
  if guided:
    embedding = jnp.concatenate([embedding, embedding])
    keep = jnp.concatenate([keep, jnp.zeros((b,), bool)])
  counts = mask_schedule(seq_len, num_iter)
  for s in range(len(counts) - 1):
    known_idx = order[:, counts[s]:]
    new_idx = order[:, counts[s + 1]:counts[s]]
    n = new_idx.shape[1]
    rows = jnp.concatenate([tokens, tokens]) if guided else tokens
    idx = jnp.concatenate([known_idx, known_idx]) if guided else known_idx
    z = model.apply({"params": params}, rows, embedding, keep, idx, jnp.ones(idx.shape, bool))
    z = jnp.take_along_axis(z, (jnp.concatenate([new_idx, new_idx]) if guided else new_idx)[..., None],
                            axis=1)
    z = z.reshape(-1, z.shape[-1])
    if cfg_schedule == "linear":
      w = 1.0 + (cfg_scale - 1.0) * (seq_len - counts[s + 1]) / seq_len
    elif cfg_schedule == "constant":
      w = cfg_scale
    else:
      raise ValueError(f"Unknown cfg_schedule {cfg_schedule!r}: 'linear' or 'constant'")

    def net_fn(x, t, z=z, w=w):
      if not guided:
        return jnp.split(apply(MAR.denoise, x, t, z), 2, axis=-1)
      out = apply(MAR.denoise, jnp.concatenate([x, x]), jnp.concatenate([t, t]), z)
      eps, var_values = jnp.split(out, 2, axis=-1)
      eps_cond, eps_null = jnp.split(eps, 2)
      return eps_null + w * (eps_cond - eps_null), jnp.split(var_values, 2)[0]

    step_rng, noise_rng, rng = jax.random.split(rng, 3)
    noise = jax.random.normal(noise_rng, (b * n, model.token_dim), jnp.float32)
    new = diffusion.sample(sched, net_fn, noise, step_rng, temperature, clip_x0).reshape(b, n, -1)
    tokens = tokens.at[jnp.arange(b)[:, None], new_idx].set(new)
  return tokens


def mar_flops(seq_len, token_dim, *, width, depth, mlp_dim, decoder_width, decoder_depth,
              decoder_mlp_dim, buffer_size, head_width, head_depth, known, head_rows):
  """Forward FLOPs of one example: `known` tokens into the encoder, `head_rows` head evaluations."""
  encoder = 2 * known * token_dim * width + layers.transformer_flops(
      buffer_size + known, width, depth, mlp_dim)
  decoder = 2 * (buffer_size + known) * width * decoder_width + layers.transformer_flops(
      buffer_size + seq_len, decoder_width, decoder_depth, decoder_mlp_dim)
  return encoder + decoder + head_rows * diffusion.head_flops(head_width, head_depth, token_dim,
                                                              decoder_width)
