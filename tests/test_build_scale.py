"""The build at archive scale: killed with SIGKILL and rerun, it finishes with every row exactly
once without redoing the rows it had finished; run as N shards and merged, it equals one build."""

import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cardionets_jax.data import build
from cardionets_jax.data import merge
from cardionets_jax.data import preprocess
from cardionets_jax.data import readers
from cardionets_jax.data import records
from tests import fixtures
from tests.test_build import CONFIG, REPO, write_manifest

ROWS, CHUNK = 200, 4


def _command(manifest, out):
  return [sys.executable, "-m", "cardionets_jax.data.build", f"--manifest={manifest}",
          f"--out={out}", "--phenotypes=lvedv:mL,lvef:%", "--labels=cardiomyopathy",
          "--cmr_frames=8", "--cmr_size=16", "--workers=1", f"--chunk_rows={CHUNK}"]


def _stored(out):
  return {ex["subject_id"].decode(): ex for split in records.DatasetMeta.load(out).splits
          for ex in records.data_source(out, split)}


def _manifest(tmp_path, n=ROWS):
  files = [fixtures.write_wfdb(str(tmp_path), f"ecg{k}", fixtures.ecg_signal(500, seed=k), 500)
           for k in range(4)]
  rows = [dict(subject_id=f"s{i:03d}", ecg_path=files[i % 4], lvedv=str(100 + i % 50), lvef="60",
               cardiomyopathy=str(i % 2)) for i in range(n)]
  rows.append(dict(subject_id="s000", ecg_path=files[0]))       # a duplicate id: one shard's
  return write_manifest(str(tmp_path / "manifest.csv"), rows), rows[:n]


def _assert_same_dataset(a, b):
  a, b = _stored(a), _stored(b)
  assert sorted(a) == sorted(b)
  for sid in a:
    np.testing.assert_array_equal(a[sid]["ecg"], b[sid]["ecg"])
    np.testing.assert_array_equal(a[sid]["phenotypes"], b[sid]["phenotypes"])


def test_killed_build_resumes_without_redoing_finished_rows(tmp_path):
  manifest, rows = _manifest(tmp_path)
  out = str(tmp_path / "killed")
  proc = subprocess.Popen(_command(manifest, out), cwd=REPO, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  chunks = lambda: glob.glob(os.path.join(out, ".rows-*", "*.npz"))
  while len(chunks()) < 5 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = chunks()
  assert 5 <= len(finished) < ROWS // CHUNK, f"not killed mid-way ({len(finished)} chunks)"

  report = build.build(manifest, out, CONFIG, workers=1, chunk_rows=CHUNK)  # the same build
  assert report["kept"] == ROWS and report["rows_resumed"] >= CHUNK * len(finished)
  assert not glob.glob(os.path.join(out, ".rows-*"))          # removed once the dataset is in
  stored = _stored(out)
  assert sorted(stored) == [r["subject_id"] for r in rows]    # every row once
  expected = {}
  for r in rows:                                              # and each as a fresh read gives
    if r["ecg_path"] not in expected:
      expected[r["ecg_path"]] = preprocess.preprocess_ecg(readers.read_ecg(r["ecg_path"]))[0]
    np.testing.assert_array_equal(stored[r["subject_id"]]["ecg"], expected[r["ecg_path"]])


def test_sharded_build_merged_equals_one_build(tmp_path):
  manifest, _ = _manifest(tmp_path, n=40)
  one = build.build(manifest, str(tmp_path / "one"), CONFIG, workers=1)
  shards = [str(tmp_path / f"shard{i}") for i in range(3)]
  parts = [build.build(manifest, s, CONFIG, workers=1, shard=(i, 3)) for i, s in enumerate(shards)]
  assert all(0 < p["rows"] < one["rows"] for p in parts)
  merged = merge.merge(shards[::-1], str(tmp_path / "merged"))    # any order
  for key in ("rows", "kept", "rejected", "kept_by_split", "rejected_by_reason"):
    assert merged[key] == one[key], key
  assert [d["row"] for d in merged["details"]] == [d["row"] for d in one["details"]]
  _assert_same_dataset(str(tmp_path / "merged"), str(tmp_path / "one"))
  meta, want = (records.DatasetMeta.load(str(tmp_path / d)) for d in ("merged", "one"))
  np.testing.assert_allclose(meta.phenotype_mean, want.phenotype_mean, rtol=1e-6)
  with pytest.raises(ValueError, match="parts 0..N-1"):
    merge.merge(shards[:2], str(tmp_path / "partial"))
