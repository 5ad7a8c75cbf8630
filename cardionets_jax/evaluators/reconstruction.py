"""A VAE's reconstruction of held-out cines, and the image scores every cine comparison uses."""

import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import image_metrics
from cardionets_jax.evaluators import splits
from cardionets_jax.models import vit

DATA_RANGE = 2.0  # cines live in [-1, 1]


def scores(cines, truth):
  """Per-cine SSIM and PSNR (per frame, averaged) of float cines against float truth."""
  return (image_metrics.cine_ssim(cines, truth, DATA_RANGE),
          image_metrics.cine_psnr(cines, truth, DATA_RANGE))


def reconstructor(vae):
  """jit `(params, uint8 cines) -> (reconstruction in [-1, 1], ssim, psnr, latent mean)`: the
  posterior mean, normalised as the decoder reads it, decoded."""
  def reconstruct(params, video):
    recon, posterior = vae.apply({"params": params}, video, sample=False)
    recon = jnp.clip(recon, -1.0, 1.0)
    ssim, psnr = scores(recon, vit.cmr_to_float(video))
    return recon, ssim, psnr, posterior.mean
  return jax.jit(reconstruct)


def heldout(reconstruct, params, data_dir, split, mesh, rules, batch_size=16):
  """Mean PSNR and SSIM of a split's reconstructions, and the latent's statistics."""
  (_, ssim, psnr, latent), _ = splits.map_split(lambda b: reconstruct(params, b["cmr"]), data_dir,
                                                split, ("cmr",), mesh, rules, batch_size=batch_size)
  return dict(split=split, psnr=float(np.mean(psnr)), ssim=float(np.mean(ssim)),
              latent_mean=float(np.mean(latent)), latent_std=float(np.std(latent)), n=int(len(psnr)))
