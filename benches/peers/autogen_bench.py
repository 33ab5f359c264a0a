"""AutoGen AgentChat peer: a three-agent RoundRobinGroupChat that stops after
five agent messages (MaxMessageTermination, which also counts the task
message: 1 + 5), each agent on its own ReplayChatCompletionClient (canned
replies, no network). A fresh team per task, as one would per conversation.

Scenarios (one JSON line each):
  round_robin_seq   one team at a time
  round_robin_c50   50 teams at once (asyncio)
"""

from __future__ import annotations

import argparse

import _common

_common.quiet()

from autogen_agentchat.agents import AssistantAgent  # noqa: E402
from autogen_agentchat.conditions import MaxMessageTermination  # noqa: E402
from autogen_agentchat.teams import RoundRobinGroupChat  # noqa: E402
from autogen_ext.models.replay import ReplayChatCompletionClient  # noqa: E402

PEER = "autogen"
AGENTS = ("planner", "builder", "checker")
AGENT_MESSAGES = 5


def make_team() -> RoundRobinGroupChat:
    agents = []
    for name in AGENTS:
        # Enough canned replies for this agent's turns in one conversation
        # (round robin over 3 agents, 5 messages: 2, 2, 1).
        turns = -(-AGENT_MESSAGES // len(AGENTS))
        client = ReplayChatCompletionClient([f"{name} reply {i + 1}" for i in range(turns)])
        agents.append(AssistantAgent(name, model_client=client,
                                     system_message=f"You are the {name}. Do the {name} part."))
    return RoundRobinGroupChat(
        agents,
        termination_condition=MaxMessageTermination(AGENT_MESSAGES + 1),
    )


async def one_task(topic: str) -> None:
    team = make_team()
    result = await team.run(task=f"discuss {topic}")
    spoken = [m for m in result.messages if getattr(m, "source", "user") != "user"]
    if len(spoken) != AGENT_MESSAGES:
        raise RuntimeError(f"{len(spoken)} agent messages, not {AGENT_MESSAGES}: {result.stop_reason}")


async def round_robin(args: argparse.Namespace) -> None:
    await _common.measure(PEER, args, one_task, backend="memory", agent_messages=AGENT_MESSAGES)


if __name__ == "__main__":
    _common.main(
        PEER,
        {
            "round_robin_seq": (1, round_robin),
            "round_robin_c50": (50, round_robin),
        },
        __doc__.splitlines()[0],
    )
