"""Hostile, in Python: the Rust hostile corpus's attacks from one agent.

The input names the attack (like `modules/lib/probe`):

- `spin`: loops forever (must end as `out-of-fuel` or `deadline-exceeded`);
- `hoard`: keeps every MiB it allocates (must end as `memory-limit`);
- `read PATH`, `write PATH TEXT`, `list PATH`: filesystem access outside
  the preopens (must fail; the I/O error becomes the `guest-error` code, as
  in `probe`);
- `secret NAME`: asks for a secret (an ungranted one is `denied`);
- `leak NAME`: prints a granted secret to stdout and stderr, logs it and
  returns it (every copy must come out redacted);
- `get URL`: an HTTP request (off the allowlist it is `HttpRequestDenied`);
- `sleep MS`: holds its sandbox that long without using a thread (the
  density benchmark's sleeping agent).
"""

import errno
import os
import sys
import time

import chassis_agent as chassis
from chassis_agent import http


# WASI's "not capable" (a path outside every preopen, a write to a
# read-only one); Python has no exception class of its own for it.
_ENOTCAPABLE = getattr(errno, "ENOTCAPABLE", 76)


def _io(err: OSError) -> chassis.AgentError:
    """The I/O error as the code Rust's `probe` reports (io::ErrorKind)."""
    if isinstance(err, PermissionError) or err.errno in (errno.EACCES, errno.EPERM, _ENOTCAPABLE):
        code = "PermissionDenied"
    elif isinstance(err, FileNotFoundError):
        code = "NotFound"
    else:
        code = errno.errorcode.get(err.errno or 0, "Other")
    return chassis.AgentError(code, str(err))


class Agent(chassis.Agent):
    def run(self, input: bytes) -> bytes:
        op, _, arg = input.decode().strip().partition(" ")
        if op == "spin":
            n = 0
            while True:
                n += 1
        if op == "sleep":
            time.sleep(int(arg) / 1000)
            return b"slept"
        if op == "env":
            return "\n".join(sorted(f"{k}={v}" for k, v in os.environ.items())).encode()
        if op == "hoard":
            kept = []
            while True:
                kept.append(bytearray(1 << 20))
        if op == "read":
            try:
                with open(arg, "rb") as f:
                    return f.read()
            except OSError as err:
                raise _io(err)
        if op == "write":
            path, _, text = arg.partition(" ")
            try:
                with open(path, "w") as f:
                    f.write(text)
                return b"written"
            except OSError as err:
                raise _io(err)
        if op == "list":
            try:
                return "\n".join(sorted(os.listdir(arg))).encode()
            except OSError as err:
                raise _io(err)
        if op == "secret":
            try:
                return chassis.secret(arg).encode()
            except chassis.SecretDenied as err:
                raise chassis.AgentError("denied", str(err))
            except chassis.SecretUnavailable as err:
                raise chassis.AgentError("unavailable", str(err))
        if op == "leak":
            value = chassis.secret(arg)
            print(f"stdout has {value}")
            print(f"stderr has {value}", file=sys.stderr)
            chassis.log.info(f"the log has {value}", value=value)
            return f"the value is {value}".encode()
        if op == "get":
            try:
                reply = http.get(arg)
            except http.HttpError as err:
                raise chassis.AgentError(err.code, err.detail)
            return reply.body
        raise chassis.AgentError("InvalidInput", f"unknown op `{op}`")
