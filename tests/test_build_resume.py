"""A dataset build killed with SIGKILL and rerun finishes with every row exactly once, without
redoing the rows it had finished, and equals an uninterrupted build."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from cardionets_jax.data import build
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


def test_killed_build_resumes_without_redoing_finished_rows(tmp_path):
  files = [fixtures.write_wfdb(str(tmp_path), f"ecg{k}", fixtures.ecg_signal(500, seed=k), 500)
           for k in range(4)]
  rows = [dict(subject_id=f"s{i:03d}", ecg_path=files[i % 4], lvedv=str(100 + i % 50), lvef="60",
               cardiomyopathy=str(i % 2)) for i in range(ROWS)]
  manifest = write_manifest(str(tmp_path / "manifest.csv"), rows)
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

  resumed = subprocess.run(_command(manifest, out), cwd=REPO, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  with open(os.path.join(out, build.REPORT)) as f:
    report = json.load(f)
  assert report["kept"] == ROWS and report["rows_resumed"] == CHUNK * len(finished)
  assert not glob.glob(os.path.join(out, ".rows-*"))          # removed once the dataset is in
  straight = str(tmp_path / "straight")
  build.build(manifest, straight, CONFIG, workers=1, chunk_rows=CHUNK)
  a, b = _stored(out), _stored(straight)
  assert sorted(a) == sorted(b) == [r["subject_id"] for r in rows]
  for sid in a:
    np.testing.assert_array_equal(a[sid]["ecg"], b[sid]["ecg"])
    np.testing.assert_array_equal(a[sid]["phenotypes"], b[sid]["phenotypes"])
