"""ECG -> CMR retrieval in the shared embedding space."""

import numpy as np

from cardionets_jax import evaluate


def ecg_to_cmr(ecg_embeddings, cmr_embeddings, split, ks=(1, 5)):
  """Top-k retrieval of each subject's own cine among the split's, by cosine similarity, with
  the chance level beside it and each subject's rank (1 = its own cine first)."""
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  n = len(ecg_embeddings)
  ranks = evaluate.retrieval_ranks(norm(ecg_embeddings) @ norm(cmr_embeddings).T)
  return dict(evaluate.top_k(ranks, ks),
              chance={f"top{k}": min(k / n, 1.0) for k in ks}, n=n, split=split,
              ranks=[int(r) for r in ranks])
