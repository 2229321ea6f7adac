"""The campaign report's pictures and its standalone HTML page (pure: bytes and text out, no I/O).

Charts are drawn with matplotlib's object API on an Agg canvas (`Figure` + `FigureCanvasAgg`),
not pyplot: no global figure registry to leak into or to close, no backend switched under
whoever imported us, safe in a run's threads. Same input, same size, same bytes (no timestamp or
version in the PNG). The HTML embeds the charts as data URIs and escapes every table cell, so the
file opens anywhere with no external asset; it is meant for aggregates only and refuses tables
with a personal-data column.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_SIZE = (8.0, 4.5)  # inches
DPI = 100  # so every chart is 800 x 450 pixels
FUNNEL_STAGES: tuple[str, ...] = ("sent", "opened", "clicked", "registered", "attended")
UNATTRIBUTED = "unattributed"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
# Columns that identify or describe a person: never in a report page.
PII_COLUMNS = frozenset({"customer_id", "email", "comment", "recipient", "token", "raw", "provider_message_id"})


def _png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _figure(title: str) -> tuple[Figure, Any]:
    # matplotlib is imported when a chart is drawn: ~0.9 s and ~25 MB that every run worker
    # importing the code location would otherwise pay, and only the report draws.
    from matplotlib.figure import Figure

    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _grouped_bars(axes: Any, groups: Sequence[str], series: Mapping[str, Sequence[float]], horizontal: bool) -> None:
    """One bar per series in each group, labelled with its value."""
    from matplotlib.ticker import MaxNLocator

    width = 0.8 / max(1, len(series))
    for index, (name, values) in enumerate(series.items()):
        positions = [group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))]
        draw = axes.barh if horizontal else axes.bar
        bars = draw(positions, values, width, label=name, color=PALETTE[index % len(PALETTE)])
        axes.bar_label(bars, labels=[f"{value:,.0f}" for value in values], fontsize=8, padding=2)
    ticks = list(range(len(groups)))
    if horizontal:
        axes.set_yticks(ticks, list(groups))
        axes.invert_yaxis()
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        axes.set_xticks(ticks, list(groups))
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(series) > 1:  # beside the plot, never over a bar
        axes.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def funnel_chart_png(report: pl.DataFrame) -> bytes:
    """The funnel per channel (messages sent, opened, clicked; customers registered, attended) as
    a PNG, from `channel_report.channel_report`'s table: the shape the events team compares channels by.

    The "all" row is left out (it is the channels' sum and would flatten them).
    """
    missing = [name for name in ("channel", *FUNNEL_STAGES) if name not in report.columns]
    if missing:
        raise ValueError(f"funnel chart needs report columns {missing}")
    channels = report.filter(pl.col("channel") != "all")
    figure, axes = _figure("Funnel by channel")
    series = {
        row["channel"]: [float(row[stage] or 0) for stage in FUNNEL_STAGES]
        for row in channels.select("channel", *FUNNEL_STAGES).iter_rows(named=True)
    }
    _grouped_bars(axes, FUNNEL_STAGES, series, horizontal=False)
    axes.set_ylabel("messages / customers")
    return _png(figure)


def attribution_chart_png(attribution: pl.DataFrame) -> bytes:
    """Registrations credited to each channel as a PNG: why each channel earns its budget.

    Takes either `attribution.attribute_registrations`'s rows (one per registration; several `rule`s
    side by side if the frame holds them) or counts already made (`channel`, `registrations`).
    A null channel is shown as "unattributed".
    """
    if "channel" not in attribution.columns:
        raise ValueError(f"attribution chart needs a channel column (has {attribution.columns})")
    channel = pl.col("channel").cast(pl.String).fill_null(UNATTRIBUTED)
    counted = "registrations" in attribution.columns
    rule = pl.col("rule").cast(pl.String) if "rule" in attribution.columns else pl.lit("registrations")
    value = pl.col("registrations").sum() if counted else pl.len()
    counts = (
        attribution.select(channel, rule.alias("rule"), *(["registrations"] if counted else []))
        .group_by("channel", "rule")
        .agg(value.cast(pl.Float64).alias("count"))
    )
    channels = sorted(counts["channel"].unique().to_list(), key=lambda name: (name == UNATTRIBUTED, name))
    rules = sorted(counts["rule"].unique().to_list())
    lookup = {(row[0], row[1]): row[2] for row in counts.iter_rows()}
    series = {name: [lookup.get((group, name), 0.0) for group in channels] for name in rules}
    figure, axes = _figure("Registrations by attributed channel")
    _grouped_bars(axes, channels, series, horizontal=True)
    axes.set_xlabel("registrations")
    return _png(figure)


# ---- HTML ------------------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; }
th { background: #f3f3f3; text-align: left; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #555; }
img { max-width: 100%; height: auto; }
"""


def format_cell(value: Any) -> str:
    """A value as a table cell shows it: thousands separators, at most 4 decimals, "-" for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "∞" if value > 0 else "-∞"
        text = f"{value:,.4f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _table(name: str, frame: pl.DataFrame) -> str:
    personal = sorted(PII_COLUMNS & {column.lower() for column in frame.columns})
    if personal:
        raise ValueError(f"table {name!r} has personal-data columns {personal}: the report takes aggregates only")
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    head = "".join(f"<th>{html.escape(column)}</th>" for column in frame.columns)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="number">{html.escape(format_cell(cell))}</td>'
            if is_number
            else f"<td>{html.escape(format_cell(cell))}</td>"
            for cell, is_number in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in frame.iter_rows()
    )
    return f"<h2>{html.escape(name)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _chart(name: str, png: bytes) -> str:
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError(f"chart {name!r} is not a PNG")
    data = base64.b64encode(png).decode("ascii")
    label = html.escape(name)
    return f'<figure><img alt="{label}" src="data:image/png;base64,{data}"><figcaption>{label}</figcaption></figure>'


def html_report(title: str, tables: Mapping[str, pl.DataFrame], charts: Mapping[str, bytes], notes: list[str]) -> str:
    """A standalone HTML page: title, notes, charts (PNG data URIs), then the tables, in the
    mappings' order. Everything from the inputs is escaped; nothing is fetched when it opens, so
    it can be mailed or archived as one file. Tables with a personal-data column (PII_COLUMNS)
    are refused: the page is for aggregates, and is shared more widely than the stores are.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if notes:
        parts.append("<ul>\n" + "\n".join(f"<li>{html.escape(note)}</li>" for note in notes) + "\n</ul>")
    parts += [_chart(name, png) for name, png in charts.items()]
    parts += [_table(name, frame) for name, frame in tables.items()]
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
