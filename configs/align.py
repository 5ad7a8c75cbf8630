"""Stage 2: the ECG encoder aligned to the frozen CMR encoder (weighted InfoNCE).

  python -m cardionets_jax.main --config=configs/align.py --workdir=DIR

The frozen CMR encoder is `init.mae`: "" is DIR's mae stage (trained first,
with configs/mae.py at the same variant and this run's data, when DIR has
none), a path is any mae checkpoint; its architecture comes from the config
saved in that checkpoint.
"""

import ml_collections

from cardionets_jax_configs import common

MODELS = {
    # docs/method.md, Stage 2: ViT-B, 12 leads x 2250 samples in 75-sample patches.
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=75),
    "tiny": dict(width=96, depth=3, num_heads=3, mlp_dim=192, patch_size=250),
    "test": dict(width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=250),
}


# ST-MEM's encoder (models.ecg.EcgEncoder). Our earlier encoder: norm_eps=1e-6,
# exact_gelu=False, patch_norm=False, pool="norm_then_mean".
ECG_ENCODER = dict(norm_eps=1e-5, exact_gelu=True, patch_norm=True, pool="mean_then_norm")


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny", weighted=True, phi="pca", stmem=False)
  config = common.base_config("align", arg.variant, mae="", stmem="")

  config.model = ml_collections.ConfigDict(MODELS[arg.variant])
  config.model.num_samples = 2250        # the 9 s crop the encoder sees
  config.model.update(ECG_ENCODER)
  config.model.update(common.STACK)
  config.model.embed_dim = 256           # shared ECG/CMR space

  config.align = ml_collections.ConfigDict(dict(
      # The ECG encoder's initial weights: "random", or "stmem" (init.stmem: ST-MEM weights, the
      # release's start; "" trains this workdir's stmem stage first).
      ecg_init="stmem" if arg.stmem else "random",
      tau=0.05, sigma=0.5, weighted=arg.weighted,
      phi=arg.phi,            # "pca" (of frozen CMR features; the release) or "phenotypes"
      phi_norm="none",        # "none" (the release) or "unit": stages/align.py, descriptors
      # The frozen CMR encoder: "mae" (init.mae's trained weights) or "random" (its architecture,
      # randomly initialised: the ablation of what the teacher's pre-training adds).
      teacher="mae",
      pca_dim=128,
      eval_crops=3,           # crops averaged at evaluation
      noise_std=0.0,          # Gaussian noise on the z-scored ECG, training only
      lead_dropout=0.0,       # probability of dropping each lead, training only
  ))
  config.probe = ml_collections.ConfigDict(dict(alphas=(0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0)))

  if arg.variant == "base":
    config.train.update(num_steps=20_000, batch_size=256, lr=1e-3, warmup_steps=1_000,
                        checkpoint_every=2_000, log_every=100)
  elif arg.variant == "tiny":
    config.align.pca_dim = 32
    config.train.update(num_steps=1000, batch_size=64, lr=1e-3, warmup_steps=100,
                        checkpoint_every=400, log_every=50)
  else:
    config.align.pca_dim = 8
  return config
