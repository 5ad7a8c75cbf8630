"""Stages by name. Each module has `run(config, workdir)`."""

import importlib

STAGES = ("mae", "align", "finetune", "vae", "tokenize", "mar")


def get(name):
  if name not in STAGES:
    raise ValueError(f"Unknown stage {name!r}; known: {STAGES}")
  return importlib.import_module(f"cardionets_jax.stages.{name}")
