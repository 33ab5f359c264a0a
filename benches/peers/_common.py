"""Shared by the peer benchmarks: a guard against network calls, the task
driver (N tasks, C at once, a warm-up first), and the one JSON line each
scenario prints.

Each scenario runs in a process of its own, so its peak RSS (getrusage's
ru_maxrss) is that scenario's and not the largest of every scenario before it:
a script run without --scenario runs itself once per scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import inspect
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

# ---------------------------------------------------------------------------
# No network: any connection or name lookup that is not to this machine fails
# and is counted (the count is part of each scenario's JSON line, so a
# framework that tries to phone home shows up as network_attempts > 0).
# Libraries written in C (libpq) do not go through this; they only ever talk
# to 127.0.0.1 here.

NETWORK_ATTEMPTS: list[str] = []
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _is_local(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]")
    if host in _LOCAL_NAMES or host == "":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _guard_address(address: object) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
    else:
        # AF_UNIX paths and the like stay on this machine.
        return
    if not _is_local(host):
        NETWORK_ATTEMPTS.append(f"connect {address!r}")
        raise OSError(f"benches/peers: network disabled (connect to {address!r})")


def install_network_guard() -> None:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_sendto = socket.socket.sendto
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):  # type: ignore[no-untyped-def]
        _guard_address(address)
        return real_connect(self, address)

    def connect_ex(self, address):  # type: ignore[no-untyped-def]
        _guard_address(address)
        return real_connect_ex(self, address)

    def sendto(self, data, *args):  # type: ignore[no-untyped-def]
        _guard_address(args[-1] if args else None)
        return real_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not _is_local(host):
            NETWORK_ATTEMPTS.append(f"resolve {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"benches/peers: network disabled (lookup of {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo


# Telemetry and tracing off for every framework, before any of them is imported.
QUIET_ENV = {
    # LangChain / LangSmith
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING_V2": "false",
    "LANGCHAIN_TRACING": "false",
    # CrewAI (and OpenTelemetry in general)
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "OTEL_SDK_DISABLED": "true",
    # AutoGen's OpenTelemetry hooks
    "AUTOGEN_DISABLE_RUNTIME_TRACING": "true",
    # Anything that honours the common opt-outs
    "DO_NOT_TRACK": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet() -> None:
    for key, value in QUIET_ENV.items():
        os.environ[key] = value
    install_network_guard()


# ---------------------------------------------------------------------------
# Measuring.


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest rank, as `amaos bench` computes it."""
    if not sorted_values:
        return 0.0
    i = round((len(sorted_values) - 1) * p)
    return sorted_values[min(i, len(sorted_values) - 1)]


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def drive(
    one_task: Callable[[str], Awaitable[None]],
    tasks: int,
    concurrency: int,
) -> tuple[float, list[float], int, str | None]:
    """Runs `tasks` tasks, `concurrency` at once, each worker taking the next
    task when its last one is done (as `amaos bench` does). Returns wall
    seconds, sorted latencies in ms, the failures, and the first error."""
    remaining = tasks
    failed = 0
    first_error: str | None = None
    latencies: list[float] = []

    async def worker(w: int) -> None:
        nonlocal remaining, failed, first_error
        n = 0
        while remaining > 0:
            remaining -= 1
            n += 1
            t0 = time.perf_counter()
            try:
                await one_task(f"job {w}-{n}")
            except Exception as error:  # noqa: BLE001 - counted, not fatal
                failed += 1
                if first_error is None:
                    first_error = f"{type(error).__name__}: {error}"
            latencies.append((time.perf_counter() - t0) * 1000.0)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(max(1, concurrency))))
    seconds = time.perf_counter() - started
    latencies.sort()
    return seconds, latencies, failed, first_error


def report(
    peer: str,
    scenario: str,
    tasks: int,
    concurrency: int,
    seconds: float,
    latencies: list[float],
    failed: int,
    first_error: str | None,
    cpu: float,
    **extra: object,
) -> dict[str, object]:
    done = len(latencies)
    line: dict[str, object] = {
        "peer": peer,
        "scenario": scenario,
        "tasks": done,
        "concurrency": concurrency,
        "tasks_per_s": round(done / max(seconds, 1e-9), 3),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "seconds": round(seconds, 3),
        "failed": failed,
        "cpu_ms_per_task": round(1000.0 * cpu / max(done, 1), 3),
        "network_attempts": len(NETWORK_ATTEMPTS),
        "first_error": first_error,
    }
    line.update(extra)
    if NETWORK_ATTEMPTS:
        line["network_first"] = NETWORK_ATTEMPTS[0]
    print(json.dumps(line), flush=True)
    if tasks != done:
        print(f"{peer}/{scenario}: ran {done} of {tasks} tasks", file=sys.stderr)
    return line


# ---------------------------------------------------------------------------
# The command line every peer script shares.

# An async function, or a plain one for a framework whose entry point is
# synchronous (it then calls measure_sync).
Scenario = Callable[[argparse.Namespace], object]


def main(peer: str, scenarios: dict[str, tuple[int, Scenario]], description: str) -> None:
    """`scenarios` maps a name to (default concurrency, the async function
    that runs it). Without --scenario each scenario runs in a child process."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scenario", action="append", choices=sorted(scenarios),
                        help="run only this scenario (repeatable); default: all, each in its own process")
    parser.add_argument("--tasks", type=int, default=200, help="timed tasks per scenario")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed tasks first (default: the scenario's concurrency, at least 5)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="override the scenario's concurrency")
    parser.add_argument("--postgres-url", default=os.environ.get(
        "PEERS_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()

    names = args.scenario or list(scenarios)
    if len(names) > 1:
        status = 0
        for name in names:
            cmd = [sys.executable, sys.argv[0], "--scenario", name, "--tasks", str(args.tasks),
                   "--postgres-url", args.postgres_url]
            if args.warmup is not None:
                cmd += ["--warmup", str(args.warmup)]
            if args.concurrency is not None:
                cmd += ["--concurrency", str(args.concurrency)]
            status = subprocess.call(cmd) or status
        sys.exit(status)

    name = names[0]
    default_concurrency, run = scenarios[name]
    args.scenario_name = name
    if args.concurrency is None:
        args.concurrency = default_concurrency
    if args.warmup is None:
        args.warmup = max(5, args.concurrency)
    if args.tasks < args.concurrency:
        # Fewer tasks than workers would leave workers idle: the scenario's
        # concurrency would not be what was measured.
        print(f"{peer}/{name}: {args.tasks} tasks raised to the concurrency, {args.concurrency}",
              file=sys.stderr)
        args.tasks = args.concurrency
    if inspect.iscoroutinefunction(run):
        asyncio.run(run(args))
    else:
        run(args)


async def measure(
    peer: str,
    args: argparse.Namespace,
    one_task: Callable[[str], Awaitable[None]],
    **extra: object,
) -> dict[str, object]:
    """Warm-up, then the timed run, then the JSON line."""
    await drive(one_task, args.warmup, args.concurrency)
    cpu0 = cpu_seconds()
    seconds, latencies, failed, first_error = await drive(one_task, args.tasks, args.concurrency)
    cpu = cpu_seconds() - cpu0
    return report(peer, args.scenario_name, args.tasks, args.concurrency, seconds, latencies,
                  failed, first_error, cpu, **extra)


def drive_sync(one_task: Callable[[str], object], tasks: int) -> tuple[float, list[float], int, str | None]:
    """`drive` for a synchronous entry point, one task at a time."""
    failed = 0
    first_error: str | None = None
    latencies: list[float] = []
    started = time.perf_counter()
    for n in range(1, tasks + 1):
        t0 = time.perf_counter()
        try:
            one_task(f"job 0-{n}")
        except Exception as error:  # noqa: BLE001 - counted, not fatal
            failed += 1
            if first_error is None:
                first_error = f"{type(error).__name__}: {error}"
        latencies.append((time.perf_counter() - t0) * 1000.0)
    seconds = time.perf_counter() - started
    latencies.sort()
    return seconds, latencies, failed, first_error


def measure_sync(
    peer: str,
    args: argparse.Namespace,
    one_task: Callable[[str], object],
    **extra: object,
) -> dict[str, object]:
    """`measure` for a synchronous entry point (concurrency 1)."""
    drive_sync(one_task, args.warmup)
    cpu0 = cpu_seconds()
    seconds, latencies, failed, first_error = drive_sync(one_task, args.tasks)
    cpu = cpu_seconds() - cpu0
    return report(peer, args.scenario_name, args.tasks, 1, seconds, latencies,
                  failed, first_error, cpu, **extra)
