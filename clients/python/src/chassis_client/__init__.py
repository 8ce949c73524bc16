"""A typed Python client for a chassis sandbox host (the ``chassis.v1`` API).

A coordinator's five lines::

    from chassis_client import Client

    with Client("127.0.0.1:50051") as chassis:
        module = chassis.register("hello.wasm")
        result = chassis.run(module.id, b"world", policy="reporter", timeout=5)
        print(result.output.decode())

Every failure of a call is a :class:`ChassisError` carrying the gRPC code and
the host's stable error kind (``out-of-fuel``, ``policy-denied``, ...), the
same kinds ``chassis`` prints and uses for its exit codes.
"""

from ._client import (
    ChassisError,
    Client,
    Denial,
    Limits,
    LogRecord,
    ModuleInfo,
    Outcome,
    Result,
    RunEvent,
    Tls,
    Usage,
)

__all__ = [
    "ChassisError",
    "Client",
    "Denial",
    "Limits",
    "LogRecord",
    "ModuleInfo",
    "Outcome",
    "Result",
    "RunEvent",
    "Tls",
    "Usage",
]
