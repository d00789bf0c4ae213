"""Data loading from real storage: one dataset in four layouts, read warm and cold.

A training step needs a batch. Where the batch comes from decides whether the accelerator waits:

* ``png_files``  — one PNG file per sample (how most image datasets arrive): every sample costs
  a file open, a read and a close, then a PNG decode (Pillow);
* ``tar_shards`` — the same PNG bytes packed into a few large tar files (the WebDataset format:
  ``000123.png`` and ``000123.cls`` side by side), read at known offsets: one open per shard,
  then reads within a large file; still a PNG decode per sample;
* ``memmap``     — every image as raw ``uint8`` pixels in one ``.npy`` file opened with
  ``numpy``'s memory map: no per-file cost, no decode, but 3–10× the bytes of the PNGs here;
* ``in_memory``  — a tensor already in RAM: the ceiling, no storage at all.

The shards are plain POSIX tar, written and read with the standard library's :mod:`tarfile` on
every operating system, with no extra dependency; because they follow WebDataset's naming
convention, ``webdataset.WebDataset("tar_shards/shard-{000000..000003}.tar")`` streams the same
files. The course reads them at offsets recorded once (as WebDataset's indexed ``wids`` reader
does), so that every layout serves the same samples through an ordinary map-style ``Dataset``
(the tests check them equal, sample for sample and batch for batch), and streams them in the
order that makes shards fast — one shard after another, front to back
(:class:`ShardStreamSampler`).

**Warm and cold.** Reading a file the operating system has read recently costs a copy from its
page cache (RAM); reading it *cold* goes to the disk. :func:`evict_from_page_cache` drops a
file's cached pages without root privileges with ``os.posix_fadvise(..., POSIX_FADV_DONTNEED)``
(Linux and most Unixes). macOS and Windows have no such call: there it reports that it could not
evict, and cold numbers are not measured. Directory entries and inodes stay cached either way,
so cold small-file reads here are still optimistic.

Every class here is importable by DataLoader worker processes on every platform (workers started
with ``spawn`` re-import them), and opens its files lazily in each process.

Run the comparison on your own disk (it writes a few hundred MB into ``--dir`` and deletes them)::

    python -m course_utils.loading --dir /path/on/the/disk/to/test --samples 16384
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checks import (
    check_bool,
    check_device,
    check_instance,
    check_path,
    check_positive_int,
    check_sizes,
    check_tensor,
    describe,
)

__all__ = [
    "LAYOUTS",
    "EvictionReport",
    "InMemoryDataset",
    "LoadingStudy",
    "MemmapDataset",
    "PngFilesDataset",
    "ShardStreamSampler",
    "StoredLayout",
    "TarShardsDataset",
    "decode_png",
    "encode_png",
    "evict_from_page_cache",
    "loader_samples_per_s",
    "make_image_dataset",
    "open_layout",
    "page_cache_eviction",
    "predict_epoch_seconds",
    "read_bandwidth",
    "run_study",
    "write_layouts",
]

LAYOUTS = ("png_files", "tar_shards", "memmap", "in_memory")


# -- the dataset ---------------------------------------------------------------------------------


def make_image_dataset(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` grey images ``(n, size, size)`` uint8 and their labels ``(n,)``, from scikit-learn's digits.

    Each is a digit upsampled to ``size × size``, shifted by up to ``size // 8`` pixels and given
    a little sensor-like noise, so that no two samples are the same file and PNG compresses them
    as it would a photograph's texture, not a flat drawing.

    >>> images, labels = make_image_dataset(4, size=32)
    >>> tuple(images.shape), images.dtype, labels.tolist()[:2] == labels.tolist()[:2]
    ((4, 32, 32), torch.uint8, True)
    """
    check_sizes(n=n, size=size)
    check_sizes(0, seed=seed)
    from sklearn.datasets import load_digits

    digits = load_digits()
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(0, len(digits.target), (n,), generator=gen)
    base = torch.tensor(digits.images, dtype=torch.float32)[which, None] / 16.0  # (n, 1, 8, 8)
    images = F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    shift = size // 8
    dx, dy = (torch.randint(-shift, shift + 1, (n,), generator=gen) for _ in range(2))
    images = torch.stack([torch.roll(img, shifts=(int(a), int(b)), dims=(1, 2)) for img, a, b in zip(images, dx, dy, strict=True)])
    noise = torch.randn(images.shape, generator=gen) * (8.0 / 255.0)
    images = ((images + noise).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)[:, 0]  # (n, size, size)
    labels = torch.as_tensor(digits.target, dtype=torch.int64)[which]
    return images, labels


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a ``(H, W)`` uint8 image (lossless).

    >>> png = encode_png(torch.zeros(8, 8, dtype=torch.uint8)); png[:4]
    b'\\x89PNG'
    """
    _check_images("image", image, dims=2)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.numpy()).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> torch.Tensor:
    """The ``(1, H, W)`` uint8 image in PNG ``data`` (decoded by Pillow).

    >>> img = torch.arange(64, dtype=torch.uint8).reshape(8, 8)
    >>> torch.equal(decode_png(encode_png(img))[0], img)
    True
    """
    check_instance("data", data, (bytes, bytearray, memoryview))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return torch.from_numpy(np.array(image, dtype=np.uint8))[None]
    except UnidentifiedImageError:
        raise ValueError(f"data must be the bytes of a PNG file, got {len(data)} bytes starting "
                         f"{bytes(data[:8])!r}") from None


def _check_images(name: str, images: object, dims: int = 3, uint8: bool = True) -> None:
    """A CPU tensor of images with ``dims`` dims (``(N, H, W)`` or ``(H, W)``), none of them empty,
    in uint8 (0..255) if ``uint8``."""
    check_tensor(name, images, dims=dims)
    if uint8 and images.dtype != torch.uint8:
        raise TypeError(f"{name} must be a uint8 tensor (pixel values 0..255), got {describe(images)}")
    if images.numel() == 0:
        raise ValueError(f"{name} must hold at least one pixel per image and one image, got "
                         f"{describe(images)}")
    if images.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (it is written to files or read by a "
                         f"DataLoader), got {describe(images)}")


def _check_labels(labels: object, n: int, device: torch.device) -> None:
    """``(n,)`` integer class ids >= 0, on ``device``."""
    check_tensor("labels", labels, dims=1)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class ids, got {describe(labels)}")
    if len(labels) != n:
        raise ValueError(f"labels must hold one class id per image ({n}), got {describe(labels)}")
    if labels.device != device:
        raise ValueError(f"labels must be on the device of the images ({device}), got "
                         f"{describe(labels)}")
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be class ids >= 0, got values down to {int(labels.min())}")


# -- writing the layouts ------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredLayout:
    """Where one layout lives: its folder, the files that hold the samples, and their total size."""

    layout: str
    root: Path
    files: tuple[Path, ...]
    nbytes: int
    samples: int

    def __str__(self) -> str:
        return (f"{self.layout:<10} {len(self.files):>6} file(s) {self.nbytes / 2**20:8.1f} MiB "
                f"{self.nbytes / max(self.samples, 1):8.0f} bytes/sample")


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def write_layouts(images: torch.Tensor, labels: torch.Tensor, root: str | os.PathLike,
                  samples_per_shard: int = 4096, progress: Callable[[Iterable], Iterable] | None = None
                  ) -> dict[str, StoredLayout]:
    """Write ``images`` (N, H, W) uint8 and ``labels`` (N,) in the three on-disk layouts under ``root``.

    ``root/png_files/000000.png ...`` with ``labels.npy``; ``root/tar_shards/shard-000000.tar ...``
    holding ``000000.png`` and ``000000.cls`` per sample; ``root/memmap/images.npy`` (raw pixels,
    ``numpy`` format) with ``labels.npy``. The in-memory layout needs no files. Every file is
    flushed to disk (``fsync``), so that its cached pages are clean and can be evicted.

    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     x, y = make_image_dataset(10, size=16)
    ...     stored = write_layouts(x, y, tmp, samples_per_shard=4)
    ...     [len(stored[k].files) for k in ("png_files", "tar_shards", "memmap")]
    [10, 3, 1]
    """
    _check_images("images", images)
    _check_labels(labels, len(images), images.device)
    check_positive_int("samples_per_shard", samples_per_shard)
    root = check_path("root", root)
    _check_progress(progress)
    each = progress or (lambda it: it)
    n = len(images)
    pngs = [encode_png(img) for img in each(images)]
    label_array = labels.numpy().astype(np.int64)

    files_dir = root / "png_files"
    files_dir.mkdir(parents=True, exist_ok=True)
    png_paths = []
    for i, data in enumerate(pngs):
        png_paths.append(files_dir / f"{i:06d}.png")
        _write_bytes(png_paths[-1], data)
    np.save(files_dir / "labels.npy", label_array)

    shard_dir = root / "tar_shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    shard_paths = []
    for start in range(0, n, samples_per_shard):
        shard_paths.append(shard_dir / f"shard-{start // samples_per_shard:06d}.tar")
        with tarfile.open(shard_paths[-1], "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(start, min(n, start + samples_per_shard)):
                for suffix, data in ((".png", pngs[i]), (".cls", str(int(label_array[i])).encode())):
                    info = tarfile.TarInfo(f"{i:06d}{suffix}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))

    mm_dir = root / "memmap"
    mm_dir.mkdir(parents=True, exist_ok=True)
    raw = np.lib.format.open_memmap(mm_dir / "images.npy", mode="w+", dtype=np.uint8, shape=tuple(images.shape))
    raw[:] = images.numpy()
    raw.flush()
    del raw
    np.save(mm_dir / "labels.npy", label_array)

    for path in [*png_paths, *shard_paths, mm_dir / "images.npy"]:
        _fsync(path)
    return {
        "png_files": StoredLayout("png_files", files_dir, tuple(png_paths), sum(len(p) for p in pngs), n),
        "tar_shards": StoredLayout("tar_shards", shard_dir, tuple(shard_paths),
                                   sum(p.stat().st_size for p in shard_paths), n),
        "memmap": StoredLayout("memmap", mm_dir, (mm_dir / "images.npy",), (mm_dir / "images.npy").stat().st_size, n),
    }


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a read-only descriptor; the data is still there
        pass
    finally:
        os.close(fd)


# -- reading them: one map-style Dataset per layout ------------------------------------------------


class PngFilesDataset(torch.utils.data.Dataset):
    """One PNG file per sample: ``read(i)`` opens, reads and closes file ``i``; ``decode`` makes the image."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = check_path("root", root)
        self.labels = torch.from_numpy(np.load(self.root / "labels.npy"))

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> bytes:
        with open(self.root / f"{i:06d}.png", "rb") as f:
            return f.read()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_png(self.read(i)), self.labels[i]


class TarShardsDataset(torch.utils.data.Dataset):
    """PNG bytes packed in tar shards, read at offsets indexed once (each process opens each shard once)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = check_path("root", root)
        self.shards = sorted(self.root.glob("shard-*.tar"))
        if not self.shards:
            raise FileNotFoundError(f"no shard-*.tar files in {self.root}")
        index: dict[str, list] = {}
        for s, path in enumerate(self.shards):
            with tarfile.open(path, "r") as tar:
                for member in tar:
                    key, _, suffix = member.name.rpartition(".")
                    entry = index.setdefault(key, [None, None, None, None])
                    if suffix == "png":
                        entry[0:3] = [s, member.offset_data, member.size]
                    elif suffix == "cls":
                        entry[3] = int(tar.extractfile(member).read())
        keys = sorted(index)
        incomplete = [k for k in keys if None in index[k]]
        if incomplete:
            raise ValueError(f"samples without both .png and .cls in {self.root}: {incomplete[:5]}")
        self.index = [tuple(index[k][:3]) for k in keys]  # (shard, offset, size) of sample i
        self.labels = torch.tensor([index[k][3] for k in keys], dtype=torch.int64)
        self._handles: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:  # open file handles do not travel to worker processes
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state

    def _handle(self, shard: int):
        if self._pid != os.getpid():  # a forked worker must not share its parent's file offsets
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = open(self.shards[shard], "rb")  # noqa: SIM115 (kept open on purpose)
        return self._handles[shard]

    def read(self, i: int) -> bytes:
        shard, offset, size = self.index[i]
        f = self._handle(shard)
        f.seek(offset)
        return f.read(size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return decode_png(self.read(i)), self.labels[i]

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}


class ShardStreamSampler(torch.utils.data.Sampler):
    """The order a shard reader uses: shards in a shuffled order, each read front to back.

    Every sample once per epoch, and every read continues where the previous one stopped, so the
    disk sees a few long sequential reads instead of one random read per sample (WebDataset then
    mixes samples in a shuffle buffer in memory, which changes nothing on the disk).

    >>> class Fake: index = [(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)]
    >>> list(ShardStreamSampler(Fake(), seed=0)) in ([0, 1, 2, 3], [2, 3, 0, 1])
    True
    """

    def __init__(self, dataset: TarShardsDataset, seed: int = 0) -> None:
        if not isinstance(getattr(dataset, "index", None), Sequence):
            raise TypeError(f"dataset must be a TarShardsDataset (with its index of samples), got "
                            f"{describe(dataset)}")
        check_sizes(0, seed=seed)
        self.dataset, self.seed = dataset, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset.index)

    def __iter__(self):
        by_shard: dict[int, list[int]] = {}
        for i, (shard, offset, _) in enumerate(self.dataset.index):
            by_shard.setdefault(shard, []).append((offset, i))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        shards = sorted(by_shard)
        for k in torch.randperm(len(shards), generator=gen).tolist():
            yield from (i for _, i in sorted(by_shard[shards[k]]))


class MemmapDataset(torch.utils.data.Dataset):
    """Raw pixels in one ``.npy`` file, memory-mapped (opened lazily in each process)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = check_path("root", root)
        self.labels = torch.from_numpy(np.load(self.root / "labels.npy"))
        self._array = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict:  # pickling a memmap would copy the whole array into the pickle
        state = dict(self.__dict__)
        state["_array"], state["_pid"] = None, None
        return state

    def _images(self) -> np.ndarray:
        if self._array is None or self._pid != os.getpid():
            self._array, self._pid = np.load(self.root / "images.npy", mmap_mode="r"), os.getpid()
        return self._array

    def read(self, i: int) -> bytes:
        return self._images()[i].tobytes()

    def close(self) -> None:
        """Drop the memory map (Windows cannot delete a file that is still mapped)."""
        self._array = None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(np.array(self._images()[i]))[None], self.labels[i]  # (1, H, W), a copy


class InMemoryDataset(torch.utils.data.Dataset):
    """The images as one tensor in RAM: the ceiling for the other layouts."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        _check_images("images", images, uint8=False)
        _check_labels(labels, len(images), images.device)
        self.images, self.labels = images[:, None], labels  # (N, 1, H, W)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def open_layout(layout: str, root: str | os.PathLike | None = None, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.utils.data.Dataset:
    """The ``Dataset`` that reads ``layout`` (``root`` is its folder; ``in_memory`` takes the tensors)."""
    if layout == "in_memory":
        if images is None or labels is None:
            raise ValueError("the in_memory layout needs images= and labels=")
        return InMemoryDataset(images, labels)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if root is None:
        raise ValueError(f"the {layout} layout needs root= (its folder)")
    check_path("root", root)
    return {"png_files": PngFilesDataset, "tar_shards": TarShardsDataset, "memmap": MemmapDataset}[layout](root)


# -- the page cache ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvictionReport:
    """Whether the files' cached pages could be dropped, how many files, and why not if not."""

    supported: bool
    files: int
    reason: str = ""

    def __bool__(self) -> bool:
        return self.supported


def page_cache_eviction() -> EvictionReport:
    """Whether this platform lets an unprivileged process drop a file's cached pages.

    >>> isinstance(page_cache_eviction().supported, bool)
    True
    """
    if hasattr(os, "posix_fadvise") and hasattr(os, "POSIX_FADV_DONTNEED"):
        return EvictionReport(True, 0, "os.posix_fadvise(POSIX_FADV_DONTNEED)")
    return EvictionReport(False, 0, f"os.posix_fadvise is not available on {sys.platform}: the page cache "
                                    "cannot be evicted without administrator rights, so only warm reads are measured")


def evict_from_page_cache(paths: Iterable[str | os.PathLike]) -> EvictionReport:
    """Drop the cached pages of every file in ``paths`` (no root needed), or say why it cannot.

    Each file is flushed first (``fsync``: dirty pages cannot be dropped), then
    ``os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``. Without ``posix_fadvise`` (macOS,
    Windows) nothing happens and the report says so; callers then skip the cold measurements.

    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"x" * 4096)
    >>> report = evict_from_page_cache([f.name]); os.remove(f.name)
    >>> report.files == (1 if report.supported else 0)
    True
    """
    if isinstance(paths, (str, bytes, os.PathLike)) or not isinstance(paths, Iterable):
        raise TypeError(f"paths must be a list of file paths, got {describe(paths)}")
    paths = [check_path(f"paths[{i}]", p) for i, p in enumerate(paths)]
    support = page_cache_eviction()
    if not support.supported:
        return support
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return EvictionReport(True, len(paths), support.reason)


def read_bandwidth(path: str | os.PathLike, chunk: int = 1 << 20) -> float:
    """Bytes per second for reading ``path`` start to end in ``chunk``-byte reads (as cached now)."""
    path = check_path("path", path)
    check_positive_int("chunk", chunk)
    size = path.stat().st_size
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(chunk):
            pass
    return size / (time.perf_counter() - start)


def per_file_seconds(paths: Sequence[str | os.PathLike], seed: int = 0) -> float:
    """Median seconds to open, read and close one of ``paths`` (as cached now), visited in a random order."""
    times = []
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    for path in (paths[i] for i in order):
        start = time.perf_counter()
        with open(path, "rb") as f:
            f.read()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def predict_epoch_seconds(files: int, per_file_s: float, nbytes: int, bandwidth: float,
                          samples: int = 0, decode_s: float = 0.0, batch_s: float = 0.0) -> float:
    """Predicted seconds for one epoch: ``files × per-file cost + bytes / bandwidth + samples × (decode
    cost + the DataLoader's own cost per sample)``.

    >>> predict_epoch_seconds(files=10_000, per_file_s=1e-4, nbytes=100 * 2**20, bandwidth=500 * 2**20)
    1.2
    """
    check_sizes(0, files=files, nbytes=nbytes, samples=samples)
    for name, value in (("per_file_s", per_file_s), ("bandwidth", bandwidth), ("decode_s", decode_s),
                        ("batch_s", batch_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if bandwidth <= 0:
        raise ValueError(f"bandwidth must be > 0 bytes/s, got {bandwidth!r}")
    return files * per_file_s + nbytes / bandwidth + samples * (decode_s + batch_s)


# -- throughput -------------------------------------------------------------------------------------


def loader_samples_per_s(dataset: torch.utils.data.Dataset, num_workers: int = 0, batch_size: int = 64,
                         seed: int = 0, device: torch.device | str = "cpu", pin_memory: bool = False,
                         sampler: torch.utils.data.Sampler | None = None) -> float:
    """Samples per second for one shuffled epoch of ``dataset`` through a ``DataLoader``, copied to ``device``.

    The order is a fixed permutation (``seed``), or ``sampler``'s (a :class:`ShardStreamSampler`
    for shards). The clock starts when
    the first batch arrives, so worker start-up (paid once per epoch without
    ``persistent_workers``) is left out and the rate is the steady one. With ``pin_memory`` the
    copies to a GPU are ``non_blocking``.

    >>> ds = InMemoryDataset(torch.zeros(256, 8, 8, dtype=torch.uint8), torch.zeros(256, dtype=torch.int64))
    >>> loader_samples_per_s(ds, batch_size=32) > 0
    True
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    check_positive_int("batch_size", batch_size)
    check_instance("dataset", dataset, torch.utils.data.Dataset)
    check_sizes(0, seed=seed)
    device = check_device("device", device)
    check_bool("pin_memory", pin_memory)
    if sampler is not None and (isinstance(sampler, (str, bytes)) or not isinstance(sampler, Iterable)):
        raise TypeError(f"sampler must be None or a torch.utils.data.Sampler, got {describe(sampler)}")
    if pin_memory and device.type != "cuda":
        raise ValueError(f"pin_memory=True only helps copies to a GPU; the device here is {device}")
    if sampler is None:
        sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                         pin_memory=pin_memory)
    seen, start = 0, None
    for x, _ in loader:
        x = x.to(device, non_blocking=pin_memory)
        if start is None:
            start = time.perf_counter()
            continue
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if start is None or seen == 0:
        raise ValueError(f"the dataset ({len(dataset)} samples) must hold more than one batch of {batch_size}")
    return seen / (time.perf_counter() - start)


class LoadingStudy:
    """The four layouts of one dataset on disk, and what reading them costs (filled in step by step).

    ``LoadingStudy(root, samples)`` writes the layouts under ``root``; then, each a method the
    notebook calls in its own cell:

    * :meth:`measure_ingredients` — the cost of opening and reading one small file, the bandwidth
      of one large file (warm and cold), and of decoding one PNG: what the prediction needs;
    * :meth:`measure_reads` — each layout's bytes only, per sample, in its own order;
    * :meth:`measure_loaders` — samples/s through a ``DataLoader`` per layout, cache state and
      worker count;
    * :meth:`measure_pinned` — on a GPU, copies from pageable and from pinned memory.
    """

    def __init__(self, root: str | os.PathLike, samples: int, image_size: int = 64, samples_per_shard: int = 2048,
                 progress: Callable[[Iterable], Iterable] | None = None) -> None:
        self.root = check_path("root", root)
        check_positive_int("samples", samples)
        check_positive_int("image_size", image_size)
        _check_progress(progress)
        self.samples, self.image_size = samples, image_size
        self.images, self.labels = make_image_dataset(samples, size=image_size)
        self.stored = write_layouts(self.images, self.labels, self.root, samples_per_shard=samples_per_shard,
                                    progress=progress)
        self.eviction = page_cache_eviction()
        self.datasets = {name: open_layout(name, self.stored[name].root) for name in ("png_files", "tar_shards",
                                                                                     "memmap")}
        self.datasets["in_memory"] = open_layout("in_memory", images=self.images, labels=self.labels)
        # each layout read the way its users read it: one random file or page per sample, shards streamed
        self.samplers = {name: torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(1))
                         for name, ds in self.datasets.items()}
        self.samplers["tar_shards"] = ShardStreamSampler(self.datasets["tar_shards"], seed=1)
        self.rates: dict[tuple[str, str, int], float] = {}  # (layout, cache, workers) → samples/s
        self.read_s: dict[tuple[str, str], float] = {}  # (layout, cache) → s/sample, bytes only
        self.decode_s = math.nan  # s/sample, PNG decode of bytes in memory
        self.batch_s = 0.0  # s/sample, the DataLoader's own work (index, collate), from the in-memory layout
        self.batch_size = 64
        self.per_file_s: dict[str, float] = {}  # cache → s to open, read and close one small file
        self.bandwidth: dict[str, float] = {}  # cache → bytes/s reading one large file
        self.pinned: dict[bool, float] = {}  # pin_memory → samples/s to the GPU

    def caches(self) -> list[str]:
        """``["warm", "cold"]``, or ``["warm"]`` where the page cache cannot be evicted."""
        return ["warm", "cold"] if self.eviction.supported else ["warm"]

    def evict(self, layout: str) -> None:
        """Drop ``layout``'s files from the page cache (a no-op where that is impossible)."""
        evict_from_page_cache(self.stored[layout].files)

    def measure_ingredients(self, probes: int = 256) -> None:
        """Per-file cost and bandwidth (warm, cold) on files the epochs do not read, the PNG decode cost,
        and the DataLoader's own cost per sample (one epoch of the in-memory layout, 0 workers)."""
        probe_dir = self.root / "probe"
        probe_dir.mkdir(exist_ok=True)
        probe_images, _ = make_image_dataset(probes, size=self.image_size, seed=99)
        probe = [probe_dir / f"{i:06d}.png" for i in range(probes)]
        for path, img in zip(probe, probe_images, strict=True):
            _write_bytes(path, encode_png(img))
            _fsync(path)
        big = self.stored["memmap"].files[0]
        for cache in self.caches():
            if cache == "cold":
                evict_from_page_cache([*probe, big])
            else:  # read once to bring them into the cache
                read_bandwidth(big)
                per_file_seconds(probe)
            self.per_file_s[cache] = per_file_seconds(probe)
            self.bandwidth[cache] = read_bandwidth(big)
        blobs = [self.datasets["png_files"].read(i) for i in range(min(self.samples, 512))]
        start = time.perf_counter()
        for blob in blobs:
            decode_png(blob)
        self.decode_s = (time.perf_counter() - start) / len(blobs)
        # the DataLoader's own cost per sample (indexing, collating the batch): the in-memory layout
        self.batch_s = 1.0 / loader_samples_per_s(self.datasets["in_memory"], batch_size=self.batch_size,
                                                  sampler=self.samplers["in_memory"])

    def measure_reads(self, progress: Callable[[Iterable], Iterable] | None = None) -> None:
        """Seconds per sample to read the bytes only (no decode), in this process, in each layout's order."""
        each = progress or (lambda it: it)
        for layout, cache in each([(lay, c) for lay in ("png_files", "tar_shards", "memmap") for c in self.caches()]):
            if cache == "cold":
                self.evict(layout)
            ds, start = self.datasets[layout], time.perf_counter()
            for i in self.samplers[layout]:
                ds.read(i)
            self.read_s[(layout, cache)] = (time.perf_counter() - start) / self.samples

    def measure_loaders(self, workers: Sequence[int] = (0, 1, 2), batch_size: int = 64,
                        device: torch.device | str = "cpu", progress: Callable[[Iterable], Iterable] | None = None
                        ) -> None:
        """Samples/s of one epoch through a ``DataLoader``: every layout, cache state and worker count."""
        each = progress or (lambda it: it)
        self.batch_size = batch_size
        runs = [(layout, cache, w) for layout in LAYOUTS for cache in self.caches() for w in workers
                if not (layout == "in_memory" and cache == "cold")]
        for layout, cache, w in each(runs):
            if cache == "cold":
                self.evict(layout)
            self.rates[(layout, cache, w)] = loader_samples_per_s(
                self.datasets[layout], num_workers=w, batch_size=batch_size, device=device,
                sampler=self.samplers[layout])

    def measure_pinned(self, device: torch.device | str, workers: int = 2, batch_size: int = 64) -> None:
        """On a GPU: samples/s of the memmap layout copied from pageable, then from pinned memory."""
        for pin in (False, True):
            self.pinned[pin] = loader_samples_per_s(self.datasets["memmap"], num_workers=workers,
                                                    batch_size=batch_size, device=device, pin_memory=pin,
                                                    sampler=self.samplers["memmap"])

    def epoch_seconds(self, layout: str, cache: str, workers: int = 0) -> float:
        """Measured seconds for one epoch (from :meth:`measure_loaders`)."""
        return self.samples / self.rates[(layout, cache, workers)]

    def predicted_epoch_seconds(self, layout: str, cache: str) -> float:
        """:func:`predict_epoch_seconds` from the ingredients: files × per-file cost + bytes / bandwidth
        (+ the PNG decodes); the in-memory layout costs nothing to read."""
        if layout == "in_memory":
            return 0.0
        stored = self.stored[layout]
        decode = self.decode_s if layout in ("png_files", "tar_shards") else 0.0
        return predict_epoch_seconds(len(stored.files), self.per_file_s[cache], stored.nbytes,
                                     self.bandwidth[cache], samples=self.samples, decode_s=decode,
                                     batch_s=self.batch_s)

    def table(self, workers: Sequence[int]) -> str:
        """samples/s, one row per layout and cache state, one column per worker count."""
        lines = [f"{'layout':<11}{'cache':<6}" + "".join(f"{f'{w} workers':>12}" for w in workers)]
        for layout in LAYOUTS:
            for cache in self.caches():
                if (layout, cache, workers[0]) in self.rates:
                    lines.append(f"{layout:<11}{cache:<6}"
                                 + "".join(f"{self.rates[(layout, cache, w)]:>12,.0f}" for w in workers))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"samples": self.samples, "image_size": self.image_size, "eviction": self.eviction.reason,
                "rates": [{"layout": k[0], "cache": k[1], "workers": k[2], "samples_per_s": v}
                          for k, v in self.rates.items()],
                "read_s_per_sample": {f"{k[0]}/{k[1]}": v for k, v in self.read_s.items()},
                "decode_s_per_sample": self.decode_s, "loader_s_per_sample": self.batch_s,
                "per_file_s": self.per_file_s,
                "bandwidth_bytes_per_s": self.bandwidth,
                "bytes": {k: v.nbytes for k, v in self.stored.items()}}

    def close(self) -> None:
        """Close the shard files and the memory map, so that the folder can be deleted on every OS."""
        self.datasets["tar_shards"].close()
        self.datasets["memmap"].close()


def run_study(root: str | os.PathLike, samples: int, image_size: int = 64, workers: Sequence[int] = (0, 1, 2),
              batch_size: int = 64, device: torch.device | str = "cpu",
              progress: Callable[[Iterable], Iterable] | None = None) -> LoadingStudy:
    """Write the four layouts under ``root`` and measure everything :class:`LoadingStudy` measures."""
    check_path("root", root)
    check_positive_int("samples", samples)
    if isinstance(workers, str) or not isinstance(workers, Sequence) or not workers:
        raise TypeError(f"workers must be a non-empty list of DataLoader worker counts, got "
                        f"{describe(workers)}")
    device = check_device("device", device)
    study = LoadingStudy(root, samples, image_size, samples_per_shard=max(1, samples // 4), progress=progress)
    study.measure_ingredients()
    study.measure_reads(progress)
    study.measure_loaders(workers, batch_size=batch_size, device=device, progress=progress)
    if torch.device(device).type == "cuda":
        study.measure_pinned(device, workers=max(workers), batch_size=batch_size)
    study.close()
    return study


def _check_progress(progress: object) -> None:
    """``None`` or a wrapper of iterables such as ``tqdm.auto.tqdm``."""
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be None or a function such as tqdm.auto.tqdm, got "
                        f"{describe(progress)}")


def choose_storage_dir(preferred: str | os.PathLike | None = None) -> Path:
    """A folder on a real disk for the layouts: ``preferred``, else the system's temporary folder
    unless that lives in RAM (tmpfs), else a ``build/`` folder beside the course.

    >>> choose_storage_dir(tempfile.gettempdir()).is_dir()
    True
    """
    if preferred is not None:
        return Path(preferred)
    tmp = Path(tempfile.gettempdir())
    if _filesystem_type(tmp) not in ("tmpfs", "ramfs"):
        return tmp
    build = Path(__file__).resolve().parent.parent / "build"
    build.mkdir(exist_ok=True)
    return build


def _filesystem_type(path: Path) -> str:
    import psutil

    path = path.resolve()
    best, fstype = "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        if (str(path) == mount or str(path).startswith(mount.rstrip(os.sep) + os.sep)) and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype


def main(argv: list[str] | None = None) -> int:
    """``python -m course_utils.loading --dir PATH``: the four layouts on your own disk."""
    parser = argparse.ArgumentParser(description="Measure the four storage layouts on a disk of your choice.")
    parser.add_argument("--dir", default=None, help="a folder on the disk to test (default: the temporary folder)")
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", default=None, help="also write the measurements here")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory(prefix="course-loading-", dir=choose_storage_dir(args.dir)) as tmp:
        study = run_study(tmp, args.samples, args.size, workers=args.workers, device=device)
        for layout in study.stored.values():
            print(layout)
        print(f"\npage cache: {study.eviction.reason}")
        print(f"samples/s ({args.samples} samples of {args.size}x{args.size}, batch 64, to {device}):")
        print(study.table(args.workers))
        print(f"\nPNG decode {study.decode_s * 1e6:.0f} µs/sample; "
              + "; ".join(f"{c}: open+read+close {study.per_file_s[c] * 1e6:.0f} µs/file, "
                          f"{study.bandwidth[c] / 2**20:.0f} MiB/s on one large file" for c in study.caches()))
        cache = study.caches()[-1]
        print(f"\none epoch, {cache} cache, 0 workers: predicted (files × per-file + bytes / bandwidth + decodes) "
              "against measured")
        for layout in ("png_files", "tar_shards", "memmap"):
            print(f"  {layout:<11} predicted {study.predicted_epoch_seconds(layout, cache):7.2f} s   "
                  f"measured {study.epoch_seconds(layout, cache):7.2f} s")
        if args.json:
            from .files import atomic_write_json

            atomic_write_json(args.json, study.to_json())
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
