"""A small OpenAI-compatible chat-completions server on loopback, for the caption tests and the
benchmark. It is real HTTP (stdlib ``ThreadingHTTPServer``, one thread per connection) and its
answers come from a tiny local captioner: the image's mean colour, named, and its size, read from
the decoded ``data:`` URL (so a caption proves the bytes arrived intact). Text-only requests get
the last line of the prompt (the text to translate) back as it is.

Behaviour per content (image sha256 or text): ``plan[sha]`` is a list of outcomes consumed one
per request, then "ok": ``"429"`` (with ``Retry-After``), ``"500"``, ``"slow"`` (answers after
``slow_s``), ``"refuse"``, ``"empty"``, ``"400"``. ``latency_s`` delays every answer. Every request is
recorded (arrival time, sha256, MIME type, the JSON body).

Run standalone: ``python tests/caption_server.py --port 8011 --latency 0.1``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 220),
    "yellow": (230, 220, 30),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
    "grey": (128, 128, 128),
}


def describe_image(data: bytes) -> str:
    """The tiny captioner: ``"a <colour> picture, W by H pixels"``."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    size = img.size
    import numpy as np

    mean = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(axis=0)
    name = min(
        COLOURS, key=lambda n: sum((a - b) ** 2 for a, b in zip(COLOURS[n], mean, strict=True))
    )
    return f"a {name} picture, {size[0]} by {size[1]} pixels"


class CaptionServer:
    """Start with ``start()`` (a background thread), stop with ``stop()``; ``base_url`` is the
    ``.../v1`` address for the client."""

    def __init__(
        self, *, latency_s: float = 0.0, slow_s: float = 5.0, retry_after: str = "0", port: int = 0
    ):
        self.latency_s = latency_s
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.plan: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def start(self) -> CaptionServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def shas(self) -> list[str]:
        with self.lock:
            return [r["sha256"] for r in self.requests]

    def _outcome(self, sha: str) -> str:
        with self.lock:
            queue = self.plan.get(sha)
            return queue.pop(0) if queue else "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(raw)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": "not found"}})
                    return
                user = body["messages"][-1]["content"]
                image, mime, prompt = None, None, user
                if isinstance(user, list):
                    prompt = next(p["text"] for p in user if p["type"] == "text")
                    url = next(p["image_url"]["url"] for p in user if p["type"] == "image_url")
                    head, _, payload = url.partition(",")
                    mime = head.removeprefix("data:").removesuffix(";base64")
                    image = base64.b64decode(payload)
                content = image if image is not None else prompt.encode()
                sha = hashlib.sha256(content).hexdigest()
                with server.lock:
                    server.requests.append(
                        {
                            "time": time.monotonic(),
                            "sha256": sha,
                            "mime": mime,
                            "body": body,
                            "auth": self.headers.get("Authorization"),
                        }
                    )
                outcome = server._outcome(sha)
                time.sleep(server.latency_s)
                if outcome == "429":
                    self._send(
                        429,
                        {"error": {"message": "rate limited"}},
                        {"Retry-After": server.retry_after},
                    )
                    return
                if outcome in ("500", "400"):
                    self._send(int(outcome), {"error": {"message": f"boom {outcome}"}})
                    return
                if outcome == "slow":
                    time.sleep(server.slow_s)
                text = (
                    describe_image(image)
                    if image is not None
                    else prompt.split(chr(10))[-1]  # "translate": the text as it is
                )
                message = {"role": "assistant", "content": text, "refusal": None}
                finish = "stop"
                if outcome == "refuse":
                    message = {"role": "assistant", "content": None, "refusal": "I can't help."}
                elif outcome == "empty":
                    message["content"] = "   "
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {
                            "prompt_tokens": 11,
                            "completion_tokens": len(text.split()),
                            "total_tokens": 11 + len(text.split()),
                        },
                    },
                )

        return Handler


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    srv = CaptionServer(latency_s=args.latency, port=args.port)
    srv.start()
    print(srv.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()
