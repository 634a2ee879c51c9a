import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pytorch_utils.data import ArrayDataset, get_preset, make_loader, set_loader_epoch
from pytorch_utils.data.gpu import GPULoader
from pytorch_utils.data.loaders import EpochSampler, EpochWorkerInit, default_num_workers
from pytorch_utils.data.synthetic import make_synthetic
from pytorch_utils.errors import ConfigError, UnknownNameError


@pytest.fixture(scope="module")
def synth():
    return make_synthetic(96, num_classes=4, seed=0)


def augmented(ds, seed=0):
    """A copy of ``ds`` with the standard training preset (fixed preset seed; the loader reseeds it anyway)."""
    out = ds.subset(np.arange(len(ds)))
    out.transform = get_preset("standard", ds.mean, ds.std, seed=seed)
    return out


def collect(loader, epoch):
    set_loader_epoch(loader, epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def same_batches(a, b):
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


# ------------------------------------------------------------------------------------------------ EpochSampler


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    s1, s2 = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    s1.set_epoch(4)
    s2.set_epoch(4)
    order = list(s1)
    assert order == list(s2) and sorted(order) == list(range(50))
    s2.set_epoch(5)
    assert list(s2) != order
    s3 = EpochSampler(50, seed=4)
    s3.set_epoch(4)
    assert list(s3) != order
    # replaying: going back to epoch 4 after epoch 5 gives epoch 4's order again
    s2.set_epoch(4)
    assert list(s2) == order


def test_sampler_without_shuffle_is_in_order():
    s = EpochSampler(7, shuffle=False)
    s.set_epoch(9)
    assert list(s) == list(range(7))


def test_shards_are_disjoint_and_cover_when_divisible():
    shards = []
    for rank in range(4):
        s = EpochSampler(100, seed=1, num_replicas=4, rank=rank)
        s.set_epoch(2)
        shards.append(set(s))
        assert len(s) == 25 and len(list(s)) == 25
    assert set().union(*shards) == set(range(100))
    assert sum(len(x) for x in shards) == 100


def test_shards_pad_by_wrapping():
    padded = [list(EpochSampler(10, seed=0, num_replicas=4, rank=r)) for r in range(4)]
    assert [len(p) for p in padded] == [3, 3, 3, 3]
    assert set(sum(padded, [])) == set(range(10))  # all covered, 2 repeated as padding


def test_sampler_rejects_bad_rank():
    with pytest.raises(AssertionError):  # an internal value: the launcher's rank
        EpochSampler(10, num_replicas=2, rank=2)


# ------------------------------------------------------------------------------------------------ make_loader


def test_default_num_workers_is_sane():
    n = default_num_workers()
    assert isinstance(n, int) and 0 <= n <= 8


def test_batch_shapes_and_drop_last_defaults(synth):
    train = make_loader(synth, 40, train=True, num_workers=0)
    batches = collect(train, 0)
    assert [tuple(x.shape) for x, _ in batches] == [(40, 3, 32, 32)] * 2  # 96 = 2*40 + 16 dropped
    assert all(y.dtype == torch.int64 for _, y in batches)
    assert isinstance(train.sampler, EpochSampler) and train.sampler.shuffle

    test = make_loader(synth, 40, train=False, num_workers=0)
    tb = collect(test, 0)
    assert [x.shape[0] for x, _ in tb] == [40, 40, 16]
    assert torch.equal(torch.cat([y for _, y in tb]), torch.from_numpy(synth.targets))  # in order, complete
    assert train.persistent_workers is False and train.pin_memory == torch.cuda.is_available()


def test_sharded_loaders_split_the_data(synth):
    seen = []
    for rank in range(2):
        loader = make_loader(synth, 16, train=True, num_workers=0, num_replicas=2, rank=rank)
        seen.append(torch.cat([y for _, y in collect(loader, 1)]))
        assert len(loader) == 3  # 48 items per rank
    assert len(seen[0]) == len(seen[1]) == 48


def test_too_large_batch_with_drop_last_is_a_config_error(synth):
    with pytest.raises(ConfigError) as err:
        make_loader(synth, 97, train=True, num_workers=0)
    assert "no batch" in str(err.value) and "96" in str(err.value)
    assert len(make_loader(synth, 97, train=True, num_workers=0, drop_last=False)) == 1
    with pytest.raises(ValueError, match="batch_size"):  # torch's own check
        make_loader(synth, 0, train=False, num_workers=0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_same_seed_and_epoch_give_identical_augmented_batches(synth, num_workers):
    ds = augmented(synth)
    a = collect(make_loader(ds, 16, train=True, num_workers=num_workers, seed=5), 3)
    b = collect(make_loader(ds, 16, train=True, num_workers=num_workers, seed=5), 3)
    assert same_batches(a, b)
    c = collect(make_loader(ds, 16, train=True, num_workers=num_workers, seed=5), 4)
    assert not same_batches(a, c)
    d = collect(make_loader(ds, 16, train=True, num_workers=num_workers, seed=6), 3)
    assert not same_batches(a, d)


def test_resumed_loader_replays_the_epoch(synth):
    ds = augmented(synth)
    running = make_loader(ds, 16, train=True, num_workers=0, seed=1)
    for epoch in range(3):
        last = collect(running, epoch)
    resumed = make_loader(ds, 16, train=True, num_workers=0, seed=1)
    assert same_batches(collect(resumed, 2), last)


def test_iterating_again_without_set_epoch_replays_the_epoch_on_both_loaders(synth):
    # One epoch rule (as DistributedSampler): only set_epoch moves a loader on; was "moves to the next epoch".
    ds = augmented(synth)
    loader = make_loader(ds, 16, train=True, num_workers=0, seed=2)
    gpu = GPULoader(synth, batch_size=16, train=True, device="cpu", seed=2)
    gpu.set_augmentation("standard")
    for ld in (loader, gpu):
        first = [(x.clone(), y.clone()) for x, y in ld]
        second = [(x.clone(), y.clone()) for x, y in ld]
        assert ld.epoch == 0 and same_batches(first, second)
        assert not same_batches(collect(ld, 1), first)
        assert same_batches(collect(ld, 0), first)  # an explicit epoch always wins


def test_set_augmentation_puts_the_preset_on_the_data_set_at_the_data_size(synth):
    big = ArrayDataset(np.repeat(np.repeat(synth.images, 2, axis=1), 2, axis=2), synth.targets, synth.classes)
    loader = make_loader(big, 16, train=True, num_workers=0, seed=0)
    loader.set_augmentation("standard", cutout=4)
    x, _ = next(iter(loader))
    assert x.shape[-2:] == (64, 64) and loader.size == 64  # follows the data's own size by default
    loader.set_augmentation("reduced", size=40)  # a phase switch: options kept, "reduced" takes no cutout
    assert next(iter(loader))[0].shape[-2:] == (40, 40) and loader.options == {"cutout": 4}
    expected = get_preset("reduced", big.mean, big.std, size=40, seed=0)
    assert repr(big.transform) == repr(expected)
    loader.set_augmentation("test")  # deterministic, keeps the size
    assert torch.equal(big[0][0], get_preset("test", big.mean, big.std, size=40)(big.images[0]))


def loaders_of(ds, batch_size=16):
    """Both package loaders over ``ds`` (CPU DataLoader, GPU-resident on the CPU), one contract."""
    return [make_loader(ds, batch_size, train=True, num_workers=0, seed=0),
            GPULoader(ds, batch_size=batch_size, train=True, device="cpu", seed=0)]


def test_a_size_only_switch_keeps_the_preset_and_its_options_on_both_loaders(synth):
    # Progressive resizing: a phase that sets only input_size calls set_augmentation(None, size=...).
    for loader in loaders_of(synth):
        loader.set_augmentation("standard", cutout=4)
        loader.set_augmentation(None, size=40)
        assert next(iter(loader))[0].shape[-2:] == (40, 40)
        assert (loader.augmentation, loader.size, loader.options) == ("standard", 40, {"cutout": 4})
        loader.set_augmentation("reduced")  # a preset-only switch keeps the size
        assert next(iter(loader))[0].shape[-2:] == (40, 40) and loader.augmentation == "reduced"
        loader.set_augmentation(None)  # nothing named: nothing changes
        assert (loader.augmentation, loader.size) == ("reduced", 40)
    cpu = make_loader(synth, 16, train=True, num_workers=0, seed=0)
    cpu.set_augmentation(None, size=24)  # before any preset: "test" at that size
    assert cpu.augmentation == "test" and next(iter(cpu))[0].shape[-2:] == (24, 24)


def test_set_augmentation_refuses_what_the_preset_does_not_declare_on_both_loaders(synth):
    for loader in loaders_of(synth):
        with pytest.raises(ConfigError, match="cutuot"):
            loader.set_augmentation("standard", cutuot=16)
        with pytest.raises(ConfigError, match="'size' must be >= 1"):
            loader.set_augmentation(None, size=-5)
        with pytest.raises(UnknownNameError):
            loader.set_augmentation("nope")
        assert loader.augmentation in (None, "test") and loader.options == {}  # a refused switch changes nothing
    evaluation = make_loader(synth, 16, train=False, num_workers=0)
    with pytest.raises(ConfigError, match="evaluation loader"):
        evaluation.set_augmentation("standard")


def test_workers_and_epochs_do_not_repeat_one_augmentation_sequence():
    # Every item is the same image: batches differ only by augmentation. Without per-worker reseeding
    # (albumentations 2.0.8 copies one random state into every worker) batch 0 (worker 0) == batch 1 (worker 1),
    # and fresh workers would repeat it every epoch.
    img = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    ds = ArrayDataset(np.repeat(img[None], 32, axis=0), np.zeros(32, np.int64), ("x",))
    ds.transform = get_preset("standard", ds.mean, (0.25, 0.25, 0.25), seed=0)
    loader = make_loader(ds, 8, train=True, num_workers=2, seed=0)
    e0, e1 = collect(loader, 0), collect(loader, 1)
    assert not torch.equal(e0[0][0], e0[1][0])
    assert not torch.equal(e0[0][0], e1[0][0])


def test_transform_swapped_between_epochs_reaches_the_workers(synth):
    ds = augmented(synth)
    loader = make_loader(ds, 32, train=False, num_workers=2)
    collect(loader, 0)
    ds.transform = get_preset("test", synth.mean, synth.std)
    x = torch.cat([x for x, _ in collect(loader, 1)])
    expected = torch.stack([ds.transform(im) for im in synth.images])
    assert torch.allclose(x, expected)


def test_set_loader_epoch_on_a_plain_dataloader(synth):
    sampler = EpochSampler(len(synth), seed=0)
    loader = DataLoader(synth, batch_size=8, sampler=sampler)
    set_loader_epoch(loader, 7)
    assert sampler.epoch == 7
    set_loader_epoch(DataLoader(synth, batch_size=8), 3)  # no set_epoch anywhere: a no-op, not an error


# ------------------------------------------------------------------------------------------------ review fixes


def test_eval_shards_are_disjoint_and_cover_exactly_once():
    ds = ArrayDataset(np.zeros((63, 4, 4, 3), np.uint8), np.arange(63) % 3, ("a", "b", "c"))
    ds.transform = lambda im: torch.zeros(1)
    seen = []
    for rank in range(2):
        loader = make_loader(ds, 8, train=False, num_workers=0, num_replicas=2, rank=rank)
        indices = list(loader.sampler)
        assert len(loader.sampler) == len(indices) == (32, 31)[rank]
        assert sum(len(y) for _, y in collect(loader, 0)) == len(indices)  # what evaluate() counts
        seen.extend(indices)
    assert sorted(seen) == list(range(63))  # no sample counted twice, none missed
    # training keeps equal shards (padding by wrapping), as DistributedDataParallel needs
    train = [list(make_loader(ds, 8, train=True, num_workers=0, num_replicas=2, rank=r).sampler) for r in range(2)]
    assert [len(t) for t in train] == [32, 32] and set(train[0] + train[1]) == set(range(63))


def test_unpadded_sampler_with_fewer_items_than_ranks():
    shards = [list(EpochSampler(3, shuffle=True, seed=1, num_replicas=4, rank=r, even=False)) for r in range(4)]
    assert [len(s) for s in shards] == [1, 1, 1, 0] and sorted(sum(shards, [])) == [0, 1, 2]


def test_worker_init_sets_opencv_threads_to_zero(monkeypatch):
    import random

    import cv2

    real_set = cv2.setNumThreads
    calls = []
    monkeypatch.setattr(cv2, "setNumThreads", lambda n: (calls.append(n), real_set(n))[1])
    before = cv2.getNumThreads()
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        real_set(2)
        EpochWorkerInit(seed=0)(worker_id=0)
        assert calls == [0]
        # 0 means "no OpenCV threads, run sequentially": the pthreads backend then reports 1, TBB/OpenMP report 0.
        assert cv2.getNumThreads() <= 1
    finally:
        real_set(before)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
