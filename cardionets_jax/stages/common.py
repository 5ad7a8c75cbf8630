"""Pieces several stages share: passes over a split, upstream checkpoints."""

import logging
import os

import flax.linen as nn
import jax
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.train import checkpoint as ckpt_lib
from cardionets_jax.train import mesh as mesh_lib

EVAL_BATCH = 64


def map_split(fn, data_dir, split, fields, mesh, rules, *, keep=(), limit=None,
              batch_size=EVAL_BATCH):
  """Applies a jitted `fn(batch) -> array or tuple of arrays` over a split.

  Returns (outputs, kept): outputs concatenated over the split's examples
  (padding dropped), and the host-side `keep` fields for the same examples.
  """
  outs, kept = [], {k: [] for k in keep}
  with mesh_lib.active(mesh, rules):
    for batch, valid in pipeline.eval_batches(data_dir, split, tuple(fields) + tuple(keep),
                                              batch_size, limit):
      device = mesh_lib.replicated_batch({f: batch[f] for f in fields}, mesh, rules)
      out = jax.tree.map(lambda x: mesh_lib.to_host(x)[:valid], fn(device))
      outs.append(out)
      for k in keep:
        kept[k].append(batch[k][:valid])
  outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *outs)
  return outputs, {k: np.concatenate(v) for k, v in kept.items()}


def available_split(meta, preferred, need_cmr=True):
  """The first split in `preferred` that has examples (TFDS writes no empty split).

  A small dataset can lack a val or test split; evaluation then falls back
  to the next split named, and says so.
  """
  for split in preferred:
    info = meta.splits.get(split)
    if info and (info["num_with_cmr"] if need_cmr else info["num_examples"]):
      if split != preferred[0]:
        logging.warning("Split %r is empty: using %r in its place", preferred[0], split)
      return split
  raise ValueError(f"None of the splits {list(preferred)} has examples"
                   f"{' with a cine' if need_cmr else ''}: {meta.splits}")


FALLBACKS = {"train": ("train",), "val": ("val", "test", "train"), "test": ("test", "val", "train")}


def eval_split(meta, name, need_cmr=True):
  """`name` if it has examples, else the nearest stand-in (see FALLBACKS)."""
  return available_split(meta, FALLBACKS[name], need_cmr)


def upstream_checkpoint(config_path, workdir, stage, run_upstream):
  """The checkpoint directory of an upstream stage, training it if needed.

  `config_path` empty means `<workdir>/<stage>/checkpoints`; when that holds
  no finished checkpoint, `run_upstream()` trains the stage first.
  """
  if config_path:
    if ckpt_lib.latest_step(config_path) is None:
      raise FileNotFoundError(f"No {stage} checkpoint at {config_path}")
    return config_path
  path = os.path.join(workdir, stage, "checkpoints")
  if not os.path.exists(os.path.join(workdir, stage, "results.json")):
    logging.info("No finished %s stage in %s: running it first with its default config", stage,
                 workdir)
    run_upstream()
  return path


def restore_params(path, subtree, init_fn, mesh):
  """Restores `state.<subtree>` of a checkpoint replicated over `mesh`; shapes come from
  `init_fn(rng)` (traced, nothing allocated). Returns (params, step)."""
  abstract = nn.unbox(jax.eval_shape(init_fn, jax.random.PRNGKey(0)))
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=mesh_lib.replicated(mesh)), abstract)
  return ckpt_lib.restore_subtree(path, subtree, target)
