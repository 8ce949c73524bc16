"""Outgoing HTTP for Python agents, through ``wasi:http``.

Agents that import this module are built for the ``http-agent`` world
(``componentize-py -d wit -w http-agent ...``). Requests go out through the
host, which sends only those whose host and port the run's policy allows
(``[network] allow``); any other is refused before a byte leaves, raised
here as :class:`HttpError` with the host's error code (for example
``HttpRequestDenied``), and recorded as a denial::

    from chassis_agent import http

    reply = http.get("http://api.internal:8080/status")
    reply.status, reply.body
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_http_types as _t
from wit_world.imports.streams import StreamError_Closed

__all__ = ["HttpError", "Response", "get", "request"]

# At most this many response bytes are read; a larger body is an error
# rather than memory the agent did not plan for.
MAX_BODY = 16 * 1024 * 1024
_CHUNK = 64 * 1024


class HttpError(Exception):
    """A request that did not produce a response: ``code`` is the
    ``wasi:http`` error-code case (``HttpRequestDenied``,
    ``ConnectionRefused``, ``DnsError``, ...) or ``InvalidUrl``."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


@dataclass
class Response:
    """A response: its status, headers (name, value) and whole body."""

    status: int
    headers: List[Tuple[str, bytes]] = field(default_factory=list)
    body: bytes = b""

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()


def _error_code(err) -> HttpError:
    name = type(err).__name__
    if name.startswith("ErrorCode_"):
        name = name[len("ErrorCode_") :]
    code = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    value = getattr(err, "value", None)
    return HttpError(code, "" if value is None else str(value))


def _method(name: str):
    simple = {
        "GET": _t.Method_Get,
        "HEAD": _t.Method_Head,
        "POST": _t.Method_Post,
        "PUT": _t.Method_Put,
        "DELETE": _t.Method_Delete,
        "PATCH": _t.Method_Patch,
        "OPTIONS": _t.Method_Options,
    }
    upper = name.upper()
    return simple[upper]() if upper in simple else _t.Method_Other(name)


def request(
    method: str,
    url: str,
    body: Optional[bytes] = None,
    headers: Optional[Dict[str, str]] = None,
) -> Response:
    """Sends one request and waits for the whole response."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HttpError("InvalidUrl", url)
    fields = _t.Fields.from_list(
        [(k, v.encode()) for k, v in (headers or {}).items()]
    )
    req = _t.OutgoingRequest(fields)
    req.set_method(_method(method))
    req.set_scheme(_t.Scheme_Https() if parts.scheme == "https" else _t.Scheme_Http())
    req.set_authority(parts.netloc)
    path = parts.path or "/"
    req.set_path_with_query(path + ("?" + parts.query if parts.query else ""))
    outgoing = req.body()
    try:
        future = outgoing_handler.handle(req, None)
    except Err as e:
        raise _error_code(e.value) from None
    if body:
        stream = outgoing.write()
        for start in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[start : start + 4096])
        stream.__exit__(None, None, None)
    _t.OutgoingBody.finish(outgoing, None)
    while True:
        answer = future.get()
        if answer is not None:
            break
        future.subscribe().block()
    if isinstance(answer, Err):
        raise HttpError("ResponseAlreadyTaken")
    inner = answer.value
    if isinstance(inner, Err):
        raise _error_code(inner.value) from None
    response = inner.value
    status = response.status()
    headers_out = list(response.headers().entries())
    incoming = response.consume()
    stream = incoming.stream()
    chunks = []
    total = 0
    while True:
        try:
            chunk = stream.blocking_read(_CHUNK)
        except Err as e:
            if isinstance(e.value, StreamError_Closed):
                break
            raise HttpError("ConnectionTerminated", str(e.value)) from None
        total += len(chunk)
        if total > MAX_BODY:
            raise HttpError("HttpResponseBodySize", f"more than {MAX_BODY} bytes")
        chunks.append(chunk)
    stream.__exit__(None, None, None)
    _t.IncomingBody.finish(incoming)
    return Response(status=status, headers=headers_out, body=b"".join(chunks))


def get(url: str, headers: Optional[Dict[str, str]] = None) -> Response:
    """``request("GET", url)``."""
    return request("GET", url, headers=headers)
