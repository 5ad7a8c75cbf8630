"""Records, the synthetic cohort on disk, and the Grain pipelines."""

import numpy as np
import pytest

from cardionets_jax.data import cohort
from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax.data import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  from tests.conftest import tiny_mae_config
  config = tiny_mae_config()
  root = tmp_path_factory.mktemp("data")
  return cohort.build_synthetic(str(root), config.data, seed=0, workers=2), config


def test_example_round_trip_without_pickle():
  ex = synthetic.simulate_subject(0, 3, frames=10, size=16)
  back = records.decode_example(records.encode_example(ex))
  assert set(back) == set(ex)
  for k in ex:
    np.testing.assert_array_equal(back[k], ex[k])
    assert back[k].dtype == np.asarray(ex[k]).dtype


def test_object_arrays_are_refused():
  bad = records.encode_example({"x": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match="pickle"):
    records.decode_example(bad)


def test_cohort_splits_by_subject_and_matches_simulator(dataset):
  directory, config = dataset
  meta = records.DatasetMeta.load(directory)
  assert sum(v["num_examples"] for v in meta.splits.values()) == config.data.num_subjects
  seen = {}
  for split in records.SPLITS:
    for batch, valid in pipeline.eval_batches(directory, split, ("subject_id", "cmr", "ecg"), 16):
      for i in range(valid):
        sid = bytes(batch["subject_id"][i])
        assert sid not in seen
        seen[sid] = split
        assert cohort.split_of(sid, config.data.val_fraction, config.data.test_fraction) == split
  assert len(seen) == config.data.num_subjects
  # Each stored example is exactly what the simulator makes for that subject.
  batch, _ = next(pipeline.eval_batches(directory, "train", ("subject_id", "cmr", "phenotypes"), 4))
  index = int(bytes(batch["subject_id"][0]).decode().split("-")[1])
  ex = synthetic.simulate_subject(0, index, frames=10, size=16)
  np.testing.assert_array_equal(batch["cmr"][0], ex["cmr"])
  np.testing.assert_array_equal(batch["phenotypes"][0], ex["phenotypes"])
  train = np.stack([b["phenotypes"][i] for b, v in pipeline.eval_batches(
      directory, "train", ("phenotypes",), 32) for i in range(v)])
  np.testing.assert_allclose(meta.phenotype_mean, train.mean(0), rtol=1e-5)


def test_eval_batches_pad_the_last_batch(dataset):
  directory, _ = dataset
  n = records.DatasetMeta.load(directory).splits["val"]["num_examples"]
  batches = list(pipeline.eval_batches(directory, "val", ("cmr",), 5))
  assert sum(v for _, v in batches) == n
  assert all(b["cmr"].shape[0] == 5 for b, _ in batches)


def test_train_iterator_is_deterministic_and_resumable(dataset):
  directory, _ = dataset
  make = lambda: pipeline.train_iterator(directory, "train", ("subject_id",), 8, seed=3)
  a = make()
  first = [next(a)["subject_id"] for _ in range(3)]
  state = a.get_state()
  rest = [next(a)["subject_id"] for _ in range(20)]  # crosses an epoch boundary
  b = make()
  np.testing.assert_array_equal([next(b)["subject_id"] for _ in range(3)], first)
  c = make()
  c.set_state(state)
  np.testing.assert_array_equal([next(c)["subject_id"] for _ in range(20)], rest)
  # An epoch visits every training subject once.
  n = records.DatasetMeta.load(directory).splits["train"]["num_examples"]
  epoch = np.concatenate(first + rest)[: (n // 8) * 8]
  assert len(set(epoch.tolist())) == len(epoch)


def test_train_iterator_with_worker_processes_matches_in_process(dataset):
  directory, _ = dataset
  plain = pipeline.train_iterator(directory, "train", ("subject_id", "cmr"), 8, seed=1)
  workers = pipeline.train_iterator(directory, "train", ("subject_id", "cmr"), 8, seed=1,
                                    worker_count=2)
  for _ in range(4):
    x, y = next(plain), next(workers)
    np.testing.assert_array_equal(x["subject_id"], y["subject_id"])
    np.testing.assert_array_equal(x["cmr"], y["cmr"])
