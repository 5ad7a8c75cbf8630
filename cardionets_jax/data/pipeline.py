"""Grain input pipelines over a dataset directory (synthetic or built).

Training: shuffled, repeated, each host's block of every global batch, decoded, batched, optionally
prefetched by worker processes; the iterator's state is checkpointed with the
train state. Evaluation: one ordered pass, the last batch padded. A stage
that reads `cmr` sees only the subjects that have a cine.
"""

import dataclasses
import hashlib

import grain
import jax
import numpy as np

from cardionets_jax.data import records


@dataclasses.dataclass(frozen=True)
class SelectFields(grain.transforms.Map):
  """A decoded example -> the fields a stage asks for."""
  fields: tuple

  def map(self, example):
    return {f: example[f] for f in self.fields}


def _has_cmr(example):
  return bool(example["has_cmr"])


def in_subset(subject_id: bytes, fraction, seed):
  """Whether a subject is in the seeded `fraction` subset (decided by subject, not row)."""
  if fraction >= 1.0:
    return True
  digest = hashlib.sha256(b"%d:" % seed + bytes(subject_id)).digest()
  return int.from_bytes(digest[:8], "little") / 2.0**64 < fraction


def _split_info(directory, split, fields):
  """The split's counts; a split without a cine is refused for a stage that reads `cmr`."""
  info = records.DatasetMeta.load(directory).splits.get(split, {})
  if "cmr" in fields and not info.get("num_with_cmr"):
    raise ValueError(f"Split {split!r} of {directory} has no subject with a cine, "
                     f"and this stage reads `cmr`")
  return info


def _dataset(directory, split, fields):
  _split_info(directory, split, fields)
  ds = grain.MapDataset.source(records.data_source(directory, split))
  return ds.filter(_has_cmr) if "cmr" in fields else ds


class Rows(grain.MapDataset):
  """The parent's rows at `indices`, in that order: a subset chosen once, read as if it were the
  whole split (a filter would read and drop the other rows again in every epoch)."""

  def __init__(self, parent, indices):
    super().__init__(parent)
    self._indices = np.asarray(indices, np.int64)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    # Indices wrap around, as a grain source's do (a shuffle asks for epoch * len + position).
    return self._parent[int(self._indices[index % len(self._indices)])]

  def __str__(self):
    return f"Rows({len(self._indices)})"


def training_rows(directory, split, fields, subset=(1.0, 0)):
  """The rows a stage trains on: those with a cine if it reads `cmr`, of the seeded `subset` of
  subjects; None when that is every row (nothing to read beforehand)."""
  info = _split_info(directory, split, fields)
  need_cmr = "cmr" in fields
  if subset[0] >= 1.0 and (not need_cmr or info.get("num_with_cmr") == info.get("num_examples")):
    return None
  source, rows = records.data_source(directory, split), []
  for i in range(len(source)):
    example = source[i]
    if (not need_cmr or _has_cmr(example)) and in_subset(example["subject_id"], *subset):
      rows.append(i)
  return rows


class HostBlocks(grain.MapDataset):
  """Host `index` of `count`'s rows of every global batch of `global_batch` consecutive elements.

  Every host walks the same shuffled order and reads only its own block of
  each global batch, so the global batches do not depend on how many hosts
  share them: a run on 2 hosts sees the batches a run on 1 host sees.
  """

  def __init__(self, parent, global_batch, count, index):
    super().__init__(parent)
    self._global, self._local, self._index = global_batch, global_batch // count, index
    self._length = len(parent) // count

  def __len__(self):
    return self._length

  def _parent_index(self, i):
    return (i // self._local) * self._global + self._index * self._local + i % self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._parent_index(index)]

  def __str__(self):
    return f"HostBlocks(global_batch={self._global}, host={self._index})"


def train_iterator(directory, split, fields, global_batch, *, seed, worker_count=0,
                   worker_buffer_size=2, read_threads=2, subset=(1.0, 0)):
  """An endless, checkpointable iterator of per-host batches (dicts of numpy).

  `subset=(fraction, seed)` trains on a seeded fraction of the subjects
  (label-fraction experiments). The rows are chosen before the shuffle (`training_rows`), so
  every host walks the same stream, whatever the number of hosts.
  """
  process_count = jax.process_count()
  if global_batch % process_count:
    raise ValueError(f"Batch {global_batch} does not split over {process_count} processes")
  ds = grain.MapDataset.source(records.data_source(directory, split))
  rows = training_rows(directory, split, fields, subset)
  if rows is not None:
    if not rows:
      raise ValueError(f"No training rows in split {split!r} of {directory} for fields "
                       f"{fields} and label subset {subset}")
    ds = Rows(ds, rows)
  ds = ds.shuffle(seed=seed).repeat()
  if process_count > 1:
    ds = HostBlocks(ds, global_batch, process_count, jax.process_index())
  ds = ds.map(SelectFields(tuple(fields)))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=16))
  if worker_count > 0:
    # Workers decode single examples and the main process batches them: worker
    # outputs interleave round-robin, so the order is the same with any count.
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  it = it.batch(global_batch // process_count, drop_remainder=True)
  return iter(it)


def eval_batches(directory, split, fields, batch_size, limit=None):
  """Yields (batch, num_valid) over a split in order; the last batch is padded
  by repeating its final example so that shapes (and compilations) stay fixed."""
  ds = _dataset(directory, split, fields).map(SelectFields(tuple(fields)))
  chunk, seen = [], 0
  for example in ds.to_iter_dataset():
    if limit is not None and seen >= limit:
      break
    chunk.append(example)
    seen += 1
    if len(chunk) == batch_size:
      yield _stack(chunk, fields), batch_size
      chunk = []
  if chunk:
    valid = len(chunk)
    yield _stack(chunk + [chunk[-1]] * (batch_size - valid), fields), valid


def _stack(examples, fields):
  return {f: np.stack([ex[f] for ex in examples]) for f in fields}
