"""Stage 1: masked-autoencoder pre-training of the CMR encoder.

  python -m cardionets_jax.main --config=configs/mae.py --workdir=DIR
  python -m cardionets_jax.main --config=configs/mae.py:variant=base --workdir=DIR
"""

import ml_collections

from cardionets_jax_configs import common

MODELS = {
    # Paper: ViT-B/16 on 96 x 96 with the 50 frames as input channels.
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072,
                 decoder_width=512, decoder_depth=8, decoder_heads=16, decoder_mlp_dim=2048,
                 patch_size=16),
    "tiny": dict(width=128, depth=4, num_heads=4, mlp_dim=256,
                 decoder_width=64, decoder_depth=2, decoder_heads=4, decoder_mlp_dim=128,
                 patch_size=8),
    "test": dict(width=32, depth=1, num_heads=2, mlp_dim=64,
                 decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64,
                 patch_size=8),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny", tube=False)
  config = common.base_config("mae", arg.variant)

  config.model = ml_collections.ConfigDict(MODELS[arg.variant])
  config.model.update(common.STACK)
  # Frames per patch: None stacks all frames as channels (the release's
  # default); `tube=True` gives the 3D variant with (10, p, p) tube patches.
  config.model.patch_frames = 10 if arg.tube else None
  # Features for probes and alignment: "tokens" (ours: every normed patch token, flattened; an
  # MAE's CLS token does not summarise the cine, docs/method.md Stage 1), "cls_prenorm" (the
  # release: the last block's CLS token, before the final LayerNorm), "cls" (after it) or "mean"
  # (of the normed patch tokens).
  config.model.pool = "tokens"
  config.model.norm_eps = 1e-6        # timm's ViT
  config.model.exact_gelu = True      # erf GELU as timm's; False: tanh approximation
  config.mae = ml_collections.ConfigDict(dict(mask_ratio=0.75, norm_pix_loss=True))
  config.probe = ml_collections.ConfigDict(dict(alphas=(0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0)))

  if arg.variant == "base":
    # 400 epochs at batch 128 with 40 warm-up epochs, base LR 1e-3 per 256.
    config.train.update(num_steps=60_000, batch_size=128, lr=1e-3, lr_scale_batch=256,
                        warmup_steps=6_000, checkpoint_every=2_000, log_every=100,
                        eval_every=5_000)
  elif arg.variant == "tiny":
    config.train.update(num_steps=1500, batch_size=32, lr=1e-3, warmup_steps=100,
                        checkpoint_every=500, log_every=50)
  return config
