"""What a stage run is given: the workdir, the mesh, and its resolved upstream stages.

An upstream reference `config.init.<stage>` is "" (this workdir's) or a path (a stage's
`checkpoints/` folder or one step in it; for `tokenize`, a tokens dataset). The upstream model is
rebuilt from the config saved with that checkpoint: `Upstream.config`.
"""

import dataclasses
import importlib
import logging
from typing import Any, Optional

import ml_collections

from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.workdir import Workdir

# Data fields that decide which subjects and which cines a model saw.
COHORT_KEYS = ("source", "num_subjects", "cohort_seed", "cmr_frames", "cmr_size", "val_fraction",
               "test_fraction")


def stage_config(stage, variant):
  """`configs/<stage>.py` at `variant`."""
  module = importlib.import_module(f"cardionets_jax_configs.{stage}")
  return module.get_config(f"variant={variant}")


def config_for_upstream(stage, downstream):
  """The config an upstream `stage` is trained with for `downstream`: its own config file at the
  same variant, with the downstream run's data and mesh, and the downstream's references to
  stages further up (a user's `init.mae=PATH` reaches the align run that needs it)."""
  config = stage_config(stage, downstream.variant)
  config.data = downstream.data.copy_and_resolve_references()
  config.mesh = downstream.mesh.copy_and_resolve_references()
  for key in config.init:
    if downstream.init.get(key):
      config.init[key] = downstream.init[key]
  return config


def same_cohort(a, b):
  return all(a.get(k) == b.get(k) for k in COHORT_KEYS)


@dataclasses.dataclass
class Upstream:
  stage: str
  path: str                       # checkpoints folder (tokenize: the tokens dataset)
  step: Optional[int]
  config: ml_collections.ConfigDict  # what it was trained (or made) with

  @property
  def reference(self):
    """The checkpoint step folder (or dataset) this run read: a path to pass as `init`."""
    return self.path if self.step is None else f"{self.path}/{self.step}"

  def describe(self, data):
    """For results.json: where it came from, and whether it saw the current run's cohort."""
    return dict(checkpoint=self.reference, step=self.step,
                data={k: self.config.data.get(k) for k in COHORT_KEYS},
                same_data_as_this_run=same_cohort(self.config.data, data))


def resolve(stage, config, workdir):
  """The upstream `stage` that `config` reads: `config.init.<stage>`, or this workdir's."""
  reference = config.init.get(stage) or ""
  if stage == "tokenize":
    from cardionets_jax.data import records
    path = reference or workdir.tokens
    meta = records.DatasetMeta.load(path)
    made_by = meta.provenance or {}
    if "tokenize_config" not in made_by:
      raise ValueError(f"{path} does not record how its tokens were made: re-run tokenize")
    return Upstream(stage, path, None, ml_collections.ConfigDict(made_by["tokenize_config"]))
  path = reference or workdir.checkpoints(stage)
  directory, step = ckpt_lib.resolve(path)
  saved = ckpt_lib.saved_config(f"{directory}/{step}")
  up = Upstream(stage, directory, step, saved)
  if not same_cohort(saved.data, config.data):
    logging.warning("The %s checkpoint %s was trained on other data (%s) than this %s run (%s)",
                    stage, up.reference, {k: saved.data.get(k) for k in COHORT_KEYS},
                    config.stage, {k: config.data.get(k) for k in COHORT_KEYS})
  return up


@dataclasses.dataclass
class Context:
  """A stage run's surroundings. `mesh` None: `config.mesh` over every device."""
  workdir: Workdir
  mesh: Any = None
  _upstream: dict = dataclasses.field(default_factory=dict)

  def upstream(self, stage, config):
    if stage not in self._upstream:
      self._upstream[stage] = resolve(stage, config, self.workdir)
    return self._upstream[stage]


def upstream_config(stage, config, context=None):
  """The config of the upstream `stage` a model is built from: the one saved with the checkpoint
  when there is a context to resolve it in, else (shape-only use: benchmarks, AOT compiles,
  tests) the stage's own config file at the same variant."""
  if context is not None:
    return context.upstream(stage, config).config
  return config_for_upstream(stage, config)
