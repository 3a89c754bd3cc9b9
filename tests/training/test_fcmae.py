"""FCMAE masked-image pretraining for ConvNeXt students (``loss.mask_ratio``): sparse masking, loss, runs."""
from __future__ import annotations

import json

import pytest
import torch
from timm.layers.grn import GlobalResponseNorm
from rtfer.errors import InputError
from rtfer.models import create_model
from rtfer.training.config import load_config
from rtfer.training.fcmae import FCMAEHead, MaskedEncoder, _mask_at, _spatial_layers, load_fcmae, show
from rtfer.training.train import fit, load_checkpoint


def _small_fer():
    """convnextv2_fer's layout (overlapping stem, dilated last stage) at test widths."""
    torch.manual_seed(0)
    return create_model("convnextv2_fer", input_size=48, dims=(8, 16, 24, 32), depths=(1, 1, 2, 1))


def tiny_images(n):
    return torch.randint(0, 256, (n, 48, 48, 3), dtype=torch.uint8).numpy()


def _cfg(train, val, out, *overrides):
    return load_config(None, [f"data.train={train}", f"data.val={val}", f"run.out={out}", "data.batch_size=14",
                              "data.eval_batch_size=64", "run.progress=false", "run.threads=1", "optim.sam=false",
                              "model.color=gray", *overrides])


def test_every_spatial_layer_sees_zeros_where_the_image_is_hidden():
    """The dense form of FCMAE's sparse convolution: no depthwise conv, downsampling or GRN reads a hidden site."""
    model = _small_fer()
    head = FCMAEHead(32, patch=8, ratio=0.75, pixel_channels=1, seed=3)
    head.encoder = MaskedEncoder(model)  # the masking hooks first, then the recorders below
    seen = []
    spatial = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)][1:]
    spatial += [m for m in model.modules() if isinstance(m, GlobalResponseNorm)]  # its norm is over positions
    for layer in spatial:
        nhwc = isinstance(layer, GlobalResponseNorm)  # in the MLP, on (n, h, w, c)
        layer.register_forward_pre_hook(lambda _m, a, nhwc=nhwc: seen.append((a[0].detach().clone(), nhwc)))
    state = head.generator.get_state()
    x = torch.randn(4, 3, 48, 48)
    head.loss(model, x)
    head.generator.set_state(state)
    visible = head.random_visible(4, 6, "cpu")
    assert 0 < visible.mean() < 1
    sizes = set()
    for t, nhwc in seen:
        hw = tuple(t.shape[1:3]) if nhwc else tuple(t.shape[2:4])
        m = _mask_at(visible, hw)
        if nhwc:
            m = m.permute(0, 2, 3, 1)
        assert float((t * (1 - m)).abs().max()) == 0.0
        sizes.add(hw)
    assert {(24, 24), (12, 12), (6, 6), (3, 3)} <= sizes  # stem, stages 1-2 finer/equal, stages 3-4 coarser
    assert len(seen) == len(spatial) == len(_spatial_layers(model)) == 1 + 2 * 5 + 3  # stem, 5 blocks, 3 downsamplings
    # outside the masked pass the hooks change nothing: the same weights give the same logits as an unhooked copy
    plain = _small_fer()
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-6)


def test_coarse_sites_are_visible_when_any_of_their_cells_is():
    visible = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).view(1, 1, 4, 4)
    assert _mask_at(visible, (2, 2)).view(2, 2).tolist() == [[1, 0], [0, 1]]
    assert _mask_at(visible, (8, 8)).sum() == 4 * visible.sum()


def test_hidden_pixels_do_not_reach_the_encoder_and_the_mask_is_its_ratio():
    model = _small_fer().eval()
    head = FCMAEHead(32, patch=8, ratio=0.6, pixel_channels=1, seed=0)
    enc = MaskedEncoder(model)
    visible = head.random_visible(3, 6, "cpu")
    assert (visible.flatten(1).sum(dim=1) == 36 - round(0.6 * 36)).all()
    x = torch.randn(3, 3, 48, 48)
    other = x + torch.randn_like(x) * (1 - _mask_at(visible, (48, 48)))  # different pixels in hidden cells only
    with torch.no_grad():
        assert torch.equal(enc(model, x, visible), enc(model, other, visible))
        assert not torch.equal(enc(model, x, torch.ones_like(visible)), enc(model, other, torch.ones_like(visible)))


def test_targets_are_each_cells_pixels_normalised():
    head = FCMAEHead(8, patch=4, ratio=0.5, pixel_channels=1)
    x = torch.rand(2, 3, 16, 16)
    t = head.patchify(x)
    assert t.shape == (2, 16, 4, 4)
    cell = x[1, 0, 4:8, 8:12].reshape(-1)
    assert torch.allclose(t[1, :, 1, 2], (cell - cell.mean()) / (cell.var() + 1e-6).sqrt(), atol=1e-5)


def test_reconstruction_keeps_visible_cells_and_shows_what_the_loss_scores():
    model = _small_fer().eval()
    head = FCMAEHead(32, patch=8, ratio=0.5, pixel_channels=1, seed=1).eval()
    x = torch.randn(2, 3, 48, 48)
    state = head.generator.get_state()
    visible = head.random_visible(2, 6, "cpu")
    filled = head.reconstruct(model, x, visible)
    shown = _mask_at(visible, (48, 48)).bool()
    assert filled.shape == (2, 1, 48, 48)
    assert torch.equal(filled[shown], x[:, :1][shown])
    # the hidden cells, normalised by the true cells' statistics, are the predictions the loss scored
    def cells(t):
        return t[:, :1].reshape(2, 1, 6, 8, 6, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 6, 64)
    true, got = cells(x), cells(filled)
    mu, sd = true.mean(-1, keepdim=True), (true.var(-1, keepdim=True) + 1e-6).sqrt()
    err = (((got - mu) / sd - (true - mu) / sd) ** 2).mean(-1)
    hidden = 1 - visible[:, 0]
    head.generator.set_state(state)
    with torch.no_grad():
        assert torch.allclose((err * hidden).sum() / hidden.sum(), head.loss(model, x), rtol=1e-4)


def test_fcmae_teaches_the_encoder_to_fill_in_faces():
    """On a fixed set of images the reconstruction of hidden cells improves with training."""
    model = _small_fer()
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    phase = torch.rand(16, 1, 1, 1) * 6
    x = torch.sin(3 * xx + phase) * torch.cos(2 * yy) + 0.1 * torch.randn(16, 1, 48, 48)  # smooth, predictable
    x = x.expand(16, 3, 48, 48).contiguous()
    head = FCMAEHead(32, patch=8, ratio=0.5, pixel_channels=1, seed=0)
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = head.loss(model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])


def test_pretraining_then_fine_tuning_runs_and_resumes(tiny_packed, tmp_path):
    train, val = tiny_packed
    common = ("model.name=convnextv2_test", "model.input_size=32", "loss.mask_ratio=0.6", "loss.mask_patch=8")
    pre = tmp_path / "pre"
    fit(_cfg(train, val, pre, *common, "loss.target_weight=0", "run.epochs=1"))
    state = torch.load(pre / "last.pt", weights_only=False)
    head = state["mask_head"]
    assert "mask_token" in head["decoder"] and head["generator"].dtype == torch.uint8
    row = json.loads((pre / "metrics.jsonl").read_text().splitlines()[0])
    assert row["train_accuracy"] is None and row["train_loss"] > 0  # no labels were used
    # resuming restores the decoder and the mask sequence, not fresh ones
    fit(_cfg(train, val, pre, *common, "loss.target_weight=0", "run.epochs=2", "run.resume=true"))
    resumed = torch.load(pre / "last.pt", weights_only=False)
    assert resumed["epoch"] == 2 and not torch.equal(resumed["mask_head"]["generator"], head["generator"])
    assert not torch.equal(resumed["mask_head"]["decoder"]["pred.weight"], head["decoder"]["pred.weight"])
    picture = show(pre / "last.pt", tiny_images(6), tmp_path / "show.png")
    assert picture.stat().st_size > 1000
    # the pretrained encoder starts a fine-tune with labels; no decoder in its checkpoint
    result = fit(_cfg(train, val, tmp_path / "ft", "model.name=convnextv2_test", "model.input_size=32",
                      f"run.init_from={pre / 'last.pt'}", "run.epochs=1"))
    _, ckpt = load_checkpoint(result.out / "best.pt")
    assert ckpt["architecture"] == "convnextv2_test" and not any("mask_token" in k for k in ckpt["model"])
    with pytest.raises(InputError, match="not from an FCMAE run"):
        load_fcmae(result.out / "best.pt")
    # the masked loss beside the label loss
    both = fit(_cfg(train, val, tmp_path / "both", *common, "loss.mask_weight=0.5", "run.epochs=1"))
    assert both.best_epoch == 1


def test_bad_mask_settings_are_refused(tiny_packed, tmp_path):
    train, val = tiny_packed
    with pytest.raises(InputError, match=r"mask_ratio must be in \[0, 1\)"):
        _cfg(train, val, tmp_path / "a", "loss.mask_ratio=1.0")
    with pytest.raises(InputError, match="optim.sam"):
        _cfg(train, val, tmp_path / "b", "loss.mask_ratio=0.6", "optim.sam=true")
    with pytest.raises(InputError, match="nothing to learn"):
        _cfg(train, val, tmp_path / "c", "loss.mask_ratio=0.6", "loss.mask_weight=0", "loss.target_weight=0")
    with pytest.raises(InputError, match="needs a ConvNeXt student"):
        fit(_cfg(train, val, tmp_path / "d", "model.name=ddamfn_tiny", "model.input_size=32", "loss.mask_ratio=0.6",
                 "run.epochs=1"))
    with pytest.raises(InputError, match="must divide the input size"):
        fit(_cfg(train, val, tmp_path / "e", "model.name=convnextv2_test", "model.input_size=32",
                 "loss.mask_ratio=0.6", "loss.mask_patch=5", "run.epochs=1"))
