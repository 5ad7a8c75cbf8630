"""Losses: pure functions of arrays, computed in float32."""

import jax
import jax.numpy as jnp
import optax


def mae_loss(pred, target, mask, norm_pix=True, eps=1e-6, ddof=0):
  """Mean squared error over masked patches (He et al., MAE).

  pred, target: (B, N, D); mask: (B, N), 1 where the patch was hidden.
  With norm_pix the target is each patch normalised by its own mean and std
  (`ddof`: 0 as MAE, 1 as ST-MEM's `torch.var`).
  """
  pred = pred.astype(jnp.float32)
  target = target.astype(jnp.float32)
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=ddof)
    target = (target - mean) / jnp.sqrt(var + eps)
  per_patch = jnp.mean(jnp.square(pred - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ---------------------------------------------------------------------------
# Stage 2: weighted InfoNCE (docs/method.md, Stage 2), in log space.


def _pairwise_sq_dists(phi):
  """(B, D) -> (B, B) squared Euclidean distances, float32.

  Taken from explicit differences rather than |a|^2 + |b|^2 - 2ab, which
  cancels catastrophically for near neighbours, exactly where log W needs
  relative accuracy. Memory O(B^2 D): 32 MiB at B = 256, D = 128.
  """
  phi = jnp.asarray(phi, jnp.float32)
  diff = phi[:, None, :] - phi[None, :, :]
  return jnp.sum(jnp.square(diff), axis=-1)


def clip_weights(phi, sigma):
  """Negative weights W_ik = 1 - exp(-||phi_i - phi_k||^2 / sigma^2), float32 (B, B).

  Symmetric, in [0, 1), diagonal exactly 0. Computed as -expm1(-d2 / sigma^2),
  accurate for close pairs (no 1 - (1 - tiny) cancellation).
  """
  d2 = _pairwise_sq_dists(phi)
  w = -jnp.expm1(-d2 / jnp.float32(sigma) ** 2)
  return jnp.where(jnp.eye(d2.shape[0], dtype=bool), 0.0, w)


def log_clip_weights(phi, sigma):
  """log W, float32 (B, B), as log(-expm1(-d2 / sigma^2)).

  Accurate over the whole range: ~log(d2 / sigma^2) for close pairs, -> 0 for
  distant ones. The diagonal holds -inf (log W_ii = log 0), as does any pair
  with identical descriptors; `weighted_info_nce` replaces the diagonal by 0
  (the positive keeps weight 1).
  """
  d2 = _pairwise_sq_dists(phi)
  log_w = jnp.log(-jnp.expm1(-d2 / jnp.float32(sigma) ** 2))
  return jnp.where(jnp.eye(d2.shape[0], dtype=bool), -jnp.inf, log_w)


def _unit(x):
  """Rows scaled to unit L2 norm, robust to huge or tiny norms (float32 in)."""
  # Rescaling by the (gradient-stopped) max first cannot overflow the squares;
  # cosine similarity is scale invariant, so the gradient is unchanged.
  scale = jax.lax.stop_gradient(jnp.max(jnp.abs(x), axis=-1, keepdims=True))
  x = x / jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-12))


def cosine_logits(ecg_emb, cmr_emb, tau):
  """s_ik = cos(e_i, c_k) / tau, float32 (B, B); inputs are cast to float32 first."""
  e = _unit(jnp.asarray(ecg_emb, jnp.float32))
  c = _unit(jnp.asarray(cmr_emb, jnp.float32))
  return jnp.matmul(e, c.T, precision=jax.lax.Precision.HIGHEST) / jnp.float32(tau)


def info_nce_from_logits(logits, log_w=None):
  """Symmetric weighted InfoNCE from similarity logits and log negative-weights.

  logits: (B, B), s_ik with positives on the diagonal. log_w: (B, B)
  symmetric log W (diagonal ignored: the positive keeps weight 1), or None
  for plain InfoNCE (every W_ik = 1). Returns (loss, loss_ecg_to_cmr,
  loss_cmr_to_ecg), each the mean over the batch of
    -s_ii + logsumexp_k (s_ik + log W'_ik),  W'_ii = 1,
  taken over rows (ECG -> CMR) and over columns (CMR -> ECG).
  """
  logits = jnp.asarray(logits, jnp.float32)
  b = logits.shape[0]
  eye = jnp.eye(b, dtype=bool)
  if log_w is not None:
    logits = logits + jnp.where(eye, 0.0, jnp.asarray(log_w, jnp.float32))
  pos = jnp.diagonal(logits)    # s_ii (+ log 1)
  rows = jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)
  cols = jnp.mean(jax.nn.logsumexp(logits, axis=0) - pos)
  return 0.5 * (rows + cols), rows, cols


def weighted_info_nce(ecg_emb, cmr_emb, phi=None, *, tau=0.05, sigma=0.5, weighted=True):
  """Symmetric weighted InfoNCE (CardioNets stage 2), in float32 and log space.

  ecg_emb, cmr_emb: (B, E) paired embeddings (any float dtype; cast to float32
  first). phi: (B, D) descriptors of the CMRs (gradient stopped). With
  s_ik = cos(e_i, c_k) / tau and W_ik = 1 - exp(-||phi_i - phi_k||^2 / sigma^2):

    L_i = -log[ exp(s_ii) / (exp(s_ii) + sum_{k != i} W_ik exp(s_ik)) ]
        = -s_ii + logsumexp_k (s_ik + log W'_ik),   W'_ii = 1, W'_ik = W_ik,

  never through a plain exp (at tau = 0.05, exp(s) reaches e^20). The loss is
  the mean of the ECG -> CMR loss (over rows) and the CMR -> ECG loss (over
  columns, with the same, symmetric, W). A W_ik == 0 for k != i (identical
  descriptors) removes that negative entirely: log W = -inf, which logsumexp
  handles because the positive term s_ii is always finite; it gets zero
  gradient. Negatives that look like the positive clinically thus count less.
  `weighted=False` or phi None gives plain symmetric InfoNCE (CLIP).

  Returns (loss, metrics): metrics hold the two directional losses, top-1
  retrieval accuracies within the batch (on the unweighted similarities), the
  mean positive and negative cosine similarities, and the mean off-diagonal W.
  """
  s = cosine_logits(ecg_emb, cmr_emb, tau)
  b = s.shape[0]
  eye = jnp.eye(b, dtype=bool)
  if weighted and phi is not None:
    phi = jax.lax.stop_gradient(jnp.asarray(phi, jnp.float32))
    log_w = log_clip_weights(phi, sigma)
    mean_w = jnp.sum(jnp.where(eye, 0.0, jnp.exp(log_w))) / max(b * (b - 1), 1)
  else:
    log_w = None
    mean_w = jnp.float32(1.0)
  loss, e2c, c2e = info_nce_from_logits(s, log_w)
  labels = jnp.arange(b)
  cos = jax.lax.stop_gradient(s) * jnp.float32(tau)
  metrics = {
      "loss_ecg_to_cmr": e2c,
      "loss_cmr_to_ecg": c2e,
      "top1_ecg_to_cmr": jnp.mean((jnp.argmax(s, axis=1) == labels).astype(jnp.float32)),
      "top1_cmr_to_ecg": jnp.mean((jnp.argmax(s, axis=0) == labels).astype(jnp.float32)),
      "pos_cos": jnp.mean(jnp.diagonal(cos)),
      "neg_cos": jnp.sum(jnp.where(eye, 0.0, cos)) / max(b * (b - 1), 1),
      "mean_weight": mean_w,
  }
  return loss, metrics


# ---------------------------------------------------------------------------
# Stage 3: the 3-D KL-VAE and its adversarial terms.


def kl_divergence(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) per example, float32 (B,).

  0.5 * sum(mean^2 + exp(logvar) - 1 - logvar) over every non-batch axis.
  """
  mean = jnp.asarray(mean, jnp.float32)
  logvar = jnp.asarray(logvar, jnp.float32)
  per_dim = jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar
  return 0.5 * jnp.sum(per_dim, axis=tuple(range(1, per_dim.ndim)))


def vae_loss(recon, target, mean, logvar, kl_weight, recon_reduction="mean"):
  """L1 reconstruction + kl_weight * KL, float32. Returns (loss, metrics).

  recon, target: (B, ...) in the same scale ([-1, 1]); mean, logvar: the
  posterior (B, ...). KL is summed over latent dims and averaged over the
  batch, as in LDM. The L1 term:
    "mean": mean over batch and pixels (loss = l1 + kl_weight * kl);
    "sum":  summed over pixels and averaged over the batch, LDM's own
            AutoencoderKL loss (with its learned log-variance fixed at 0).
  The two differ by the pixel count N per example: a kl_weight w under
  "sum" equals w / N under "mean" (LDM's 1e-6 on a (50, 96, 96) cine is
  ~2.2e-12 with "mean"). metrics: l1 (always the per-pixel mean), kl (batch
  mean of the per-example KL), loss.
  """
  recon = jnp.asarray(recon, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  abs_err = jnp.abs(recon - target)
  l1 = jnp.mean(abs_err)
  if recon_reduction == "mean":
    rec = l1
  elif recon_reduction == "sum":
    rec = jnp.sum(abs_err) / abs_err.shape[0]
  else:
    raise ValueError(f"recon_reduction must be 'mean' or 'sum', got {recon_reduction!r}")
  kl = jnp.mean(kl_divergence(mean, logvar))
  loss = rec + jnp.float32(kl_weight) * kl
  return loss, {"loss": loss, "l1": l1, "kl": kl}


def hinge_d_loss(logits_real, logits_fake):
  """Discriminator hinge loss: 0.5 * (mean relu(1 - real) + mean relu(1 + fake)), float32."""
  real = jnp.asarray(logits_real, jnp.float32)
  fake = jnp.asarray(logits_fake, jnp.float32)
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))


def generator_adv_loss(logits_fake):
  """The generator's adversarial loss against a hinge discriminator: -mean(logits_fake)."""
  return -jnp.mean(jnp.asarray(logits_fake, jnp.float32))


def outlier_penalty(recon, radius=3.0):
  """The release's penalty on pixels brighter than their frame's mean + radius * std: mean over
  every pixel of relu(x - mean - radius * std), statistics per (B, F) frame over (H, W), std with
  Bessel's correction (torch's default). recon (B, F, H, W); float32."""
  x = jnp.asarray(recon, jnp.float32)
  mean = jnp.mean(x, axis=(-2, -1), keepdims=True)
  std = jnp.std(x, axis=(-2, -1), keepdims=True, ddof=1)
  return jnp.mean(jax.nn.relu(x - mean - radius * std))


def adaptive_weight(rec_grad, adv_grad, max_weight=1e4):
  """LDM's adaptive GAN weight from the two losses' gradients at the decoder's last layer:
  ||rec_grad|| / (||adv_grad|| + 1e-4), clamped to [0, max_weight], without gradient."""
  ratio = optax.tree.norm(rec_grad) / (optax.tree.norm(adv_grad) + 1e-4)
  return jax.lax.stop_gradient(jnp.clip(ratio, 0.0, max_weight))
