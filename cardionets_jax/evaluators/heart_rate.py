"""What heart rate can be read from the stored ECGs, by how it is read.

An encoder that mean-pools its tokens can count beats; counts are whole numbers, so a 9 s crop
at 68 bpm holds 10 or 11 beats by where it falls, and the count's error is up to half a beat of
the 1.2-beat spread that heart rate gives. The read-outs below put a number on that:
  - beats in one crop (what one training crop shows a counting encoder);
  - beats averaged over finetune's evaluation crops (`align.eval_crops`, whose features
    finetune averages);
  - 60 / the median RR interval (measuring the interval: what the signal holds).
Each is fitted to heart rate on the training split and scored (R2) on the test split.
"""

import numpy as np
from scipy import signal

from cardionets_jax import evaluate
from cardionets_jax.data import records
from cardionets_jax.data import synthetic
from cardionets_jax.stages import align

READ_OUTS = ("beats in one crop", "beats averaged over the evaluation crops", "60 / median RR")


def r_peaks(ecg, fs):
  """Sample indices of the R peaks of a (leads, T) ECG: peaks of the summed |lead| at least
  0.3 s apart and above half its 99.5th percentile (the built-in cohort's clean QRS)."""
  energy = np.abs(ecg).sum(0)
  peaks, _ = signal.find_peaks(energy, distance=int(0.3 * fs),
                               height=0.5 * np.percentile(energy, 99.5))
  return peaks


def read_outs(ecgs, fs, crop, crops):
  """(N, 3) float64: READ_OUTS of each (leads, T) ECG in `ecgs`."""
  out = []
  for ecg in ecgs:
    peaks = r_peaks(ecg, fs)
    windows = align.eval_crops(np.arange(ecg.shape[-1]), crop, crops)   # sample indices
    counts = [np.sum((peaks >= w[0]) & (peaks <= w[-1])) for w in windows]
    out.append((counts[0], np.mean(counts), 60.0 * fs / np.median(np.diff(peaks))))
  return np.array(out, np.float64)


def ceilings(data_dir, crop, crops):
  """{read-out: test R2 of a line fitted on train} for the built-in cohort in `data_dir`."""
  hr = synthetic.phenotype_names().index("heart_rate")
  fs = synthetic.ECG_FS
  splits = {}
  for split in ("train", "test"):
    source = records.data_source(data_dir, split)
    examples = [source[i] for i in range(len(source))]
    splits[split] = (read_outs([e["ecg"] for e in examples], fs, crop, crops),
                     np.array([e["phenotypes"][hr] for e in examples], np.float64))
  (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
  result = {}
  for j, name in enumerate(READ_OUTS):
    w = np.linalg.lstsq(np.c_[x_train[:, j], np.ones(len(x_train))], y_train, rcond=None)[0]
    result[name] = evaluate.r2_score(y_test, np.c_[x_test[:, j], np.ones(len(x_test))] @ w)
  return result


def fine_tuned(results):
  """{(init, mode): {label fraction: mean heart-rate R2 over seeds}} of finetune's methods."""
  table = {}
  for method in results.values():
    r2 = method["phenotypes"]["heart_rate"]["r2"]["value"]
    cell = table.setdefault((method["init"], method["mode"]), {})
    cell.setdefault(method["label_fraction"], []).append(r2)
  return {key: {f: float(np.mean(v)) for f, v in sorted(cells.items())}
          for key, cells in table.items()}
