"""Stage 3: the 3D KL-VAE that compresses a cine into the latent the generator models.

Loss: L1 + KL (small weight) + the release's outlier penalty + a hinge adversarial term from a
3D patch discriminator, switched on at `vae.adv_start`, its weight adaptive (LDM's: the ratio of
the L1 and GAN gradient norms at the decoder's last layer) or fixed (`vae.adv_weighting`). The
discriminator trains in the same step, with its own AdamW (`vae.disc_lr_scale`,
`vae.disc_betas`): stop-gradients keep each term to its own network. Hands on `params/vae` (and
`params/disc`) through its Orbax checkpoint.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cardionets_jax import losses
from cardionets_jax import plots
from cardionets_jax.data import pipeline
from cardionets_jax.evaluators import reconstruction
from cardionets_jax.evaluators import splits
from cardionets_jax.models import conv3d
from cardionets_jax.models import discriminator
from cardionets_jax.models import vae3d
from cardionets_jax.models import vit
from cardionets_jax import stages
from cardionets_jax.stages import common
from cardionets_jax.train import loop
from cardionets_jax.train import mesh as mesh_lib
from cardionets_jax.train import metrics as metrics_lib

def cmr_shape(config):
  return (config.data.cmr_frames, config.data.cmr_size, config.data.cmr_size)


def build_vae(config):
  return vae3d.VAE3D(**model_sizes(config), dtype=jnp.dtype(config.train.compute_dtype))


def model_sizes(config):
  """configs/vae.py's `model` as VAE3D's fields (sequences as tuples)."""
  return {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in config.model.items()}


def build_discriminator(config):
  v = config.vae
  return discriminator.PatchDiscriminator3D(channels=v.disc_channels, num_layers=v.disc_layers,
                                            style=v.disc_style,
                                            dtype=jnp.dtype(config.train.compute_dtype))


ADV_WEIGHTINGS = ("adaptive", "fixed")


def last_layer_grad(vae_params, last_input, recon_grad):
  """A loss's gradient at the decoder's last conv kernel, from its gradient at the reconstruction
  (B, F, H, W) and that conv's input (sown by the decoder): the conv's vjp, nothing re-run."""
  kernel = nn.unbox(vae_params["decoder"]["conv_out"]["kernel"])
  context = (last_input.shape[1] - recon_grad.shape[1]) // 2   # frames the loss does not score
  recon_grad = jnp.pad(recon_grad, ((0, 0), (context, context), (0, 0), (0, 0)))
  _, vjp = jax.vjp(lambda k: conv3d.conv3d_apply(last_input, k.astype(last_input.dtype)), kernel)
  return vjp(recon_grad[..., None].astype(last_input.dtype))[0]


def optimizer_groups(config):
  """The discriminator's own AdamW (the release: a tenth of the LR, betas (0.5, 0.9)); None when
  it would equal the VAE's."""
  v, t = config.vae, config.train
  betas = tuple(v.disc_betas) or (t.b1, t.b2)
  if v.adv_weight <= 0 or (v.disc_lr_scale == 1.0 and betas == (t.b1, t.b2)):
    return None
  return {"disc": dict(lr_scale=v.disc_lr_scale, b1=betas[0], b2=betas[1])}


def train_flops_per_example(config):
  """Conv and attention FLOPs of one training example: 3x the VAE forward (the discriminator left out)."""
  # Counted through `__call__`, which adds the cyclic context frames itself.
  return 3 * vae3d.vae_flops(tuple(config.vae.train_crop) or cmr_shape(config), **model_sizes(config))


def perceptual_loss(recon, target):
  """Where a perceptual network (LPIPS-style, pretrained) would plug in.

  Pretrained weights cannot ship with this project, so the term is off by
  default (`vae.perceptual_weight=0`); a user with such a network computes a
  feature distance here.
  """
  raise NotImplementedError(
      "vae.perceptual_weight > 0 needs a pretrained perceptual network: implement "
      "cardionets_jax.stages.vae.perceptual_loss with one")


def random_window(video, crop, context, rng):
  """A random (frames, height, width) window of each (B, F, H, W) cine, with `context` frames of
  the same cycle either side in time (`VAE3D.window` scores the middle); `crop=()` keeps the
  cine whole (wrapped by its own frames when `context`).

  The VAE is fully convolutional, so it trains on windows and encodes whole
  cines (as image VAEs train on crops and run at full size): the tiny
  variant's way to fit a CPU.
  """
  if not crop:
    return vae3d.wrap_cycle(video, context)
  crop = tuple(min(c, n) for c, n in zip(crop, video.shape[1:]))  # a small cine is kept whole
  if context:   # a cycle has no first frame: any may start the window, its context wraps around
    time_rng, rng = jax.random.split(rng)
    start = jax.random.randint(time_rng, (video.shape[0], 1), 0, video.shape[1])
    frames = (start + jnp.arange(crop[0] + 2 * context) - context) % video.shape[1]
    video = jnp.take_along_axis(video, frames[:, :, None, None], axis=1)
    crop = (frames.shape[1],) + crop[1:]
  limits = jnp.asarray(video.shape[1:]) - jnp.asarray(crop) + 1
  starts = jax.random.randint(rng, (video.shape[0], 3), 0, limits)
  return jax.vmap(lambda v, s: jax.lax.dynamic_slice(v, tuple(s), crop))(video, starts)


def make_task(config):
  vae, disc = build_vae(config), build_discriminator(config)
  v = config.vae

  def init_params(rng):
    video = jnp.zeros((1,) + cmr_shape(config), jnp.uint8)
    vae_rng, disc_rng = jax.random.split(rng)
    params = {"vae": vae.init({"params": vae_rng, "sample": vae_rng}, video)["params"]}
    if v.adv_weight > 0:
      params["disc"] = disc.init(disc_rng, vit.cmr_to_float(video))["params"]
    return params

  def adversarial_terms(params, recon, target, last_input):
    score = lambda x, p=params["disc"]: disc.apply({"params": p}, x)
    adv_loss = lambda r: losses.generator_adv_loss(score(r, jax.lax.stop_gradient(params["disc"])))
    weight = jnp.float32(v.adv_weight)
    if v.adv_weighting == "adaptive":
      at_last = lambda f: last_layer_grad(params["vae"], jax.lax.stop_gradient(last_input),
                                          jax.grad(f)(jax.lax.stop_gradient(recon)))
      weight = weight * losses.adaptive_weight(at_last(lambda r: jnp.mean(jnp.abs(r - target))),
                                               at_last(adv_loss))
    elif v.adv_weighting != "fixed":
      raise ValueError(f"vae.adv_weighting must be one of {ADV_WEIGHTINGS}, got "
                       f"{v.adv_weighting!r}")
    d_loss = losses.hinge_d_loss(score(target), score(jax.lax.stop_gradient(recon)))
    return dict(g_loss=adv_loss(recon), d_loss=d_loss, adv_weight=weight)

  def loss_fn(params, frozen, batch, rng, step):
    del frozen
    crop_rng, rng = jax.random.split(rng)
    window = random_window(batch["cmr"], v.train_crop, vae.cyclic_context, crop_rng)
    target = vit.cmr_to_float(vae3d.cut_context(window, vae.cyclic_context))
    (recon, posterior), sown = vae.apply({"params": params["vae"]}, window, method=vae.window,
                                         rngs={"sample": rng}, mutable=["intermediates"])
    loss, metrics = losses.vae_loss(recon, target, posterior.mean, posterior.logvar, v.kl_weight)
    if v.perceptual_weight > 0:
      loss = loss + v.perceptual_weight * perceptual_loss(recon, target)
    if v.outlier_weight > 0:
      penalty = losses.outlier_penalty(recon, v.outlier_radius)
      loss, metrics = loss + v.outlier_weight * penalty, dict(metrics, outlier_penalty=penalty)
    if v.adv_weight > 0:
      last_input = sown["intermediates"]["decoder"]["last_layer_input"][0]
      # Before adv_start the discriminator and the adaptive weight's two vjps are not run at all.
      terms = jax.lax.cond(step >= v.adv_start, adversarial_terms,
                           lambda *_: dict.fromkeys(("g_loss", "d_loss", "adv_weight"),
                                                    jnp.float32(0)),
                           params, recon, target, last_input)
      loss = loss + terms["adv_weight"] * terms["g_loss"] + terms["d_loss"]
      metrics = dict(metrics, **terms)
    return loss, metrics

  return vae, loop.Task(init_params=init_params, loss_fn=loss_fn,
                        spec={"cmr": (cmr_shape(config), jnp.uint8)},
                        optimizer_groups=optimizer_groups(config))


def latent_shape(config):
  """The latent (frames, height, width, channels) of a whole cine under `config`'s VAE."""
  m = config.model
  return tuple(vae3d.latent_shape(cmr_shape(config), tuple(m.channel_mult), tuple(m.temporal_down),
                                  m.latent_channels))


def init_vae(vae, config, rng):
  video = jnp.zeros((1,) + cmr_shape(config), jnp.uint8)
  return vae.init({"params": rng, "sample": rng}, video)["params"]


def restore_vae(reference, mesh):
  """(VAE module, its params, step, config) from a vae checkpoint, rebuilt from its saved config:
  the one place a trained VAE is loaded (tokenize, mar, screening, benchmarks)."""
  from cardionets_jax.train import checkpoint as ckpt_lib
  from cardionets_jax.stages import context as context_lib
  config = ckpt_lib.saved_config(reference)
  ckpt_lib.require_fields(config, context_lib.stage_config("vae", config.variant), reference,
                          ("model",))
  vae = build_vae(config)
  params, step = common.restore_params(reference, ("params", "vae"),
                                       lambda r: init_vae(vae, config, r), mesh)
  return vae, params, step, config


class Evaluator:
  """Held-out reconstruction PSNR / SSIM (per frame, averaged) and latent statistics."""

  def __init__(self, config, vae, trainer, data_dir, meta):
    self.config, self.vae, self.trainer, self.data_dir, self.meta = config, vae, trainer, data_dir, meta
    self._reconstruct = reconstruction.reconstructor(vae)

  def evaluate(self, params, split="test"):
    t = self.trainer
    return reconstruction.heldout(self._reconstruct, params["vae"], self.data_dir,
                                  splits.choose(self.meta, split, self.config.data), t.mesh, t.rules)

  def figures(self, params, workdir, num_subjects=3, num_frames=6):
    """Frames and a GIF of held-out originals beside their reconstructions."""
    t = self.trainer
    batch, _ = next(pipeline.eval_batches(
        self.data_dir, splits.choose(self.meta, "test", self.config.data), ("cmr",), 16))
    with mesh_lib.active(t.mesh, t.rules):
      dev = mesh_lib.replicated_batch({"cmr": batch["cmr"]}, t.mesh, t.rules)
      recon, *_ = self._reconstruct(params["vae"], dev["cmr"])
    recon = mesh_lib.to_host(recon)
    if jax.process_index() != 0:
      return
    original = np.asarray(vit.cmr_to_float(batch["cmr"]))
    recon = np.asarray(recon)
    rows = [(title, arr[s]) for s in range(num_subjects)
            for title, arr in (("original", original), ("reconstructed", recon))]
    plots.frame_grid(workdir.file("vae", "reconstructions.png"), rows, "3D-VAE on held-out subjects",
                     num_frames=num_frames)
    # Original | reconstruction side by side, subjects stacked vertically, a GIF frame per frame.
    pair = np.concatenate([original[:num_subjects], recon[:num_subjects]], axis=3)
    plots.write_gif(workdir.file("vae", "reconstructions.gif"), np.concatenate(list(pair), axis=1))


def run(config, context):
  start = time.time()
  workdir = context.workdir
  data_dir, meta, vae, trainer = common.open_stage(config, context, "vae", make_task)
  evaluator = Evaluator(config, vae, trainer, data_dir, meta)
  initial = evaluator.evaluate(trainer.state.params, "val")
  metrics_lib.log("Before training: held-out PSNR %.2f dB, SSIM %.3f", initial["psnr"], initial["ssim"])

  def on_eval(state, step, writer):
    result = evaluator.evaluate(state.params, "val")
    writer.write(step, {k: result[k] for k in ("psnr", "ssim")}, split="val")
    metrics_lib.log("step %d: held-out PSNR %.2f dB, SSIM %.3f", step, result["psnr"], result["ssim"])

  state = trainer.fit(on_eval)
  final = evaluator.evaluate(state.params, "test")
  results = dict(stage="vae", variant=config.variant, step=int(state.step),
                 latent_shape=list(latent_shape(config)),
                 heldout_initial_val=initial, heldout_test=final,
                 checkpoint=f"{trainer.checkpoint_dir}/{int(state.step)}",
                 wall_time_s=time.time() - start)
  evaluator.figures(state.params, workdir)  # every process computes, process 0 draws
  common.write_results(workdir, "vae", results)
  metrics_lib.log("Held-out reconstruction: PSNR %.2f dB, SSIM %.3f (before training %.2f dB, %.3f); "
                  "latent mean %.3f std %.3f; MSE of frame 0 %.4f, of the last %.4f, mean %.4f",
                  final["psnr"], final["ssim"], initial["psnr"], initial["ssim"],
                  final["latent_mean"], final["latent_std"], final["mse_per_frame"][0],
                  final["mse_per_frame"][-1], np.mean(final["mse_per_frame"]))
  return results


STAGE = stages.Stage(name="vae", upstream=lambda config: (), hands_on="params/vae (VAE3D)", run=run,
                     task=lambda config: make_task(config)[-1],
                     train_flops=train_flops_per_example)
