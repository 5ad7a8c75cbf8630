"""A VAE's reconstruction of held-out cines, and the image scores every cine comparison uses."""

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import image_metrics
from cardionets_jax.evaluators import splits
from cardionets_jax.models import vit

DATA_RANGE = 2.0  # cines live in [-1, 1]


# The scores of every cine comparison, in `scores`' order. Two SSIMs: skimage's default (7 x 7
# uniform window, sample covariance) and the release's (`compute_ssim`: an 11 x 11 Gaussian
# window, sigma 1.5, on [0, 1] frames, only where the window fits), so tables can stand beside
# the paper's.
METRICS = ("ssim", "psnr", "ssim_gaussian11")
METRIC_DEFINITIONS = dict(
    ssim="per-frame SSIM, skimage's default: 7 x 7 uniform window, sample covariance, on the "
         "cines in [-1, 1] (data range 2)",
    psnr="per-frame PSNR in dB, cines in [-1, 1] (data range 2)",
    ssim_gaussian11="per-frame SSIM as the release computes it: 11 x 11 Gaussian window "
                    "(sigma 1.5), population covariance, valid region only, frames in [0, 1]")


def scores(cines, truth):
  """Per-cine METRICS (per frame, averaged) of float cines against float truth."""
  return (image_metrics.cine_ssim(cines, truth, DATA_RANGE),
          image_metrics.cine_psnr(cines, truth, DATA_RANGE),
          # SSIM is not shift-invariant (its luminance term): the release's is on [0, 1] frames.
          image_metrics.cine_ssim((cines + 1) / 2, (truth + 1) / 2, 1.0, gaussian=True))


def reconstructor(vae):
  """jit `(params, uint8 cines) -> (reconstruction in [-1, 1], ssim, psnr, ssim_gaussian11,
  latent mean, squared error per frame (B, F))`: the posterior mean, normalised as the decoder
  reads it, decoded."""
  def reconstruct(params, video):
    recon, posterior = vae.apply({"params": params}, video, sample=False)
    recon, truth = jnp.clip(recon, -1.0, 1.0), vit.cmr_to_float(video)
    ssim, psnr, ssim_gaussian = scores(recon, truth)
    return recon, ssim, psnr, ssim_gaussian, posterior.mean, jnp.mean((recon - truth) ** 2, (2, 3))
  return jax.jit(reconstruct)


def heldout(reconstruct, params, data_dir, split, mesh, rules, batch_size=16):
  """Mean PSNR and SSIM of a split's reconstructions, the mean squared error of each frame (a
  cine's first and last frames are where its edges show), and the latent's statistics."""
  (_, ssim, psnr, ssim_gaussian, latent, frame_mse), _ = splits.map_split(
      lambda b: reconstruct(params, b["cmr"]), data_dir, split, ("cmr",), mesh, rules,
      batch_size=batch_size)
  return dict(split=split, psnr=float(np.mean(psnr)), ssim=float(np.mean(ssim)),
              ssim_gaussian11=float(np.mean(ssim_gaussian)), metrics=METRIC_DEFINITIONS,
              mse_per_frame=[round(float(m), 5) for m in np.mean(frame_mse, axis=0)],
              latent_mean=float(np.mean(latent)), latent_std=float(np.std(latent)), n=int(len(psnr)))
