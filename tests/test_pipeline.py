"""Records, the synthetic cohort on disk, and the Grain pipelines."""

import numpy as np
import pytest

from cardionets_jax.data import cohort
from cardionets_jax.data import pipeline
from cardionets_jax.data import records
from cardionets_jax.data import synthetic


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  from tests.conftest import stage_test_config
  config = stage_test_config("mae")
  root = tmp_path_factory.mktemp("data")
  return cohort.build_synthetic(str(root), config.data, seed=0, workers=2), config


def test_dataset_round_trip_through_tfds_data_source(tmp_path):
  import tensorflow_datasets as tfds
  rng = np.random.default_rng(0)
  examples = [dict(subject_id=f"S{i}", ecg=rng.normal(size=(12, 50)).astype(np.float32),
                   lead_mask=np.ones(12, np.uint8),
                   cmr=rng.integers(0, 255, (3, 8, 8), dtype=np.uint8) if i % 2 else records.empty_cmr(8),
                   has_cmr=np.uint8(i % 2), phenotypes=np.array([i, np.nan], np.float32),
                   labels=np.array([i % 2, -1], np.int8)) for i in range(6)]
  meta = records.DatasetMeta(phenotype_names=["a", "b"], phenotype_units=["mL", "%"],
                             label_names=["x", "y"], shapes=dict(ecg=[12, 50], cmr=[3, 8, 8]))
  directory = records.write_dataset(str(tmp_path), {"train": lambda: iter(examples)}, meta)
  source = tfds.data_source(f"{records.NAME}:{records.VERSION}", data_dir=str(tmp_path), split="train")
  back = {ex["subject_id"].decode(): ex for ex in (source[i] for i in range(len(source)))}
  assert sorted(back) == [ex["subject_id"] for ex in examples]
  for ex in examples:
    got = back[ex["subject_id"]]
    for k in ("ecg", "lead_mask", "cmr", "phenotypes", "labels", "has_cmr"):
      np.testing.assert_array_equal(got[k], ex[k])
  loaded = records.DatasetMeta.load(directory)
  assert loaded.splits["train"] == dict(num_examples=6, num_with_cmr=3)
  np.testing.assert_allclose(loaded.phenotype_mean, [2.5, 0.0])
  # Only subjects with a cine reach a stage that reads `cmr`.
  cines = [b for b, v in pipeline.eval_batches(str(tmp_path), "train", ("subject_id", "cmr"), 8)]
  assert sorted(cines[0]["subject_id"][:3].tolist()) == [b"S1", b"S3", b"S5"]


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
        assert records.split_of(sid, config.data.val_fraction, config.data.test_fraction) == split
        index = int(sid.decode().split("-")[1])
        assert synthetic.subject_id(index) == sid
  assert len(seen) == config.data.num_subjects
  # Each stored example is exactly what the simulator makes for that subject.
  batch, _ = next(pipeline.eval_batches(directory, "train", ("subject_id", "cmr", "phenotypes"), 4))
  index = int(bytes(batch["subject_id"][0]).decode().split("-")[1])
  ex = cohort.simulate_example(index, 0, config.data.cmr_frames, config.data.cmr_size)
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


def test_a_label_subset_trains_on_exactly_its_subjects_each_once_an_epoch(dataset):
  directory, _ = dataset
  ids = [bytes(b["subject_id"][i]) for b, v in pipeline.eval_batches(
      directory, "train", ("subject_id",), 16) for i in range(v)]
  chosen = {i for i in ids if pipeline.in_subset(i, 0.3, 2)}
  rows = pipeline.training_rows(directory, "train", ("subject_id", "cmr"), (0.3, 2))
  assert len(rows) == len(chosen)
  assert pipeline.training_rows(directory, "train", ("subject_id", "cmr")) is None  # all, as is
  it = pipeline.train_iterator(directory, "train", ("subject_id",), 4, seed=0, subset=(0.3, 2))
  n = (len(chosen) // 4) * 4
  stream = [bytes(s) for _ in range(2 * len(chosen) // 4 + 1) for s in next(it)["subject_id"]]
  assert set(stream) == chosen
  assert len(set(stream[:n])) == n                      # an epoch visits each one once
