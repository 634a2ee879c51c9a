import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from pytorch_utils.data import CIFAR10_MEAN, CIFAR10_STD, get_preset, list_presets
from pytorch_utils.data.transforms import AlbumentationsTransform, check_augmentation
from pytorch_utils.data.transforms import test_preset as eval_preset  # aliased: pytest would collect a test_* name
from pytorch_utils.errors import ConfigError, UnknownNameError

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD
FILL = tuple(int(round(m * 255)) for m in MEAN)


def normalized(img: np.ndarray) -> np.ndarray:
    """What Normalize + ToTensorV2 make of an HWC uint8 image: CHW float32."""
    x = (img.astype(np.float32) / 255 - np.float32(MEAN)) / np.float32(STD)
    return x.transpose(2, 0, 1)


def random_image(seed=0, low=0, high=100):
    # values below 100 never equal the fill colour (~125, 123, 114), so fill pixels are recognisable
    return np.random.default_rng(seed).integers(low, high, size=(32, 32, 3), dtype=np.uint8)


def test_eval_preset_shape_dtype_and_normalization_values():
    img = np.full((32, 32, 3), (200, 100, 0), dtype=np.uint8)
    out = eval_preset(MEAN, STD)(img)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 0), MEAN, STD)]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((32, 32), expected[c]), atol=1e-5)


@pytest.mark.parametrize("name", ["test", "standard", "standard_no_cutout", "wrn", "reduced"])
@pytest.mark.parametrize("size", [32, 40])
def test_every_preset_gives_float_chw_of_requested_size(name, size):
    assert name in list_presets()
    out = get_preset(name, MEAN, STD, size=size, seed=0)(random_image())
    assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_presets_end_with_normalize_then_tensor_and_cutout_zero_disables_it():
    ops = get_preset("standard", MEAN, STD, cutout=0).compose.transforms
    assert [type(t).__name__ for t in ops[-2:]] == ["Normalize", "ToTensorV2"]
    assert not any(isinstance(t, A.CoarseDropout) for t in ops)
    assert any(isinstance(t, A.CoarseDropout) for t in get_preset("standard", MEAN, STD).compose.transforms)
    assert not any(isinstance(t, A.CoarseDropout) for t in get_preset("reduced", MEAN, STD).compose.transforms)
    # a resize first, which leaves an image of the target size untouched and brings any other size to it
    assert isinstance(eval_preset(MEAN, STD, size=36).compose.transforms[0], A.Resize)
    img = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    plain = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) \
        / torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(eval_preset(MEAN, STD)(img), plain, atol=1e-6)
    assert eval_preset(MEAN, STD, size=32)(np.zeros((64, 48, 3), np.uint8)).shape == (3, 32, 32)


def test_cutout_cuts_exactly_one_8x8_hole_filled_with_the_mean():
    tf = get_preset("standard", MEAN, STD, pad=0, flip=False, cutout=8, cutout_p=1.0, seed=0)
    fill_value = torch.tensor([(f / 255 - m) / s for f, m, s in zip(FILL, MEAN, STD)]).view(3, 1, 1)
    corners = set()
    for i in range(10):
        img = random_image(i)
        out = tf(img)
        hole = (out - fill_value).abs().amax(0) < 1e-5
        assert hole.sum() == 64
        rows, cols = torch.nonzero(hole, as_tuple=True)
        assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        # outside the hole the image is untouched
        expected = torch.from_numpy(normalized(img))
        assert torch.allclose(out[:, ~hole], expected[:, ~hole], atol=1e-5)
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 1  # the hole moves


def test_flip_happens_sometimes_and_nothing_else_changes():
    img = random_image(3)
    plain, flipped = normalized(img), normalized(img[:, ::-1])
    tf = get_preset("standard", MEAN, STD, pad=0, flip=True, cutout=0, seed=1)
    seen = []
    for _ in range(30):
        out = tf(img).numpy()
        is_plain, is_flipped = np.allclose(out, plain, atol=1e-5), np.allclose(out, flipped, atol=1e-5)
        assert is_plain or is_flipped
        seen.append(is_flipped)
    assert 0 < sum(seen) < 30


def test_random_crop_is_a_window_of_the_mean_padded_image():
    img = random_image(4)
    padded = np.empty((40, 40, 3), np.uint8)
    padded[:] = FILL
    padded[4:36, 4:36] = img
    windows = {(dy, dx): normalized(padded[dy:dy + 32, dx:dx + 32]) for dy in range(9) for dx in range(9)}
    tf = get_preset("standard", MEAN, STD, pad=4, flip=False, cutout=0, seed=2)
    offsets = set()
    for _ in range(20):
        out = tf(img).numpy()
        match = [k for k, w in windows.items() if np.allclose(out, w, atol=1e-5)]
        assert len(match) == 1
        offsets.add(match[0])
    assert len(offsets) > 3


def test_same_seed_same_outputs_different_seed_different():
    imgs = [random_image(i) for i in range(5)]
    run = lambda seed: [get_preset("standard", MEAN, STD, seed=seed)(im) for im in imgs]  # noqa: E731
    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    w1, w2 = get_preset("wrn", MEAN, STD, seed=3), get_preset("wrn", MEAN, STD, seed=3)
    assert all(torch.equal(w1(im), w2(im)) for im in imgs)


def test_seeded_transforms_do_not_share_one_decision_stream():
    # albumentations 2.0.8 seeds every transform of A.Compose(seed=s) with the same s, which makes the first flip
    # and cutout decisions (both p=0.5) identical draws; the presets share one stream, so they disagree sometimes.
    img = random_image(5)
    flipped_img = torch.from_numpy(normalized(img[:, ::-1]))
    fill_value = torch.tensor([(f / 255 - m) / s for f, m, s in zip(FILL, MEAN, STD)]).view(3, 1, 1)
    agree = 0
    for seed in range(30):
        out = get_preset("standard", MEAN, STD, pad=0, flip=True, cutout=8, cutout_p=0.5, seed=seed)(img)
        hole = (out - fill_value).abs().amax(0) < 1e-5
        flipped = torch.allclose(out[:, ~hole], flipped_img[:, ~hole], atol=1e-5)
        agree += bool(hole.any()) == flipped
    assert agree < 30


def test_pil_input_matches_numpy_input():
    img = random_image(6, 0, 256)
    out_np = get_preset("standard", MEAN, STD, seed=9)(img)
    out_pil = get_preset("standard", MEAN, STD, seed=9)(Image.fromarray(img))
    assert torch.equal(out_np, out_pil)
    gray = Image.fromarray(img[..., 0])  # mode L is converted to RGB
    assert eval_preset(MEAN, STD)(gray).shape == (3, 32, 32)


def test_adapter_converts_hwc_output_once():
    tf = AlbumentationsTransform(A.Compose([A.HorizontalFlip(p=1.0)]))
    img = random_image(7, 0, 256)
    out = tf(img)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.from_numpy(img[:, ::-1].transpose(2, 0, 1).copy()).float() / 255)


def test_unknown_preset_and_bad_arguments_raise():
    with pytest.raises(UnknownNameError) as err:
        get_preset("fancy", MEAN, STD)
    assert "standard" in str(err.value) and "wrn" in str(err.value)
    with pytest.raises(KeyError):
        get_preset("fancy", MEAN, STD)
    with pytest.raises(ConfigError, match="rotate"):
        get_preset("test", MEAN, STD, rotate=10)
    with pytest.raises(ConfigError):
        get_preset("standard", (125, 123, 114), STD)  # 0-255 means
    with pytest.raises(ConfigError):
        get_preset("standard", MEAN, STD, cutout=40)
    with pytest.raises(ConfigError):
        eval_preset(MEAN, (0.2, 0.0, 0.2))


# ------------------------------------------------------------------------------------ the recipe door's check


def test_check_augmentation_accepts_every_declared_option_and_the_size():
    for name in list_presets():
        check_augmentation(name, {})
        check_augmentation(name, {"size": 40})
    check_augmentation("standard", {"size": 40, "pad": 2, "flip": False, "cutout": 16, "cutout_p": 1.0})
    check_augmentation("wrn", {"rotate": 0, "scale": [0.5, 1.0], "cutout": 0})  # a JSON list is a fine scale


def test_check_augmentation_refuses_a_typo_naming_the_valid_options():
    with pytest.raises(ConfigError) as err:
        check_augmentation("standard", {"cutuot": 16})
    msg = str(err.value)
    assert "'cutuot'" in msg and all(o in msg for o in ("size", "pad", "flip", "cutout", "cutout_p"))
    with pytest.raises(ConfigError, match="'rotate'"):
        check_augmentation("reduced", {"rotate": 10})  # an option of another preset
    with pytest.raises(UnknownNameError) as err:
        check_augmentation("fancy", {})
    assert all(n in str(err.value) for n in list_presets())


@pytest.mark.parametrize("preset,kwargs,match", [
    ("standard", {"size": "abc"}, "'size' must be int"),
    ("standard", {"size": -5}, "'size' must be >= 1"),
    ("test", {"size": True}, "'size' must be int"),
    ("standard", {"cutout": -1}, "'cutout' must be >= 0"),
    ("standard", {"cutout": 40}, "'cutout' must be at most size=32"),
    ("standard", {"cutout_p": 1.5}, "'cutout_p' must be >= 0 and <= 1"),
    ("standard", {"pad": 2.5}, "'pad' must be int"),
    ("wrn", {"rotate": float("nan")}, "'rotate'"),
    ("wrn", {"scale": [0.9, 0.5]}, "'scale'"),
    ("wrn", {"scale": ["a", "b"]}, "'scale'"),
])
def test_check_augmentation_refuses_bad_values(preset, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        check_augmentation(preset, kwargs)
    with pytest.raises(ConfigError, match=match):  # building the preset reads the same declaration
        get_preset(preset, MEAN, STD, **kwargs)
