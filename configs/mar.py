"""Stage 4: the ECG-conditioned MAR generator with a diffusion head.

  python -m cardionets_jax.main --config=configs/mar.py --workdir=DIR

Trains on the tokens of `init.tokenize` ("" = DIR's tokens; on a fresh DIR
vae, mae, align and tokenize run first) and decodes with the VAE those
tokens were made with. `init.mae` is the CMR encoder whose phenotype probe
reads the generated cines.
"""

import ml_collections

from cardionets_jax_configs import common

MODELS = {
    # docs/method.md, Stage 4: MAR-B, 12 + 12 layers of width 768, 12 heads, 64 condition tokens; the diffusion
    # head is 3 residual blocks of width 1024.
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, decoder_width=768,
                 decoder_depth=12, decoder_heads=12, decoder_mlp_dim=3072, buffer_size=64,
                 dropout=0.1, head_width=1024, head_depth=3),
    # ~0.23 s a train step at batch 16 on 2 CPU cores. The head is wider than a token (4 latent
    # channels x 25 frames = 100): near t = T the noise it predicts is almost its input.
    "tiny": dict(width=64, depth=2, num_heads=4, mlp_dim=256, decoder_width=64, decoder_depth=2,
                 decoder_heads=4, decoder_mlp_dim=256, buffer_size=4, dropout=0.1, head_width=256,
                 head_depth=2),
    "test": dict(width=32, depth=1, num_heads=2, mlp_dim=64, decoder_width=32, decoder_depth=1,
                 decoder_heads=2, decoder_mlp_dim=64, buffer_size=4, dropout=0.1, head_width=32,
                 head_depth=1),
}
# tiny: a token is one latent pixel's whole cine (25 x 1 x 1), so the diffusion head draws each
# pixel's time course jointly. With (5, 2, 2) tokens, time slices drawn apart flickered: the area
# EF of generated cines had sd 0.11 against 0.04 for true ones, whatever the ECG (docs/method.md).
PATCHES = {"base": (5, 2, 2), "tiny": (25, 1, 1), "test": (2, 2, 2)}
# Tiny training budgets (`configs/mar.py:budget=NAME`). "long": where both patient-matching
# figures reach their marks on the test split (64 subjects, simulator v2: own - shuffled SSIM
# +0.031, area EF proxy vs LVEF r 0.65; at 2000 steps +0.026 and 0.45; docs/method.md), about a
# third longer mar stage.
TINY_STEPS = {"default": 2000, "long": 3000}
# Sampler presets (`configs/mar.py:sampler=NAME`). "release": the shipped simple_generate.py
# (constant guidance 3, temperature 1, no bound on the implied token). "clipped": ours, a
# guidance rising linearly with the share of tokens known and each diffusion step's implied
# token bounded to [-5, 5] (see models/diffusion.py::p_mean_variance: at the cosine schedule's
# last step an error of 0.01 in the predicted noise puts the token off by ~200).
SAMPLERS = {
    "release": dict(cfg_scale=3.0, cfg_schedule="constant", temperature=1.0, clip_x0=0.0),
    "clipped": dict(cfg_scale=3.0, cfg_schedule="linear", temperature=1.0, clip_x0=5.0),
}


def get_config(arg=None):
  # The small generators keep the bound until the release's sampler is measured on them.
  arg = common.parse_arg(arg, variant="tiny", sampler="", budget="default")
  if arg.budget not in TINY_STEPS or (arg.budget != "default" and arg.variant != "tiny"):
    raise ValueError(f"budget must be one of {tuple(TINY_STEPS)}, and other than 'default' at "
                     f"variant=tiny only; got budget={arg.budget!r}, variant={arg.variant!r}")
  sampler = arg.sampler or ("release" if arg.variant == "base" else "clipped")
  config = common.base_config("mar", arg.variant, tokenize="", mae="")
  config.model = ml_collections.ConfigDict(dict(
      MODELS[arg.variant], patch=PATCHES[arg.variant],
      cond_activation="none",   # between the condition's two linear layers (the release: none)
      inner_dropout=True))      # dropout on attention weights and MLP hidden units too (timm)
  config.model.update(common.STACK)
  config.mar = ml_collections.ConfigDict(dict(
      min_mask_ratio=0.7,       # mask ratio ~ normal(1.0, 0.25) truncated to [0.7, 1.0]
      mask_ratio_mean=1.0,
      mask_ratio_std=0.25,
      cond_drop=0.1,            # condition dropout, for classifier-free guidance
      diffusion_mul=4,          # each token's diffusion loss drawn this many times per step
      train_timesteps=1000,     # cosine schedule
      mask_ratio_per="batch",   # one ratio per batch (the release) or per "example"
      # What the generator models: "decoder" (the latent as the VAE decoder reads it, the
      # layer-normed one for the release's VAE), "channel_stats" (per-channel standardised raw
      # latents) or "raw"; see stages/mar.py::to_tokens.
      latent_space="decoder",
      latent_stats_examples=512,  # training latents the "channel_stats" normalisation is fitted on
  ))
  config.sample = ml_collections.ConfigDict(dict(
      num_iter=16,              # autoregressive steps, cosine masking schedule
      diffusion_steps=100,      # respaced from train_timesteps
      preset=sampler,
      **SAMPLERS[sampler],      # cfg_scale, cfg_schedule ("linear" / "constant"), temperature,
                                # clip_x0 (bound on the implied token; 0 = none)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      split="test",             # where they come from: "val" to choose sampling settings
      num_subjects=256,         # held-out subjects generated under each condition
      batch_size=64,
      n_boot=1000,
      # Every train.eval_every steps (0: never), this many validation subjects are generated from
      # their own and a shuffled ECG: the curve of mar/curve.png.
      curve_subjects=32,
  ))
  config.train.update(weight_decay=0.02, b2=0.95, grad_clip_norm=3.0)
  if arg.variant == "base":
    config.train.update(num_steps=100_000, batch_size=256, lr=1e-4, warmup_steps=2_000,
                        ema_decay=0.9999, checkpoint_every=5_000, log_every=100, eval_every=0)
  elif arg.variant == "tiny":
    config.mar.update(diffusion_mul=2)
    config.sample.update(diffusion_steps=50)
    if sampler == "clipped":
      # Chosen on 64 validation subjects (area EF proxy vs LVEF r, SSIM): temperature 0.5 /
      # cfg 1.5: 0.13, 0.171; 0.25 / 1.5: 0.65, 0.138; 0.1 / 1.5: 0.61, 0.116; 0.1 / 3: 0.58, 0.115.
      # A cooler draw follows the ECG; the hotter one scores SSIM on texture, not on the patient.
      # Simulator v2, temperature 0.25 (own - shuffled SSIM, EF r): cfg 1.5: +0.043, 0.58;
      # 3: +0.047, 0.18; 5: +0.046, 0.04. Stronger guidance buys no SSIM and loses the EF.
      config.sample.update(temperature=0.25, cfg_scale=1.5)
    config.eval.update(num_subjects=64, batch_size=32)
    config.train.update(num_steps=TINY_STEPS[arg.budget], batch_size=16, lr=1e-3, warmup_steps=100,
                        ema_decay=0.995, checkpoint_every=500, log_every=50, eval_every=0)
  else:
    config.mar.update(diffusion_mul=2, latent_stats_examples=32)
    config.sample.update(num_iter=3, diffusion_steps=4, temperature=0.5, cfg_scale=1.5)
    config.eval.update(num_subjects=6, batch_size=4, n_boot=50, curve_subjects=4)
    config.train.update(num_steps=6, ema_decay=0.995, eval_every=3)
  return config
