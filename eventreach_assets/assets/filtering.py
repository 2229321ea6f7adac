"""Step 2 of the weekly batch: the program's filter chain, with a funnel and reasons kept."""

from datetime import datetime

import dagster as dg
import polars as pl

from eventreach_assets.assets.extraction import BATCH, current_event
from eventreach_assets.assets.metadata import stopwatch, table
from eventreach_assets.domain.filters import FilterInputs, build_filter_chain, history_window, run_filter_chain
from eventreach_assets.resources.decision_log import DecisionLogResource
from eventreach_assets.resources.ledger import DeliveryLedgerResource
from eventreach_assets.resources.program import ClockResource, ProgramResource
from eventreach_assets.resources.warehouse import WarehouseResource


def filter_inputs(
    warehouse: WarehouseResource,
    ledger: DeliveryLedgerResource,
    program: ProgramResource,
    clock: ClockResource,
    partition_key: str,
) -> FilterInputs:
    """What the chain needs besides the candidates: the event, registrations, past invitations.

    Past invitations are the warehouse's history plus what this system sent since (the
    delivery ledger), so the frequency cap counts this week's sends before the warehouse has them;
    as far back as the program's chain reads them (`history_window`), and not at all without a
    filter that does. The warehouse's three reads share one session (one connection or login, not
    three).
    """
    now = clock.now()
    config = program.load()
    window = history_window(build_filter_chain(config))
    with warehouse.reading():
        event = current_event(warehouse, partition_key)
        history = {} if window is None else {"invitations": invitations_since(warehouse, ledger, now - window)}
        registrations = warehouse.event_registrations(event.event_id).lazy()
    return FilterInputs(
        event=event,
        as_of=now,
        capacity_limit=config.event_config.capacity_limit,
        registrations=registrations,
        **history,
    )


INVITATION_KEYS = ("customer_id", "invited_at")  # what the chain and its policy check count


def invitations_since(warehouse: WarehouseResource, ledger: DeliveryLedgerResource, since: datetime) -> pl.LazyFrame:
    """Invitations sent since `since`: the warehouse's history and this system's own sends."""
    return pl.concat(
        [
            warehouse.invitation_history(since=since, columns=INVITATION_KEYS).select(
                "customer_id", naive_utc("invited_at")
            ),
            ledger.invitations_since(since).select("customer_id", naive_utc("invited_at")),
        ]
    ).lazy()


def naive_utc(column: str) -> pl.Expr:
    """Timestamps as naive UTC microseconds, whichever way a source stores them."""
    return pl.col(column).dt.convert_time_zone("UTC").dt.replace_time_zone(None).cast(pl.Datetime("us"))


@dg.asset(**BATCH, kinds={"polars"}, tags={"stage": "filter"}, code_version="1")
def filtered_candidates(
    context: dg.AssetExecutionContext,
    raw_candidates: pl.DataFrame,
    warehouse: WarehouseResource,
    decision_log: DecisionLogResource,
    ledger: DeliveryLedgerResource,
    program: ProgramResource,
    clock: ClockResource,
) -> dg.MaterializeResult:
    """Candidates that pass trust, eligibility, interest, geography and frequency cap, in YAML order."""
    with stopwatch() as watch:
        inputs = filter_inputs(warehouse, ledger, program, clock, context.partition_key)
        outcome = run_filter_chain(raw_candidates, build_filter_chain(program.load()), inputs)
        rejections_path = decision_log.write(
            "rejections", inputs.event.event_id, outcome.rejected.with_columns(decided_at=pl.lit(inputs.as_of))
        )
    reasons = outcome.rejected.group_by("filter_id", "reason").len("removed").sort("filter_id", "reason")
    pass_rate = outcome.survivors.height / raw_candidates.height if raw_candidates.height else 0.0
    return dg.MaterializeResult(
        value=outcome.survivors,
        metadata={
            "funnel": table(outcome.funnel),
            "removed_by_reason": table(reasons),
            "input_candidates": raw_candidates.height,
            "eligible_candidates": outcome.survivors.height,
            "filter_pass_rate_pct": round(pass_rate * 100, 2),
            "rejections_path": dg.MetadataValue.path(rejections_path),
            "dagster/row_count": outcome.survivors.height,
            **watch.metadata(raw_candidates.height),
        },
    )
