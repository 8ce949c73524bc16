"""Builds chassis-client, generating the chassis.v1 stubs from proto/.

The .proto file is the repository's (``../../proto/chassis/v1/chassis.proto``),
compiled by grpcio-tools into ``chassis_client/_proto`` of the build, so the
client can never drift from the server's API. Install from a checkout:
``pip install clients/python``.
"""

import pathlib
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = PROTO_ROOT / "chassis" / "v1" / "chassis.proto"


class BuildWithStubs(build_py):
    """build_py that first generates the gRPC stubs into the build tree."""

    def run(self):
        super().run()
        self.generate(pathlib.Path(self.build_lib) / "chassis_client" / "_proto")

    def generate(self, out: pathlib.Path):
        from grpc_tools import protoc

        if not PROTO.is_file():
            raise SystemExit(
                f"{PROTO} not found: chassis-client is built from a chassis checkout"
            )
        out.mkdir(parents=True, exist_ok=True)
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO),
            ]
        )
        if code != 0:
            raise SystemExit(f"grpc_tools.protoc failed on {PROTO} ({code})")
        # The stubs import each other by proto path (`chassis.v1`); make that
        # a path inside this package so nothing lands at the top level.
        for path in out.rglob("*.py"):
            text = path.read_text()
            text = re.sub(
                r"^from chassis\.v1 import", "from chassis_client._proto.chassis.v1 import",
                text,
                flags=re.M,
            )
            path.write_text(text)
        for pkg in [out, out / "chassis", out / "chassis" / "v1"]:
            (pkg / "__init__.py").touch()


setup(cmdclass={"build_py": BuildWithStubs})
