"""Slice data for training: listing, the preprocessing cache, samplers and augmentation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dicyc.data import DomainData, UnpairedSampler, augment, list_volumes, loader_throughput
from dicyc.errors import DicycError
from dicyc.volume import Volume, write_volume

torch = pytest.importorskip("torch")

S = 64


# --------------------------------------------------------------------------- synthetic volumes
def ct_volume(nz=24, ny=80, nx=80, spacing=(1.5, 1.5, 2.0), center=(40, 40), radii=(22, 18), body_z=None,
              value=40.0, per_slice=0.0):
    """CT-like: air -1000 HU, an elliptic body of ``value`` HU (+ ``per_slice`` × slice index) in
    slices ``body_z`` with a 1000 HU bone ring."""
    z0, z1 = body_z or (0, nz)
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    r = np.sqrt(((yy - center[0]) / radii[0]) ** 2 + ((xx - center[1]) / radii[1]) ** 2)
    arr = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    for k in range(z0, z1):
        sl = arr[k]
        sl[r < 1.0] = value + per_slice * k
        sl[(r >= 0.8) & (r < 0.9)] = 1000.0
    return Volume(arr, spacing, (1.0, -2.0, 3.0))


def mr_volume(nz=20, ny=72, nx=72, spacing=(2.0, 2.0, 2.0), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    r = np.sqrt(((yy - ny / 2) / 24) ** 2 + ((xx - nx / 2) / 20) ** 2)
    arr = rng.normal(5.0, 2.0, (nz, ny, nx)).clip(0).astype(np.float32)
    body = 300 + 100 * np.sin(xx / 5.0) + rng.normal(0, 10, (nz, ny, nx))
    arr[:, r < 1.0] = body[:, r < 1.0]
    return Volume(arr, spacing)


def write(vol, path):
    write_volume(vol, path)
    return path


@pytest.fixture
def ct_file(tmp_path):
    return write(ct_volume(body_z=(4, 20), center=(38, 46)), tmp_path / "src" / "ct.nii.gz")


# --------------------------------------------------------------------------- list_volumes
def test_list_volumes_file_folder_listfile_and_lists(tmp_path):
    folder = tmp_path / "vols"
    a = write(ct_volume(nz=3), folder / "b.nii.gz")
    b = write(ct_volume(nz=3), folder / "a.mha")
    write(ct_volume(nz=3), folder / "series")  # a DICOM series subfolder
    (folder / "notes.md").write_text("not an image")
    (folder / "plain").mkdir()
    assert list_volumes(a) == [a]
    assert list_volumes(folder) == [b, a, folder / "series"]
    assert list_volumes(folder / "series") == [folder / "series"]

    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text(f"# training volumes\n\n../vols/a.mha\n  {a}  \n# end\n../vols/series\n")
    assert [p.resolve() for p in list_volumes(lst)] == [b.resolve(), a.resolve(), (folder / "series").resolve()]
    assert list_volumes([a, str(b)]) == [a, b]
    assert list_volumes((lst, a))[-1] == a


def test_list_volumes_errors_name_the_path(tmp_path):
    with pytest.raises(DicycError, match="nope.nii.gz does not exist"):
        list_volumes(tmp_path / "nope.nii.gz")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DicycError, match="empty holds no image volumes"):
        list_volumes(empty)
    lst = tmp_path / "list.lst"
    write(ct_volume(nz=2), tmp_path / "ok.nii")
    lst.write_text("# comment\nok.nii\n\nmissing.nii.gz\n")
    with pytest.raises(DicycError, match=r"list.lst line 4 names missing.nii.gz"):
        list_volumes(lst)
    with pytest.raises(DicycError):
        list_volumes([])


# --------------------------------------------------------------------------- prepare + cache
def test_prepare_caches_and_reuses(tmp_path, ct_file):
    cache = tmp_path / "cache"
    logs = []
    d1 = DomainData.prepare(ct_file, "CT", (1.5, 1.5), S, cache, log=logs.append)
    assert "prepared" in logs[-1]
    npys = sorted(cache.glob("*.npy"))
    assert len(npys) == 1 and len(list(cache.glob("*.json"))) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporaries left
    mtime = npys[0].stat().st_mtime_ns

    d2 = DomainData.prepare([ct_file], "CT", 1.5, S, cache, log=logs.append)
    assert logs[-1].endswith("cached")
    assert npys[0].stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.asarray(d1.volumes[0]), np.asarray(d2.volumes[0]))
    assert isinstance(d2.volumes[0], np.memmap)
    assert d2.volumes[0].dtype == np.float16

    # a new mtime is a new source: prepared again
    st = ct_file.stat()
    os.utime(ct_file, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    DomainData.prepare(ct_file, "CT", (1.5, 1.5), S, cache, log=logs.append)
    assert "prepared" in logs[-1]
    assert len(list(cache.glob("*.npy"))) == 2
    # other parameters are other entries too
    DomainData.prepare(ct_file, "CT", (2.0, 2.0), S, cache, log=logs.append)
    assert "prepared" in logs[-1]


def test_prepared_ct_values_crop_and_inverse(tmp_path, ct_file):
    data = DomainData.prepare(ct_file, "CT", (1.5, 1.5), S, tmp_path / "cache")
    arr = np.asarray(data.volumes[0], dtype=np.float32)
    assert arr.shape == (24, S, S)
    assert arr.min() >= -1.0 and arr.max() <= 1.0
    assert list(data.body_slices[0]) == list(range(4, 20))
    assert data.n_slices == 16
    assert data.normalization_summary() == {"kind": "ct-window", "low": -1024.0, "high": 2000.0}
    # padded/background pixels are (close to) -1, the body's centroid sits at the crop's centre
    body = arr[4:20] > -0.5
    cy, cx = np.argwhere(body)[:, 1:].mean(axis=0)
    assert abs(cy - (S - 1) / 2) < 1.5 and abs(cx - (S - 1) / 2) < 1.5
    # inverse gives HU back on the body, within float16 precision
    src = ct_volume(body_z=(4, 20), center=(38, 46)).array
    crop = data.crops[0]
    window = src[:, crop.y0 : crop.y0 + S, crop.x0 : crop.x0 + S]
    hu = data.normalizations[0].inverse(arr)
    inside = window > -500
    np.testing.assert_allclose(hu[inside], window[inside], atol=1.0)
    # the sidecar says where it came from
    meta = json.loads(next((tmp_path / "cache").glob("*.json")).read_text())
    assert meta["source"] == str(ct_file.resolve()) and meta["body_slices"] == list(range(4, 20))


def test_prepare_resamples_in_plane_and_keeps_slices(tmp_path):
    path = write(ct_volume(nz=10, ny=90, nx=90, spacing=(1.0, 1.0, 3.0), center=(45, 45), radii=(30, 25)),
                 tmp_path / "fine.nrrd")
    data = DomainData.prepare(path, "CT", (2.0, 2.0), 48, tmp_path / "cache")
    assert data.volumes[0].shape == (10, 48, 48)
    assert data.crops[0].in_shape == (10, 45, 45)
    body = np.asarray(data.volumes[0][5], dtype=np.float32) > -0.5
    # radii 30 x 25 px at 1 mm → about 30 x 25 mm → 15 x 12.5 px at 2 mm: an area of ~ pi*15*12.5
    assert abs(body.sum() - np.pi * 15 * 12.5) < 0.15 * np.pi * 15 * 12.5


def test_prepare_mr_summary_and_range(tmp_path):
    paths = [write(mr_volume(seed=i), tmp_path / f"mr{i}.nii.gz") for i in range(2)]
    data = DomainData.prepare(paths, "T1", (2.0, 2.0), S, tmp_path / "cache")
    summary = data.normalization_summary()
    assert summary["kind"] == "mr-percentile" and summary["percentiles"] == [0.5, 99.5]
    assert summary["low"] == pytest.approx(np.mean([n.low for n in data.normalizations]))
    assert 150 < summary["low"] < summary["high"] < 500
    for v in data.volumes:
        assert v.shape == (20, S, S) and float(v.min()) >= -1 and float(v.max()) <= 1
    ms = DomainData.prepare(paths, "T1", (2.0, 2.0), S, tmp_path / "cache", mr_method="meanstd")
    assert ms.normalization_summary()["kind"] == "mr-meanstd" and ms.normalization_summary()["k"] == 3.0


def test_prepare_refuses_2d_empty_and_constant(tmp_path):
    import SimpleITK as sitk

    flat = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((64, 64)).astype(np.float32)), str(flat))
    with pytest.raises(DicycError, match="2-D"):
        DomainData.prepare(flat, "CT", (1.0, 1.0), S, tmp_path / "cache")
    air = Volume(np.random.default_rng(0).normal(-1000, 5, (10, 40, 40)).astype(np.float32), (1, 1, 1))
    path = write(air, tmp_path / "air.nii.gz")
    with pytest.raises(DicycError, match="air.nii.gz has no slice with body"):
        DomainData.prepare(path, "CT", (1.0, 1.0), S, tmp_path / "cache")
    const = write(Volume(np.full((5, 20, 20), 7.0, np.float32)), tmp_path / "const.nii.gz")
    with pytest.raises(DicycError, match="const.nii.gz is constant"):
        DomainData.prepare(const, "T2", (1.0, 1.0), S, tmp_path / "cache")


def test_import_does_not_load_torch():
    code = "import sys, dicyc.data; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- samplers
@pytest.fixture
def tagged(tmp_path):
    """Two CT domains whose slices are identifiable: each (volume, slice) has its own body value."""
    def domain(name, slices, base):
        paths = []
        for v, nz in enumerate(slices):
            vol = ct_volume(nz=nz, ny=72, nx=72, center=(36, 36), value=base + 300 * v, per_slice=5.0)
            paths.append(write(vol, tmp_path / name / f"{v}.nii.gz"))
        return DomainData.prepare(paths, "CT", (1.5, 1.5), S, tmp_path / "cache")

    a = domain("a", (20, 30), -450)
    b = domain("b", (25, 40, 12), -440)
    return a, b


def _lookup(data):
    table = {}
    for v, vol in enumerate(data.volumes):
        for k in range(vol.shape[0]):
            value = float(vol[k, S // 2, S // 2])
            assert value not in table
            table[value] = (v, k)
    return table


def _decode(batch, table):
    return [table[float(x)] for x in batch[:, 0, S // 2, S // 2].tolist()]


def test_sampler_shapes_and_no_empty_slices(tmp_path):
    paths = [write(ct_volume(nz=30, body_z=(10, 14), center=(40, 40)), tmp_path / "a.nii.gz"),
             write(ct_volume(nz=12, body_z=(0, 3), center=(40, 40)), tmp_path / "b.nii.gz")]
    a = DomainData.prepare(paths, "CT", (1.5, 1.5), S, tmp_path / "cache")
    b = DomainData.prepare(write(mr_volume(), tmp_path / "mr.nii.gz"), "MR", (2.0, 2.0), S, tmp_path / "cache")
    for mode in ("random", "same-patient", "position"):
        sampler = UnpairedSampler(a, b, 8, mode=mode, seed=1)
        for _ in range(10):
            xa, xb = next(sampler)
            assert xa.shape == xb.shape == (8, 1, S, S)
            assert xa.dtype == xb.dtype == torch.float32
            assert (xa.amax(dim=(1, 2, 3)) > -0.5).all()
            assert (xb.amax(dim=(1, 2, 3)) > -0.5).all()
    with pytest.raises(DicycError, match="sampling mode"):
        UnpairedSampler(a, b, 2, mode="sideways")


def test_same_patient_batches_come_from_one_volume(tagged):
    a, b = tagged
    ta, tb = _lookup(a), _lookup(b)
    sampler = UnpairedSampler(a, b, 6, mode="same-patient", seed=3)
    seen_a, seen_b = set(), set()
    for _ in range(20):
        xa, xb = next(sampler)
        va = {v for v, _ in _decode(xa, ta)}
        vb = {v for v, _ in _decode(xb, tb)}
        assert len(va) == 1 and len(vb) == 1
        seen_a |= va
        seen_b |= vb
    assert seen_a == {0, 1} and seen_b == {0, 1, 2}


def test_position_mode_matches_relative_position(tagged):
    a, b = tagged
    ta, tb = _lookup(a), _lookup(b)
    offset = 2
    sampler = UnpairedSampler(a, b, 8, mode="position", offset=offset, seed=5)
    for _ in range(25):
        xa, xb = next(sampler)
        for (va, ka), (vb, kb) in zip(_decode(xa, ta), _decode(xb, tb)):
            na, nb = a.volumes[va].shape[0], b.volumes[vb].shape[0]
            pa, pb = ka / (na - 1), kb / (nb - 1)
            assert abs(pa - pb) <= (offset + 0.5) / (nb - 1) + 1e-9


def test_sampler_reproducible_resumable_and_rank_dependent(tagged):
    a, b = tagged
    for mode in ("random", "same-patient", "position"):
        s1 = UnpairedSampler(a, b, 4, mode=mode, seed=7)
        s2 = UnpairedSampler(a, b, 4, mode=mode, seed=7)
        for _ in range(3):
            x1, x2 = next(s1), next(s2)
            assert torch.equal(x1[0], x2[0]) and torch.equal(x1[1], x2[1])
        state = json.loads(json.dumps(s1.state_dict()))
        expected = [next(s1) for _ in range(3)]
        resumed = UnpairedSampler(a, b, 4, mode=mode, seed=7)
        resumed.load_state_dict(state)
        for want in expected:
            got = next(resumed)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        r0 = UnpairedSampler(a, b, 4, mode=mode, seed=7, rank=0, world_size=2)
        r1 = UnpairedSampler(a, b, 4, mode=mode, seed=7, rank=1, world_size=2)
        draws0 = [r0.draw_indices() for _ in range(5)]
        draws1 = [r1.draw_indices() for _ in range(5)]
        assert any(not np.array_equal(d0[0][1], d1[0][1]) for d0, d1 in zip(draws0, draws1))
        # a distributed resume hands rank 0's state to every rank: rank 1 continues its own stream
        rank1 = UnpairedSampler(a, b, 4, mode=mode, seed=7, rank=1, world_size=2)
        rank1.load_state_dict(json.loads(json.dumps(r0.state_dict())))
        want = r1.draw_indices()
        got = rank1.draw_indices()
        assert all(np.array_equal(x, y) for x, y in zip(np.concatenate(want), np.concatenate(got)))


def _indexed_domain(lengths, body=None):
    """A domain of in-memory volumes whose every pixel holds 100 × volume + slice index (exact in float16).

    Every slice of a volume is a body slice unless ``body`` narrows them, so the ends, where a
    slab's neighbours are clamped, are drawn too.
    """
    from dicyc.data import DomainData

    volumes = [np.broadcast_to((100 * v + np.arange(n, dtype=np.float16))[:, None, None], (n, S, S)).astype(np.float16)
               for v, n in enumerate(lengths)]
    bodies = [np.arange(n) if body is None else np.asarray(body[v]) for v, n in enumerate(lengths)]
    return DomainData("CT", volumes, bodies, [None] * len(lengths), [None] * len(lengths), [None] * len(lengths),
                      (1.0, 1.0), S)


@pytest.mark.parametrize("context", [1, 3, 5])
def test_context_sampler_returns_neighbouring_slices_of_one_volume(context):
    """A slab is the drawn body slice in its middle channel and its neighbours in order, clamped at the ends."""
    a = _indexed_domain((7, 4, 12))
    b = _indexed_domain((9, 3), body=([0, 8], [1]))  # only the first and last slice of B volume 0 are drawn
    half = context // 2
    seen_centres, seen_clamped = set(), 0
    for mode in ("random", "same-patient", "position"):
        sampler = UnpairedSampler(a, b, 6, mode=mode, seed=2, context_slices=context)
        for _ in range(15):
            for batch, data in zip(next(sampler), (a, b)):
                assert batch.shape == (6, context, S, S) and batch.dtype == torch.float32
                assert (batch == batch[:, :, :1, :1]).all()  # each channel is one whole slice
                labels = batch[:, :, 0, 0].numpy().astype(int)
                for row in labels:
                    volume, centre = divmod(int(row[half]), 100)
                    assert centre in data.body_slices[volume]  # the middle channel is the drawn body slice
                    nz = data.volumes[volume].shape[0]
                    want = [100 * volume + min(max(centre + d, 0), nz - 1) for d in range(-half, half + 1)]
                    assert row.tolist() == want
                    seen_centres.add((id(data), volume, centre))
                    seen_clamped += int(centre < half or centre > nz - 1 - half)
    assert len(seen_centres) > 15
    assert seen_clamped > 0 or context == 1  # the ends were drawn, and clamped


def test_context_slices_must_be_odd_and_positive():
    from dicyc.data import check_context_slices

    assert check_context_slices(3) == 3 and check_context_slices(np.int64(1)) == 1
    a = _indexed_domain((5,))
    for bad in (0, 2, -1, True, 3.0, "3"):
        with pytest.raises(DicycError, match="context_slices must be an odd"):
            UnpairedSampler(a, a, 2, context_slices=bad)


# --------------------------------------------------------------------------- augmentation
def _noise_batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand((n, 1, S, S), generator=g) * 2 - 1


def test_augment_identity_configs():
    x = _noise_batch()
    zero = {"flip": 0, "rotate_deg": 0, "shear": 0, "translate": 0, "scale": [1, 1]}
    for cfg in (False, zero):
        out = augment(x, torch.Generator().manual_seed(1), cfg)
        torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    with pytest.raises(DicycError, match="rotation"):
        augment(x, None, {"rotation": 5})


def test_augment_defaults_change_but_keep_range_and_background():
    x = _noise_batch(16)
    out = augment(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    assert not torch.allclose(out, x, atol=1e-3)
    assert out.min() >= -1 and out.max() <= 1
    again = augment(x, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)
    # a bright image: pixels brought in from outside are -1, the centre stays inside
    ones = torch.ones((32, 1, S, S))
    warped = augment(ones, torch.Generator().manual_seed(3))
    corners = torch.stack([warped[:, 0, 0, 0], warped[:, 0, 0, -1], warped[:, 0, -1, 0], warped[:, 0, -1, -1]])
    assert (corners < -0.999).any()
    assert torch.allclose(warped[:, 0, S // 2 - 2 : S // 2 + 2, S // 2 - 2 : S // 2 + 2], torch.ones(1))


def test_augment_flip_only_mirrors():
    x = _noise_batch(64)
    out = augment(x, torch.Generator().manual_seed(4), {"flip": 1.0, "rotate_deg": 0, "shear": 0, "translate": 0,
                                                        "scale": [1, 1]})
    torch.testing.assert_close(out, torch.flip(x, dims=[3]), atol=1e-5, rtol=0)


def test_augment_moves_the_channels_of_a_slab_alike():
    """One affine per sample, for all its channels: each channel is warped exactly as it would be alone."""
    g = torch.Generator().manual_seed(5)
    slabs = torch.rand((12, 3, S, S), generator=g) * 2 - 1
    out = augment(slabs, torch.Generator().manual_seed(6))
    assert not torch.allclose(out, slabs, atol=1e-3)
    for k in range(3):  # the same seed draws the same affines for a one-channel batch of as many samples
        alone = augment(slabs[:, k : k + 1].contiguous(), torch.Generator().manual_seed(6))
        torch.testing.assert_close(out[:, k : k + 1], alone, atol=1e-6, rtol=0)
    # and a slab of three equal slices stays three equal slices
    same = augment(slabs[:, :1].repeat(1, 3, 1, 1), torch.Generator().manual_seed(7))
    assert torch.equal(same[:, 0], same[:, 1]) and torch.equal(same[:, 0], same[:, 2])


# --------------------------------------------------------------------------- throughput
def test_loader_throughput(tagged):
    a, b = tagged
    sampler = UnpairedSampler(a, b, 4, seed=0)
    before = sampler.state_dict()
    rate = loader_throughput(sampler, n_batches=30)
    assert np.isfinite(rate) and rate > 10
    assert sampler.state_dict() == before  # measuring does not move the training stream


# --------------------------------------------------------------------------- real sample
def test_real_head_ct(tmp_path):
    samples = pytest.importorskip("dicyc.samples")
    try:
        path = samples.prepare(["head-ct"], log=lambda message: None)["head-ct"]
    except DicycError as exc:
        pytest.skip(f"head-ct sample unavailable: {exc}")
    data = DomainData.prepare(path, "CT", (3.8, 3.8), 64, tmp_path / "cache")
    vol = data.volumes[0]
    assert vol.shape[1:] == (64, 64) and vol.dtype == np.float16
    assert 40 < data.n_slices <= vol.shape[0]
    body = np.asarray(vol[data.body_slices[0]], dtype=np.float32)
    assert body.min() >= -1 and body.max() <= 1
    hu = data.normalizations[0].inverse(body)
    assert hu.max() > 500  # bone survives the window
    a, _ = next(UnpairedSampler(data, data, 4, mode="position", seed=0))
    assert a.shape == (4, 1, 64, 64)
