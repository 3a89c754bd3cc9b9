"""FCMAE: ConvNeXt-V2's own pretraining, masked-image modelling on faces without their labels.

ConvNeXt-V2 was designed to start from a fully convolutional masked autoencoder (Woo et al., 2023): a random share
of the image's patches is hidden, the encoder sees only the rest, and a light decoder predicts the hidden patches'
pixels. The hub weights come from ImageNet and cannot be had here; this module runs the same pretraining on the
faces we have (``loss.mask_ratio`` > 0, usually with ``loss.target_weight=0``), then a fine-tune starts from its
``last.pt`` (``run.init_from``).

Sparse convolution, densely. FCMAE treats the visible patches as a sparse set so that no convolution lets a
hidden patch's position take on its neighbours' values, which would leak the layout of the visible ones into the
hidden ones and make pretraining see a different kind of input than fine-tuning. The dense equivalent used here
(as the authors note, a submanifold sparse convolution equals a dense one whose input is masked at every spatial
operation): forward pre-hooks multiply the input of every spatial layer (the second stem convolution, each
downsampling convolution, each block's depthwise convolution, and each GRN, whose global norm must count visible
positions only) by the visibility mask at that layer's resolution. The mask lives on a grid of
``loss.mask_patch``-pixel cells; a coarser layer's position is visible when any of its cells is (a sparse
downsampling's active sites), a finer layer's repeats its cell's value.

Decoder: the encoder's last map, brought to the cell grid (nearest), a 1 x 1 projection to 128 channels, a learnt
mask token at the hidden cells, one ConvNeXt block and a 1 x 1 prediction of each cell's pixels. The loss is the mean
squared error on the hidden cells only, against each cell's pixels normalised by their own mean and deviation.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from rtfer.errors import InputError

log = logging.getLogger(__name__)

#: Channels of the decoder (FCMAE's is 512 for ImageNet models; these students are atto-sized).
DECODER_DIM = 128


def _spatial_layers(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """(layer, channels_last_input) for every layer whose input must be masked: a timm ConvNeXt's spatial ops."""
    stem, stages = getattr(model, "stem", None), getattr(model, "stages", None)
    if stem is None or stages is None:
        return []
    layers: list[tuple[nn.Module, bool]] = []
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv2d)]
    layers += [(c, False) for c in convs[1:]]  # the first sees the masked image itself
    for stage in stages:
        for m in stage.downsample.modules() if isinstance(stage.downsample, nn.Module) else []:
            if isinstance(m, nn.Conv2d):
                layers.append((m, False))
        for block in stage.blocks:
            conv_dw = getattr(block, "conv_dw", None)
            if conv_dw is None:
                return []
            layers.append((conv_dw, False))
            grn = getattr(getattr(block, "mlp", None), "grn", None)
            if grn is not None:
                layers.append((grn, not getattr(block, "use_conv_mlp", False)))
    return layers


def _mask_at(visible: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The (n, 1, g, g) visibility grid at ``size``: repeated on finer grids, any-visible on coarser ones."""
    g = visible.shape[-1]
    if size[0] >= g:
        return F.interpolate(visible, size=size, mode="nearest")
    return F.adaptive_max_pool2d(visible, size)


def _require_spatial_layers(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    layers = _spatial_layers(model)
    if not layers:
        raise InputError(f"loss.mask_ratio (FCMAE) needs a ConvNeXt student; {type(model).__name__} is not one")
    return layers


class MaskedEncoder:
    """Forward pre-hooks that mask a ConvNeXt's spatial layers while :attr:`visible` is set (None: no effect)."""

    def __init__(self, model: nn.Module) -> None:
        layers = _require_spatial_layers(model)
        self.visible: torch.Tensor | None = None
        self._cache: dict = {}
        self.handles = [layer.register_forward_pre_hook(self._hook(nhwc)) for layer, nhwc in layers]

    def _hook(self, nhwc: bool):
        def hook(_module, args):
            if self.visible is None:
                return None
            x = args[0]
            hw = (x.shape[1], x.shape[2]) if nhwc else (x.shape[2], x.shape[3])
            m = self._cache.get(hw)
            if m is None:
                m = self._cache[hw] = _mask_at(self.visible, hw).to(x.dtype)
            return (x * (m.permute(0, 2, 3, 1) if nhwc else m),) + tuple(args[1:])
        return hook

    def __call__(self, model: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        self.visible, self._cache = visible, {}
        try:
            return model.forward_features(x * _mask_at(visible, (x.shape[2], x.shape[3])).to(x.dtype))
        finally:
            self.visible, self._cache = None, {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class FCMAEHead(nn.Module):
    """Decoder, mask token and the random masks; :meth:`loss` runs the masked encoder and scores the hidden cells."""

    def __init__(self, encoder_channels: int, patch: int, ratio: float, pixel_channels: int, seed: int = 0) -> None:
        super().__init__()
        from timm.models.convnext import ConvNeXtBlock

        self.patch, self.ratio, self.pixel_channels = int(patch), float(ratio), int(pixel_channels)
        self.proj = nn.Conv2d(encoder_channels, DECODER_DIM, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, DECODER_DIM, 1, 1))
        self.block = ConvNeXtBlock(DECODER_DIM, ls_init_value=None)
        self.pred = nn.Conv2d(DECODER_DIM, self.patch * self.patch * self.pixel_channels, 1)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.encoder: MaskedEncoder | None = None

    def random_visible(self, n: int, grid: int, device) -> torch.Tensor:
        """(n, 1, grid, grid) float masks, 1 = visible, with round(ratio * grid^2) hidden cells in each."""
        cells = grid * grid
        hidden = min(max(round(self.ratio * cells), 1), cells - 1)
        perm = torch.rand(n, cells, generator=self.generator).argsort(dim=1)  # a random permutation per image
        visible = (perm >= hidden).float()  # the cells holding 0 .. hidden-1 are hidden
        return visible.view(n, 1, grid, grid).to(device)

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C, H, W) -> (n, p*p*C, H/p, W/p): each cell's pixels along the channel axis (C = pixel_channels)."""
        x = x[:, :self.pixel_channels].float()
        n, c, h, w = x.shape
        p = self.patch
        return x.reshape(n, c, h // p, p, w // p, p).permute(0, 3, 5, 1, 2, 4).reshape(n, p * p * c, h // p, w // p)

    @staticmethod
    def cell_stats(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's pixel mean and deviation (of :meth:`cells` output)."""
        return t.mean(dim=1, keepdim=True), (t.var(dim=1, keepdim=True) + 1e-6).sqrt()

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`cells`, each cell's pixels normalised by their own mean and deviation: the targets."""
        t = self.cells(x)
        mean, sd = self.cell_stats(t)
        return (t - mean) / sd

    def predict(self, model: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """The masked encoder and the decoder: (n, p*p*C, g, g) normalised pixels predicted for every cell."""
        if self.encoder is None:
            self.encoder = MaskedEncoder(model)
        grid = visible.shape[-1]
        z = self.proj(F.interpolate(self.encoder(model, x, visible).float(), size=(grid, grid), mode="nearest"))
        z = z * visible + self.mask_token * (1.0 - visible)
        return self.pred(self.block(z)).float()

    def loss(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        visible = self.random_visible(x.shape[0], x.shape[-1] // self.patch, x.device)
        err = (self.predict(model, x, visible) - self.patchify(x)).pow(2).mean(dim=1, keepdim=True)
        hidden = 1.0 - visible
        return (err * hidden).sum() / hidden.sum()

    @torch.no_grad()
    def reconstruct(self, model: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """``x`` with its hidden cells replaced by the prediction (n, pixel_channels, H, W), for a look at what the
        encoder learnt. The loss scores each cell's pixels after normalising them by their own mean and deviation,
        so a picture needs those back: as in the MAE papers' figures, they are taken from the true cell."""
        n, _, h, w = x.shape
        p, c, grid = self.patch, self.pixel_channels, visible.shape[-1]
        cells = self.cells(x)
        mean, sd = self.cell_stats(cells)
        filled = torch.where(visible.bool(), cells, self.predict(model, x, visible) * sd + mean)
        return filled.reshape(n, p, p, c, grid, grid).permute(0, 3, 4, 1, 5, 2).reshape(n, c, h, w)

    def head_state(self) -> dict:
        return {"decoder": self.state_dict(), "generator": self.generator.get_state()}

    def load_head_state(self, state: dict) -> None:
        self.load_state_dict(state["decoder"])
        self.generator.set_state(state["generator"])


def build_fcmae(cfg, student: nn.Module, device: torch.device) -> FCMAEHead | None:
    """The :class:`FCMAEHead` of ``cfg.loss.mask_ratio`` for ``student`` (None when not configured)."""
    from rtfer.training.train import preprocessing

    if not cfg.loss.mask_ratio:
        return None
    size, _mean, _std, gray = preprocessing(student)
    patch = cfg.loss.mask_patch
    if size % patch:
        raise InputError(f"loss.mask_patch {patch} must divide the input size {size}")
    if size // patch < 2:
        raise InputError(f"loss.mask_patch {patch} leaves fewer than 2 x 2 cells of a {size} px input")
    _require_spatial_layers(student)  # refuses a student that is not a ConvNeXt, before any work
    with torch.no_grad():
        was = student.training
        student.eval()
        probe = torch.zeros(1, _in_channels(student), size, size, device=device)
        channels = int(student.forward_features(probe).shape[1])
        student.train(was)
    head = FCMAEHead(channels, patch, cfg.loss.mask_ratio, 1 if gray else 3, seed=cfg.run.seed).to(device)
    log.info("FCMAE: %d x %d cells of %d px, %.0f%% hidden, decoder %d channels (weight %.2f; label loss weight %.2f)",
             size // patch, size // patch, patch, 100 * cfg.loss.mask_ratio, DECODER_DIM, cfg.loss.mask_weight,
             cfg.loss.target_weight)
    return head


def load_fcmae(checkpoint) -> tuple[nn.Module, FCMAEHead]:
    """The encoder and decoder of an FCMAE pretraining run's ``last.pt`` (what the fine-tune starts from)."""
    from rtfer.training.train import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    state, loss_cfg = ckpt.get("mask_head"), (ckpt.get("config") or {}).get("loss", {})
    if not state or not loss_cfg.get("mask_ratio"):
        raise InputError(f"{checkpoint} is not from an FCMAE run (no mask_head; train with loss.mask_ratio and use "
                         "its last.pt)")
    decoder, patch = state["decoder"], int(loss_cfg.get("mask_patch", 8))
    pixel_channels = int(decoder["pred.weight"].shape[0]) // patch ** 2
    head = FCMAEHead(int(decoder["proj.weight"].shape[1]), patch, float(loss_cfg["mask_ratio"]), pixel_channels)
    head.load_state_dict(decoder)
    return model, head.eval()


def show(checkpoint, faces, out, seed: int = 0):
    """A PNG of faces (uint8 (n, S, S, 3) RGB crops), each as the encoder saw it (hidden cells grey) and with the
    hidden cells predicted, with a fresh mask per face from ``seed``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from rtfer.training.augment import to_float
    from rtfer.training.train import preprocessing

    model, head = load_fcmae(checkpoint)
    size, mean, std, gray = preprocessing(model)
    x = to_float(torch.from_numpy(np.ascontiguousarray(faces)).permute(0, 3, 1, 2), size, mean, std, gray)
    head.generator.manual_seed(int(seed))
    visible = head.random_visible(len(x), size // head.patch, "cpu")
    filled = head.reconstruct(model, x, visible)

    c = head.pixel_channels
    m, sd = (torch.tensor(v[:c]).view(1, c, 1, 1) for v in (mean, std))

    def pixels(t):  # normalised -> [0, 1], (n, H, W) grey or (n, H, W, 3) colour
        img = (t[:, :c] * sd + m).clamp(0, 1)
        return img[:, 0].numpy() if c == 1 else img.permute(0, 2, 3, 1).numpy()

    shown = _mask_at(visible, (size, size))
    grey = (0.5 - m) / sd  # hidden cells shown mid-grey
    cols = [("face", pixels(x)), ("what the\nencoder sees", pixels(x[:, :c] * shown + grey * (1 - shown))),
            ("hidden cells\npredicted", pixels(filled))]
    n = len(x)
    fig, axes = plt.subplots(len(cols), n, figsize=(1.3 * n, 1.45 * len(cols)), dpi=110, squeeze=False)
    for r, (title, imgs) in enumerate(cols):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"FCMAE: {100 * head.ratio:.0f}% of {size // head.patch} x {size // head.patch} cells hidden",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _in_channels(model: nn.Module) -> int:
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return int(conv.in_channels)
