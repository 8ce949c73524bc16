"""Write chassis agents in Python.

An agent is a WebAssembly component that a chassis host runs in a sandbox:
it receives the request body as bytes and returns the response body, or
raises :class:`AgentError`, which the host reports as the ``guest-error``
outcome with its code and message. This package hides the component-model
bindings that ``componentize-py`` generates from ``guest-sdk/wit``::

    import chassis_agent as chassis

    class Agent(chassis.Agent):
        def run(self, input: bytes) -> bytes:
            name = input.decode() or "world"
            chassis.log.info("greeting", name=name)
            return f"Hello, {name}!".encode()

Build it (``componentize-py`` from PyPI; ``chassis new --lang python``
writes this command into ``build.sh``)::

    componentize-py -d wit -w agent componentize -p . -p sdk app -o app.wasm

Subclassing :class:`Agent` is all the wiring there is: the subclass's
module becomes the component's entry point. Filesystem, network and
environment are empty unless the run's policy grants them; an uncaught
exception ends the run as a ``trap`` with its traceback on stderr.
"""

import sys
from typing import Optional, Type

from componentize_py_types import Err
import wit_world
from wit_world.imports import host as _host
try:  # the `http-agent` world also imports wasi:http's `types`
    from wit_world.imports import chassis_agent_types as _types
except ImportError:
    from wit_world.imports import types as _types

__all__ = [
    "Agent",
    "AgentError",
    "SecretError",
    "SecretDenied",
    "SecretUnavailable",
    "log",
    "secret",
]


class AgentError(Exception):
    """An error the agent returns on purpose.

    The host reports it as the ``guest-error`` outcome and passes ``code``
    and ``message`` to the caller unchanged, so choose a stable ``code``
    (for example ``bad-input``).
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SecretError(Exception):
    """Why :func:`secret` handed nothing over."""


class SecretDenied(SecretError):
    """The run's policy grants no secret of this name."""


class SecretUnavailable(SecretError):
    """The secret is granted but its source could not be read now."""


def secret(name: str) -> str:
    """Returns the value of a secret the run's policy grants by ``name``.

    Raises :class:`SecretDenied` when the policy grants no such secret (the
    host records the denial in its audit log) and :class:`SecretUnavailable`
    when the source could not be read. The host redacts the value from
    everything the run prints or logs.
    """
    try:
        return _host.secret(name)
    except Err as err:
        reason = err.value
        if isinstance(reason, _host.SecretError_Denied):
            raise SecretDenied(reason.value) from None
        raise SecretUnavailable(reason.value) from None


class _Log:
    """Structured log lines attributed to the run by the host.

    ``log.info("fetched", url=url, status=200)``: keyword arguments become
    the record's fields (values turned into strings). Lines beyond the
    run's log budget are dropped and counted by the host.
    """

    def _emit(self, level: "_host.Level", message: str, fields: dict) -> None:
        _host.log(
            level,
            str(message),
            [_host.Field(key=str(k), value=str(v)) for k, v in fields.items()],
        )

    def trace(self, message: str, **fields) -> None:
        self._emit(_host.Level.TRACE, message, fields)

    def debug(self, message: str, **fields) -> None:
        self._emit(_host.Level.DEBUG, message, fields)

    def info(self, message: str, **fields) -> None:
        self._emit(_host.Level.INFO, message, fields)

    def warn(self, message: str, **fields) -> None:
        self._emit(_host.Level.WARN, message, fields)

    def error(self, message: str, **fields) -> None:
        self._emit(_host.Level.ERROR, message, fields)


log = _Log()
"""The run's structured log: ``log.info(message, **fields)`` and the other levels."""


_agent_class: Optional[Type["Agent"]] = None


class _Entry(wit_world.WitWorld):
    """The export componentize-py calls: hands `run` to the author's Agent."""

    def run(self, input: bytes) -> bytes:
        if _agent_class is None:
            raise RuntimeError("no chassis_agent.Agent subclass was defined")
        try:
            out = _agent_class().run(bytes(input))
        except AgentError as err:
            raise Err(_types.AgentError(code=err.code, message=err.message))
        if isinstance(out, str):
            return out.encode()
        return bytes(out)


class Agent:
    """Subclass this once and implement :meth:`run`.

    Defining the subclass registers it: the module it is defined in is the
    one ``componentize-py`` is pointed at, and it gains the ``WitWorld``
    entry point the toolchain looks for.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        global _agent_class
        if _agent_class is not None and _agent_class is not cls:
            raise TypeError(
                f"one Agent per component: {_agent_class.__qualname__} and {cls.__qualname__}"
            )
        _agent_class = cls
        setattr(sys.modules[cls.__module__], "WitWorld", _Entry)

    def run(self, input: bytes) -> bytes:
        """Handles one request: ``input`` is the request body; return the
        response body (``bytes``, or ``str`` sent as UTF-8)."""
        raise NotImplementedError
