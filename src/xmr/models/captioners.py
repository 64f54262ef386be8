"""One registry of captioners: models that answer a prompt about an image (or about a text).

A captioner is named by a spec string:
    ``api:<model name>``        an OpenAI-compatible chat-completions endpoint (``api_base=``),
                                through the official ``openai`` async client (extra
                                ``xmr[caption]``)
    ``hf:<hub id or local dir>`` a local transformers BLIP / BLIP-2 captioning model or any
                                image-text-to-text model, batched, on GPU when present
    ``<local dir>``              the same as ``hf:<local dir>``
    ``<backend>:<target>``       any backend added with ``register_captioner``

Every backend takes the same :class:`CaptionRequest` list and reports one
:class:`CaptionResult` per request through a callback *as it finishes*, so the caller can
persist each answer at once (a killed run loses only what was in flight). An empty or refused
answer is a failure (``error`` set, ``text`` None), never an empty caption.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from xmr.data.images import ImageRef
from xmr.errors import XmrError
from xmr.registry import Registry

# evalscope's prompt (seed 003's conversion), so a default run asks what evalscope asks.
DEFAULT_CAPTION_PROMPT = (
    "Please describe this image in general. Directly provide the description, "
    "do not include prefix like 'This image depicts'"
)


@dataclass(frozen=True)
class GenerationParams:
    """What, besides the model and the prompt, decides an answer; part of every cache key.

    ``temperature`` defaults to 0 as evalscope sends it; ``max_tokens`` None lets the server
    decide (evalscope sets none); ``seed`` None sends none.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    seed: int | None = None
    system: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CaptionRequest:
    """One question: ``prompt`` (the user text) about ``image`` (None for a text-only request).

    ``key`` is the caller's handle; the result carries it back.
    """

    key: str
    prompt: str
    image: ImageRef | None = None


@dataclass
class CaptionResult:
    """One answer. Exactly one of ``text`` (a non-empty answer) and ``error`` is set."""

    key: str
    text: str | None = None
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    latency_s: float = 0.0
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None


OnResult = Callable[[CaptionResult], None]


class Captioner(Protocol):
    """What every backend provides. ``model`` names the model for the cache key."""

    model: str
    params: GenerationParams

    def run(self, requests: Sequence[CaptionRequest], on_result: OnResult) -> None:
        """Answer every request, calling ``on_result`` once per request as each finishes."""
        ...


CaptionerFactory = Callable[..., Captioner]
CAPTIONERS: Registry[CaptionerFactory] = Registry("captioner backend")

_BUILTIN_MODULES = {"api": "xmr.models.caption_api", "hf": "xmr.models.caption_hf"}


def register_captioner(name: str) -> Callable[[CaptionerFactory], CaptionerFactory]:
    """Decorator: register ``factory(target, *, params, **options) -> Captioner`` for specs
    ``name:<target>``."""
    return CAPTIONERS.register(name)


def _load_builtins() -> None:
    import importlib

    for module in _BUILTIN_MODULES.values():
        importlib.import_module(module)  # light: each imports its heavy library when used


def list_captioners() -> list[str]:
    """The registered captioner backends."""
    _load_builtins()
    return CAPTIONERS.names()


def parse_captioner_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """Split a spec into (backend, target); a bare local directory is ``hf``."""
    _load_builtins()
    text = os.fspath(spec)
    prefix, sep, rest = text.partition(":")
    if sep and prefix in CAPTIONERS:
        if not rest:
            raise XmrError(f"captioner spec '{text}' names no model after '{prefix}:'")
        return prefix, rest
    if os.path.isdir(text):
        return "hf", text
    raise XmrError(
        f"unknown captioner spec '{text}': use api:<model name> (with an api_base), "
        f"hf:<hub id or local dir>, or a local model directory "
        f"(backends: {', '.join(CAPTIONERS.names())})"
    )


def create_captioner(
    spec: str | os.PathLike, *, params: GenerationParams | None = None, **options: Any
) -> Captioner:
    """Build the captioner a spec names.

    Args:
        spec: ``api:<model>``, ``hf:<id or dir>``, a local directory, or ``<backend>:<target>``.
        params: generation parameters (max tokens, temperature, seed, system text).
        **options: backend options: for ``api`` ``api_base``, ``api_key_env``,
            ``concurrency``, ``retries``, ``timeout``; for ``hf`` ``device``, ``batch_size``.
    """
    backend, target = parse_captioner_spec(spec)
    return CAPTIONERS.get(backend)(target, params=params or GenerationParams(), **options)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_key(content_sha256: str, model: str, prompt_sha256: str, params: GenerationParams) -> str:
    """The identity of one answer: the content (image or text) sha256, the model, the prompt
    sha256 and the parameters. Another model, prompt or parameter caches separately."""
    blob = json.dumps(
        [content_sha256, model, prompt_sha256, params.to_dict()],
        sort_keys=True,
        ensure_ascii=False,
    )
    return sha256_text(blob)
