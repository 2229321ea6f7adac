"""The program configuration and the clock, as resources so tests and deployments can swap them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from eventreach_assets.domain.filters import check_program_filters
from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, ProgramConfig, load_program


def load_checked_program(path: str | Path | None = None) -> ProgramConfig:
    """How the application loads a program: the YAML schema (program/), then every filter's
    parameters (domain/filters.py); either kind of mistake is a ProgramConfigError naming it."""
    path = Path(path) if path else DEFAULT_PROGRAM_PATH
    return check_program_filters(load_program(path), source=str(path))


class ProgramResource(dg.ConfigurableResource):
    """Which program YAML drives the run (the packaged event-invitations program by default)."""

    path: str = str(DEFAULT_PROGRAM_PATH)

    def load(self) -> ProgramConfig:
        return load_checked_program(self.path)


class ClockResource(dg.ConfigurableResource):
    """The batch's notion of "now" (naive UTC). Pinned in tests and replays, the wall clock otherwise."""

    fixed_now: str | None = None

    def now(self) -> datetime:
        if self.fixed_now:
            return datetime.fromisoformat(self.fixed_now).replace(tzinfo=None)
        return datetime.now(UTC).replace(tzinfo=None)
