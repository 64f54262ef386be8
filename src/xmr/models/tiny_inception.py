"""Random-weight FID Inceptions in the file formats users have, for tests and offline trials.

The real weights cannot be downloaded here, so the loading code is exercised on random weights
with the real parameter names and shapes, saved as:

* ``state_dict``: ``torch.save`` of the parameter dict, as torch-fidelity's and pytorch-fid's
  ``*-2015-12-05-6726825d.pth`` files are;
* ``torchscript``: a scripted module with a ``layers`` submodule (299x299 input scaled to
  [-1, 1] -> (N, 2048, 1, 1) pool) and a 1008x2048 output layer, the parts of clean-fid's
  ``inception-2015-12-05.pt`` that clean-fid (and xmr) use. The real file's forward also
  resizes raw pixels itself; this one's forward does the same with xmr's TF 1.x resize.

Convolutions get He-normal weights and batch norms near-identity statistics, so activations keep
their scale through the 94 layers and the features of different images differ (a plain default
initialisation lets them fade to almost nothing).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from xmr.io.atomic import atomic_write
from xmr.models.inception import (
    NUM_CLASSES,
    POOL_DIM,
    FIDInceptionV3,
    resize_like_tensorflow1x,
)

FORMATS = ("state_dict", "torchscript")


def random_fid_inception(seed: int = 0) -> FIDInceptionV3:
    """A FIDInceptionV3 with seeded random weights (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FIDInceptionV3()
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.8, 1.2)
                nn.init.normal_(module.bias, 0.0, 0.1)
                nn.init.normal_(module.running_mean, 0.0, 0.1)
                nn.init.uniform_(module.running_var, 0.8, 1.2)
        nn.init.normal_(net.fc.weight, 0.0, 0.05)
        nn.init.normal_(net.fc.bias, 0.0, 0.05)
    return net.eval()


class _ScriptedInception(nn.Module):
    """The layout of clean-fid's TorchScript file: ``layers`` and an ``output`` layer."""

    def __init__(self, net: FIDInceptionV3) -> None:
        super().__init__()
        self.layers = net.trunk()
        self.output = nn.Linear(POOL_DIM, NUM_CLASSES)
        self.output.load_state_dict(net.fc.state_dict())

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = resize_like_tensorflow1x(img.to(torch.float32), 299)
        features = self.layers((x - 128) / 128).reshape(img.shape[0], 2048)
        if return_features:
            return features
        return torch.softmax(self.output(features), dim=1)


def save_fid_inception(net: FIDInceptionV3, path: str | Path, format: str = "state_dict") -> Path:
    """Write ``net`` as a weights file in ``format`` ("state_dict" or "torchscript")."""
    path = Path(path)
    if format == "state_dict":
        state = {k: v for k, v in net.state_dict().items() if "num_batches" not in k}
        atomic_write(path, lambda p: torch.save(state, p))
    elif format == "torchscript":
        with warnings.catch_warnings():  # torch 2.9+ calls TorchScript deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            scripted = torch.jit.script(_ScriptedInception(net).eval())
        atomic_write(path, lambda p: scripted.save(str(p)))
    else:
        raise ValueError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    return path
