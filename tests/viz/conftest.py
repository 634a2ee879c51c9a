"""Fixtures for the viz tests: headless matplotlib, a tiny CAM-able model, synthetic normalized images."""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI machines; set before anything imports pyplot

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `import viz_helpers`

from viz_helpers import TinyCamNet, make_uint8_images, normalize  # noqa: E402

from pytorch_utils.viz.images import SAVE_DPI


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    model = TinyCamNet()
    # Non-trivial BN statistics, so eval mode differs from train mode.
    with torch.no_grad():
        model.train()
        model(torch.randn(16, 3, 32, 32))
    return model


@pytest.fixture
def uint8_images():
    return make_uint8_images()


@pytest.fixture
def norm_images(uint8_images):
    return normalize(uint8_images)


@pytest.fixture
def check_png():
    """Assert a saved PNG exists, opens, has about figsize*dpi pixels, and is not blank."""

    def check(path, fig, min_std: float = 8.0):
        assert path.exists(), f"{path} was not written"
        with Image.open(path) as img:
            img.load()
            assert img.format == "PNG"
            w, h = img.size
            gray = np.asarray(img.convert("L"), dtype=np.float64)
        exp_w, exp_h = fig.get_size_inches() * SAVE_DPI
        # bbox_inches="tight" trims margins and may grow for labels outside the axes: allow a generous band.
        assert 0.5 * exp_w <= w <= 1.6 * exp_w, (w, exp_w)
        assert 0.5 * exp_h <= h <= 1.6 * exp_h, (h, exp_h)
        assert gray.std() > min_std, f"{path} looks blank (pixel std {gray.std():.2f})"
        return w, h

    return check
