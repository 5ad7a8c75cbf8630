"""The seeded inputs of the converter parity goldens (numpy only: the PyTorch script that writes
the goldens and the test that checks them both draw them here)."""

import hashlib

import numpy as np


def inputs(seed=0, batch=2):
  """(raw ECGs (B, 12, 2250) float32, cines (B, 50, 96, 96) uint8)."""
  rng = np.random.default_rng(seed)
  ecg = (rng.normal(size=(batch, 12, 2250)) * 0.4 + rng.normal(size=(batch, 12, 1))).astype(np.float32)
  cine = rng.integers(0, 256, size=(batch, 50, 96, 96), dtype=np.uint8)
  return ecg, cine


def checksum(array):
  return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
