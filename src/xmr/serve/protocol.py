"""uvicorn's HTTP protocol, answering the requests it cannot parse with the service's JSON error.

uvicorn refuses a request it cannot parse before the application sees it (a URL or headers over
the parser's limit, e.g. a 100 kB query string; a malformed request line) with a plain-text
``Invalid HTTP request received.``. Every other error of the service is a JSON body, and clients
parse that; so the protocol class uvicorn would pick is subclassed here to send the same 400 as
JSON (``code: bad_request``). Pass it as ``uvicorn.run(app, http=json_error_protocol())``.
"""

from __future__ import annotations

import json

from xmr.serve.limits import ApiError

MESSAGE = (
    "the request cannot be read: its URL or headers are too long (a search text belongs in a "
    "POST body, and is at most max_query_chars long) or it is not valid HTTP"
)


def json_error_body() -> bytes:
    return json.dumps(ApiError(400, "bad_request", MESSAGE).body()).encode("utf-8")


def json_error_protocol(http: str = "auto") -> type:
    """The protocol class uvicorn uses for ``http`` (auto: httptools when installed, else
    h11), with its 400 for unparseable requests sent as JSON."""
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
        except ImportError:
            if http == "httptools":
                raise
            from uvicorn.protocols.http.h11_impl import H11Protocol as base
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return _JSON_PROTOCOLS.setdefault(base, type(f"Json{base.__name__}", (base,), _METHODS))


def _send_400_response(self, msg: str) -> None:
    body = json_error_body()
    head = [b"HTTP/1.1 400 Bad Request\r\n"]
    for name, value in self.server_state.default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    self.transport.write(b"".join(head) + body)
    self.transport.close()


_METHODS = {"send_400_response": _send_400_response, "__module__": __name__}
_JSON_PROTOCOLS: dict[type, type] = {}
