"""The ``api`` captioner: any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, Ollama,
LM Studio, DashScope's compatible mode, OpenAI, ``transformers serve``).

Each request is one user message: the prompt as text, then the image as a ``data:`` URL of its
*original* bytes and MIME type (re-encoded only when an API cannot take it: see
:func:`image_data_url`), with the system text first when one is given. Requests run on the
official ``openai`` async client, at most ``concurrency`` at a time, each with its own timeout.

Retries are ours, not the client's (``max_retries=0``), so that every attempt is counted and
the last failure is recorded: 429, 5xx, timeouts and dropped connections are retried up to
``retries`` times with exponential backoff and full jitter, waiting what a ``Retry-After`` /
``retry-after-ms`` header asks instead when the server sends one. Other 4xx answers (a bad
request, a wrong key) are not retried. An empty answer or a refusal (``message.refusal``,
``finish_reason="content_filter"``) is a failure, not retried: the same question gets the same
answer at temperature 0, and a re-run of the job asks again.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import os
import random
import time
from collections.abc import Sequence
from typing import Any

from xmr.data.images import MAX_IMAGE_PIXELS
from xmr.errors import DataError, XmrError
from xmr.models.captioners import (
    CaptionRequest,
    CaptionResult,
    GenerationParams,
    OnResult,
    register_captioner,
)

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Formats (and modes) the vision chat APIs take as they are (OpenAI: PNG, JPEG, WEBP, GIF).
_PASS_THROUGH = {
    "JPEG": ("image/jpeg", {"L", "RGB"}),
    "PNG": ("image/png", {"1", "L", "LA", "P", "RGB", "RGBA"}),
    "WEBP": ("image/webp", {"RGB", "RGBA"}),
    "GIF": ("image/gif", {"P", "L"}),
}
MAX_BACKOFF_S = 30.0
MAX_RETRY_AFTER_S = 300.0


def image_data_url(data: bytes, *, source: str = "<bytes>") -> tuple[str, str, bool]:
    """``(data URL, MIME type, re-encoded)`` for encoded image bytes.

    JPEG / PNG / WEBP / GIF in a mode those formats are meant for go as they are, byte for
    byte. Anything else (BMP, TIFF, a CMYK JPEG, a 16-bit PNG) is converted safely and sent as
    a lossless PNG: CMYK becomes RGB, 16-bit greyscale is scaled to 8 bits (not clipped), an
    alpha channel is kept.
    """
    import base64
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt, mode = img.format, img.mode
            if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:
                raise DataError(f"image is {img.size[0]}x{img.size[1]} pixels", file=source)
            passing = _PASS_THROUGH.get(fmt or "")
            if passing and mode in passing[1]:
                mime, payload, reencoded = passing[0], data, False
            else:
                mime, payload, reencoded = "image/png", _to_png(img), True
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"undecodable image ({exc})", file=source) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"refused as a decompression bomb ({exc})", file=source) from None
    encoded = base64.b64encode(payload).decode("ascii")
    return f"data:{mime};base64,{encoded}", mime, reencoded


def _to_png(img) -> bytes:
    from PIL import Image

    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) greyscale: scale the full range to 8 bits.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    elif img.mode not in ("1", "L", "RGB"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, P without transparency
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a ``retry-after-ms`` or ``Retry-After`` header (seconds or an HTTP date) asks."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(float(value) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def backoff_seconds(attempt: int, base: float) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(MAX_BACKOFF_S, base * (2**attempt)))


class ApiCaptioner:
    """Chat-completions captioner; see the module docs for the request and retry rules."""

    def __init__(
        self,
        model_name: str,
        *,
        api_base: str,
        params: GenerationParams,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        concurrency: int = 8,
        retries: int = 5,
        timeout: float = 60.0,
        backoff_base: float = 1.0,
    ) -> None:
        if not api_base:
            raise XmrError("the api captioner needs an API base URL (api_base=)")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise XmrError("concurrency must be >= 1, retries >= 0 and timeout > 0")
        self.model = model_name
        self.params = params
        self.api_base = api_base
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.retries = retries
        self.timeout = timeout
        self.backoff_base = backoff_base

    def _api_key(self) -> str:
        # Local servers (vLLM, Ollama, transformers serve) want no key, but the client needs a
        # string; the key itself only ever comes from the environment.
        return os.environ.get(self.api_key_env) or "EMPTY"

    def _messages(self, request: CaptionRequest, image_url: str | None) -> list[dict]:
        messages: list[dict] = []
        if self.params.system:
            messages.append({"role": "system", "content": self.params.system})
        if image_url is None:
            messages.append({"role": "user", "content": request.prompt})
        else:
            content = [
                {"type": "text", "text": request.prompt},
                {"type": "image_url", "image_url": {"url": image_url}},
            ]
            messages.append({"role": "user", "content": content})
        return messages

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": self.params.temperature}
        if self.params.max_tokens is not None:
            options["max_tokens"] = self.params.max_tokens
        if self.params.seed is not None:
            options["seed"] = self.params.seed
        return options

    def run(self, requests: Sequence[CaptionRequest], on_result: OnResult) -> None:
        """Answer every request, ``concurrency`` at a time; ``on_result`` gets each answer."""
        if requests:
            asyncio.run(self._run(list(requests), on_result))

    async def _run(self, requests: list[CaptionRequest], on_result: OnResult) -> None:
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise XmrError(
                "the api captioner needs the openai client: pip install 'xmr[caption]'"
            ) from None
        client = AsyncOpenAI(
            base_url=self.api_base,
            api_key=self._api_key(),
            max_retries=0,
            timeout=self.timeout,
        )
        pending = iter(requests)

        async def worker() -> None:
            # Workers pull lazily, so images are read only when a slot is free.
            for request in pending:
                on_result(await self._answer(client, request))

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(requests)))))
        finally:
            await client.close()

    async def _answer(self, client, request: CaptionRequest) -> CaptionResult:
        import openai

        started = time.monotonic()
        image_url = None
        if request.image is not None:
            try:
                raw = await asyncio.to_thread(request.image.read_bytes)
                image_url = (
                    await asyncio.to_thread(image_data_url, raw, source=request.image.describe())
                )[0]
            except DataError as exc:
                return CaptionResult(request.key, error=f"image: {exc}", attempts=0)
        messages = self._messages(request, image_url)
        error = "no attempt"
        attempt = 0
        for attempt in range(self.retries + 1):
            wait = None
            try:
                completion = await client.chat.completions.create(
                    model=self.model, messages=messages, timeout=self.timeout, **self._options()
                )
            except openai.APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {_short(exc.message)}"
                if not (exc.status_code == 429 or exc.status_code >= 500):
                    break
                wait = retry_after_seconds(exc.response.headers)
            except openai.APITimeoutError:
                error = f"timed out after {self.timeout:g} s"
            except openai.APIConnectionError as exc:
                error = f"connection failed ({_short(str(exc.__cause__ or exc))})"
            else:
                return self._judge(request, completion, started, attempt + 1)
            if attempt < self.retries:
                if wait is None:
                    wait = backoff_seconds(attempt, self.backoff_base)
                await asyncio.sleep(min(wait, MAX_RETRY_AFTER_S))
        tries = attempt + 1
        return CaptionResult(
            request.key,
            error=f"{error} (after {tries} attempt{'s' if tries > 1 else ''})",
            latency_s=time.monotonic() - started,
            attempts=tries,
        )

    def _judge(self, request, completion, started: float, attempts: int) -> CaptionResult:
        usage = {}
        if getattr(completion, "usage", None) is not None:
            usage = {
                "prompt_tokens": int(completion.usage.prompt_tokens or 0),
                "completion_tokens": int(completion.usage.completion_tokens or 0),
            }
        result = CaptionResult(
            request.key,
            usage=usage,
            latency_s=time.monotonic() - started,
            attempts=attempts,
        )
        if not completion.choices:
            result.error = "the answer has no choices"
            return result
        choice = completion.choices[0]
        message = choice.message
        text = (message.content or "").strip()
        if getattr(message, "refusal", None):
            result.error = f"refused: {_short(message.refusal)}"
        elif choice.finish_reason == "content_filter":
            result.error = "refused: finish_reason content_filter"
        elif not text:
            result.error = "empty answer"
        else:
            result.text = text
        return result


def _short(text: str | None, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@register_captioner("api")
def _create_api(target: str, *, params: GenerationParams, **options: Any) -> ApiCaptioner:
    return ApiCaptioner(target, params=params, **options)
