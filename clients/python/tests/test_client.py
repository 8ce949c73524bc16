"""The Python client against a real `chassis serve`, as a coordinator uses it."""

import json
import textwrap
import urllib.request

import grpc
import pytest

from chassis_client import ChassisError, Client, Limits


@pytest.fixture()
def client(server):
    with Client(server, timeout=60) as c:
        yield c


def test_register_and_run_return_typed_results(client, guests):
    module = client.register(guests / "hello.wasm")
    assert len(module.id) == 64 and module.world == "agent"
    assert module.id in [m.id for m in client.modules()]
    result = client.run(module.id, "python")
    assert result.output == b"Hello, python!"
    assert result.usage.fuel_consumed > 0
    assert result.logs[0].message == "greeting"
    assert result.logs[0].fields == {"name": "python"}


def test_a_command_gets_its_input_on_stdin(client, guests):
    module = client.register((guests / "wordcount.wasm").read_bytes())
    assert module.world == "command"
    assert client.run(module.id, b"one two three\n").output.split()[:2] == [b"1", b"3"]


def test_run_stream_yields_events_then_the_outcome(client, guests):
    module = client.register(guests / "hello.wasm")
    events = list(client.run_stream(module.id, "stream"))
    assert any(e.log and e.log.message == "greeting" for e in events)
    outcome = events[-1].outcome
    assert outcome is not None
    assert outcome.raise_for_kind().output == b"Hello, stream!"


def test_a_failed_run_raises_with_the_hosts_error_kind(client, guests):
    spin = client.register(guests / "spin.wasm")
    with pytest.raises(ChassisError) as e:
        client.run(spin.id, limits=Limits(fuel=1_000_000))
    assert e.value.kind == "out-of-fuel"
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    events = list(client.run_stream(spin.id, limits=Limits(fuel=1_000_000)))
    assert events[-1].outcome.kind == "out-of-fuel"
    with pytest.raises(ChassisError) as e:
        events[-1].outcome.raise_for_kind()
    assert e.value.kind == "out-of-fuel"


def test_bad_requests_raise_typed_errors_and_the_host_keeps_serving(client, guests):
    with pytest.raises(ChassisError) as e:
        client.run("0" * 64, "x")
    assert (e.value.kind, e.value.code) == ("not-found", grpc.StatusCode.NOT_FOUND)
    hello = client.register(guests / "hello.wasm")
    with pytest.raises(ChassisError) as e:
        client.run(hello.id, "x", policy="no-such-policy")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(ChassisError) as e:
        client.register(b"not wasm at all")
    assert (e.value.kind, e.value.code) == ("invalid-module", grpc.StatusCode.INVALID_ARGUMENT)
    assert client.run(hello.id, "still").output == b"Hello, still!"


def test_an_unreachable_host_is_unavailable():
    with Client("127.0.0.1:9", timeout=5) as c:
        with pytest.raises(ChassisError) as e:
            c.modules()
    assert e.value.kind == "unavailable"


def test_a_runbook_is_submitted_watched_and_read(client, guests, tmp_path):
    runbook = tmp_path / "py.toml"
    runbook.write_text(
        textwrap.dedent(
            """\
            name = "py-digest"
            [steps.collect]
            module = "echo.wasm"
            input = "alpha beta gamma"
            [steps.count]
            module = "wordcount.wasm"
            depends_on = ["collect"]
            input = "{{collect}}"
            """
        )
    )
    runbook_id, revision = client.submit_runbook(runbook, modules_dir=guests)
    assert runbook_id.startswith("py-digest") and revision > 0
    events = list(client.watch_runbook(runbook_id))
    assert events, "the watch ends when the runbook closes"
    status = client.runbook(runbook_id)
    assert status.closed
    steps = {s.name: s for s in status.steps}
    assert steps["collect"].output == b"alpha beta gamma"
    assert steps["count"].output.split()[1] == b"3"


def test_reflection_v1alpha_answers_pythons_standard_client(server):
    """grpcio-reflection's client speaks v1alpha only (the first thing an
    outside coordinator tried, and it failed with UNIMPLEMENTED)."""
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "chassis.v1.Chassis" in services
    assert "grpc.health.v1.Health" in services


def test_health_on_the_metrics_port_answers_json_to_a_plain_http_client(metrics_url):
    """What `curl http://host:9092/health` and a load balancer see."""
    with urllib.request.urlopen(f"{metrics_url}/health", timeout=10) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"] == "application/json"
        health = json.load(reply)
    assert health["status"] == "healthy"
    assert health["claim_store"] == "connected"
    assert health["audit"] == "healthy"
    assert health["secrets"] == "none"
    assert health["version"]
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as reply:
        assert b"if_chassis_sandbox_count" in reply.read()
