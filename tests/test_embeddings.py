"""What held-out embeddings separate: the neighbour AUROC, the disease groups, the figure."""

import numpy as np
from sklearn import metrics
from sklearn import neighbors

from cardionets_jax.evaluators import embeddings


def _cohort(rng, n=120, shift=0.0):
  labels = np.stack([rng.random(n) < 0.3, rng.random(n) < 0.2], 1).astype(np.int8)
  emb = rng.normal(size=(n, 16))
  emb[:, 0] += shift * labels[:, 0]          # only the first disease moves the embedding
  return emb, labels


def test_neighbour_auroc_equals_sklearn_nearest_neighbours_and_roc_auc():
  rng = np.random.default_rng(0)
  emb, labels = _cohort(rng, shift=3.0)
  labels[::9, 1] = -1                        # missing: neither scored nor a neighbour
  got = embeddings.neighbour_auroc(emb, labels, ["cm", "ph"], k=7)
  for j, name in enumerate(["cm", "ph"]):
    known = labels[:, j] >= 0
    x, y = emb[known], labels[known, j]
    nn = neighbors.NearestNeighbors(n_neighbors=8, metric="cosine").fit(x)
    idx = nn.kneighbors(x, return_distance=False)[:, 1:]     # drop the subject itself
    assert np.isclose(got[name], metrics.roc_auc_score(y, y[idx].mean(1)))
  assert got["cm"] > 0.9 and abs(got["ph"] - 0.5) < 0.2   # the moved disease separates


def test_groups_name_healthy_each_disease_both_and_unlabelled():
  labels = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [-1, 0]], np.int8)
  assert list(embeddings.groups(labels, ["cm", "ph"])) == ["healthy", "cm", "ph", "both",
                                                           "unlabelled"]


def test_figure_is_written(tmp_path):
  rng = np.random.default_rng(1)
  emb, labels = _cohort(rng, n=60, shift=2.0)
  phen = rng.normal(size=(60, 3))
  path = tmp_path / "emb.png"
  embeddings.figure(path, [("before", emb, phen, labels), ("after", emb * 2, phen, labels)],
                    ["lvedv", "lvef", "hr"], ["cm", "ph"])
  assert path.stat().st_size > 10_000
