"""The built-in synthetic paired cohort, written as a regular dataset.

It goes through the same preprocessing, files and pipeline as a real dataset
built by `cardionets_jax.data.build`, so every stage trains on it the way it
would train on UK Biobank-style data.
"""

import contextlib
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import time

import numpy as np

from cardionets_jax.data import preprocess
from cardionets_jax.data import records
from cardionets_jax.data import synthetic

# 2: the cine is cropped around the heart (pose +-8 degrees and +-1.8 mm, was +-20 and +-9).
SIMULATOR_VERSION = 2
# Below this many subjects a pool of spawned workers costs more (starting Python, importing) than
# simulating in process (about 10 ms a subject at test sizes).
IN_PROCESS_SUBJECTS = 500


def dataset_dir(root, data_config, seed):
  key = dict(version=SIMULATOR_VERSION, seed=seed, n=data_config.num_subjects,
             frames=data_config.cmr_frames, size=data_config.cmr_size,
             val=data_config.val_fraction, test=data_config.test_fraction)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
  return os.path.join(root, f"synthetic-{digest}")


def simulate_example(index, seed, frames, size):
  """One subject in the dataset's example format (ECG band-passed as real data)."""
  s = synthetic.simulate_subject(seed, index, frames=frames, size=size)
  return dict(subject_id=s["subject_id"].decode(),
              ecg=preprocess.bandpass(s["ecg"], synthetic.ECG_FS).astype(np.float32),
              lead_mask=np.ones(records.NUM_LEADS, np.uint8), cmr=s["cmr"],
              has_cmr=np.uint8(1), phenotypes=s["phenotypes"], labels=s["labels"])


def _simulate(args):
  return simulate_example(*args)


def build_synthetic(root, data_config, seed, workers=None):
  """Builds the cohort under `root` unless it is there; returns its directory."""
  out = dataset_dir(root, data_config, seed)
  try:
    records.dataset_dir(out)
    return out
  except FileNotFoundError:
    pass
  start = time.time()
  n, frames, size = data_config.num_subjects, data_config.cmr_frames, data_config.cmr_size
  logging.info("Simulating the synthetic cohort: %d subjects, cine %dx%dx%d -> %s", n, frames,
               size, size, out)
  by_split = {s: [] for s in records.SPLITS}
  for i in range(n):
    by_split[records.split_of(synthetic.subject_id(i), data_config.val_fraction,
                      data_config.test_fraction)].append(i)
  meta = records.DatasetMeta(
      phenotype_names=synthetic.phenotype_names(), phenotype_units=synthetic.phenotype_units(),
      label_names=list(synthetic.LABELS),
      shapes=dict(ecg=[records.NUM_LEADS, synthetic.ECG_SAMPLES], cmr=[frames, size, size]),
      source=f"synthetic cohort (simulator v{SIMULATOR_VERSION}, seed {seed})")
  if workers is None:  # a pool for a large cohort only
    workers = 1 if n <= IN_PROCESS_SUBJECTS else min(os.cpu_count() or 1, 8)
  with contextlib.ExitStack() as stack:
    imap = map
    if workers > 1:
      # Spawned, not forked: forking a process that runs JAX threads can deadlock.
      pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
      imap = functools.partial(pool.imap, chunksize=8)
    splits = {s: (lambda ids=ids: imap(_simulate, [(i, seed, frames, size) for i in ids]))
              for s, ids in by_split.items() if ids}
    records.write_dataset(out, splits, meta)
  logging.info("Synthetic cohort written in %.1fs: %s", time.time() - start,
               {s: len(ids) for s, ids in by_split.items()})
  return out
