"""`make bench-serving`: the Serving API's throughput and latency under load, beside its stack's own limit.

Seeds a temporary local deployment's candidate store with 100,000 candidates for one event
(two invitation channels: 200,000 items) and marks 6,800 of them registered (the use case's
registrations for an event of that size), then starts two servers in child processes on free
loopback ports, each with the same uvicorn workers (`--workers`, default 2: one per core here):

* the real API (`python -m eventreach_assets.serving.api`) over that store, as deployed (its page
  cache on: a repeated page is answered from memory until the stores change);
* the same API with the page cache off (`EVENTREACH_API_PAGE_CACHE_MB=0`): every page read from
  the store, what a request costs right after a write;
* the bare reference: the same stack (uvicorn + Starlette, same workers) answering every GET
  with one fixed page, a real 100-item candidates page of the API taken at start: the same body
  shape and size with no work behind it, so its figures are the ceiling the API could reach.

All three are driven, in the same invocation, by the same load on the same requests: at 32 and
at 64 keep-alive connections (`--connections`), for 30 s, three runs each, the servers
alternating, after a warm-up of each (not reported), on an even mix of the three queries (a page
of 100):

* GetCandidatesForChannel: both channels, four minScore / excludeRegistered combinations,
  first pages and pages up to 20 deep (cursors collected beforehand);
* GetRegisteredCandidates: every page of the registered list;
* candidate by customer: 1,000 random customers.

The load comes from `wrk` when /usr/bin/wrk exists (Debian package `wrk`; a Lua script cycles
through the requests), else from an asyncio HTTP/1.1 client in this module (`--drive`), which
competes with the servers for the same cores, so its figures are lower than wrk's. Prints each
run, then per connection count each server's medians (req/s, P50/P95/P99), each API's share of
the reference's req/s, each server's peak RSS, and ends with one JSON line of all figures. Not a
test: it asserts nothing, it measures. `--seconds`, `--runs` (or env EVENTREACH_BENCH_SECONDS,
EVENTREACH_BENCH_RUNS) shorten it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

WRK = Path("/usr/bin/wrk")
EVENT = "evt-serving-bench"
KINDS = ("candidates", "registered", "customer")
REQUESTS_PER_KIND = 1000
CURSOR_DEPTH = 20  # candidate pages collected per query shape (first page included)


@dataclass(frozen=True)
class Settings:
    candidates: int
    registered: int
    seconds: float
    runs: int
    connections: tuple[int, ...]
    workers: int
    limit: int
    client: str  # auto | wrk | python
    registrations_per_second: float = 0.0  # written while the APIs are driven (0: a read-only load)


# ---- the store ----------------------------------------------------------------------------------


def seed_store(home: Path, candidates: int, registered: int, seed: int = 7) -> dict[str, Any]:
    """Write `candidates` scored customers for EVENT (both channels) and mark `registered` of them."""
    import numpy as np
    import polars as pl

    from eventreach_assets.deployments import CANDIDATES_SQLITE
    from eventreach_assets.program.config import default_program
    from eventreach_assets.resources.candidate_store import SqliteCandidateStore

    program = default_program()
    channels = [spec.channel_id for spec in program.invitation_channels]
    rng = np.random.default_rng(seed)
    ids = pl.Series("customer_id", [f"C{n:09d}" for n in range(1, candidates + 1)])
    score = np.round(rng.beta(2.0, 3.0, candidates), 4)  # four decimals: ties, as real scores have
    markets = np.array(["US", "UK", "DE", "FR", "JP", "IN", "BR", "AU"])
    scored = pl.DataFrame(
        {
            "customer_id": ids,
            "score": score,
            "score_band": np.where(score >= 0.7, "high", np.where(score >= 0.4, "medium", "low")),
            "p_event_attendance_v3": np.round(np.clip(score * 1.1, 0, 1), 6),
            "p_interest_affinity_v2": np.round(score * 0.9, 6),
            "marketplace": markets[rng.integers(0, len(markets), candidates)],
            "geographic_region": markets[rng.integers(0, len(markets), candidates)],
            "timezone": "Europe/Berlin",
            "job_role": "engineer",
            "email": ids.str.to_lowercase() + "@example.invalid",  # stored like real items; never served
        }
    )
    now = datetime.now(UTC)
    store = SqliteCandidateStore(path=str(home / CANDIDATES_SQLITE))
    started = time.perf_counter()
    store.replace_event_candidates(program.program_id, EVENT, scored, channels, now, program.candidate_ttl_days, 5000)
    picked = rng.choice(candidates, size=min(registered, candidates), replace=False)
    registrations = scored.filter(pl.int_range(pl.len()).is_in(picked.tolist())).select(
        "customer_id",
        pl.lit(now).alias("registered_at"),
        pl.lit(channels[0]).alias("channel"),
    )
    store.mark_registered_many(program.program_id, EVENT, registrations)
    store.close()
    return {
        "program": program.program_id,
        "channels": channels,
        "customers": ids.to_list(),
        "seed_s": time.perf_counter() - started,
    }


# ---- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(home: Path, port: int, key: str, settings: Settings, page_cache: bool = True) -> subprocess.Popen:
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTREACH_")}
    env.update(
        EVENTREACH_HOME=str(home),
        EVENTREACH_DEPLOYMENT="local",
        EVENTREACH_API_KEYS=key,
        EVENTREACH_WEBHOOK_SECRET=secrets.token_urlsafe(48),
    )
    if not page_cache:
        env["EVENTREACH_API_PAGE_CACHE_MB"] = "0"
    command = [sys.executable, "-m", "eventreach_assets.serving.api", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(settings.workers)]  # fmt: skip
    log = (home / ("server.log" if page_cache else "server-uncached.log")).open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


REFERENCE_BODY_ENV = "EVENTREACH_BENCH_REFERENCE_BODY"


def reference_app() -> Any:
    """The bare reference (uvicorn's factory, one per worker): every GET answered with the fixed
    page in the file named by REFERENCE_BODY_ENV, read once."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body = Path(os.environ[REFERENCE_BODY_ENV]).read_bytes()

    async def page(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", page, methods=["GET"])])


def start_reference(home: Path, port: int, body: bytes, settings: Settings) -> subprocess.Popen:
    """The reference in a child process: uvicorn, the API's worker count and settings, no access log."""
    (home / "reference.json").write_bytes(body)
    env = {**os.environ, REFERENCE_BODY_ENV: str(home / "reference.json")}
    code = (
        "import uvicorn; uvicorn.run('eventreach_assets.serving.bench:reference_app', factory=True, "
        f"host='127.0.0.1', port={port}, workers={settings.workers}, access_log=False, log_level='warning')"
    )
    log = (home / "reference.log").open("w")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(server: subprocess.Popen | None) -> None:
    if server is None:
        return
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)


def wait_until_up(
    base: str, server: subprocess.Popen, home: Path, timeout: float = 120.0, log: str = "server.log"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited:\n{(home / log).read_text()}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {timeout:.0f} s")


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the server: its own plus its workers' when it has any."""
    import psutil

    process = psutil.Process(pid)
    processes = [process, *process.children(recursive=True)]
    peaks = []
    for each in processes:
        try:
            status = Path(f"/proc/{each.pid}/status").read_text()
        except FileNotFoundError:
            continue
        peaks += [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    workers = peaks[1:] if len(peaks) > 1 else peaks
    return sum(workers) / 1024


# ---- the requests -------------------------------------------------------------------------------


def get_json(base: str, path: str, key: str) -> dict[str, Any]:
    request = urllib.request.Request(base + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def request_mix(base: str, key: str, seeded: dict[str, Any], limit: int, seed: int = 7) -> list[tuple[str, str]]:
    """(kind, path) for the run: REQUESTS_PER_KIND of each query, shuffled; cursors come from real pages."""
    rng = random.Random(seed)
    program = seeded["program"]

    def path(route: str, **params: Any) -> str:
        return f"{route}?{urllib.parse.urlencode(params)}"

    candidates: list[str] = []
    for channel in seeded["channels"]:
        for min_score, exclude in (("0.5", "true"), ("0.0", "true"), ("0.6", "true"), ("0.5", "false")):
            params = {"program": program, "event": EVENT, "channel": channel, "minScore": min_score,
                      "excludeRegistered": exclude, "limit": limit}  # fmt: skip
            page = path("/v1/candidates", **params)
            for _ in range(CURSOR_DEPTH):
                candidates.append(page)
                cursor = get_json(base, page, key)["nextCursor"]
                if cursor is None:
                    break
                page = path("/v1/candidates", **params, cursor=cursor)
    registered: list[str] = []
    page = path("/v1/registered-candidates", program=program, event=EVENT, limit=limit)
    for _ in range(10_000):  # bounded: 1,000,000 registrants at a page of 100
        registered.append(page)
        cursor = get_json(base, page, key)["nextCursor"]
        if cursor is None:
            break
        page = path("/v1/registered-candidates", program=program, event=EVENT, limit=limit, cursor=cursor)
    customers = rng.sample(seeded["customers"], min(REQUESTS_PER_KIND, len(seeded["customers"])))
    mix = [("candidates", rng.choice(candidates)) for _ in range(REQUESTS_PER_KIND)]
    mix += [("registered", rng.choice(registered)) for _ in range(REQUESTS_PER_KIND)]
    mix += [("customer", path(f"/v1/customers/{customer}/candidates", program=program)) for customer in customers]
    rng.shuffle(mix)
    return mix


# ---- load generators ------------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    return json.dumps(text)  # the paths are ASCII: a JSON string literal is a Lua string literal


def wrk_script(paths: Sequence[str], key: str) -> str:
    """A wrk script cycling through `paths` (each thread from its own offset) and printing JSON."""
    listed = ",\n".join(f"  {_lua_string(p)}" for p in paths)
    return f"""
local paths = {{
{listed}
}}
local headers = {{["X-API-Key"] = {_lua_string(key)}}}
local offset = 0
local index = 0
function setup(thread)
  offset = offset + 997
  thread:set("start", offset)
end
function init(args)
  index = start or 0
end
function request()
  index = index % #paths + 1
  return wrk.format("GET", paths[index], headers)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests":%d,"seconds":%f,"errors":%d,"p50_ms":%f,"p95_ms":%f,"p99_ms":%f,"max_ms":%f}}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def drive_with_wrk(
    base: str, key: str, mix: list[tuple[str, str]], connections: int, seconds: float, work: Path
) -> dict[str, Any]:
    script = work / "mix.lua"
    script.write_text(wrk_script([p for _, p in mix], key))
    threads = min(2, connections)
    command = [str(WRK), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "10s", "-s", str(script), base]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    result["rps"] = result["requests"] / result["seconds"]
    return result


async def _connection(
    host: str,
    port: int,
    requests: list[tuple[int, bytes]],
    start: int,
    deadline: float,
    samples: list[list[int]],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = start
    try:
        while time.perf_counter() < deadline:
            kind, request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter_ns()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            samples[kind].append(time.perf_counter_ns() - started)
            if head[9:12] != b"200":
                errors[0] += 1
    finally:
        writer.close()


async def _drive(
    base: str, key: str, mix: list[tuple[str, str]], connections: int, seconds: float
) -> tuple[list[list[int]], int, float]:
    parts = urllib.parse.urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (KINDS.index(kind), f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {key}\r\n\r\n".encode())
        for kind, path in mix
    ]
    samples: list[list[int]] = [[] for _ in KINDS]
    errors = [0]
    started = time.perf_counter()
    deadline = started + seconds
    step = max(1, len(requests) // connections)
    await asyncio.gather(
        *(_connection(host, port, requests, n * step, deadline, samples, errors) for n in range(connections))
    )
    return samples, errors[0], time.perf_counter() - started


def _percentiles(nanoseconds: Sequence[int]) -> dict[str, float]:
    import numpy as np

    if not nanoseconds:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    values = np.asarray(nanoseconds, dtype=np.float64) / 1e6
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(values.max())}


def drive(base: str, key: str, mix: list[tuple[str, str]], connections: int, seconds: float) -> dict[str, Any]:
    """The asyncio client (this process): keep-alive connections, closed loop, latency per request."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    samples, errors, elapsed = asyncio.run(_drive(base, key, mix, connections, seconds))
    every = [value for kind in samples for value in kind]
    return {
        "requests": len(every),
        "seconds": elapsed,
        "errors": errors,
        "rps": len(every) / elapsed,
        **_percentiles(every),
        "by_kind": {kind: {"requests": len(samples[n]), **_percentiles(samples[n])} for n, kind in enumerate(KINDS)},
    }


def drive_with_python(
    base: str, key: str, mix: list[tuple[str, str]], connections: int, seconds: float, work: Path
) -> dict:
    paths = work / "mix.json"
    paths.write_text(json.dumps(mix))
    command = [sys.executable, "-m", "eventreach_assets.serving.bench", "--drive", base, "--paths", str(paths),
               "--key-file", str(work / "key"), "--connections", str(connections),
               "--seconds", str(seconds)]  # fmt: skip
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


# ---- the benchmark ------------------------------------------------------------------------------


FIGURES = ("rps", "p50_ms", "p95_ms", "p99_ms")
TARGETS = ("reference", "api", "api-uncached")
APIS = TARGETS[1:]


def medians(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the runs, and the runs' own figures."""
    median: dict[str, Any] = {name: statistics.median(result[name] for result in results) for name in FIGURES}
    median["runs"] = [{name: round(result[name], 2) for name in (*FIGURES, "errors")} for result in results]
    median["errors"] = sum(result["errors"] for result in results)
    median["registrations"] = sum(result.get("registrations", 0) for result in results)  # written meanwhile
    return median


def print_run(target: str, connections: int, number: int, result: dict[str, Any]) -> None:
    kinds = "".join(
        f"  {kind} p50 {stats['p50_ms']:.1f} p99 {stats['p99_ms']:.1f}"
        for kind, stats in result.get("by_kind", {}).items()
    )
    print(
        f"run {number} {target:9s} {connections:3d} conns: {result['rps']:8,.0f} req/s  p50 {result['p50_ms']:6.2f} ms"
        f"  p95 {result['p95_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  ({result['requests']:,} requests, "
        f"{result['errors']} errors, {result.get('registrations', 0)} registrations written meanwhile){kinds}",
        flush=True,
    )


@contextlib.contextmanager
def registering(home: Path, seeded: dict[str, Any], per_second: float) -> Iterator[list[int]]:
    """While the block runs, one more registration every 1/`per_second` s, written to the store as
    the registrations feed writes them (another connection): each commit empties the API's page
    cache, as registrations arriving during a campaign would. Yields the count written so far."""
    written = [0]
    if per_second <= 0:
        yield written
        return
    from eventreach_assets.deployments import CANDIDATES_SQLITE
    from eventreach_assets.resources.candidate_store import SqliteCandidateStore

    stop = threading.Event()
    customers = itertools.cycle(seeded["customers"][::-1])  # the seeded registrations came from anywhere

    def write() -> None:
        store = SqliteCandidateStore(path=str(home / CANDIDATES_SQLITE))
        try:
            while not stop.wait(1 / per_second):  # ends when the block does
                customer, now = next(customers), datetime.now(UTC)
                store.mark_registered(seeded["program"], EVENT, customer, now, seeded["channels"][0])
                written[0] += 1
        finally:
            store.close()

    writer = threading.Thread(target=write, name="registrations", daemon=True)
    writer.start()
    try:
        yield written
    finally:
        stop.set()
        writer.join(timeout=30)


def measure(
    bases: dict[str, str], key: str, mix: list[tuple[str, str]], settings: Settings, home: Path, seeded: dict[str, Any]
) -> dict:
    """Per connection count: a warm-up of each server, then `runs` runs alternating the servers
    (registrations written meanwhile when `settings.registrations_per_second` is set)."""
    drive_with = drive_with_wrk if settings.client == "wrk" else drive_with_python

    def drive_once(
        base: str, key: str, mix: list[tuple[str, str]], connections: int, seconds: float, home: Path
    ) -> dict[str, Any]:
        with registering(home, seeded, settings.registrations_per_second) as written:
            result = drive_with(base, key, mix, connections, seconds, home)
        return {**result, "registrations": written[0]}

    figures: dict[str, Any] = {}
    for connections in settings.connections:
        results: dict[str, list[dict[str, Any]]] = {target: [] for target in TARGETS}
        for target in TARGETS:  # warm-up (page cache, connections, the interpreter), not reported
            drive_once(bases[target], key, mix, connections, min(3.0, settings.seconds), home)
        for number in range(1, settings.runs + 1):
            for target in TARGETS:
                result = drive_once(bases[target], key, mix, connections, settings.seconds, home)
                results[target].append(result)
                print_run(target, connections, number, result)
        row = figures[str(connections)] = {target: medians(results[target]) for target in TARGETS}
        for api in APIS:
            row[f"{api.replace('-', '_')}_share_of_reference_rps"] = row[api]["rps"] / row["reference"]["rps"]
    return figures


def print_table(figures: dict[str, Any], runs: int, rss: dict[str, float]) -> None:
    print(f"\nmedians of {runs}:")
    print("connections  server            req/s   P50 ms   P95 ms   P99 ms  errors")
    for connections, row in figures.items():
        for target in TARGETS:
            got = row[target]
            print(
                f"{connections:>11}  {target:12s}  {got['rps']:9,.0f}  {got['p50_ms']:7.2f}  {got['p95_ms']:7.2f}  "
                f"{got['p99_ms']:7.2f}  {got['errors']:6d}"
            )
        for api in APIS:
            share = row[f"{api.replace('-', '_')}_share_of_reference_rps"]
            print(f"{connections:>11}  {api}/reference: {share:.0%} of the reference's req/s")
    peaks = ", ".join(f"{target} {rss[target]:,.0f} MB" for target in TARGETS)
    print(f"server peak RSS (workers together): {peaks}")


def start_servers(home: Path, key: str, settings: Settings, seeded: dict[str, Any]) -> tuple[dict, dict, list]:
    """The API, the request mix (real cursors), then the reference serving a real page of the API."""
    bases = {target: f"http://127.0.0.1:{free_port()}" for target in TARGETS}
    servers = {
        api: start_server(home, int(bases[api].rsplit(":", 1)[1]), key, settings, page_cache=api == "api")
        for api in APIS
    }
    for api in APIS:
        wait_until_up(bases[api], servers[api], home, log="server.log" if api == "api" else "server-uncached.log")
    mix = request_mix(bases["api"], key, seeded, settings.limit)
    first_page = next(path for kind, path in mix if kind == "candidates" and "cursor=" not in path)
    request = urllib.request.Request(bases["api"] + first_page, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    port = int(bases["reference"].rsplit(":", 1)[1])
    servers["reference"] = start_reference(home, port, body, settings)
    wait_until_up(bases["reference"], servers["reference"], home, log="reference.log")
    return bases, servers, mix


def run(settings: Settings) -> dict[str, Any]:
    client = settings.client if settings.client != "auto" else ("wrk" if WRK.exists() else "python")
    settings = replace(settings, client=client)
    home = Path(tempfile.mkdtemp(prefix="eventreach-serving-bench-"))
    key = secrets.token_urlsafe(32)
    (home / "key").write_text(key)
    (home / "key").chmod(0o600)
    servers: dict[str, subprocess.Popen] = {}
    try:
        seeded = seed_store(home, settings.candidates, settings.registered)
        print(
            f"store: {settings.candidates:,} candidates x {len(seeded['channels'])} channels for one event, "
            f"{settings.registered:,} registered (seeded in {seeded['seed_s']:.1f} s, not timed)",
            flush=True,
        )
        bases, servers, mix = start_servers(home, key, settings, seeded)
        body_bytes = (home / "reference.json").stat().st_size
        print(
            f"load: {client}, {'/'.join(map(str, settings.connections))} connections, {settings.seconds:g} s x "
            f"{settings.runs} runs per server, server workers {settings.workers} each, page of {settings.limit}, "
            f"even mix of {', '.join(KINDS)} ({len(mix):,} distinct requests); reference: a fixed "
            f"{body_bytes:,}-byte candidates page; registrations written meanwhile: "
            f"{settings.registrations_per_second:g}/s",
            flush=True,
        )
        figures = measure(bases, key, mix, settings, home, seeded)
        rss = {target: peak_rss_mb(servers[target].pid) for target in TARGETS}
        print_table(figures, settings.runs, rss)
        summary = {
            "bench": "serving", "client": client, "workers": settings.workers, "seconds": settings.seconds,
            "runs": settings.runs, "candidates": settings.candidates, "registered": settings.registered,
            "limit": settings.limit, "reference_body_bytes": body_bytes, "connections": figures,
            "registrations_per_second": settings.registrations_per_second,
            "peak_rss_mb": rss, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        print(json.dumps(summary), flush=True)
        return summary
    finally:
        for server in servers.values():
            stop(server)
        shutil.rmtree(home, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eventreach-serving-bench", description=__doc__.splitlines()[0])
    env = os.environ.get
    parser.add_argument("--candidates", type=int, default=100_000, help="candidates of the event (default 100000)")
    parser.add_argument("--registered", type=int, default=6_800, help="of them registered (default 6800)")
    parser.add_argument("--seconds", type=float, default=float(env("EVENTREACH_BENCH_SECONDS", "30")))
    parser.add_argument("--runs", type=int, default=int(env("EVENTREACH_BENCH_RUNS", "3")))
    parser.add_argument(
        "--connections", default="32,64", help="keep-alive connection counts, comma-separated (default 32,64)"
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default 2: the cores)")
    parser.add_argument("--limit", type=int, default=100, help="page size (default 100)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="load generator")
    parser.add_argument(
        "--registrations-per-second", type=float, default=0.0,
        help="registrations written to the store while the load runs (default 0: reads only)",
    )  # fmt: skip
    # The load generator's own process (internal: started by `run`).
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    parser.add_argument("--key-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        mix = [tuple(pair) for pair in json.loads(Path(args.paths).read_text())]
        key = Path(args.key_file).read_text().strip()
        print(json.dumps(drive(args.drive, key, mix, int(args.connections), args.seconds)))
        return 0
    run(
        Settings(
            candidates=args.candidates,
            registered=args.registered,
            seconds=args.seconds,
            runs=args.runs,
            connections=tuple(int(count) for count in str(args.connections).split(",")),
            workers=args.workers,
            limit=args.limit,
            client=args.client,
            registrations_per_second=args.registrations_per_second,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
