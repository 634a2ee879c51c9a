"""GPU batch pipeline (run on the CPU here): augmentation semantics, loader order, sharding, presets, errors."""
import numpy as np
import pytest
import torch

from pytorch_utils.data import ArrayDataset, list_presets
from pytorch_utils.data.gpu import GPULoader
from pytorch_utils.data.gpu_ops import (
    cutout,
    pixel_fill,
    random_crop_with_padding,
    random_flip,
    random_resized_crop_rotate,
)
from pytorch_utils.errors import ConfigError, UnknownNameError

MEAN = (0.2, 0.4, 0.6)
STD = (0.25, 0.5, 0.3)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def rand_batch(n=16, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, 3, h, w), generator=gen(seed), dtype=torch.uint8)


def raw_images(n=50, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def normalize(x, mean, std):
    """Normalize's reference, in float64: (x / 255 - mean) / std of a (N, 3, H, W) pixel batch."""
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    return ((x.double() / 255 - m) / s).float()


def reference_normalize(images_nhwc, mean, std):
    return normalize(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2), mean, std)


def pad_constant(x, pad, fill):
    """Reference padding: ``pad`` pixels of ``fill`` (one value or one per channel) on each side."""
    n, c, h, w = x.shape
    out = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    out[:] = torch.as_tensor(fill).view(1, -1, 1, 1).to(x.dtype)
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# -------------------------------------------------------------------------------------------------- crop


def test_padding_fills_border_per_channel():
    x = rand_batch(2, 8, 8)
    out = random_crop_with_padding(x, 14, 3, (10, 20, 30), gen())  # the one crop of the padded size
    assert out.shape == (2, 3, 14, 14)
    assert torch.equal(out[:, :, 3:11, 3:11], x)
    border = torch.ones(14, 14, dtype=torch.bool)
    border[3:11, 3:11] = False
    for c, v in enumerate((10, 20, 30)):
        assert (out[:, c][:, border] == v).all()


def test_crop_offsets_in_range_and_each_crop_is_a_slice_of_the_padded_input():
    x = rand_batch(64, 32, 32)
    fill = (1, 2, 3)
    out, (top, left) = random_crop_with_padding(x, 32, 4, fill, gen(1), return_offsets=True)
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    assert top.min() >= 0 and top.max() <= 8 and left.min() >= 0 and left.max() <= 8
    assert len(set(top.tolist())) > 3 and len(set(left.tolist())) > 3  # actually random
    padded = pad_constant(x, 4, fill)
    for i in range(64):
        t, l = int(top[i]), int(left[i])
        assert torch.equal(out[i], padded[i, :, t:t + 32, l:l + 32])


def test_crop_smaller_than_image_and_non_square_offsets():
    x = rand_batch(32, 10, 12)
    out, (top, left) = random_crop_with_padding(x, 8, 2, 0, gen(2), return_offsets=True)
    assert out.shape == (32, 3, 8, 8)
    assert top.max() <= 2 * 2 + 10 - 8 and left.max() <= 2 * 2 + 12 - 8
    padded = pad_constant(x, 2, 0)
    for i in range(32):
        t, l = int(top[i]), int(left[i])
        assert torch.equal(out[i], padded[i, :, t:t + 8, l:l + 8])


def test_crop_without_padding_at_full_size_is_identity():
    x = rand_batch(8)
    assert torch.equal(random_crop_with_padding(x, 32, 0, 0, gen()), x)
    xf = x.float()
    assert torch.equal(random_crop_with_padding(xf, 32, 0, 0, gen()), xf)


def test_crop_is_reproducible_with_the_generator_and_validates_size():
    x = rand_batch(8)
    assert torch.equal(random_crop_with_padding(x, 32, 4, 0, gen(5)), random_crop_with_padding(x, 32, 4, 0, gen(5)))
    with pytest.raises(AssertionError):  # an internal op: its callers pass checked sizes
        random_crop_with_padding(x, 41, 4, 0, gen())


# -------------------------------------------------------------------------------------------------- flip


def test_flip_flips_exactly_the_chosen_images():
    x = rand_batch(64)
    out, mask = random_flip(x, 0.5, gen(3), return_mask=True)
    assert 0 < int(mask.sum()) < 64
    for i in range(64):
        expected = torch.flip(x[i], dims=(2,)) if mask[i] else x[i]
        assert torch.equal(out[i], expected)


def test_flip_probability_extremes():
    x = rand_batch(16)
    assert torch.equal(random_flip(x, 0.0, gen()), x)
    assert torch.equal(random_flip(x, 1.0, gen()), torch.flip(x, dims=(3,)))


# ------------------------------------------------------------------------------------------------ cutout


def test_cutout_hole_is_exactly_size_by_size_of_fill_inside_the_image():
    x = torch.full((200, 3, 32, 32), 200, dtype=torch.uint8)
    fill = (7, 8, 9)
    out, (top, left, applied) = cutout(x, 8, fill, 1.0, gen(4), return_boxes=True)
    assert applied.all()
    assert top.min() >= 0 and top.max() <= 24 and left.min() >= 0 and left.max() <= 24
    assert len(set(top.tolist())) > 10 and len(set(left.tolist())) > 10  # positions spread over the range
    for c, v in enumerate(fill):
        holes = out[:, c] == v
        assert (holes.sum(dim=(1, 2)) == 64).all()
        assert ((out[:, c] == 200) | holes).all()
    for i in range(0, 200, 17):
        t, l = int(top[i]), int(left[i])
        assert (out[i, :, t:t + 8, l:l + 8] == torch.tensor(fill, dtype=torch.uint8).view(3, 1, 1)).all()


def test_cutout_probability_and_untouched_pixels():
    x = rand_batch(64)
    assert torch.equal(cutout(x, 8, 0, 0.0, gen()), x)
    out, (top, left, applied) = cutout(x.float(), 8, 127.5, 0.5, gen(6), return_boxes=True)
    assert 0 < int(applied.sum()) < 64
    for i in range(64):
        keep = torch.ones(32, 32, dtype=torch.bool)
        if applied[i]:
            t, l = int(top[i]), int(left[i])
            keep[t:t + 8, l:l + 8] = False
            assert (out[i][:, ~keep] == 127.5).all()  # float batches keep a fractional fill
        assert torch.equal(out[i][:, keep], x[i].float()[:, keep])
    with pytest.raises(AssertionError):
        cutout(x, 33, 0, 1.0, gen())


# --------------------------------------------------------------------------------------------- normalize


def test_loader_normalizes_uint8_and_resized_float_batches_as_the_reference():
    imgs = raw_images(4)
    ref = reference_normalize(imgs, MEAN, STD)
    for dtype, atol in ((torch.float32, 1e-5), (torch.bfloat16, 0.05)):
        x = next(iter(make(imgs, train=False, dtype=dtype)))[0]  # uint8 at the data's own size
        assert x.dtype == dtype and torch.allclose(x.float(), ref, atol=atol)
    x = next(iter(make(imgs, train=False, size=31)))[0]  # float32 after the (antialiased) resize
    raw = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    down = torch.nn.functional.interpolate(raw, size=(31, 31), mode="bilinear", antialias=True)
    assert torch.allclose(x, normalize(down, MEAN, STD), atol=1e-4)


def test_pixel_fill_rounds_the_mean_to_pixel_units():
    assert pixel_fill((0.4914, 0.4822, 0.4465)) == (125, 123, 114)


# --------------------------------------------------------------------------------- resized crop + rotation


def test_resized_crop_rotate_full_box_without_rotation_is_identity():
    x = rand_batch(8).float()
    out = random_resized_crop_rotate(x, 32, 0, scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=0, generator=gen())
    assert torch.allclose(out, x, atol=1e-3)


def test_resized_crop_rotate_fills_rotated_corners_and_resizes():
    x = torch.full((4, 3, 32, 32), 200.0)
    out = random_resized_crop_rotate(x, 40, (10, 20, 30), scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=45,
                                     rotate_p=1.0, generator=gen(7))
    assert out.shape == (4, 3, 40, 40)
    assert torch.allclose(out[:, :, 20, 20], torch.tensor(200.0))  # the centre stays inside the image
    corners = out[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners != 200).any()  # some image rotated far enough to uncover a corner
    assert ((corners - torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1)).abs() < 1e-3).logical_or(
        corners == 200).all()


# ------------------------------------------------------------------------------------------------ loader


@pytest.fixture(scope="module")
def images():
    return raw_images(50)


def dataset(images, targets=None, mean=MEAN, std=STD):
    targets = np.arange(len(images)) if targets is None else targets
    return ArrayDataset(images, targets, [str(i) for i in range(int(targets.max()) + 1)], mean=mean, std=std)


OPTIONS = ("pad", "flip", "cutout", "cutout_p", "rotate", "scale")


def make(images, **kw):
    """A GPULoader over ``images`` with the "standard" preset when training (the old constructor's default)."""
    ds = dataset(images, kw.pop("targets", None), kw.pop("mean", MEAN), kw.pop("std", STD))
    options = {k: kw.pop(k) for k in OPTIONS if k in kw}
    augmentation, size = kw.pop("augmentation", "standard"), kw.pop("size", None)
    loader = GPULoader(ds, **dict(dict(batch_size=16, train=True, device="cpu"), **kw))
    loader.set_augmentation(augmentation if loader.train else "test", size=size, **options)
    return loader


def test_loader_batches_shapes_dtypes_device_and_len(images):
    loader = make(images, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.dtype == torch.int64 and y.device.type == "cpu"
    assert loader.batch_size == 16 and loader.images.shape == (50, 3, 32, 32) and loader.images.dtype == torch.uint8
    assert len(make(images)) == 3  # training drops the incomplete batch by default
    assert make(images, dtype=torch.bfloat16).__iter__().__next__()[0].dtype == torch.bfloat16
    cl = next(iter(make(images, channels_last=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_every_sample_once_per_epoch(images):
    loader = make(images, drop_last=False)
    for epoch in (0, 1):
        seen = torch.cat([y for _, y in epoch_batches(loader, epoch)])
        assert sorted(seen.tolist()) == list(range(50))
        assert seen.tolist() != list(range(50))  # shuffled


def test_same_epoch_same_batches_and_epochs_differ(images):
    a = epoch_batches(make(images), 3)
    b = epoch_batches(make(images), 3)
    assert same(a, b)
    c = epoch_batches(make(images), 4)
    assert not torch.equal(a[0][1], c[0][1])
    assert not same(epoch_batches(make(images, seed=1), 3), a)


def test_order_follows_set_epoch_and_matches_epoch_sampler(images):
    loader = make(images, drop_last=False)
    for epoch in (0, 2, 7):
        got = torch.cat([y for _, y in epoch_batches(loader, epoch)])
        assert torch.equal(got, loader.indices(epoch))
        expected = np.random.default_rng([0, epoch]).permutation(50)
        assert got.tolist() == expected.tolist()
    try:  # the CPU loader's sampler, when present, gives the same order for the same seed
        from pytorch_utils.data.loaders import EpochSampler
    except ImportError:
        return
    sampler = EpochSampler(50, shuffle=True, seed=0)
    sampler.set_epoch(7)
    assert loader.indices(7).tolist() == list(sampler)


def test_iterating_again_without_set_epoch_replays_the_epoch(images):
    loader = make(images)
    loader.set_epoch(5)
    iter(loader)  # an unconsumed iterator (tqdm.auto makes one) must not move the epoch
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = [(x.clone(), y.clone()) for x, y in loader]
    assert loader.epoch == 5
    assert same(first, second) and same(first, epoch_batches(make(images), 5))


def test_sharding_two_ranks_is_disjoint_and_covers(images):
    for n in (50, 49):
        imgs = images[:n]
        got = []
        for rank in (0, 1):
            loader = make(imgs, drop_last=False, num_replicas=2, rank=rank)
            loader.set_epoch(1)
            got.append(torch.cat([y for _, y in loader]).tolist())
        assert len(got[0]) == len(got[1]) == 25  # same count per rank
        assert set(got[0]) | set(got[1]) == set(range(n))
        assert len(set(got[0]) & set(got[1])) == 50 - n  # only the wrap-around padding repeats
    with pytest.raises(AssertionError):
        make(images, num_replicas=2, rank=2)


def test_test_mode_is_dataset_order_without_augmentation(images):
    loader = make(images, train=False, augmentation="standard")
    batches = list(loader)
    assert len(loader) == 4 and [len(y) for _, y in batches] == [16, 16, 16, 2]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert y.tolist() == list(range(50))
    assert torch.allclose(x, reference_normalize(images, MEAN, STD), atol=1e-5)
    assert same(list(loader), batches)  # deterministic


def test_set_augmentation_test_disables_augmentation(images):
    loader = make(images, cutout_p=1.0)
    loader.set_augmentation("test")
    loader.set_epoch(0)
    ref = reference_normalize(images, MEAN, STD)
    for x, y in loader:
        assert torch.allclose(x, ref[y], atol=1e-5)
    loader.set_augmentation("standard")
    x, y = next(iter(loader))
    assert not torch.allclose(x, ref[y], atol=1e-5)
    with pytest.raises(UnknownNameError):
        loader.set_augmentation("nope")
    with pytest.raises(ConfigError):
        make(images, train=False).set_augmentation("standard")


@pytest.mark.parametrize("augmentation", list_presets())
def test_every_preset_runs_at_progressive_sizes(images, augmentation):
    loader = make(images, augmentation=augmentation)
    for size in (32, 36, 40):
        loader.set_augmentation(augmentation, size=size)
        x, _ = next(iter(loader))
        assert x.shape == (16, 3, size, size) and torch.isfinite(x).all()


def test_size_40_resizes_and_test_mode_is_the_bilinear_resize(images):
    x, _ = next(iter(make(images, size=40)))
    assert x.shape == (16, 3, 40, 40)
    x, _ = next(iter(make(images, train=False, size=40)))
    raw = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float()
    up = torch.nn.functional.interpolate(raw, size=(40, 40), mode="bilinear", align_corners=False)
    assert torch.allclose(x, normalize(up, MEAN, STD), atol=1e-4)


def test_fill_is_the_dataset_mean_in_pixel_units():
    # Black images: every non-black pixel comes from the padding or the cutout hole and must be the mean colour.
    loader = make(np.zeros((64, 32, 32, 3), np.uint8), targets=np.zeros(64, np.int64), batch_size=64, cutout_p=1.0)
    assert loader.dataset.mean == MEAN and pixel_fill(MEAN) == (51, 102, 153)
    x, _ = next(iter(loader))
    black = normalize(torch.zeros(1, 3, 1, 1), MEAN, STD)
    filled = normalize(torch.tensor([51.0, 102.0, 153.0]).view(1, 3, 1, 1), MEAN, STD)
    assert filled.abs().max() < 0.01  # the fill normalizes to ~0
    is_fill = (x - filled).abs() < 1e-5
    assert ((x - black).abs() < 1e-5).logical_or(is_fill).all()
    assert (is_fill.all(dim=1).sum(dim=(1, 2)) >= 64).all()  # at least the 8x8 hole in every image


def test_flip_false_without_pad_or_cutout_leaves_the_images_as_they_are(images):
    # The GPU side reads the same declared options as the CPU side (flip was CPU-only before).
    ref = reference_normalize(images, MEAN, STD)
    for x, y in make(images, pad=0, flip=False, cutout=0, drop_last=False):
        assert torch.allclose(x, ref[y], atol=1e-5)


def test_takes_the_package_data_set_and_its_stats(images):
    ds = ArrayDataset(images, np.zeros(50, np.int64), ("a",))  # stats computed by the data set
    loader = GPULoader(ds, batch_size=10, train=False, device="cpu")
    assert loader.dataset is ds and loader.augmentation == "test" and loader.size == 32
    x = torch.cat([x for x, _ in loader])
    assert torch.allclose(x, reference_normalize(images, ds.mean, ds.std), atol=1e-5)


def test_errors(images):
    with pytest.raises(ConfigError):
        make(images, batch_size=51)  # drop_last with no full batch
    assert len(make(images, batch_size=51, drop_last=False)) == 1
    with pytest.raises(UnknownNameError):
        make(images, augmentation="autoaugment")


def test_a_preset_without_a_gpu_side_is_a_clear_error(images, monkeypatch):
    from pytorch_utils.data import transforms

    monkeypatch.setitem(transforms._AUGMENTATIONS._items, "cpu_only",
                        transforms.Augmentation(transforms.ResizeOptions, transforms._cpu_resize, None))
    with pytest.raises(ConfigError, match="'cpu_only' has no GPU pipeline"):
        make(images).set_augmentation("cpu_only")
    assert "cpu_only" in transforms.list_presets()


# ------------------------------------------------------------------------ same distribution as the CPU preset


def test_standard_preset_fill_map_matches_albumentations_in_distribution():
    """Where pad and cutout pixels land (per-pixel frequency) agrees with the CPU preset within noise."""
    transforms = pytest.importorskip("pytorch_utils.data.transforms")
    n, mean, std = 3000, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    black = np.zeros((n, 32, 32, 3), np.uint8)
    # Black pixel -> -2, fill (128) -> ~0: a pixel is "fill" when its normalized value is above -1.
    cpu_t = transforms.get_preset("standard", mean, std, seed=0)
    cpu = torch.stack([cpu_t(img) for img in black])[:, 0] > -1
    loader = make(black, targets=np.zeros(n, np.int64), batch_size=n, mean=mean, std=std)
    gpu = next(iter(loader))[0][:, 0] > -1
    cpu_map, gpu_map = cpu.float().mean(0), gpu.float().mean(0)
    assert (cpu_map - gpu_map).abs().max() < 0.06
    # The mean fill fraction depends on the crop offsets and on P(hole) = cutout_p.
    assert abs(cpu.float().mean() - gpu.float().mean()) < 0.01


def test_wrn_preset_matches_albumentations_in_distribution():
    """Rotation corners + cutout (fill map) and the crop box (position/size moments) agree with the CPU preset."""
    transforms = pytest.importorskip("pytorch_utils.data.transforms")
    n, mean, std = 2000, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    # Channel 0 ramps along x, channel 1 along y: a crop's mean tells its centre, its std its extent.
    ramp = np.zeros((n, 32, 32, 3), np.uint8)
    ramp[..., 0] = (np.arange(32) * 8)[None, None, :]
    ramp[..., 1] = (np.arange(32) * 8)[None, :, None]
    targets = np.zeros(n, np.int64)
    cpu_t = transforms.get_preset("wrn", mean, std, seed=0, cutout=0, rotate=0)
    cpu = torch.stack([cpu_t(img) for img in ramp])
    gpu = next(iter(make(ramp, targets=targets, batch_size=n, mean=mean, std=std, augmentation="wrn", cutout=0,
                         rotate=0)))[0]
    for c in (0, 1):
        for stat in (lambda a: a[:, c].mean((1, 2)), lambda a: a[:, c].std((1, 2))):
            a, b = stat(cpu), stat(gpu)
            assert abs(a.mean() - b.mean()) < 0.02 and abs(a.std() - b.std()) < 0.2 * a.std()
    black = np.zeros((n, 32, 32, 3), np.uint8)
    cpu_t = transforms.get_preset("wrn", mean, std, seed=0)
    cpu = torch.stack([cpu_t(img) for img in black])[:, 0] > -1
    gpu = next(iter(make(black, targets=targets, batch_size=n, mean=mean, std=std,
                         augmentation="wrn")))[0][:, 0] > -1
    assert (cpu.float().mean(0) - gpu.float().mean(0)).abs().max() < 0.07
    assert abs(cpu.float().mean() - gpu.float().mean()) < 0.01


def test_eval_sharding_is_unpadded_and_covers_exactly_once(images):
    imgs = images[:49]
    got = []
    for rank in (0, 1):
        loader = make(imgs, train=False, num_replicas=2, rank=rank)
        assert loader.indices().tolist() == list(range(rank, 49, 2))  # EpochSampler's order (even=False)
        ys = torch.cat([y for _, y in loader]).tolist()
        assert len(ys) == (25, 24)[rank] and len(loader) == 2
        got.extend(ys)
    assert sorted(got) == list(range(49))  # no sample counted twice in the reduced test metrics
