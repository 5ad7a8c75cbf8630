"""Pieces every stage config shares.

A config string selects the size and a few switches, big_vision style:
`configs/mae.py:variant=base`. Everything else is overridden on the command
line, e.g. `--config.train.num_steps=50`.

Variants: `tiny` (the default: minutes on 2 CPU cores), `test` (the test suite's sizes: seconds)
and `base` (the paper's sizes). A variant changes sizes, never code paths.

A config never embeds another stage's config: `config.init.<stage>` points at that stage's
checkpoint ("" = this workdir's), and the upstream model is rebuilt from the config saved there.
"""

import ml_collections

VARIANTS = ("test", "tiny", "base")

# Logical axis name -> mesh axes. Data, not code: edit here or override.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("patch", None),
    ("seq", None),
    ("layers", None),     # the stacked blocks of a scanned transformer (model.scan_layers)
)


# How the transformer blocks run (models/layers.py, Stack): `scan_layers` compiles one block for the
# whole stack (faster compiles of deep stacks; the params are stacked, so a checkpoint keeps the
# layout it was trained with); `remat` "full" or "dots" recomputes activations in the backward
# pass (the base batches that do not fit in memory otherwise: README, AOT table).
STACK = dict(scan_layers=False, remat="none")


def parse_arg(arg, **defaults):
  """Parses 'k1=v1,k2=v2' into a ConfigDict, typed by the defaults."""
  cfg = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config-string key {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    cfg[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
  if "variant" in cfg and cfg.variant not in VARIANTS:
    raise ValueError(f"variant must be one of {VARIANTS}, got {cfg.variant!r}")
  return cfg


def base_config(stage, variant, **init):
  """Fields every stage has; stage configs fill in their model and sizes.

  `init` names the upstream stages this one reads, each a checkpoint reference: "" is this
  workdir's, a path is a stage's `checkpoints/` folder (or one step in it).
  """
  config = ml_collections.ConfigDict()
  config.stage = stage
  config.variant = variant
  config.seed = 42
  config.init = ml_collections.ConfigDict(init)

  config.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=32,             # global batch, all devices and hosts together
      grad_accum_steps=1,        # micro-batches per step; batch_size must divide
      lr=1e-3,                   # peak learning rate (after warm-up)
      lr_scale_batch=0,          # if > 0: lr *= batch_size / lr_scale_batch (MAE rule)
      warmup_steps=100,
      min_lr_ratio=0.0,          # cosine decays to lr * min_lr_ratio
      weight_decay=0.05,
      b1=0.9,
      b2=0.95,
      grad_clip_norm=1.0,        # 0 disables
      ema_decay=0.0,             # > 0: keep an EMA of the params (in the optimizer state)
      compute_dtype="float32",   # or "bfloat16": params stay float32
      checkpoint_every=200,
      keep_checkpoints=2,
      log_every=20,
      eval_every=0,              # 0: evaluate at the start and the end only
  ))

  config.data = data_config(variant)

  config.mesh = ml_collections.ConfigDict(dict(
      shape=ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)),
      rules=LOGICAL_AXIS_RULES,
  ))
  if variant == "test":
    config.train.update(num_steps=4, batch_size=8, warmup_steps=1, log_every=2,
                        checkpoint_every=2)
  return config


# The cohort every stage of a run shares, by variant: (frames, size, subjects).
COHORTS = {"base": (50, 96, 20_000), "tiny": (25, 48, 1200), "test": (8, 16, 120)}


def data_config(variant):
  frames, size, subjects = COHORTS[variant]
  return ml_collections.ConfigDict(dict(
      source="synthetic",        # "synthetic" or a built dataset directory
      num_subjects=subjects,     # synthetic cohort size (all splits)
      val_fraction=0.1,
      test_fraction=0.15,
      cmr_frames=frames,
      cmr_size=size,
      cohort_seed=0,             # the synthetic cohort (kept apart from the model seed)
      shuffle_seed=0,
      worker_count=0,            # Grain worker processes (0: in-process)
      worker_buffer_size=2,
      read_threads=2,
      # Where "test" metrics come from when the dataset has no test split: "" (the default)
      # makes that an error; "val" or "train" names the stand-in, recorded in results.json.
      test_stand_in="",
      val_stand_in="",
  ))
