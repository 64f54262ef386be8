"""ONNX Runtime for the text tower (``runtime="onnx"``, ``--runtime onnx``): text queries on a CPU.

Measured here (``benchmarks/bench_runtime.py``, RESULTS.md): ONNX Runtime runs CLIP's text tower
2.2x faster than eager PyTorch for one query and 3.0x at batch 32, with the same outputs (within
1e-5); the image tower gains 1.1x, below the 1.5x bar, so only the text tower is offered.

The tower (``get_text_features`` of a transformers CLIP, Chinese-CLIP, SigLIP or SigLIP2) is
exported with ``torch.onnx.export(dynamo=True)`` (the maintained torch.export-based exporter; the
TorchScript one is deprecated and traces shape-dependent branches as constants) with a dynamic
batch and sequence length, and the family's own inputs: CLIP ``input_ids`` + ``attention_mask``,
Chinese-CLIP also ``token_type_ids``, SigLIP/SigLIP2 ``input_ids`` only (no mask: how they were
trained). Other backends (open_clip, sentence-transformers) are refused with a clear error.

An export takes seconds for a tiny model and minutes for a base-sized one, so it is cached::

    $XMR_CACHE_DIR/onnx/                  (default ~/.cache/xmr/onnx)
        text-<family>-<key>.onnx          the exported text tower, written atomically
        text-<family>-<key>.json          what it was exported from (fingerprint, versions)

``key`` hashes the weights' fingerprint (:meth:`Encoder.fingerprint`), the family, the context
length, the inputs and the torch / onnx / onnxscript versions: the same weights loaded from
anywhere reuse one export, and any change makes a new one. The exported graph runs on
``onnxruntime.InferenceSession`` (CPU provider, torch's intra-op thread count); fp32 only.
Needs the ``onnx`` extra: ``pip install 'xmr[onnx]'``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmr.errors import XmrError
from xmr.io.atomic import atomic_write, atomic_write_json

CACHE_ENV = "XMR_CACHE_DIR"
EXPORT_FORMAT = 1  # bump when the exported graph's interface changes
_NEEDS = (
    "--runtime onnx needs the onnx extra: pip install 'xmr[onnx]' (onnxruntime, onnx, onnxscript)"
)


def onnx_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where exports are kept: ``cache_dir``, else ``$XMR_CACHE_DIR/onnx``, else
    ``~/.cache/xmr/onnx``."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "xmr") / "onnx"


def _versions() -> dict[str, str]:
    try:
        import onnx
        import onnxruntime
        import onnxscript
    except ImportError as exc:
        raise XmrError(f"{_NEEDS} ({exc})") from None
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _input_names(encoder: Any) -> tuple[str, ...]:
    from xmr.models.hf_clip import TEXT_INPUTS

    backend = getattr(encoder, "backend", type(encoder).__name__)
    family = getattr(encoder, "model_type", None)
    if backend != "hf" or family not in TEXT_INPUTS:
        raise XmrError(
            f"--runtime onnx exports the text tower of hf: models (CLIP, Chinese-CLIP, SigLIP, "
            f"SigLIP2); model {getattr(encoder, 'spec', '?')!r} ({backend} backend) runs eager "
            "only (use --runtime eager)"
        )
    return TEXT_INPUTS[family]


def export_key(encoder: Any, versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What an export depends on (hashed into its file name)."""
    versions = dict(versions or _versions())
    versions.pop("onnxruntime", None)  # runs the graph; does not shape it
    return {
        "format": EXPORT_FORMAT,
        "fingerprint": encoder.fingerprint(),
        "family": encoder.model_type,
        "context_length": int(encoder.context_length),
        "inputs": list(_input_names(encoder)),
        **versions,
    }


class _TextTower(torch.nn.Module):
    """``get_text_features`` with the family's token tensors as named inputs (for the export)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        from xmr.models.hf_clip import _features

        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        kwargs = {k: v for k, v in given.items() if v is not None}
        return _features(self.model.get_text_features(input_ids=input_ids, **kwargs))


def export_text_tower(encoder: Any, path: Path) -> None:
    """Export ``encoder``'s text tower to ``path`` (written atomically), dynamic batch and length."""
    import warnings

    names = _input_names(encoder)
    # Two texts of different lengths: torch.export specialises a dimension seen as 1.
    tokens = encoder.tokenize(["a photo of a white car parked at night", "a red bus"])
    example = {n: tokens[n] for n in names}
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("seq", min=1, max=max(2, int(encoder.context_length)))
    shapes = {n: {0: batch, 1: seq} for n in names}
    tower = _TextTower(encoder.model).eval()
    was_training = encoder.model.training
    encoder.model.eval()

    def write(tmp: Path) -> None:
        # The exporter's notes ("torchvision is not installed. Skipping ...") and deprecations.
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                tower,
                (),
                kwargs=example,
                f=str(tmp),
                input_names=list(names),
                output_names=["text_features"],
                dynamic_shapes=shapes,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        exporter_log.setLevel(level)

    try:
        atomic_write(path, write)
    except XmrError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; name the model
        raise XmrError(
            f"cannot export the text tower of {encoder.spec!r} to ONNX "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "use --runtime eager"
        ) from None
    finally:
        encoder.model.train(was_training)


class OnnxTextRuntime:
    """Runs an exported text tower: token tensors in, unnormalised float32 features out.

    Attributes:
        path: the ``.onnx`` file; ``exported``: whether this load exported it (False: cache hit).
    """

    def __init__(self, path: Path, names: tuple[str, ...], weights: list[torch.Tensor], exported):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.names, self.exported = path, names, bool(exported)
        self._weights = weights
        self._version = _weights_version(weights)

    def __call__(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if _weights_version(self._weights) != self._version:
            raise XmrError(
                "the model's weights changed after its text tower was exported to ONNX; "
                "load it again (create_encoder(..., runtime='onnx')) to export the new weights"
            )
        feeds = {
            n: np.ascontiguousarray(tokens[n].cpu().numpy(), dtype=np.int64) for n in self.names
        }
        return torch.from_numpy(self.session.run(None, feeds)[0])


def _stderr(message: str) -> None:
    print(f"xmr: {message}", file=sys.stderr)


def _weights_version(weights: list[torch.Tensor]) -> int:
    # In-place updates (an optimiser step, load_state_dict) bump a tensor's version counter.
    return sum(t._version for t in weights)


def enable_onnx_text(
    encoder: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    say: Callable[[str], None] | None = None,
) -> OnnxTextRuntime:
    """Run ``encoder.encode_texts`` on ONNX Runtime: the cached export of its text tower, made
    now when there is none. Training (``text_features``) stays eager. Returns the runtime (also
    set as ``encoder.text_runtime``). ``say`` hears that an export starts (default: stderr,
    since it can take minutes)."""
    names = _input_names(encoder)
    if encoder.device.type != "cpu":
        raise XmrError(
            f"--runtime onnx runs the text tower on the CPU, but the model is on {encoder.device}; "
            "use --device cpu, or --runtime eager on a GPU"
        )
    if encoder.precision != "fp32":
        raise XmrError(
            f"--runtime onnx runs in fp32, not {encoder.precision} (use --precision fp32)"
        )
    versions = _versions()
    key = export_key(encoder, versions)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    directory = onnx_cache_dir(cache_dir)
    path = directory / f"text-{encoder.model_type}-{digest}.onnx"
    meta = path.with_suffix(".json")
    exported = False
    if not path.is_file():
        (say or _stderr)(
            f"exporting the text tower of {encoder.spec} to ONNX, once (cached in {directory})"
        )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise XmrError(f"{directory}: cannot create the ONNX cache directory ({exc})") from None
        export_text_tower(encoder, path)
        atomic_write_json(meta, {**key, "spec": encoder.spec})
        exported = True
    weights = list(encoder.model.state_dict(keep_vars=True).values())
    try:
        runtime = OnnxTextRuntime(path, names, weights, exported)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache file: say which, and how to fix
        raise XmrError(
            f"{path}: cannot load the cached ONNX export ({type(exc).__name__}: {exc}); "
            "delete it to export again"
        ) from None
    encoder.text_runtime = runtime
    return runtime
