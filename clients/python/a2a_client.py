"""An external A2A v1.0 client against AMAOS: the reference Python SDK
(`a2a-sdk[grpc]`), not code of this project, talks to the mesh.

It checks, in order:
1. wire compatibility: AMAOS's `proto/lf/a2a/v1/a2a.proto`, compiled here,
   declares the same package, services, messages, fields (numbers, types,
   labels, oneofs) and enums as the SDK's own `a2a.proto`;
2. discovery: the agent card at `<gateway>/.well-known/agent-card.json`,
   resolved by the SDK, names the teams as skills and a gRPC interface;
3. a message to the research crew, streamed by the SDK to completion;
4. a task of a slow team, sent without waiting, then cancelled;
5. a gated tool call: the task stops in INPUT_REQUIRED and a reply
   `approve` resumes it to completion, streamed; a blocking `reject`
   answer returns once the resumed run is done;
6. GetTask, ListTasks, the extended card, TASK_NOT_FOUND as the SDK's own
   error class, and a call without credentials refused.

Run by cli/tests/a2a.rs; prints one `ok:` line per check.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import uuid

import grpc
import httpx
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from a2a.client import (
    A2ACardResolver,
    AuthInterceptor,
    ClientConfig,
    ClientFactory,
    CredentialService,
)
from a2a.client.errors import A2AClientError
from a2a.types import a2a_pb2, a2a_pb2_grpc
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError


def ok(what):
    print(f"ok: {what}", flush=True)


# 1. Wire compatibility ------------------------------------------------------

def compiled_descriptor(proto_root):
    """AMAOS's a2a.proto compiled by protoc (grpcio-tools), as a FileDescriptorProto."""
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    with tempfile.TemporaryDirectory() as out:
        path = os.path.join(out, "a2a.pb")
        code = protoc.main([
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--descriptor_set_out={path}",
            "lf/a2a/v1/a2a.proto",
        ])
        if code != 0:
            sys.exit(f"protoc could not compile lf/a2a/v1/a2a.proto ({code})")
        fds = descriptor_pb2.FileDescriptorSet()
        with open(path, "rb") as f:
            fds.ParseFromString(f.read())
    return fds.file[0]


def shape(file):
    """Everything of a file that decides the wire format and the RPC paths."""
    out = {"package": file.package}

    def messages(prefix, types):
        for m in types:
            name = f"{prefix}.{m.name}"
            oneofs = [o.name for o in m.oneof_decl]
            out[name] = sorted(
                (f.number, f.name, f.type, f.label, f.type_name,
                 oneofs[f.oneof_index] if f.HasField("oneof_index") and not f.proto3_optional else "",
                 f.proto3_optional)
                for f in m.field
            )
            messages(name, m.nested_type)
            enums(name, m.enum_type)

    def enums(prefix, types):
        for e in types:
            out[f"{prefix}.{e.name}"] = sorted((v.number, v.name) for v in e.value)

    messages("." + file.package, file.message_type)
    enums("." + file.package, file.enum_type)
    for s in file.service:
        out[f"service {s.name}"] = sorted(
            (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in s.method
        )
    return out


def check_wire(proto_root):
    ours = shape(compiled_descriptor(proto_root))
    theirs_file = descriptor_pb2.FileDescriptorProto()
    a2a_pb2.DESCRIPTOR.CopyToProto(theirs_file)
    theirs = shape(theirs_file)
    differences = [
        key for key in sorted(set(ours) | set(theirs)) if ours.get(key) != theirs.get(key)
    ]
    if differences:
        for key in differences:
            print(f"differs: {key}\n  amaos: {ours.get(key)}\n  sdk:   {theirs.get(key)}")
        sys.exit("AMAOS's lf.a2a.v1 contract differs from the SDK's")
    ok(f"wire: {len(ours) - 1} messages, enums and services match the SDK's a2a.proto")


# 2.-6. Against the mesh -----------------------------------------------------

class Key(CredentialService):
    """The caller's API key, for the card's `bearer` scheme."""

    def __init__(self, key):
        self.key = key

    async def get_credentials(self, security_scheme_name, context):
        return self.key if security_scheme_name == "bearer" else None


def channel_factory(url):
    # The card publishes an http:// URL; gRPC wants host:port.
    target = url.split("://", 1)[-1].rstrip("/")
    return grpc.aio.insecure_channel(target)


def message(text, skill=None, task_id=""):
    m = a2a_pb2.Message(
        message_id=str(uuid.uuid4()),
        role=a2a_pb2.ROLE_USER,
        parts=[a2a_pb2.Part(text=text)],
        task_id=task_id,
    )
    if skill:
        m.metadata.update({"skill": skill})
    return m


def state_name(state):
    return a2a_pb2.TaskState.Name(state)


async def collect(client, request):
    """Every StreamResponse the SDK yields for one message."""
    seen = []
    async for response in client.send_message(request):
        seen.append(response)
    return seen


def last_task_state(responses):
    state = None
    for r in responses:
        kind = r.WhichOneof("payload")
        if kind == "task":
            state = r.task.status.state
        elif kind == "status_update":
            state = r.status_update.status.state
    return state


async def run(args):
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, args.gateway).get_agent_card()
    skills = [s.id for s in card.skills]
    interfaces = [(i.protocol_binding, i.url) for i in card.supported_interfaces]
    assert args.skill in skills, skills
    assert args.slow_skill in skills, skills
    assert any(b == "GRPC" for b, _ in interfaces), interfaces
    assert "bearer" in card.security_schemes, card.security_schemes
    ok(f"card: {card.name}, skills {skills}, interfaces {interfaces}")

    auth = [AuthInterceptor(Key(args.key))]
    streaming = ClientFactory(ClientConfig(
        streaming=True,
        grpc_channel_factory=channel_factory,
        supported_protocol_bindings=["GRPC"],
    )).create(card, interceptors=auth)
    polling = ClientFactory(ClientConfig(
        streaming=False,
        grpc_channel_factory=channel_factory,
        supported_protocol_bindings=["GRPC"],
    )).create(card, interceptors=auth)

    # 3. Stream a crew to completion.
    responses = await collect(streaming, a2a_pb2.SendMessageRequest(
        message=message("vector databases", skill=args.skill)))
    kinds = [r.WhichOneof("payload") for r in responses]
    assert kinds and kinds[0] == "task", kinds
    assert "status_update" in kinds and "artifact_update" in kinds, kinds
    final = last_task_state(responses)
    assert final == a2a_pb2.TASK_STATE_COMPLETED, state_name(final)
    task_id = responses[0].task.id
    artifacts = [r.artifact_update.artifact.name for r in responses if r.WhichOneof("payload") == "artifact_update"]
    ok(f"streamed {len(responses)} updates to {state_name(final)} (artifacts {artifacts})")

    task = await polling.get_task(a2a_pb2.GetTaskRequest(id=task_id))
    assert task.status.state == a2a_pb2.TASK_STATE_COMPLETED, task.status
    assert task.artifacts and task.artifacts[0].parts[0].text, task.artifacts
    ok(f"GetTask: {state_name(task.status.state)}, output {len(task.artifacts[0].parts[0].text)} bytes")

    # 4. A slow task, sent without waiting, then cancelled.
    slow = a2a_pb2.SendMessageRequest(
        message=message("a slow topic", skill=args.slow_skill),
        configuration=a2a_pb2.SendMessageConfiguration(return_immediately=True),
    )
    slow_task = None
    async for r in polling.send_message(slow):
        if r.WhichOneof("payload") == "task":
            slow_task = r.task
    assert slow_task is not None
    assert slow_task.status.state in (a2a_pb2.TASK_STATE_SUBMITTED, a2a_pb2.TASK_STATE_WORKING), slow_task.status
    cancelled = await polling.cancel_task(a2a_pb2.CancelTaskRequest(id=slow_task.id))
    assert cancelled.status.state == a2a_pb2.TASK_STATE_CANCELED, cancelled.status
    ok(f"cancelled {slow_task.id}: {state_name(cancelled.status.state)}")

    # 5. A gated call waits for a person; `approve` resumes it.
    waiting = await collect(streaming, a2a_pb2.SendMessageRequest(
        message=message("Ada Lovelace", skill=args.gated_skill)))
    state = last_task_state(waiting)
    assert state == a2a_pb2.TASK_STATE_INPUT_REQUIRED, state_name(state)
    gated_id = waiting[0].task.id
    asked = await polling.get_task(a2a_pb2.GetTaskRequest(id=gated_id))
    assert "approve" in asked.status.message.parts[0].text, asked.status.message
    resumed = await collect(streaming, a2a_pb2.SendMessageRequest(
        message=message("approve: checked the amount", task_id=gated_id)))
    state = last_task_state(resumed)
    assert state == a2a_pb2.TASK_STATE_COMPLETED, state_name(state)
    ok(f"approval: INPUT_REQUIRED, then `approve` resumed {gated_id} to COMPLETED")

    # The same without streaming: a blocking answer waits for the resumed
    # run (here a rejection the crew is told of and carries on after).
    asked = await collect(polling, a2a_pb2.SendMessageRequest(
        message=message("Grace Hopper", skill=args.gated_skill)))
    state = last_task_state(asked)
    assert state == a2a_pb2.TASK_STATE_INPUT_REQUIRED, state_name(state)
    rejected_id = asked[0].task.id
    answered = await collect(polling, a2a_pb2.SendMessageRequest(
        message=message("reject: not this month", task_id=rejected_id)))
    state = last_task_state(answered)
    assert state == a2a_pb2.TASK_STATE_COMPLETED, state_name(state)
    ok(f"a blocking `reject` answer returned {rejected_id} once COMPLETED")
    try:
        await polling.send_message(a2a_pb2.SendMessageRequest(
            message=message("approve", task_id=rejected_id))).__anext__()
        sys.exit("a finished task took an answer")
    except UnsupportedOperationError:
        ok("an answer to a finished task is the SDK's UnsupportedOperationError")

    # A swarm that hands the conversation to a person waits for a message;
    # the reply is that message, and the conversation goes on with it.
    asked = await collect(polling, a2a_pb2.SendMessageRequest(
        message=message("a refund", skill=args.input_skill)))
    state = last_task_state(asked)
    assert state == a2a_pb2.TASK_STATE_INPUT_REQUIRED, state_name(state)
    helpdesk_id = asked[0].task.id
    assert "handed the conversation" in asked[-1].task.status.message.parts[0].text, asked[-1]
    replied = await collect(streaming, a2a_pb2.SendMessageRequest(
        message=message("order 1042", task_id=helpdesk_id)))
    state = last_task_state(replied)
    assert state == a2a_pb2.TASK_STATE_COMPLETED, state_name(state)
    ok(f"a swarm waited for a person's message; the reply resumed {helpdesk_id} to COMPLETED")

    # 6. Listing, the extended card, errors.
    listed = await polling.list_tasks(a2a_pb2.ListTasksRequest(page_size=10))
    ids = {t.id for t in listed.tasks}
    assert {task_id, slow_task.id, gated_id} <= ids, ids
    ok(f"ListTasks: {len(listed.tasks)} tasks")

    extended = await polling.get_extended_agent_card(a2a_pb2.GetExtendedAgentCardRequest())
    assert args.skill in [s.id for s in extended.skills]
    ok("GetExtendedAgentCard with the key")

    try:
        await polling.get_task(a2a_pb2.GetTaskRequest(id="no-such-task"))
        sys.exit("an unknown task was found")
    except TaskNotFoundError:
        ok("an unknown task is the SDK's TaskNotFoundError")

    target = channel_factory(card.supported_interfaces[0].url)
    try:
        await a2a_pb2_grpc.A2AServiceStub(target).GetTask(a2a_pb2.GetTaskRequest(id=task_id))
        sys.exit("a call without credentials was answered")
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
        ok("a call without credentials is UNAUTHENTICATED")
    finally:
        await target.close()

    await streaming.close()
    await polling.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gateway", required=True, help="the gateway's URL (the card's base)")
    p.add_argument("--key", required=True)
    p.add_argument("--proto-root", required=True)
    p.add_argument("--skill", default="research-crew")
    p.add_argument("--slow-skill", default="slow-crew")
    p.add_argument("--gated-skill", default="approved-payout")
    p.add_argument("--input-skill", default="helpdesk")
    args = p.parse_args()
    check_wire(args.proto_root)
    try:
        asyncio.run(run(args))
    except A2AClientError as e:
        sys.exit(f"A2A client error: {e}")
    print("a2a client: all checks passed")


if __name__ == "__main__":
    main()
