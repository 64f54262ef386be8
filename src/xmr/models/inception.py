"""The FID Inception network: TensorFlow's 2015-12-05 InceptionV3 graph, ported, without torchvision.

Every FID/IS implementation measures with this one network (the graph the original TF FID and IS
code used), so its numbers are comparable only when the architecture, the resize to 299x299 and
the input scaling are the graph's. This module rebuilds it in plain torch:

* the torchvision InceptionV3 layout with TensorFlow's quirks: average pools that do not count
  the zero padding, and a *max* pool in the last block's pool branch (the TF graph has it);
  1008 classes (1000 ImageNet classes plus 8 unused ones of the TF export);
* ``resize_like_tensorflow1x``: TF 1.x ``ResizeBilinear`` with ``align_corners=False`` (source
  coordinate ``dst * in / out``, no half-pixel offset), which differs from
  ``torch.nn.functional.interpolate``;
* input scaling ``(x - 128) / 128`` on pixel values in [0, 255].

Weights are never downloaded. ``load_fid_inception`` reads the files users already have and tells
them apart by content, not by name:

* a state dict saved by ``torch.save`` with torch-fidelity's / pytorch-fid's parameter names
  (``weights-inception-2015-12-05-6726825d.pth``, ``pt_inception-2015-12-05-6726825d.pth``);
* clean-fid's / StyleGAN2-ADA's TorchScript ``inception-2015-12-05.pt`` (a zip with ``code/``):
  run as clean-fid runs it, through its ``layers`` submodule on 299x299 input scaled as above,
  with the logits taken from its one 1008x2048 weight (and 1008 bias).

Features: ``pool`` (2048-d, the FID feature), ``logits_unbiased`` (pool @ W^T, what the original
IS code and torch-fidelity's ISC use) and ``logits`` (with the bias).

(One module, just over 400 lines, on purpose: one network, its TF-exact resize and its loader,
which checks the weights against this very architecture.)
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xmr.errors import XmrError

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008
# sha256 prefix that torch-fidelity and pytorch-fid put in their weight file names.
OFFICIAL_PTH_SHA256_PREFIX = "6726825d"
ACCEPTED = (
    "torch-fidelity's weights-inception-2015-12-05-6726825d.pth, pytorch-fid's "
    "pt_inception-2015-12-05-6726825d.pth (state dicts) or clean-fid's TorchScript "
    "inception-2015-12-05.pt"
)


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (TF's epsilon 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, **conv: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **conv)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow averages over the pixels inside the image only (no zero padding counted).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row, col = (
            {"kernel_size": (1, 7), "padding": (0, 3)},
            {"kernel_size": (7, 1), "padding": (3, 0)},
        )
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = self.branch7x7dbl_1(x)
        c = self.branch7x7dbl_3(self.branch7x7dbl_2(c))
        c = self.branch7x7dbl_5(self.branch7x7dbl_4(c))
        d = self.branch_pool(_tf_avg_pool(x))
        return torch.cat([a, b, c, d], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_2(self.branch7x7x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(b))
        return torch.cat([a, b, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """``max_pool``: the TF graph's last block pools by maximum in its pool branch."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch1x1(x)
        b = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        c = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(c), self.branch3x3dbl_3b(c)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = _tf_avg_pool(x)
        return torch.cat([a, b, c, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The TF 2015-12-05 InceptionV3 with torch-fidelity's / pytorch-fid's parameter names.

    ``forward`` takes (N, 3, 299, 299) pixel values in [0, 255] (already resized) and returns
    the 2048-d pool features; ``logits`` maps those to the 1008 class logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)

    def trunk(self) -> nn.Sequential:
        """Every layer from the input to the pool, in order (the fc excluded)."""
        return nn.Sequential(*[m for name, m in self.named_children() if name != "fc"])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels - 128) / 128
        for name, module in self.named_children():
            if name != "fc":
                x = module(x)
        return torch.flatten(x, 1)


def _resize_axis(
    n_in: int, size: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source rows/columns (floor, floor + 1 clamped) and weights of one axis."""
    pos = torch.arange(size, dtype=dtype, device=device)
    pos = pos * torch.tensor(n_in / size, dtype=torch.float32, device=device)
    lo = pos.long()
    hi = (lo + 1).clamp_max(n_in - 1)
    return lo, hi, pos - lo.to(pos.dtype)


def resize_like_tensorflow1x(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) floats to ``size`` x ``size`` as TF 1.x does it.

    TF 1.x ``resize_bilinear(align_corners=False)`` samples output pixel ``i`` at source
    coordinate ``i * in / out`` (no half-pixel centre), interpolating between ``floor`` and
    ``floor + 1`` clamped to the edge. Coordinates are float32 products, as in TF's kernel, and
    the two interpolation steps run in the same order, so the result matches TF to the bit on
    CPU for float32 input.
    """
    if images.dim() != 4 or not torch.is_floating_point(images):
        raise ValueError("expected a (N, C, H, W) floating-point tensor")
    y_lo, y_hi, dy = _resize_axis(images.shape[2], size, images.dtype, images.device)
    x_lo, x_hi, dx = _resize_axis(images.shape[3], size, images.dtype, images.device)
    top, bottom = images.index_select(2, y_lo), images.index_select(2, y_hi)
    dx = dx.view(1, 1, 1, size)
    top_lo, bottom_lo = top.index_select(3, x_lo), bottom.index_select(3, x_lo)
    top = top_lo + (top.index_select(3, x_hi) - top_lo) * dx
    bottom = bottom_lo + (bottom.index_select(3, x_hi) - bottom_lo) * dx
    return top + (bottom - top) * dy.view(1, 1, size, 1)


@dataclass
class FIDInception:
    """A loaded FID Inception: pool features and logits of resized [0, 255] pixels.

    Attributes:
        path: the weight file.
        sha256: its sha256 (hex).
        format: "state_dict" or "torchscript".
        device: where it runs.
    """

    path: str
    sha256: str
    format: str
    device: torch.device
    _trunk: Any
    _fc_weight: torch.Tensor | None
    _fc_bias: torch.Tensor | None

    @property
    def official(self) -> bool:
        """Whether the file is the torch-fidelity / pytorch-fid file by its hash prefix."""
        return self.sha256.startswith(OFFICIAL_PTH_SHA256_PREFIX)

    @torch.no_grad()
    def pool(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float32 pool features of (N, 3, 299, 299) pixels in [0, 255]."""
        if pixels.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) pixels")
        pixels = pixels.to(self.device, torch.float32)
        if self.format == "torchscript":
            # As clean-fid runs it: scale here, then the network's layers up to the pool.
            return self._trunk((pixels - 128) / 128).reshape(len(pixels), POOL_DIM).float()
        return self._trunk(pixels).float()

    @torch.no_grad()
    def logits(self, pool: torch.Tensor, *, bias: bool = False) -> torch.Tensor:
        """(N, 1008) float64 logits from pool features; ``bias=False`` gives torch-fidelity's
        ``logits_unbiased`` (pool @ W^T), which the original IS code used."""
        if self._fc_weight is None:
            raise XmrError(f"{self.path}: holds no 1008x2048 output layer; IS needs one")
        # float64: the product is then the same whatever the batch size (float32 BLAS blocks
        # by batch size and changes the last bits).
        weight = self._fc_weight.double()
        out = pool.to(weight) @ weight.T
        if bias and self._fc_bias is not None:
            out = out + self._fc_bias.double()
        return out

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "format": self.format}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # torch.save archives hold data.pkl (+ data/); TorchScript ones also hold code/.
        return any("/code/" in name for name in archive.namelist())


def _check_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise XmrError(f"{path}: not a state dict of tensors; accepted: {ACCEPTED}")
    expected = {
        k: v.shape for k, v in FIDInceptionV3().state_dict().items() if "num_batches" not in k
    }
    given = {k: v for k, v in state.items() if "num_batches" not in k}
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        raise XmrError(
            f"{path}: not the FID InceptionV3's parameters: {'; '.join(parts)}; accepted: {ACCEPTED}"
        )
    for key, shape in expected.items():
        if given[key].shape != shape:
            raise XmrError(
                f"{path}: parameter {key} has shape {tuple(given[key].shape)}, expected "
                f"{tuple(shape)}; accepted: {ACCEPTED}"
            )
    return given


def _torchscript_output_layer(module: Any, path: Path) -> tuple[torch.Tensor | None, ...]:
    weights = [t for t in module.state_dict().values() if tuple(t.shape) == (NUM_CLASSES, POOL_DIM)]
    biases = [t for t in module.state_dict().values() if tuple(t.shape) == (NUM_CLASSES,)]
    if len(weights) > 1 or len(biases) > 1:
        raise XmrError(f"{path}: several 1008-class output layers; cannot tell which is the logits")
    return (weights[0] if weights else None), (biases[0] if biases else None)


def load_fid_inception(path: str | Path, device: str | torch.device | None = None) -> FIDInception:
    """Load the FID Inception from a local weight file (never downloads).

    Args:
        path: a torch-fidelity / pytorch-fid state dict (``.pth``) or clean-fid's TorchScript
            ``inception-2015-12-05.pt``; the format is detected from the content.
        device: "cpu", "cuda", ...; default: cuda when available.

    Raises:
        XmrError: the file is missing or is none of the accepted formats (the message lists them).
    """
    from xmr.models.base import resolve_device

    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such file"
        raise XmrError(
            f"{path}: {what}; give the Inception weights file (nothing is downloaded): {ACCEPTED}"
        )
    dev = resolve_device(device)
    sha = file_sha256(path)
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=dev).eval()
            trunk = module.layers
        except Exception as exc:  # a broken archive or a TorchScript model of something else
            raise XmrError(
                f"{path}: a TorchScript file but not clean-fid's Inception ({exc})"
            ) from None
        weight, bias = _torchscript_output_layer(module, path)
        return FIDInception(str(path), sha, "torchscript", dev, trunk, weight, bias)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a file that is not its own
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise XmrError(
            f"{path}: not a torch weights file ({reason}); accepted: {ACCEPTED}"
        ) from None
    net = FIDInceptionV3()
    net.load_state_dict(_check_state_dict(state, path), strict=False)
    net = net.to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return FIDInception(str(path), sha, "state_dict", dev, net, net.fc.weight, net.fc.bias)
