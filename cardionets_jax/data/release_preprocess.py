"""The release's ECG preprocessing order: for screening new ECGs with its published weights.

  FFT resampling to 250 Hz (scipy.signal.resample) -> `count` evenly spaced 9 s crops -> on each
  crop an order-5 Butterworth high-pass at 0.67 Hz, then an order-5 low-pass at 40 Hz, both
  zero-phase (sosfiltfilt) -> (a z-score per crop, inside the encoder).

Ours (`preprocess.preprocess_ecg`) band-passes at the native rate, resamples polyphase and hands
the model one 10 s window that it crops. The checks and the lead handling are the same.
"""

import numpy as np
from scipy import signal as sps

from cardionets_jax.data import preprocess
from cardionets_jax.data.readers import RecordError

CROP_SECONDS = 9.0
CROPS = 3


def fft_resample(x, fs_in, fs_out):
  """scipy.signal.resample to int(T * fs_out / fs_in) samples, as the release's `Resample`."""
  if float(fs_in) == float(fs_out):
    return np.array(x, np.float64)
  return sps.resample(x, int(x.shape[-1] * fs_out / fs_in), axis=-1)


def filter_crop(x, fs, low=0.67, high=40.0, order=5, path=""):
  """The release's `HighpassFilter` then `LowpassFilter` on one crop, each sosfiltfilt."""
  high_pass = sps.butter(order, low, btype="highpass", fs=fs, output="sos")
  low_pass = sps.butter(order, high, btype="lowpass", fs=fs, output="sos")
  try:
    return sps.sosfiltfilt(low_pass, sps.sosfiltfilt(high_pass, x, axis=-1), axis=-1)
  except ValueError as e:
    raise RecordError("too_short", f"{path}: {x.shape[-1]} samples are too few to filter: {e}") from e


def crop_starts(length, crop, count=CROPS):
  """Evenly spaced, first to last: 0, 125, 250 for 2500 samples (the release's `NCrop`)."""
  return np.linspace(0, length - crop, count).round().astype(int)


def preprocess_crops(record, cfg=preprocess.EcgConfig(), count=CROPS):
  """A raw record -> (float32 (count, 12, 9 s * cfg.fs) filtered crops, lead_mask, info)."""
  x, mask, info = preprocess.checked_leads(record, cfg)
  x = fft_resample(x, info["fs_in"], cfg.fs)
  crop = int(round(CROP_SECONDS * cfg.fs))
  n_res = x.shape[1]
  x = preprocess.crop_or_pad(x, max(n_res, crop), path=record.path)   # pads a record under 9 s
  crops = np.stack([filter_crop(x[:, s:s + crop], cfg.fs, cfg.low, cfg.high, cfg.order,
                                record.path) for s in crop_starts(x.shape[1], crop, count)])
  crops = crops * mask[None, :, None]
  info.update(preprocessing="release", resampled=float(info["fs_in"]) != float(cfg.fs),
              resample_method="fft", n_samples_resampled=int(n_res), n_padded=int(max(crop - n_res, 0)),
              crop_starts=[int(s) for s in crop_starts(x.shape[1], crop, count)])
  return crops.astype(np.float32), mask, info
