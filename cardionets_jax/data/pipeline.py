"""Grain input pipelines over a dataset directory (synthetic or built).

Training: shuffled, repeated, sliced per host, decoded, batched, optionally
prefetched by worker processes; the iterator's state is checkpointed with the
train state. Evaluation: one ordered pass, the last batch padded.
"""

import dataclasses

import grain
import jax
import numpy as np

from cardionets_jax.data import records


@dataclasses.dataclass(frozen=True)
class DecodeFields(grain.transforms.Map):
  """Record bytes -> the example fields a stage asks for."""
  fields: tuple

  def map(self, record):
    example = records.decode_example(record)
    missing = [f for f in self.fields if f not in example]
    if missing:
      raise KeyError(f"Record of subject {example.get('subject_id')} lacks fields {missing}")
    return {f: example[f] for f in self.fields}


def _source(directory, meta, split):
  return grain.sources.ArrayRecordDataSource(meta.paths(directory, split))


def train_iterator(directory, split, fields, global_batch, *, seed, worker_count=0,
                   worker_buffer_size=2, read_threads=2):
  """An endless, checkpointable iterator of per-host batches (dicts of numpy)."""
  meta = records.DatasetMeta.load(directory)
  process_count = jax.process_count()
  if global_batch % process_count:
    raise ValueError(f"Batch {global_batch} does not split over {process_count} processes")
  ds = grain.MapDataset.source(_source(directory, meta, split))
  ds = ds[jax.process_index()::process_count]  # each host reads its own subjects
  ds = ds.shuffle(seed=seed).repeat().map(DecodeFields(tuple(fields)))
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
  meta = records.DatasetMeta.load(directory)
  source = _source(directory, meta, split)
  n = len(source) if limit is None else min(limit, len(source))
  decode = DecodeFields(tuple(fields))
  for start in range(0, n, batch_size):
    examples = [decode.map(source[i]) for i in range(start, min(start + batch_size, n))]
    valid = len(examples)
    examples += [examples[-1]] * (batch_size - valid)
    yield {f: np.stack([ex[f] for ex in examples]) for f in fields}, valid
