import pytest
import torch
import torch.nn.functional as F

from pytorch_utils.train import mixing
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


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_equals_timm_mixup_for_the_same_lambda_box_and_partner(method, monkeypatch):
    """Pinned to timm's Mixup (batch mode): its partner of image i is image N-1-i, so ours is given that
    permutation, and both the same lambda and CutMix box (timm then corrects lambda to the pasted area, as ours)."""
    timm_mixup = pytest.importorskip("timm.data.mixup")
    x, y = _batch(n=8)
    lam, box = 0.7, (2, 11, 5, 16)  # (y0, y1, x0, x1); 9 x 11 of 16 x 16 pasted
    cutmix = method == "cutmix"
    monkeypatch.setattr(timm_mixup.Mixup, "_params_per_batch", lambda self: (lam, cutmix))
    monkeypatch.setattr(timm_mixup, "rand_bbox", lambda *args, **kwargs: box)
    monkeypatch.setattr(torch, "randperm", lambda n, **kwargs: torch.arange(n - 1, -1, -1))
    monkeypatch.setattr(Mixer, "_sample_lam", lambda self, alpha: lam)
    monkeypatch.setattr(mixing, "cutmix_box", lambda *args, **kwargs: box)
    alphas = {"cutmix_alpha": 1.0} if cutmix else {"mixup_alpha": 1.0}
    theirs_x, theirs_y = timm_mixup.Mixup(**alphas, label_smoothing=0.1, num_classes=5)(x.clone(), y)
    mixer = Mixer(5, **alphas, label_smoothing=0.1)
    ours_x, ours_y = mixer(x, y)
    assert torch.allclose(ours_x, theirs_x, atol=1e-6) and torch.allclose(ours_y, theirs_y, atol=1e-6)
    assert mixer.last == {"method": method, "lam": pytest.approx(1 - 9 * 11 / 256 if cutmix else lam)}
