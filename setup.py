"""cardionets-jax: ECG -> cardiac-MRI-level assessment, in JAX/Flax."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12",
    "chex>=0.1.90",
    "grain>=0.2.18",
    "array-record>=0.8",
    "tensorflow-datasets>=4.9.9",
    "numpy>=2.0",
    "scipy>=1.13",  # scipy.signal: ECG filtering and resampling
    "wfdb>=4.3",
    "pydicom>=3.0",  # DICOM ECG waveforms and DICOM cine CMR series (data/readers.py)
    "nibabel>=5.0",  # NIfTI cine CMR (data/readers.py)
    "defusedxml>=0.7",  # the XML ECG archives (data/archive_ecg.py): no entity expansion
    # Philips Sierra XML (XLI) and SCP-ECG (Huffman) decoding (data/archive_ecg.py); its core
    # needs only numpy, defusedxml and xmltodict.
    "ecgdatakit>=2.0.3,<3",
    "ml-collections>=1.1",
    "absl-py>=2.1",
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "matplotlib>=3.9",
    "imageio>=2.30",  # GIFs of cines
    "scikit-learn>=1.5",  # t-SNE of the ECG embeddings (evaluators/embeddings.py)
]

setuptools.setup(
    name="cardionets-jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of CardioNets (ECG to cardiac MRI).",
    # The stage configs install as `cardionets_jax_configs` (the folder stays `configs/`): a
    # top-level `configs` would collide with any other project's.
    packages=setuptools.find_packages(include=["cardionets_jax", "cardionets_jax.*"])
    + ["cardionets_jax_configs"],
    package_dir={"cardionets_jax_configs": "configs"},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # pytest < 9: xdist's `--dist loadgroup` tags node ids through an attribute pytest 9 no
        # longer reads, so the suite's shared chain would be built once per worker.
        "test": ["pytest>=8,<9", "pytest-xdist>=3.6", "scikit-image>=0.24"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)
