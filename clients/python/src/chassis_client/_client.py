"""The client and its result types; see the package docs."""

from __future__ import annotations

import os
import pathlib
import tomllib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple, Union

import grpc

from ._proto.chassis.v1 import chassis_pb2 as pb
from ._proto.chassis.v1 import chassis_pb2_grpc as pb_grpc

#: Metadata key under which the host puts the stable error kind.
ERROR_KIND_KEY = "chassis-error-kind"

#: Bytes per RegisterModule chunk.
CHUNK = 1 << 20

_WORLDS = {pb.WORLD_AGENT: "agent", pb.WORLD_COMMAND: "command"}


class ChassisError(Exception):
    """A call the host refused or a run that failed.

    ``kind`` is the host's stable error kind (for example ``not-found``,
    ``invalid-module``, ``policy-denied``, ``out-of-fuel``), ``code`` the gRPC
    status code (``None`` for a run that failed inside a RunStream), and
    ``message`` the host's explanation.
    """

    def __init__(self, kind: str, message: str, code: Optional[grpc.StatusCode] = None):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.code = code

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "ChassisError":
        kind = None
        trailing = error.trailing_metadata() or ()
        for key, value in trailing:
            if key == ERROR_KIND_KEY:
                kind = value
        code = error.code()
        if kind is None:
            # Not an answer from chassis (e.g. the host is unreachable).
            kind = "unavailable" if code == grpc.StatusCode.UNAVAILABLE else code.name.lower()
        return cls(kind, error.details() or "", code)


@dataclass(frozen=True)
class Tls:
    """TLS settings: the CA that signed the server's certificate, and for
    mTLS the client's certificate and key (PEM files)."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    #: Expected name in the server's certificate, when it differs from the address.
    server_name: Optional[str] = None


@dataclass(frozen=True)
class Limits:
    """Limits tighter than the policy's; ``None`` keeps the policy's."""

    fuel: Optional[int] = None
    memory_mb: Optional[int] = None
    timeout_ms: Optional[int] = None
    cpu_percent: Optional[int] = None
    output_kb: Optional[int] = None

    def _proto(self) -> pb.Limits:
        return pb.Limits(
            fuel=self.fuel or 0,
            memory_mb=self.memory_mb or 0,
            timeout_ms=self.timeout_ms or 0,
            cpu_percent=self.cpu_percent or 0,
            output_kb=self.output_kb or 0,
        )


@dataclass(frozen=True)
class ModuleInfo:
    """A registered module: its sha256 id, world and size."""

    id: str
    world: str
    size_bytes: int

    @classmethod
    def _from(cls, m: pb.ModuleInfo) -> "ModuleInfo":
        return cls(m.id, _WORLDS.get(m.world, "unspecified"), m.size_bytes)


@dataclass(frozen=True)
class Usage:
    """What a run consumed."""

    fuel_consumed: int
    peak_memory_bytes: int
    wall_time_us: int
    cpu_time_us: int

    @classmethod
    def _from(cls, u: pb.Usage) -> "Usage":
        return cls(u.fuel_consumed, u.peak_memory_bytes, u.wall_time_us, u.cpu_time_us)


@dataclass(frozen=True)
class Denial:
    """A capability the run's policy refused."""

    kind: str
    target: str
    reason: str


@dataclass(frozen=True)
class LogRecord:
    """One structured log line from the guest."""

    at_ms: int
    level: str
    message: str
    fields: Dict[str, str]

    @classmethod
    def _from(cls, r: pb.LogRecord) -> "LogRecord":
        return cls(r.at_ms, r.level, r.message, dict(r.fields))


@dataclass(frozen=True)
class Result:
    """A run that succeeded."""

    run_id: str
    output: bytes
    usage: Usage
    stdout: bytes
    stderr: bytes
    logs: List[LogRecord] = field(default_factory=list)
    denials: List[Denial] = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """How a streamed run ended: ``kind`` is ``ok`` or an error kind."""

    kind: str
    message: str
    output: bytes
    usage: Usage
    denials: List[Denial]

    def raise_for_kind(self) -> "Outcome":
        """Returns self when the run succeeded, raises :class:`ChassisError` otherwise."""
        if self.kind != "ok":
            raise ChassisError(self.kind, self.message)
        return self


@dataclass(frozen=True)
class RunEvent:
    """One event of a streamed run: exactly one of the fields is set."""

    log: Optional[LogRecord] = None
    stdout: Optional[bytes] = None
    stderr: Optional[bytes] = None
    outcome: Optional[Outcome] = None


def _denials(items) -> List[Denial]:
    return [Denial(d.kind, d.target, d.reason) for d in items]


class Client:
    """A connection to one chassis host.

    ``addr`` is ``host:port``. Without ``tls`` the channel is plaintext (a
    loopback host); with it, TLS or mTLS. ``timeout`` is the default deadline
    of each call in seconds.
    """

    def __init__(
        self,
        addr: str = "127.0.0.1:50051",
        *,
        tls: Optional[Tls] = None,
        timeout: Optional[float] = None,
    ):
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if tls is None:
            self._channel = grpc.insecure_channel(addr, options=options)
        else:
            read = lambda p: pathlib.Path(p).read_bytes() if p else None  # noqa: E731
            creds = grpc.ssl_channel_credentials(
                root_certificates=read(tls.ca_file),
                private_key=read(tls.key_file),
                certificate_chain=read(tls.cert_file),
            )
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(addr, creds, options=options)
        self._stub = pb_grpc.ChassisStub(self._channel)
        self._timeout = timeout

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method, request, timeout):
        try:
            return method(request, timeout=timeout if timeout is not None else self._timeout)
        except grpc.RpcError as e:
            raise ChassisError.from_rpc(e) from None

    def _stream(self, method, request, timeout):
        try:
            for item in method(request, timeout=timeout if timeout is not None else self._timeout):
                yield item
        except grpc.RpcError as e:
            raise ChassisError.from_rpc(e) from None

    # Modules

    def register(self, module: Union[str, os.PathLike, bytes], *, timeout=None) -> ModuleInfo:
        """Registers a component (a path to a ``.wasm`` file, or its bytes)."""
        data = module if isinstance(module, bytes) else pathlib.Path(module).read_bytes()
        chunks = (pb.RegisterModuleChunk(data=data[i : i + CHUNK]) for i in range(0, max(len(data), 1), CHUNK))
        return ModuleInfo._from(self._call(self._stub.RegisterModule, chunks, timeout))

    def modules(self, *, timeout=None) -> List[ModuleInfo]:
        """The registered modules."""
        reply = self._call(self._stub.ListModules, pb.ListModulesRequest(), timeout)
        return [ModuleInfo._from(m) for m in reply.modules]

    def remove(self, module_id: str, *, timeout=None) -> None:
        """Removes a module and its compiled artifact."""
        self._call(self._stub.RemoveModule, pb.RemoveModuleRequest(id=module_id), timeout)

    def policies(self, *, timeout=None) -> List[Tuple[str, str]]:
        """The host's policies as (name, description)."""
        reply = self._call(self._stub.ListPolicies, pb.ListPoliciesRequest(), timeout)
        return [(p.name, p.description) for p in reply.policies]

    # Runs

    @staticmethod
    def _run_request(module_id, input, policy, limits) -> pb.RunRequest:
        if isinstance(input, str):
            input = input.encode()
        return pb.RunRequest(
            module_id=module_id,
            policy=policy or "",
            input=input,
            limits=(limits or Limits())._proto(),
        )

    def run(
        self,
        module_id: str,
        input: Union[bytes, str] = b"",
        *,
        policy: str = "",
        limits: Optional[Limits] = None,
        timeout: Optional[float] = None,
    ) -> Result:
        """Runs a module once and returns its result; a failed run raises
        :class:`ChassisError` with the run's error kind."""
        reply = self._call(
            self._stub.Run, self._run_request(module_id, input, policy, limits), timeout
        )
        return Result(
            run_id=reply.run_id,
            output=reply.output,
            usage=Usage._from(reply.usage),
            stdout=reply.stdout,
            stderr=reply.stderr,
            logs=[LogRecord._from(r) for r in reply.logs],
            denials=_denials(reply.denials),
        )

    def run_stream(
        self,
        module_id: str,
        input: Union[bytes, str] = b"",
        *,
        policy: str = "",
        limits: Optional[Limits] = None,
        timeout: Optional[float] = None,
    ) -> Iterator[RunEvent]:
        """Runs a module, yielding its logs and output as they happen; the
        last event is the :class:`Outcome` (check ``outcome.kind``, or call
        ``outcome.raise_for_kind()``)."""
        request = self._run_request(module_id, input, policy, limits)
        for event in self._stream(self._stub.RunStream, request, timeout):
            which = event.WhichOneof("event")
            if which == "log":
                yield RunEvent(log=LogRecord._from(event.log))
            elif which == "stdout":
                yield RunEvent(stdout=event.stdout)
            elif which == "stderr":
                yield RunEvent(stderr=event.stderr)
            elif which == "outcome":
                o = event.outcome
                yield RunEvent(
                    outcome=Outcome(
                        o.kind, o.message, o.output, Usage._from(o.usage), _denials(o.denials)
                    )
                )

    # Runbooks

    def submit_runbook(
        self,
        path: Union[str, os.PathLike],
        *,
        modules_dir: Union[str, os.PathLike, None] = None,
        runbook_id: str = "",
        timeout: Optional[float] = None,
    ) -> Tuple[str, int]:
        """Submits a runbook file; the ``.wasm`` files its steps name are read
        from ``modules_dir`` (default: the runbook's directory) and sent with
        it. Returns (runbook id, revision to watch from)."""
        path = pathlib.Path(path)
        text = path.read_text()
        base = pathlib.Path(modules_dir) if modules_dir is not None else path.parent
        modules = {}
        for step in tomllib.loads(text).get("steps", {}).values():
            ref = step.get("module", "")
            if ref and not ref.startswith("sha256:"):
                modules[ref] = (base / ref).read_bytes()
        reply = self._call(
            self._stub.SubmitRunbook,
            pb.SubmitRunbookRequest(
                runbook=text, file_name=str(path), modules=modules, id=runbook_id
            ),
            timeout,
        )
        return reply.runbook_id, reply.revision

    def runbook(self, runbook_id: str, *, timeout=None) -> pb.RunbookStatus:
        """A runbook's state and every step's (the ``chassis.v1`` message)."""
        return self._call(self._stub.GetRunbook, pb.GetRunbookRequest(runbook_id=runbook_id), timeout)

    def watch_runbook(
        self, runbook_id: str, *, from_revision: int = 0, timeout: Optional[float] = None
    ) -> Iterator[pb.RunbookEvent]:
        """Step transitions as they happen, until the runbook closes; from
        revision 0 a snapshot of every step comes first."""
        request = pb.WatchRunbookRequest(runbook_id=runbook_id, from_revision=from_revision)
        yield from self._stream(self._stub.WatchRunbook, request, timeout)
