"""The build's finished rows on disk, so that a killed build resumes where it stopped.

Rows are read and preprocessed in chunks of CHUNK_ROWS; each finished chunk (its examples and
its rows' results) is saved inside the output folder as `.rows-KEY/SPLIT-NNNNNN.npz`, written to
a temporary name and renamed, so a chunk file is either whole or absent. KEY hashes the manifest's
bytes, the build config and the base folder: a rerun of the same build reuses the chunks, any
other build starts afresh. The folder is removed once the dataset is swapped in. Resuming
assumes the files the manifest names did not change in between (`--noresume` redoes all).
Memory stays flat in the number of rows: a chunk's examples are held at a time, and the worker
pool is fed no more than two chunks ahead of the writer.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time

import numpy as np

from cardionets_jax.data.build_rows import RowResult

CHUNK_ROWS = 64
PREFIX = ".rows-"
_ARRAYS = ("ecg", "lead_mask", "cmr", "has_cmr", "phenotypes", "labels")


def cache_key(manifest, config, base_dir, builder):
  h = hashlib.sha256()
  with open(manifest, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  h.update(repr((config, os.path.abspath(base_dir or ""), builder)).encode())
  return h.hexdigest()[:16]


class RowCache:
  """The chunk files of one build (`key`) inside `out`."""

  def __init__(self, out, key, resume=True):
    self.dir = os.path.join(out, PREFIX + key)
    for name in os.listdir(out):              # other builds' caches are stale
      if name.startswith(PREFIX) and (name != PREFIX + key or not resume):
        shutil.rmtree(os.path.join(out, name))
    os.makedirs(self.dir, exist_ok=True)
    for name in os.listdir(self.dir):         # a chunk being written when the build was killed
      if ".tmp" in name:
        os.remove(os.path.join(self.dir, name))
    self.reused = 0

  def _path(self, split, index):
    return os.path.join(self.dir, f"{split}-{index:06d}.npz")

  def has(self, split, index):
    return os.path.exists(self._path(split, index))

  def load(self, split, index):
    with np.load(self._path(split, index), allow_pickle=False) as z:
      results = [RowResult(**r) for r in json.loads(z["results"].tobytes())]
      pairs = [(None if r.status != "kept" else
                dict(subject_id=r.subject_id, **{a: z[f"{i}.{a}"] for a in _ARRAYS}), r)
               for i, r in enumerate(results)]
    self.reused += len(pairs)
    return pairs

  def save(self, split, index, pairs):
    arrays = {f"{i}.{a}": np.asarray(ex[a]) for i, (ex, _) in enumerate(pairs)
              if ex is not None for a in _ARRAYS}
    arrays["results"] = np.frombuffer(
        json.dumps([dataclasses.asdict(r) for _, r in pairs]).encode(), np.uint8)
    path = self._path(split, index)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)

  def remove(self):
    shutil.rmtree(self.dir, ignore_errors=True)


def _bounded_imap(pool, worker, tasks, window):
  """`pool.imap(worker, tasks)` with at most `window` results not yet taken: imap alone feeds
  every task at once, and results the writer has not caught up with pile up in memory."""
  if pool is None:
    yield from map(worker, tasks)
    return
  slots = threading.Semaphore(window)

  def fed():
    for task in tasks:
      slots.acquire()                        # (imap's feeder thread waits here)
      yield task

  for result in pool.imap(worker, fed(), chunksize=4):
    slots.release()
    yield result


def processed(split, tasks, worker, pool, cache, chunk_rows=CHUNK_ROWS):
  """(example or None, RowResult) for each task in order: the chunks a previous run finished
  from `cache`, the others computed by `pool` (streamed across chunks) and saved."""
  chunks = [tasks[i:i + chunk_rows] for i in range(0, len(tasks), chunk_rows)]
  todo = {c for c in range(len(chunks)) if not cache.has(split, c)}
  if len(todo) < len(chunks):
    logging.info("%s: resuming, %d of %d chunks already done", split, len(chunks) - len(todo),
                 len(chunks))
  pending = [t for c in sorted(todo) for t in chunks[c]]
  stream = _bounded_imap(pool, worker, pending, window=2 * chunk_rows)
  start, done = time.time(), 0
  for c, chunk in enumerate(chunks):
    if c not in todo:
      yield from cache.load(split, c)
      continue
    pairs = [next(stream) for _ in chunk]
    cache.save(split, c, pairs)
    done += len(chunk)
    rate = done / max(time.time() - start, 1e-9)
    logging.info("%s: %d/%d rows processed, %.1f rows/s, ETA %.0fs", split, done, len(pending),
                 rate, (len(pending) - done) / rate)
    yield from pairs
