"""ECG -> CMR retrieval in the shared embedding space."""

import numpy as np

from cardionets_jax import evaluate


def ecg_to_cmr(ecg_embeddings, cmr_embeddings, split, ks=(1, 5)):
  """Top-k retrieval of each subject's own cine among the split's, by cosine similarity, with
  the chance level beside it."""
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  n = len(ecg_embeddings)
  out = evaluate.retrieval_topk(norm(ecg_embeddings) @ norm(cmr_embeddings).T, ks)
  return dict(out, chance={f"top{k}": min(k / n, 1.0) for k in ks}, n=n, split=split)
