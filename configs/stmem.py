"""Stage 0 (optional): ST-MEM self-supervised pre-training of the ECG encoder.

  python -m cardionets_jax.main --config=configs/stmem.py --workdir=DIR
  python -m cardionets_jax.main --config=configs/stmem.py --config.data.source=ARCHIVE --workdir=DIR

Spatio-temporal masked ECG modelling (Na et al., 2024, bakqui/ST-MEM): every lead keeps a random
quarter of its patches, the encoder sees those and the SEP tokens, a light decoder rebuilds each
lead's masked patches. It reads every ECG of the dataset, ECG-only rows included (an unpaired
archive such as MIMIC-IV-ECG). Its checkpoint is laid out as converted ST-MEM weights
(`params/encoder`); align and finetune start from either with `init.stmem`. On the built-in cohort
it runs only when asked for (configs/align.py:stmem=true, configs/finetune.py:stmem=true).
"""

import ml_collections

from cardionets_jax_configs import align as align_configs
from cardionets_jax_configs import common

# bakqui/ST-MEM `st_mem_vit_base_dec256d4b`: decoder 256 wide, 4 blocks of 4 heads.
DECODERS = {
    "base": dict(decoder_width=256, decoder_depth=4, decoder_heads=4, decoder_mlp_dim=1024),
    "tiny": dict(decoder_width=64, decoder_depth=2, decoder_heads=2, decoder_mlp_dim=128),
    "test": dict(decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64),
}


def get_config(arg=None):
  arg = common.parse_arg(arg, variant="tiny")
  config = common.base_config("stmem", arg.variant)

  # The encoder is align's at the same variant: the weights this stage hands on fit it.
  config.model = ml_collections.ConfigDict(align_configs.MODELS[arg.variant])
  config.model.num_samples = 2250
  config.model.update(align_configs.ECG_ENCODER)
  config.model.update(common.STACK)
  config.model.update(DECODERS[arg.variant])

  config.stmem = ml_collections.ConfigDict(dict(
      mask_ratio=0.75,        # per lead; every lead keeps the same number of patches
      norm_pix_loss=True,     # each target patch z-scored (ST-MEM's `norm_pix_loss: true`)
      eval_examples=512,      # held-out ECGs for the masked-patch loss and the probes
  ))
  config.probe = ml_collections.ConfigDict(dict(alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)))

  # configs/pretrain/st_mem.yaml: AdamW (0.9, 0.95), weight decay 0.01, blr 1.5e-4 per 256,
  # cosine after warm-up, no clipping. Its batch of 16 is a demo value; base trains at 256.
  config.train.update(b2=0.95, weight_decay=0.01, grad_clip_norm=0.0, lr_scale_batch=256)
  if arg.variant == "base":
    config.train.update(num_steps=100_000, batch_size=256, lr=1.5e-4, warmup_steps=10_000,
                        checkpoint_every=2_000, log_every=100, eval_every=10_000)
  elif arg.variant == "tiny":
    config.train.update(num_steps=600, batch_size=64, lr=1.5e-3, warmup_steps=60,
                        checkpoint_every=300, log_every=50)
  else:   # enough steps (each a few ms) for the suite to see the held-out loss fall
    config.train.update(num_steps=60, lr=2e-3, lr_scale_batch=0, warmup_steps=5,
                        checkpoint_every=60, log_every=20)
    config.stmem.eval_examples = 64
  return config
