"""Input-pipeline throughput at the paper's shapes, with 0, 1 and 2 Grain workers.

  python benchmarks/input_pipeline.py --workdir=runs/bench --subjects=512

Builds (once) a synthetic paired cohort at base shapes (ECG 12 x 2500, cine
50 x 96 x 96) and an ECG-only copy of it, then times the training iterator
of each. Prints one JSON line per (pipeline, workers).
"""

import json
import logging
import os
import time

import ml_collections
import numpy as np
from absl import app
from absl import flags

from cardionets_jax.data import cohort
from cardionets_jax.data import pipeline
from cardionets_jax.data import records

_WORKDIR = flags.DEFINE_string("workdir", "runs/bench", "Where the benchmark datasets go.")
_SUBJECTS = flags.DEFINE_integer("subjects", 512, "Subjects in the benchmark cohort.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches per configuration.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to time.")


def ecg_only_copy(paired_dir, out_dir):
  """The same subjects without their cines, as an ECG-only archive would be."""
  try:
    return records.dataset_dir(out_dir)
  except FileNotFoundError:
    pass
  meta = records.DatasetMeta.load(paired_dir)
  size = meta.shapes["cmr"][1]

  def strip(split):
    def generate():
      source = records.data_source(paired_dir, split)
      for i in range(len(source)):
        ex = dict(source[i])
        ex.update(subject_id=ex["subject_id"].decode(), cmr=records.empty_cmr(size),
                  has_cmr=np.uint8(0))
        yield ex
    return generate

  return records.write_dataset(out_dir, {s: strip(s) for s in meta.splits}, meta)


def examples_per_s(directory, fields, workers):
  it = pipeline.train_iterator(directory, "train", fields, _BATCH.value, seed=0,
                               worker_count=workers)
  for _ in range(3):  # start-up: workers spawn, buffers fill
    next(it)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(it)
  return _BATCHES.value * _BATCH.value / (time.perf_counter() - start)


def main(argv):
  del argv
  logging.getLogger().setLevel(logging.WARNING)
  data = ml_collections.ConfigDict(dict(num_subjects=_SUBJECTS.value, cmr_frames=50, cmr_size=96,
                                        val_fraction=0.1, test_fraction=0.15))
  paired = cohort.build_synthetic(os.path.join(_WORKDIR.value, "paired"), data, seed=0)
  ecg_only = ecg_only_copy(paired, os.path.join(_WORKDIR.value, "ecg_only"))
  pipelines = {"ecg": (ecg_only, ("ecg", "lead_mask", "phenotypes")),
               "ecg+cmr": (paired, ("ecg", "lead_mask", "cmr", "phenotypes"))}
  for name, (directory, fields) in pipelines.items():
    for workers in map(int, _WORKERS.value):
      rate = examples_per_s(directory, fields, workers)
      print(json.dumps(dict(pipeline=name, workers=workers, batch_size=_BATCH.value,
                            examples_per_s=round(rate, 1), cpu_count=os.cpu_count())), flush=True)


if __name__ == "__main__":
  app.run(main)
