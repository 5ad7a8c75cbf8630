"""The on-disk dataset: ArrayRecord shards of examples plus a `meta.json`.

An example is a dict of numpy arrays (DESIGN.md): `ecg` (12, T) float32 at
250 Hz, `cmr` (F, H, W) uint8, `phenotypes` (P,) float32 with NaN where
missing, `labels` (L,) int8 with -1 where missing, `subject_id` bytes.
Records are `.npz` bytes read with allow_pickle=False: no pickle, ever.
"""

import dataclasses
import io
import json
import os
from typing import Iterable

import numpy as np
from array_record.python import array_record_module

META_FILE = "meta.json"
SPLITS = ("train", "val", "test")


def encode_example(example):
  buf = io.BytesIO()
  np.savez(buf, **{k: np.asarray(v) for k, v in example.items()})
  return buf.getvalue()


def decode_example(record):
  with np.load(io.BytesIO(record), allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def shard_paths(directory, split, num_shards):
  return [os.path.join(directory, f"{split}.array_record-{i:05d}-of-{num_shards:05d}")
          for i in range(num_shards)]


def write_shards(directory, split, examples: Iterable[dict], num_shards=1):
  """Writes examples round-robin over `num_shards` shards; returns the count."""
  writers = [array_record_module.ArrayRecordWriter(p, "group_size:1")
             for p in shard_paths(directory, split, num_shards)]
  count = 0
  try:
    for count, example in enumerate(examples, start=1):
      writers[(count - 1) % num_shards].write(encode_example(example))
  finally:
    for w in writers:
      w.close()
  return count


@dataclasses.dataclass
class DatasetMeta:
  """What a dataset directory holds; `meta.json` is its serialised form."""
  phenotype_names: list
  phenotype_units: list
  label_names: list
  phenotype_mean: list      # train-split statistics, for z-scoring
  phenotype_std: list
  splits: dict              # split -> {"num_examples": int, "num_shards": int}
  shapes: dict              # field -> shape of one example
  source: str = ""

  def save(self, directory):
    with open(os.path.join(directory, META_FILE), "w") as f:
      json.dump(dataclasses.asdict(self), f, indent=2)

  @classmethod
  def load(cls, directory):
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{directory} is not a cardionets dataset: {META_FILE} is missing")
    with open(path) as f:
      return cls(**json.load(f))

  def paths(self, directory, split):
    if split not in self.splits:
      raise KeyError(f"Dataset {directory} has no split {split!r}; it has {sorted(self.splits)}")
    return shard_paths(directory, split, self.splits[split]["num_shards"])


def phenotype_stats(phenotypes):
  """Per-phenotype mean and std over rows, ignoring NaN (missing)."""
  p = np.asarray(phenotypes, np.float64)
  mean = np.nanmean(p, axis=0)
  std = np.nanstd(p, axis=0)
  return mean, np.where(std > 0, std, 1.0)
