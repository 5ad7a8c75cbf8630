"""Which split an evaluation reads, and a jitted pass over one."""

import logging

import jax
import numpy as np

from cardionets_jax.data import pipeline
from cardionets_jax.train import mesh as mesh_lib

EVAL_BATCH = 64
# What a probe or a selection does with each split.
ROLES = (("fit", "train"), ("select", "val"), ("score", "test"))


def choose(meta, name, data_config, need_cmr=True):
  """`name` if the dataset has examples there (with a cine, if `need_cmr`); else the stand-in the
  config names (`data.<name>_stand_in`), logged. Without one, a missing split is an error: "test"
  never silently becomes val."""
  def has(split):
    info = meta.splits.get(split)
    return bool(info and (info["num_with_cmr"] if need_cmr else info["num_examples"]))

  if has(name):
    return name
  stand_in = data_config.get(f"{name}_stand_in", "")
  what = f"{' with a cine' if need_cmr else ''}"
  if not stand_in:
    raise ValueError(
        f"The dataset has no {name!r} split{what} (splits: {meta.splits}); rebuild it with one, "
        f"or name a stand-in with --config.data.{name}_stand_in=val|train (it is recorded)")
  if not has(stand_in):
    raise ValueError(f"data.{name}_stand_in={stand_in!r}, but that split has no examples{what}")
  logging.warning("The dataset has no %r split%s: using %r in its place (data.%s_stand_in)", name,
                  what, stand_in, name)
  return stand_in


def roles(meta, data_config, need_cmr=True):
  """{"fit": train split, "select": val split, "score": test split}, stand-ins resolved."""
  return {role: choose(meta, name, data_config, need_cmr) for role, name in ROLES}


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
