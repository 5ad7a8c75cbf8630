"""Which dataset directory a stage trains on."""

import jax

from cardionets_jax.data import cohort
from cardionets_jax.data import records


def resolve(config, workdir):
  """`data.source`: "synthetic" (built once under the workdir's data root) or a built dataset
  directory. `workdir` is a `Workdir`."""
  dcfg = config.data
  if dcfg.source == "synthetic":
    root = workdir.data_root
    directory = cohort.dataset_dir(root, dcfg, dcfg.cohort_seed)
    if jax.process_index() == 0:
      cohort.build_synthetic(root, dcfg, dcfg.cohort_seed)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("synthetic cohort built")
  else:
    directory = dcfg.source
  meta = records.DatasetMeta.load(directory)
  want = [dcfg.cmr_frames, dcfg.cmr_size, dcfg.cmr_size]
  if "cmr" in meta.shapes and list(meta.shapes["cmr"]) != want:
    raise ValueError(
        f"Dataset {directory} holds cines of shape {meta.shapes['cmr']} but the config asks for "
        f"{want}: set --config.data.cmr_frames/cmr_size to match, or rebuild the dataset")
  return directory, meta
