"""The four storage layouts hold the same dataset, exactly; the page-cache helper degrades cleanly."""

from __future__ import annotations

import os
import tarfile

import pytest
import torch

from course_utils import loading as L


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    images, labels = L.make_image_dataset(40, size=16, seed=3)
    return images, labels, L.write_layouts(images, labels, root, samples_per_shard=16)


def _all_layouts(stored):
    images, labels, layouts = stored
    out = {name: L.open_layout(name, layouts[name].root) for name in ("png_files", "tar_shards", "memmap")}
    out["in_memory"] = L.open_layout("in_memory", images=images, labels=labels)
    return out


def test_every_layout_returns_the_same_samples(stored):
    images, labels, _ = stored
    for name, ds in _all_layouts(stored).items():
        assert len(ds) == 40, name
        for i in range(40):
            x, y = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (1, 16, 16), (name, x.shape)
            assert torch.equal(x[0], images[i]) and int(y) == int(labels[i]), f"{name} differs at sample {i}"


@pytest.mark.parametrize("workers", [0, 2])
def test_every_layout_gives_the_same_batches_in_the_same_order(stored, workers):
    """Through a DataLoader with a fixed sampler (and worker processes): identical batches."""
    def batches(ds):
        sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(7))
        return list(torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler, num_workers=workers))

    layouts = _all_layouts(stored)
    reference = batches(layouts["in_memory"])
    assert len(reference) == 5
    for name, ds in layouts.items():
        got = batches(ds)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, reference, strict=True)), name


def test_shards_are_webdataset_format(stored):
    _, labels, layouts = stored
    shards = layouts["tar_shards"].files
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        assert names[:4] == ["000016.png", "000016.cls", "000017.png", "000017.cls"]
        assert int(tar.extractfile("000016.cls").read()) == int(labels[16])


def test_layout_sizes_and_files(stored):
    _, _, layouts = stored
    assert len(layouts["png_files"].files) == 40 and len(layouts["memmap"].files) == 1
    assert layouts["memmap"].nbytes >= 40 * 16 * 16  # raw pixels (plus the .npy header)
    assert layouts["tar_shards"].nbytes > layouts["png_files"].nbytes  # 512-byte tar headers per member


def test_eviction_works_here_or_says_why(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(1 << 16))
    report = L.evict_from_page_cache([path])
    if hasattr(os, "posix_fadvise"):
        assert report.supported and report.files == 1
    else:
        assert not report.supported and "posix_fadvise is not available" in report.reason
    assert path.read_bytes()  # the data itself is untouched


def test_eviction_falls_back_cleanly_without_posix_fadvise(tmp_path, monkeypatch):
    """macOS and Windows have no posix_fadvise: no error, a report that says so, nothing done."""
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 4096)
    report = L.evict_from_page_cache([path])
    assert not report and report.files == 0
    assert "posix_fadvise is not available" in report.reason and "only warm reads are measured" in report.reason
    assert not L.page_cache_eviction().supported


def test_loader_rate_and_bad_arguments(stored):
    ds = _all_layouts(stored)["memmap"]
    assert L.loader_samples_per_s(ds, batch_size=8) > 0
    with pytest.raises(ValueError, match="num_workers must be an int >= 0, got -1"):
        L.loader_samples_per_s(ds, num_workers=-1)
    with pytest.raises(ValueError, match="more than one batch"):
        L.loader_samples_per_s(ds, batch_size=64)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="pin_memory"):
            L.loader_samples_per_s(ds, pin_memory=True)


def test_bad_layouts_are_named(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of png_files, tar_shards, memmap, in_memory, got 'hdf5'"):
        L.open_layout("hdf5", tmp_path)
    with pytest.raises(ValueError, match="in_memory layout needs images= and labels="):
        L.open_layout("in_memory")
    with pytest.raises(FileNotFoundError, match="no shard-"):
        L.TarShardsDataset(tmp_path)
    with pytest.raises(TypeError, match=r"images must be a uint8 tensor \(pixel values 0..255\)"):
        L.write_layouts(torch.zeros(2, 4, 4), torch.zeros(2), tmp_path)
    with pytest.raises(ValueError, match="images must have 3 dims"):
        L.write_layouts(torch.zeros(2, 4, dtype=torch.uint8), torch.zeros(2), tmp_path)
    images = torch.zeros(2, 4, 4, dtype=torch.uint8)
    with pytest.raises(TypeError, match="labels must be an integer tensor of class ids"):
        L.write_layouts(images, torch.zeros(2), tmp_path)
    with pytest.raises(ValueError, match=r"labels must hold one class id per image \(2\)"):
        L.InMemoryDataset(images, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be class ids >= 0"):
        L.InMemoryDataset(images, torch.tensor([0, -1]))
    with pytest.raises(TypeError, match="root must be a file path"):
        L.write_layouts(images, torch.zeros(2, dtype=torch.int64), None)
    assert not any(tmp_path.iterdir())  # nothing written for a bad call


def test_bad_bytes_and_samplers_are_named():
    with pytest.raises(ValueError, match="data must be the bytes of a PNG file"):
        L.decode_png(b"not a png")
    with pytest.raises(TypeError, match="data must be a"):
        L.decode_png("x")
    with pytest.raises(ValueError, match="image must have 2 dims"):
        L.encode_png(torch.zeros(2, 2, 2, dtype=torch.uint8))
    with pytest.raises(TypeError, match="dataset must be a TarShardsDataset"):
        L.ShardStreamSampler("x")
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        L.make_image_dataset(2, size=8, seed=-1)
    with pytest.raises(TypeError, match="paths must be a list of file paths"):
        L.evict_from_page_cache("labels.npy")


def test_prediction_is_the_sum_of_its_parts():
    assert L.predict_epoch_seconds(100, 1e-3, 10_000, 1e6, samples=100, decode_s=1e-4) == pytest.approx(0.12)
    assert L.predict_epoch_seconds(100, 1e-3, 10_000, 1e6, samples=100, decode_s=1e-4, batch_s=1e-4) == pytest.approx(0.13)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        L.predict_epoch_seconds(1, 0.0, 1, 0.0)


@pytest.mark.slow
def test_the_study_measures_every_layout(tmp_path):
    study = L.run_study(tmp_path, samples=512, image_size=16, workers=(0, 1), batch_size=32)
    for layout in L.LAYOUTS:
        for cache in study.caches():
            if layout == "in_memory" and cache == "cold":
                continue
            assert all(study.rates[(layout, cache, w)] > 0 for w in (0, 1)), (layout, cache)
    assert set(study.read_s) == {(lay, c) for lay in ("png_files", "tar_shards", "memmap") for c in study.caches()}
    assert study.decode_s > 0 and all(v > 0 for v in study.bandwidth.values())
    assert "png_files" in study.table([0, 1])


def test_shard_stream_sampler_reads_each_shard_front_to_back(stored):
    images, labels, layouts = stored
    ds = L.TarShardsDataset(layouts["tar_shards"].root)
    sampler = L.ShardStreamSampler(ds, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(40))  # every sample once
    shards = [ds.index[i][0] for i in order]
    runs = [s for k, s in enumerate(shards) if k == 0 or s != shards[k - 1]]
    assert sorted(runs) == [0, 1, 2], f"a shard was visited twice: {runs}"
    offsets = [ds.index[i][1] for i in order]
    assert all(b > a for a, b, s, t in zip(offsets, offsets[1:], shards, shards[1:], strict=False) if s == t)
    orders = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        orders.add(tuple(ds.index[i][0] for i in sampler))
    assert len(orders) > 1, "the shard order never changes between epochs"
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=L.ShardStreamSampler(ds, seed=0))
    got = torch.cat([x for x, _ in loader])
    assert torch.equal(got[:, 0], images[order]) and torch.equal(torch.cat([y for _, y in loader]), labels[order])
