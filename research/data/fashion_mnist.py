"""Fashion-MNIST: 60,000 train and 10,000 test 28x28 grayscale images of 10 kinds of clothing.

Sources, in order: the HF hub (`zalando-datasets/fashion_mnist`); the idx files
of the Debian package `dataset-fashion-mnist` where it is installed
(`/usr/share/datasets/fashion-mnist`); else that package's `.deb`, fetched with
`apt-get download` into the data cache and unpacked with `dpkg-deb -x` (never
installed, so no root is needed). Where the machine's apt package lists are
missing or stale, a private copy of them is refreshed under the cache first.
"""

from __future__ import annotations

import getpass
import gzip
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

from research.data import sources
from research.registry import DATASETS

HUB_REPO = "zalando-datasets/fashion_mnist"
DEB_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
DEB_SUBDIR = "usr/share/datasets/fashion-mnist"  # where the .deb puts the idx files
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
LABEL_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
  """An IDX file (the MNIST format; gzipped or not) as a uint8 array of its stated shape."""
  data = path.read_bytes()
  if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
  if data[:2] != b"\x00\x00" or data[2] != 0x08:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4].hex()})")
  ndim = data[3]
  shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _from_idx_dir(directory: Path, split: str) -> sources.Split:
  images_file, labels_file = FILES[split]
  if not (directory / images_file).exists():
    raise FileNotFoundError(f"{directory / images_file} does not exist")
  images = read_idx(directory / images_file)
  return {"image": images.reshape(-1, 28, 28, 1), "label": read_idx(directory / labels_file).astype(np.int32)}


def _from_hub(ds) -> sources.Split:
  ds = ds.with_format("numpy")
  images = np.asarray(ds["image"], dtype=np.uint8).reshape(-1, 28, 28, 1)
  return {"image": images, "label": np.asarray(ds["label"], dtype=np.int32)}


def _apt_get(args: list[str], cwd: Path, options: list[str] = ()) -> subprocess.CompletedProcess:
  if shutil.which("apt-get") is None:
    raise OSError("apt-get is not available (this source needs a Debian or Ubuntu machine)")
  return subprocess.run(["apt-get", "-q", *options, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def _last_line(done: subprocess.CompletedProcess) -> str:
  return (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]


def download_deb(package: str, dest: Path) -> Path:
  """Fetches `package`'s .deb into `dest` with `apt-get download` (no install, works without root).

  If apt cannot find the package (package lists missing or stale, as on a fresh
  container), refreshes a private copy of the lists under `dest/apt` and retries.
  """
  dest.mkdir(parents=True, exist_ok=True)
  debs = sorted(dest.glob(f"{package}_*.deb"))
  if debs:
    return debs[-1]
  done = _apt_get(["download", package], dest)
  if done.returncode != 0:
    private = dest / "apt"
    (private / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (private / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    options = ["-o", f"Dir::State::Lists={private / 'lists'}", "-o", f"Dir::Cache={private / 'cache'}",
               "-o", "Debug::NoLocking=1", "-o", f"APT::Sandbox::User={getpass.getuser()}"]
    update = _apt_get(["update"], dest, options)
    if update.returncode != 0:
      raise OSError(f"apt-get download {package} failed ({_last_line(done)}), and refreshing the package "
                    f"lists failed too: {_last_line(update)}")
    done = _apt_get(["download", package], dest, options)
    shutil.rmtree(private, ignore_errors=True)  # ~20 MB of lists, needed only for this download
  debs = sorted(dest.glob(f"{package}_*.deb"))
  if done.returncode != 0 or not debs:
    raise OSError(f"apt-get download {package} failed: {_last_line(done)}")
  return debs[-1]


def _from_deb(split: str) -> sources.Split:
  root = sources.data_dir() / "downloads"
  extracted = root / DEB_PACKAGE
  if not (extracted / DEB_SUBDIR / FILES[split][0]).exists():
    deb = download_deb(DEB_PACKAGE, root / "debs")
    if shutil.which("dpkg-deb") is None:
      raise OSError("dpkg-deb is not available to unpack the .deb")
    partial = root / f"{DEB_PACKAGE}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
      raise OSError(f"dpkg-deb -x {deb.name} failed: {_last_line(done)}")
    shutil.rmtree(extracted, ignore_errors=True)
    partial.rename(extracted)
  return _from_idx_dir(extracted / DEB_SUBDIR, split)


def _check(arrays: sources.Split, split: str) -> sources.Split:
  n = NUM_EXAMPLES[split]
  if arrays["image"].shape != (n, 28, 28, 1) or arrays["label"].shape != (n,):
    raise ValueError(f"expected {n} images of 28x28x1, got {arrays['image'].shape}")
  if arrays["label"].min() < 0 or arrays["label"].max() >= len(LABEL_NAMES):
    raise ValueError(f"labels outside 0..{len(LABEL_NAMES) - 1}")
  return arrays


@DATASETS.register("fashion_mnist")
def fashion_mnist(split: str) -> sources.Split:
  """{"image": uint8[N, 28, 28, 1], "label": int32[N]}; class names in LABEL_NAMES."""
  if split not in NUM_EXAMPLES:
    raise ValueError(f"Fashion-MNIST has splits {sorted(NUM_EXAMPLES)}, not {split!r}.")
  return sources.load_cached("fashion_mnist", split, [
      (f"HF hub {HUB_REPO}", lambda s: _check(sources.load_hub(HUB_REPO, s, _from_hub), s)),
      (f"Debian package {DEB_PACKAGE} installed in {SYSTEM_DIR}", lambda s: _check(_from_idx_dir(SYSTEM_DIR, s), s)),
      (f"Debian package {DEB_PACKAGE} fetched with apt-get download", lambda s: _check(_from_deb(s), s)),
  ])
