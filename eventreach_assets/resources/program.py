"""The program configuration and the clock, as resources so tests and deployments can swap them."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from eventreach_assets.program.config import DEFAULT_PROGRAM_PATH, ProgramConfig, load_program


class ProgramResource(dg.ConfigurableResource):
    """Which program YAML drives the run (the packaged event-invitations program by default)."""

    path: str = str(DEFAULT_PROGRAM_PATH)

    def load(self) -> ProgramConfig:
        return load_program(self.path)


class ClockResource(dg.ConfigurableResource):
    """The batch's notion of "now" (naive UTC). Pinned in tests and replays, the wall clock otherwise."""

    fixed_now: str | None = None

    def now(self) -> datetime:
        if self.fixed_now:
            return datetime.fromisoformat(self.fixed_now).replace(tzinfo=None)
        return datetime.now(UTC).replace(tzinfo=None)
