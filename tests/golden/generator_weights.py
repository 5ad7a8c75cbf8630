"""Seeded weights and inputs of the generator parity goldens (numpy only).

The PyTorch script (`make_generator_golden.py`) fills its modules with these arrays, keyed by the
release's state_dict names, and saves the key/shape manifest and its outputs; the test rebuilds
the same arrays from the manifest and converts them. So no weight file is committed.
"""

import zlib

import numpy as np


def weight(key, shape, seed=0):
  """A deterministic array for one state_dict key: fan-in-scaled weights, norm scales near 1,
  small biases and embeddings."""
  rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
  shape = tuple(shape)
  if key.endswith(".weight") and len(shape) >= 2:
    return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
  if key.endswith(".weight"):        # a norm's scale
    return (1.0 + 0.1 * rng.normal(size=shape)).astype(np.float32)
  if key.endswith(".bias"):
    return (0.1 * rng.normal(size=shape)).astype(np.float32)
  # embeddings, the null condition, BatchNorm running statistics, scalars
  return np.asarray(0.5 * rng.normal(size=shape), np.float32)


def state_dict(manifest, seed=0):
  """{key: array} for a {key: shape} manifest."""
  return {k: weight(k, s, seed) for k, s in manifest.items()}


def vae_inputs(frames, size, batch=2, seed=1):
  """uint8 cines (B, F, H, W)."""
  return np.random.default_rng(seed).integers(0, 256, size=(batch, frames, size, size),
                                              dtype=np.uint8)


def mar_inputs(seq_len, token_dim, embed_dim, batch=2, seed=2):
  """(tokens (B, S, D), ECG embeddings (B, E), known positions (B, K) ascending, x_t (B, D))."""
  rng = np.random.default_rng(seed)
  tokens = rng.normal(size=(batch, seq_len, token_dim)).astype(np.float32)
  embedding = rng.normal(size=(batch, embed_dim)).astype(np.float32)
  known = np.sort(np.stack([rng.permutation(seq_len)[:seq_len // 3] for _ in range(batch)]), 1)
  x_t = rng.normal(size=(batch, token_dim)).astype(np.float32)
  return tokens, embedding, known.astype(np.int32), x_t
