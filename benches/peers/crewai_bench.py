"""CrewAI peer: a sequential crew of three agents with three tasks (plan ->
build -> check, each task's output the next one's context), every agent on a
canned LLM (a BaseLLM subclass returning a fixed final answer: no network, no
litellm). A fresh crew per task. Telemetry, tracing and the version check are
off (see _common.QUIET_ENV); CrewAI's storage goes to a temporary directory.

Scenarios (one JSON line each):
  crew_seq   one crew at a time (Crew.kickoff)
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile

import _common

_common.quiet()
# CrewAI keeps files of its own (a credentials key, a first-run marker, the
# last kickoff's task outputs) under the user's home and data directories:
# here they go to a temporary home, removed at exit.
_home = tempfile.mkdtemp(prefix="amaos-peers-crewai-")
atexit.register(shutil.rmtree, _home, ignore_errors=True)
os.environ["HOME"] = _home
os.environ["XDG_DATA_HOME"] = os.path.join(_home, ".local", "share")
os.environ["XDG_CONFIG_HOME"] = os.path.join(_home, ".config")
os.environ["XDG_CACHE_HOME"] = os.path.join(_home, ".cache")
os.environ["CREWAI_STORAGE_DIR"] = os.path.join(_home, "storage")

from typing import Any  # noqa: E402

from crewai import Agent, Crew, Process, Task  # noqa: E402
from crewai.llms.base_llm import BaseLLM  # noqa: E402

PEER = "crewai"


class CannedLLM(BaseLLM):
    """Answers every call with the same final answer, at once."""

    reply: str = "done"
    calls: int = 0

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None,
             available_functions: Any = None, from_task: Any = None,
             from_agent: Any = None, response_model: Any = None) -> str:
        self.calls += 1
        return f"Thought: I now know the final answer\nFinal Answer: {self.reply}"

    def supports_function_calling(self) -> bool:
        return False

    def supports_stop_words(self) -> bool:
        return False

    def get_context_window_size(self) -> int:
        return 8192

    def get_input_tokens_count(self, messages: Any, tools: Any = None,
                               response_model: Any = None) -> int:
        # BaseLLM's fallback estimate (a token per four characters), without
        # the warning it logs on every call: a provider with a native count
        # overrides this too, and the log line would be the cost measured.
        if isinstance(messages, str):
            chars = len(messages)
        else:
            chars = sum(len(str(m.get("content") or "")) for m in messages)
        return (chars + 3) // 4


ROLES = (
    ("planner", "plan {topic}"),
    ("builder", "build {topic}"),
    ("checker", "check {topic}"),
)


def make_crew() -> tuple[Crew, list[CannedLLM]]:
    llms, agents, tasks = [], [], []
    for name, description in ROLES:
        llm = CannedLLM(model=f"canned-{name}", reply=f"{name} done")
        agent = Agent(role=name, goal=f"do the {name} part", backstory=f"You are the {name}.",
                      llm=llm, allow_delegation=False, verbose=False, max_iter=3)
        task = Task(description=description, expected_output=f"the {name}'s result",
                    agent=agent, context=tasks[-1:] if tasks else None)
        llms.append(llm)
        agents.append(agent)
        tasks.append(task)
    crew = Crew(agents=agents, tasks=tasks, process=Process.sequential, verbose=False,
                memory=False, tracing=False)
    return crew, llms


def one_task(topic: str) -> None:
    crew, llms = make_crew()
    out = crew.kickoff(inputs={"topic": topic})
    if str(out).strip() != "checker done":
        raise RuntimeError(f"unexpected crew output: {str(out)!r}")
    calls = sum(llm.calls for llm in llms)
    if calls != 3:
        raise RuntimeError(f"{calls} model calls, not 3")


def crew(args: argparse.Namespace) -> None:
    if args.concurrency != 1:
        raise SystemExit("crewai: only the sequential scenario is run (Crew.kickoff is synchronous)")
    _common.measure_sync(PEER, args, one_task, backend="memory")


if __name__ == "__main__":
    _common.main(PEER, {"crew_seq": (1, crew)}, __doc__.splitlines()[0])
