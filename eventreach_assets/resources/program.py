"""The program configuration and the clock, as resources so tests and deployments can swap them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from pydantic import PrivateAttr

from eventreach_assets.domain.filters import check_program_filters
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, ProgramConfig, load_program


def load_checked_program(path: str | Path | None = None) -> ProgramConfig:
    """How the application loads a program: the YAML schema (program/), then every filter's
    parameters (domain/filters.py); either kind of mistake is a ProgramConfigError naming it."""
    path = Path(path) if path else DEFAULT_PROGRAM_PATH
    return check_program_filters(load_program(path), source=str(path))


class ProgramResource(dg.ConfigurableResource):
    """Which program YAML drives the run (the packaged event-invitations program by default).

    In a run the program is read at its first use and every later step and check of the run gets
    that same program (the jobs run their steps in one process, so the resource is set up once a
    run; a run whose steps are processes of their own reads it once a step): a YAML edited while a
    run is going cannot make the filter step and the check that recomputes it decide with two
    programs; the next run reads the edit. Outside a run (the serving API, the CLI, the bench's
    bare run) each `load` reads the file."""

    path: str = str(DEFAULT_PROGRAM_PATH)
    _in_run: bool = PrivateAttr(default=False)
    _run_program: ProgramConfig | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = True

    def load(self) -> ProgramConfig:
        if not self._in_run:
            return load_checked_program(self.path)
        if self._run_program is None:
            self._run_program = load_checked_program(self.path)
        return self._run_program


class ClockResource(dg.ConfigurableResource):
    """The batch's notion of "now" (naive UTC). Pinned in tests and replays, the wall clock otherwise."""

    fixed_now: str | None = None

    def now(self) -> datetime:
        if self.fixed_now:
            return datetime.fromisoformat(self.fixed_now).replace(tzinfo=None)
        return datetime.now(UTC).replace(tzinfo=None)
