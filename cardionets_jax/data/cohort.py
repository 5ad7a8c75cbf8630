"""The built-in synthetic paired cohort, written as a regular dataset.

It goes through exactly the files and pipeline a real dataset uses, so every
stage trains on it the way it would train on UK Biobank-style data.
"""

import concurrent.futures
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time

import numpy as np

from cardionets_jax.data import records
from cardionets_jax.data import synthetic

SIMULATOR_VERSION = 1


def split_of(subject_id: bytes, val_fraction, test_fraction):
  """Deterministic subject-level split from a hash of the id."""
  u = int.from_bytes(hashlib.sha256(subject_id).digest()[:8], "little") / 2.0**64
  if u < test_fraction:
    return "test"
  return "val" if u < test_fraction + val_fraction else "train"


def dataset_dir(root, data_config, seed):
  key = dict(version=SIMULATOR_VERSION, seed=seed, n=data_config.num_subjects,
             frames=data_config.cmr_frames, size=data_config.cmr_size,
             val=data_config.val_fraction, test=data_config.test_fraction)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(root, f"synthetic-{digest}")


def _simulate(index, seed, frames, size):
  return synthetic.simulate_subject(seed, index, frames=frames, size=size)


def build_synthetic(root, data_config, seed, workers=None):
  """Builds the cohort under `root` unless it is there; returns its directory."""
  out = dataset_dir(root, data_config, seed)
  if os.path.exists(os.path.join(out, records.META_FILE)):
    return out
  start = time.time()
  n = data_config.num_subjects
  logging.info("Simulating the synthetic cohort: %d subjects, cine %dx%dx%d -> %s", n,
               data_config.cmr_frames, data_config.cmr_size, data_config.cmr_size, out)
  simulate = functools.partial(_simulate, seed=seed, frames=data_config.cmr_frames,
                               size=data_config.cmr_size)
  workers = workers or min(os.cpu_count() or 1, 8)
  # Spawned, not forked: forking a process that runs JAX threads can deadlock.
  with concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn")) as pool:
    examples = list(pool.map(simulate, range(n), chunksize=16))

  by_split = {s: [] for s in records.SPLITS}
  for ex in examples:
    by_split[split_of(bytes(ex["subject_id"]), data_config.val_fraction,
                      data_config.test_fraction)].append(ex)
  tmp = f"{out}.tmp-{os.getpid()}"
  os.makedirs(tmp, exist_ok=True)
  splits = {}
  for split, exs in by_split.items():
    num_shards = max(1, min(8, len(exs) // 256))
    splits[split] = dict(num_examples=records.write_shards(tmp, split, exs, num_shards),
                         num_shards=num_shards)
  mean, std = records.phenotype_stats([ex["phenotypes"] for ex in by_split["train"]])
  first = examples[0]
  records.DatasetMeta(
      phenotype_names=synthetic.phenotype_names(), phenotype_units=synthetic.phenotype_units(),
      label_names=list(synthetic.LABELS), phenotype_mean=mean.tolist(),
      phenotype_std=std.tolist(), splits=splits,
      shapes={k: list(np.shape(v)) for k, v in first.items()},
      source=f"synthetic cohort (simulator v{SIMULATOR_VERSION}, seed {seed})").save(tmp)
  if os.path.exists(out):   # a half-written directory from a killed run
    shutil.rmtree(out)
  os.replace(tmp, out)
  logging.info("Synthetic cohort written in %.1fs: %s", time.time() - start,
               {s: v["num_examples"] for s, v in splits.items()})
  return out
