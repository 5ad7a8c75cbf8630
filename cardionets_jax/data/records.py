"""The on-disk dataset: a TFDS dataset of ArrayRecord shards.

Written without TensorFlow by `write_dataset` (ArrayRecord shards plus TFDS metadata), read
back by `tfds.data_source` / Grain. One example is one subject (DESIGN.md):

  subject_id  text
  ecg         (12, T) float32, band-passed, 250 Hz, standard lead order
  lead_mask   (12,) uint8, 1 where the lead was recorded
  cmr         (F, H, W) uint8 cine, or (0, H, W) for an ECG-only subject
  has_cmr     uint8
  phenotypes  (P,) float32, NaN where missing
  labels      (L,) int8, -1 where missing

The builder's metadata holds phenotype names, units and train statistics,
label names and shapes. Nothing is ever unpickled.
"""

import dataclasses
import hashlib
import os
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds

NAME = "cardionets_dataset"
VERSION = "1.0.0"
SPLITS = ("train", "val", "test")
NUM_LEADS = 12


def features(ecg_samples, cmr_size, num_phenotypes, num_labels):
  t = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "subject_id": tfds.features.Text(),
      "ecg": t(shape=(NUM_LEADS, ecg_samples), dtype=np.float32),
      "lead_mask": t(shape=(NUM_LEADS,), dtype=np.uint8),
      "cmr": t(shape=(None, cmr_size, cmr_size), dtype=np.uint8),
      "has_cmr": t(shape=(), dtype=np.uint8),
      "phenotypes": t(shape=(num_phenotypes,), dtype=np.float32),
      "labels": t(shape=(num_labels,), dtype=np.int8),
  })


@dataclasses.dataclass
class DatasetMeta:
  """What a dataset holds, beyond its TFDS features."""
  phenotype_names: list
  phenotype_units: list
  label_names: list
  shapes: dict                  # field -> shape of one example (cmr: frames, size, size)
  source: str = ""
  phenotype_mean: list = None   # train-split statistics, for z-scoring
  phenotype_std: list = None
  splits: dict = None           # split -> {"num_examples", "num_with_cmr"}; filled on load
  provenance: dict = None       # derived datasets (tokens): the checkpoints and config that made them

  @classmethod
  def load(cls, directory):
    builder = open_builder(directory)
    meta = dict(builder.info.metadata)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = cls(**{k: v for k, v in meta.items() if k in fields and k != "splits"})
    counts = meta.get("num_with_cmr", {})
    out.splits = {name: dict(num_examples=int(info.num_examples),
                             num_with_cmr=int(counts.get(name, 0)))
                  for name, info in builder.info.splits.items()}
    return out


def dataset_dir(directory):
  """The TFDS version directory inside `directory` (or `directory` itself)."""
  names = [NAME] + (sorted(os.listdir(directory)) if os.path.isdir(directory) else [])
  for candidate in [directory] + [os.path.join(directory, n, VERSION) for n in names]:
    if os.path.exists(os.path.join(candidate, "dataset_info.json")):
      return candidate
  raise FileNotFoundError(
      f"{directory} holds no cardionets dataset (no dataset_info.json in it or in "
      f"{os.path.join(NAME, VERSION)}/): build one with `python -m cardionets_jax.data.build`")


def open_builder(directory):
  return tfds.builder_from_directory(dataset_dir(directory))


def data_source(directory, split):
  """Random-access source of decoded examples (dicts of numpy) for Grain."""
  return open_builder(directory).as_data_source(split=split)


def split_of(subject_id: bytes, val_fraction, test_fraction):
  """Deterministic subject-level split from a hash of the id."""
  u = int.from_bytes(hashlib.sha256(subject_id).digest()[:8], "little") / 2.0**64
  if u < test_fraction:
    return "test"
  return "val" if u < test_fraction + val_fraction else "train"


def shard_of(key: bytes, num_shards):
  """The build shard of a row (build --shard), from bytes of the hash that split_of leaves
  unused, so each shard holds every split in its usual proportion."""
  return int.from_bytes(hashlib.sha256(key).digest()[8:16], "little") % num_shards


def phenotype_stats(phenotypes, num_phenotypes=None):
  """Per-phenotype mean and std over rows, ignoring NaN (missing) and gross outliers.

  The statistics are those of the values within ROBUST_SDS robust standard deviations (1.4826 x
  the median absolute deviation) of the median, so one mistyped value cannot set the scale of a
  whole column; on a plausible cohort that is every value. A phenotype with no value gets mean 0, std 1.
  """
  p = np.asarray(phenotypes, np.float64)
  if p.ndim != 2:  # no rows
    p = p.reshape(len(p), num_phenotypes or 0)
  mean, std = np.zeros(p.shape[1]), np.ones(p.shape[1])
  for j in range(p.shape[1]):
    v = p[np.isfinite(p[:, j]), j]
    if v.size == 0:
      continue
    median = np.median(v)
    spread = 1.4826 * np.median(np.abs(v - median))
    if spread > 0:
      v = v[np.abs(v - median) <= ROBUST_SDS * spread]
    mean[j] = v.mean()
    std[j] = v.std() if v.std() > 0 else 1.0
  return mean, std


# Far enough that a cohort's disease tail stays in (the simulator's reaches 16 robust SDs: LVESV
# in cardiomyopathy), close enough that a mistyped value (an extra digit) does not.
ROBUST_SDS = 20.0


TOKENS_NAME = "cardionets_tokens"  # the tokenize stage's dataset
SHARD_BYTES = 512 << 20             # serialized bytes per ArrayRecord shard (when not given)


def _hash_order(split, key):
  """The position TFDS's writer gives an example: md5 of the split name then the key."""
  return int(hashlib.md5(split.encode() + str(key).encode()).hexdigest(), 16)


def token_features(latent_shape, embed_dim, num_phenotypes, num_labels):
  t = tfds.features.Tensor
  return tfds.features.FeaturesDict({
      "subject_id": tfds.features.Text(),
      "latent_mean": t(shape=tuple(latent_shape), dtype=np.float32),
      "latent_logvar": t(shape=tuple(latent_shape), dtype=np.float32),
      "ecg_embedding": t(shape=(embed_dim,), dtype=np.float32),
      "phenotypes": t(shape=(num_phenotypes,), dtype=np.float32),
      "labels": t(shape=(num_labels,), dtype=np.int8),
  })


def write_dataset(out_dir, split_examples: dict[str, Callable[[], Iterable[dict]]], meta: DatasetMeta,
                  num_shards=None, feature_dict=None, name=NAME):
  """Writes a dataset under `out_dir`; returns its TFDS directory.

  `split_examples[split]()` yields example dicts (the fields above, with `subject_id` a str,
  unless `feature_dict` says otherwise). Phenotype statistics come from the train split.

  Streams, in memory flat in the number of examples: each split is serialized once to an
  unordered ArrayRecord file, then copied into its shards in the order TFDS's own writer gives
  (sorted by an md5 of split and subject id, so a dataset equals what `GeneratorBasedBuilder`
  wrote), holding only the keys in memory. TFDS's writer holds up to 1 GB per split in memory
  and spills the rest through `tf.io.gfile`: without TensorFlow, an archive-scale split failed.
  The metadata goes through `tfds.folder_dataset.write_metadata`, readable by `tfds`.
  """
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  shapes = meta.shapes
  if feature_dict is None:
    feature_dict = features(shapes["ecg"][1], shapes["cmr"][1], len(meta.phenotype_names),
                            len(meta.label_names))
  meta_dict = {k: v for k, v in dataclasses.asdict(meta).items() if k != "splits" and v is not None}
  data_dir = os.path.join(out_dir, name, VERSION)
  os.makedirs(data_dir, exist_ok=True)
  template = tfds.core.ShardedFileTemplate(
      data_dir=data_dir, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=name, filetype_suffix="array_record")
  split_infos, with_cmr = [], {}
  for split, examples in split_examples.items():
    unordered = os.path.join(data_dir, f".unordered-{split}")
    writer = array_record_module.ArrayRecordWriter(unordered, "group_size:1")
    keys, sizes, phenotypes, with_cmr[split] = [], [], [], 0
    for example in examples():
      record = feature_dict.serialize_example(example)
      writer.write(record)
      keys.append(_hash_order(split, example["subject_id"]))
      sizes.append(len(record))
      with_cmr[split] += int(example.get("has_cmr", 0))
      if split == "train":
        phenotypes.append(example["phenotypes"])
    writer.close()
    if len(set(keys)) != len(keys):
      raise ValueError(f"{split}: two examples share a subject_id")
    if split == "train":
      mean, std = phenotype_stats(phenotypes, len(meta.phenotype_names))
      meta_dict.update(phenotype_mean=mean.tolist(), phenotype_std=std.tolist())
    lengths = _write_shards(unordered, np.argsort(keys), template.replace(split=split),
                            num_shards or max(1, -(-sum(sizes) // SHARD_BYTES)))
    os.remove(unordered)
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                           num_bytes=sum(sizes), filename_template=template))
  meta_dict["num_with_cmr"] = with_cmr
  tfds.folder_dataset.write_metadata(
      data_dir=data_dir, features=feature_dict, split_infos=split_infos,
      filename_template=template, check_data=False, metadata=tfds.core.MetadataDict(meta_dict),
      description="Paired ECG / cine CMR subjects for cardionets-jax.")
  return data_dir


def _write_shards(unordered, order, template, num_shards, batch=256):
  """Copies the records of `unordered` in `order` into `num_shards` contiguous shards."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

  reader = array_record_module.ArrayRecordReader(unordered)
  bounds = np.linspace(0, len(order), num_shards + 1).round().astype(int)
  for shard in range(num_shards):
    path = os.fspath(template.sharded_filepath(shard_index=shard, num_shards=num_shards))
    writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    for i in range(bounds[shard], bounds[shard + 1], batch):
      for record in reader.read(order[i:min(i + batch, bounds[shard + 1])].tolist()):
        writer.write(record)
    writer.close()
  reader.close()
  return np.diff(bounds).tolist()


def empty_cmr(cmr_size):
  return np.zeros((0, cmr_size, cmr_size), np.uint8)
