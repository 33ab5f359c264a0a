#!/usr/bin/env python3
"""A generated Python client against a running mesh: the smoke test that the
protos in proto/ serve a language other than Rust.

It generates message and gRPC stubs with grpcio-tools into a temporary
directory (no mapping flags: the protos carry their own package options),
then with a real API key:

1. submits the research crew by name and watches its events until the
   stream ends, expecting SUCCEEDED, an output and the run's own events;
2. submits a slow team (its spec given as a file: every model call takes
   long), waits until it is under way, cancels it, and expects CANCELLED
   with the reason given, and a watch that ends on CANCELLED.

Needs grpcio and grpcio-tools (scripts/test makes .amaos/venv-grpc with
them). Exits 0 when every check held; otherwise prints what did not and
exits 1. cli/tests/python_client.rs runs it against an in-process mesh.

    python smoke.py --target 127.0.0.1:PORT --key KEY --proto-root proto \
        --slow-spec slow.yaml
"""

import argparse
import importlib
import pathlib
import sys
import tempfile

import grpc
import grpc_tools
from grpc_tools import protoc

# How long any one call or watch may take, in seconds.
DEADLINE = 60


def generate(proto_root: pathlib.Path, out: pathlib.Path) -> None:
    """Generates the amaos protos and what they import: the A2A contract
    (lf/a2a, whose AgentCard the orchestrator returns) and the google.api
    annotations."""
    files = sorted(
        str(p.relative_to(proto_root))
        for p in proto_root.rglob("*.proto")
        if p.relative_to(proto_root).parts[0] in ("amaos", "google", "lf")
    )
    # The well-known types (google/protobuf/*.proto) ship with grpcio-tools.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *files,
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed ({status}) on {files}")


def state_name(pb, value: int) -> str:
    return pb.TaskState.Name(value)


def watch(pb, stub, metadata, task_id: str, until=None):
    """Watches a task from its first event; returns the events, stopping
    early once `until(event)` holds."""
    events = []
    stream = stub.WatchTask(
        pb.WatchTaskRequest(task_id=task_id, after_sequence=0),
        metadata=metadata,
        timeout=DEADLINE,
    )
    for response in stream:
        events.append(response.event)
        if until is not None and until(response.event):
            stream.cancel()
            break
    return events


def check(failures: list, ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the orchestrator, host:port")
    parser.add_argument("--key", required=True, help="an API key with the developer role")
    parser.add_argument("--proto-root", required=True, type=pathlib.Path)
    parser.add_argument("--slow-spec", required=True, type=pathlib.Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="amaos-python-client-") as out:
        generate(args.proto_root.resolve(), pathlib.Path(out))
        sys.path.insert(0, out)
        pb = importlib.import_module("amaos.orchestrator.v1.orchestrator_pb2")
        rpc = importlib.import_module("amaos.orchestrator.v1.orchestrator_pb2_grpc")
        failures = run(pb, rpc, args)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def run(pb, rpc, args) -> list:
    """Every check against the mesh; what did not hold."""
    metadata = (("authorization", f"Bearer {args.key}"),)
    failures: list = []
    with grpc.insecure_channel(args.target) as channel:
        stub = rpc.OrchestratorServiceStub(channel)

        # 1. Submit and watch to the end.
        submitted = stub.SubmitTask(
            pb.SubmitTaskRequest(
                team=pb.TeamRef(name="research-crew"), input="vector databases"
            ),
            metadata=metadata,
            timeout=DEADLINE,
        )
        check(failures, bool(submitted.task_id), "SubmitTask returned no task id")
        events = watch(pb, stub, metadata, submitted.task_id)
        kinds = [e.WhichOneof("kind") for e in events]
        payloads = [e.run_event.WhichOneof("payload") for e in events if e.HasField("run_event")]
        states = [state_name(pb, e.state_changed.to) for e in events if e.HasField("state_changed")]
        print(f"task {submitted.task_id}: {len(events)} events, states {states}", flush=True)
        check(failures, kinds.count("state_changed") >= 2, f"too few state changes: {kinds}")
        check(failures, "run_started" in payloads, f"no run_started event: {payloads}")
        check(failures, "run_completed" in payloads, f"no run_completed event: {payloads}")
        check(
            failures,
            [e.sequence for e in events] == list(range(1, len(events) + 1)),
            "event sequence numbers are not 1, 2, 3, …",
        )
        check(
            failures,
            states[-1:] == ["TASK_STATE_SUCCEEDED"],
            f"the watch did not end on SUCCEEDED: {states}",
        )
        task = stub.GetTask(
            pb.GetTaskRequest(task_id=submitted.task_id), metadata=metadata, timeout=DEADLINE
        ).task
        check(
            failures,
            task.state == pb.TASK_STATE_SUCCEEDED and "vector databases" in task.output,
            f"GetTask: {state_name(pb, task.state)}, output {task.output!r}",
        )

        # 2. Cancel a slow task once it is under way.
        slow = stub.SubmitTask(
            pb.SubmitTaskRequest(
                team=pb.TeamRef(spec_yaml=args.slow_spec.read_text()), input="x"
            ),
            metadata=metadata,
            timeout=DEADLINE,
        )
        watch(
            pb,
            stub,
            metadata,
            slow.task_id,
            until=lambda e: e.run_event.WhichOneof("payload") == "task_started",
        )
        cancelled = stub.CancelTask(
            pb.CancelTaskRequest(task_id=slow.task_id, reason="changed my mind"),
            metadata=metadata,
            timeout=DEADLINE,
        ).task
        print(f"task {slow.task_id}: {state_name(pb, cancelled.state)} ({cancelled.error.message})")
        check(
            failures,
            cancelled.state == pb.TASK_STATE_CANCELLED,
            f"CancelTask left the task {state_name(pb, cancelled.state)}",
        )
        check(
            failures,
            cancelled.error.message == "changed my mind",
            f"the cancel reason is {cancelled.error.message!r}",
        )
        states = [
            state_name(pb, e.state_changed.to)
            for e in watch(pb, stub, metadata, slow.task_id)
            if e.HasField("state_changed")
        ]
        check(
            failures,
            states[-1:] == ["TASK_STATE_CANCELLED"],
            f"the watch of the cancelled task did not end on CANCELLED: {states}",
        )

        # A bad key is refused, as a status a client can act on.
        try:
            stub.GetTask(
                pb.GetTaskRequest(task_id=slow.task_id),
                metadata=(("authorization", "Bearer not-a-key"),),
                timeout=DEADLINE,
            )
            failures.append("a bad key was accepted")
        except grpc.RpcError as e:
            check(
                failures,
                e.code() == grpc.StatusCode.UNAUTHENTICATED,
                f"a bad key gave {e.code()}, not UNAUTHENTICATED",
            )
    return failures


if __name__ == "__main__":
    sys.exit(main())
