import pytest
import torch
import torch.nn.functional as F

from pytorch_utils.errors import ConfigError
from pytorch_utils.train.mixing import Mixer, SoftTargetCrossEntropy, cutmix_box, smooth_one_hot


def _batch(n=16, c=5):
    torch.manual_seed(0)
    x = torch.rand(n, 3, 16, 16)
    y = torch.randint(0, c, (n,))
    return x, y


def test_smooth_one_hot_values():
    t = smooth_one_hot(torch.tensor([0, 2]), 4, 0.2)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.8 + 0.05) and t[0, 1] == pytest.approx(0.05)


def test_mixup_targets_sum_to_one_and_match_lambda():
    x, y = _batch()
    torch.manual_seed(1)
    mixer = Mixer(5, mixup_alpha=1.0)
    torch.manual_seed(1)
    mx, my = mixer(x, y)
    lam = mixer.last["lam"]
    assert mixer.last["method"] == "mixup" and 0 <= lam <= 1
    assert torch.allclose(my.sum(1), torch.ones(len(y)))
    # recover the permutation from the images and check targets use the same lambda
    onehot = F.one_hot(y, 5).float()
    for i in range(len(y)):
        partner = [j for j in range(len(y)) if torch.allclose(mx[i], lam * x[i] + (1 - lam) * x[j], atol=1e-6)]
        assert partner, "mixed image is not lam * x_i + (1 - lam) * x_j"
        j = partner[0]
        assert torch.allclose(my[i], lam * onehot[i] + (1 - lam) * onehot[j], atol=1e-6)


def test_cutmix_lambda_is_the_pasted_area():
    x, y = _batch()
    mixer = Mixer(5, cutmix_alpha=1.0)
    for seed in range(5):
        torch.manual_seed(seed)
        mx, my = mixer(x, y)
        lam = mixer.last["lam"]
        assert mixer.last["method"] == "cutmix"
        changed = (mx != x).any(dim=1)  # (N, H, W) pixels replaced
        # box is the same for the whole batch: its area is the max over images (some partners are themselves)
        area = changed.flatten(1).sum(1).max().item()
        assert lam == pytest.approx(1 - area / 256, abs=1 / 256 + 1e-6) or area == 0
        assert torch.allclose(my.sum(1), torch.ones(len(y)))
        kept_mass = my[torch.arange(len(y)), y]
        assert (kept_mass >= lam - 1e-6).all()


def test_cutmix_box_clipped_inside_image():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        y0, y1, x0, x1 = cutmix_box(32, 32, 0.3, generator=g)
        assert 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 32


def test_switch_prob_picks_both_methods_and_prob_zero_never_mixes():
    x, y = _batch()
    mixer = Mixer(5, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5)
    torch.manual_seed(0)
    methods = set()
    for _ in range(30):
        mixer(x, y)
        methods.add(mixer.last["method"])
    assert methods == {"mixup", "cutmix"}
    still = Mixer(5, mixup_alpha=1.0, prob=0.0, label_smoothing=0.1)
    mx, my = still(x, y)
    assert torch.equal(mx, x) and torch.allclose(my, smooth_one_hot(y, 5, 0.1))


def test_label_smoothing_applied_once():
    x, y = _batch()
    mixer = Mixer(5, label_smoothing=0.1)
    _, soft = mixer(x, y)
    logits = torch.randn(len(y), 5)
    ours = SoftTargetCrossEntropy()(logits, soft)
    torch_ls = F.cross_entropy(logits, y, label_smoothing=0.1)
    assert ours.item() == pytest.approx(torch_ls.item(), rel=1e-5)
    # hard targets: plain cross-entropy
    assert SoftTargetCrossEntropy()(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item())


def test_mixer_validation():
    with pytest.raises(ConfigError):
        Mixer(1)
    with pytest.raises(ConfigError):
        Mixer(10, mixup_alpha=-1)
    with pytest.raises(ConfigError):
        Mixer(10, label_smoothing=1.0)
