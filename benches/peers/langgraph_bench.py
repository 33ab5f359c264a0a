"""LangGraph peer: a three-node graph (researcher -> writer -> editor), each
node one call to a canned chat model, each run a fresh thread_id.

Scenarios (one JSON line each):
  memory_seq      InMemorySaver, one run at a time
  memory_c50      InMemorySaver, 50 runs at once (asyncio)
  postgres_seq    AsyncPostgresSaver, one run at a time
  postgres_c16    AsyncPostgresSaver, 16 runs at once

The Postgres saver gets a connection pool as large as the concurrency and
keeps its tables (made by its own setup()) in a schema of their own,
`amaos_peers_langgraph`, emptied before each scenario.
"""

from __future__ import annotations

import argparse
import uuid
from typing import Any, TypedDict

import _common

_common.quiet()

from langchain_core.language_models.fake_chat_models import FakeListChatModel  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_core.outputs import ChatResult  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402
from langgraph.graph import END, START, StateGraph  # noqa: E402

PEER = "langgraph"
SCHEMA = "amaos_peers_langgraph"


class CannedChatModel(FakeListChatModel):
    """FakeListChatModel (fixed replies, cycled) whose async path answers on
    the event loop. FakeListChatModel's own async path is SimpleChatModel's,
    which hands every call to a thread pool: a cost of the fake, not of
    LangGraph, so it is taken out."""

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs: Any) -> ChatResult:  # type: ignore[override]
        return self._generate(messages, stop=stop, run_manager=None, **kwargs)


class State(TypedDict, total=False):
    topic: str
    research: str
    draft: str
    final: str


def build_graph(checkpointer: Any):
    researcher_model = CannedChatModel(responses=["researcher: three facts about the topic"])
    writer_model = CannedChatModel(responses=["writer: a draft built on the research"])
    editor_model = CannedChatModel(responses=["editor: the draft, checked and tightened"])

    async def researcher(state: State) -> State:
        reply = await researcher_model.ainvoke([
            SystemMessage("You are the researcher."),
            HumanMessage(f"Research {state['topic']}"),
        ])
        return {"research": reply.content}

    async def writer(state: State) -> State:
        reply = await writer_model.ainvoke([
            SystemMessage("You are the writer."),
            HumanMessage(f"Write about {state['topic']} from this research:\n{state['research']}"),
        ])
        return {"draft": reply.content}

    async def editor(state: State) -> State:
        reply = await editor_model.ainvoke([
            SystemMessage("You are the editor."),
            HumanMessage(f"Edit this draft on {state['topic']}:\n{state['draft']}"),
        ])
        return {"final": reply.content}

    builder = StateGraph(State)
    builder.add_node("researcher", researcher)
    builder.add_node("writer", writer)
    builder.add_node("editor", editor)
    builder.add_edge(START, "researcher")
    builder.add_edge("researcher", "writer")
    builder.add_edge("writer", "editor")
    builder.add_edge("editor", END)
    return builder.compile(checkpointer=checkpointer)


def task_fn(graph: Any):
    async def one_task(topic: str) -> None:
        config = {"configurable": {"thread_id": str(uuid.uuid4())}}
        out = await graph.ainvoke({"topic": topic}, config)
        if not out.get("final"):
            raise RuntimeError(f"the graph ended without a final text: {out!r}")
    return one_task


async def memory(args: argparse.Namespace) -> None:
    graph = build_graph(InMemorySaver())
    await _common.measure(PEER, args, task_fn(graph), backend="memory")


async def postgres(args: argparse.Namespace) -> None:
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import dict_row
    from psycopg_pool import AsyncConnectionPool

    async with await AsyncConnection.connect(args.postgres_url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    size = max(1, args.concurrency)
    pool = AsyncConnectionPool(
        args.postgres_url,
        min_size=size,
        max_size=size,
        open=False,
        kwargs={
            # What AsyncPostgresSaver.from_conn_string sets on its connection.
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "options": f"-c search_path={SCHEMA}",
        },
    )
    await pool.open(wait=True)
    try:
        saver = AsyncPostgresSaver(pool)
        await saver.setup()
        async with pool.connection() as conn:
            await conn.execute("TRUNCATE checkpoints, checkpoint_blobs, checkpoint_writes")
        graph = build_graph(saver)
        await _common.measure(PEER, args, task_fn(graph), backend="postgres")
    finally:
        await pool.close()


if __name__ == "__main__":
    _common.main(
        PEER,
        {
            "memory_seq": (1, memory),
            "memory_c50": (50, memory),
            "postgres_seq": (1, postgres),
            "postgres_c16": (16, postgres),
        },
        __doc__.splitlines()[0],
    )
