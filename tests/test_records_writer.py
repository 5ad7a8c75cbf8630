"""records.write_dataset streams its splits (no TFDS shuffle buffer, which without TensorFlow
fails past 1 GB) and writes what TFDS's own `GeneratorBasedBuilder` writes: same examples in
the same order, same metadata."""

import numpy as np
import tensorflow_datasets as tfds

from cardionets_jax.data import records

META = records.DatasetMeta(phenotype_names=["lvedv", "lvef"], phenotype_units=["mL", "%"],
                           label_names=["cardiomyopathy"], shapes=dict(ecg=[12, 50], cmr=[3, 8, 8]))


def _examples(split, n):
  def generate():
    rng = np.random.default_rng(len(split))
    for i in range(n):
      has = i % 3 != 0
      yield dict(subject_id=f"{split}-{i}", ecg=rng.normal(size=(12, 50)).astype(np.float32),
                 lead_mask=np.ones(12, np.uint8), has_cmr=np.uint8(has),
                 cmr=rng.integers(0, 255, (3 if has else 0, 8, 8)).astype(np.uint8),
                 phenotypes=np.array([i, np.nan if i % 5 == 0 else 2 * i], np.float32),
                 labels=np.array([i % 2], np.int8))
  return generate


class _TfdsBuilder(tfds.core.GeneratorBasedBuilder):
  """TFDS's own writer, as a reference."""
  VERSION = tfds.core.Version(records.VERSION)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=records.features(50, 8, 2, 1))

  def _split_generators(self, dl_manager):
    return {s: ((ex["subject_id"], ex) for ex in _examples(s, n)()) for s, n in SIZES.items()}

  def _generate_examples(self):
    raise NotImplementedError


SIZES = {"train": 60, "test": 17}


def test_written_dataset_equals_tfds_builders(tmp_path):
  ours = records.write_dataset(str(tmp_path / "ours"), {s: _examples(s, n) for s, n in SIZES.items()},
                               META, num_shards=3)
  builder = _TfdsBuilder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  meta = records.DatasetMeta.load(ours)
  assert meta.splits == {"train": dict(num_examples=60, num_with_cmr=40),
                         "test": dict(num_examples=17, num_with_cmr=11)}
  train = np.stack([ex["phenotypes"] for ex in _examples("train", 60)()])
  np.testing.assert_allclose(meta.phenotype_mean, records.phenotype_stats(train)[0])
  for split in SIZES:
    a, b = records.data_source(ours, split), builder.as_data_source(split=split)
    assert len(a) == len(b) == SIZES[split]
    for i in range(len(a)):
      assert a[i]["subject_id"] == b[i]["subject_id"]
      for field in ("ecg", "cmr", "phenotypes", "labels", "has_cmr"):
        np.testing.assert_array_equal(a[i][field], b[i][field])
