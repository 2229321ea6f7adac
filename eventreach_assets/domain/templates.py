"""Versioned email templates on disk, the language each marketplace reads, and dates worded for it.

Pure code, no Dagster. A missing translation falls back to English and says so, and dates are
worded in the language actually used, so a message never mixes two languages.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import jinja2

from eventreach_assets.domain.campaigns import to_local
from eventreach_assets.domain.email_wire import one_line

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
DEFAULT_LANGUAGE = "en"
INVITATION_TEMPLATE = "event-invitation-v3"
DAY_OF_TEMPLATE = "event-day-of-v1"
SURVEY_TEMPLATE = "event-survey-v1"
UPDATE_TEMPLATE = "event-update-v1"
CANCELLATION_TEMPLATE = "event-cancellation-v1"
WAITLIST_CONFIRMATION_TEMPLATE = "event-waitlist-confirmation-v1"
MARKETPLACE_LANGUAGE: dict[str, str] = {
    "US": "en",
    "UK": "en",
    "GB": "en",
    "AU": "en",
    "IN": "en",
    "DE": "de",
    "FR": "fr",
    "JP": "ja",
    "BR": "pt",
}


def language_for(marketplace: str | None) -> str:
    """The language a marketplace's customers read; English when the marketplace is unknown."""
    return MARKETPLACE_LANGUAGE.get((marketplace or "").upper(), DEFAULT_LANGUAGE)


class RenderedTemplate(NamedTuple):
    subject: str
    text: str
    html: str
    used_language: str
    fell_back: bool  # the requested language had no translation; English was used


class TemplateSet:
    """Versioned templates on disk: `<directory>/<template_id>/<language>/{subject.txt,body.txt,body.html}`.

    HTML is autoescaped (event names and customer data are untrusted); undefined variables fail
    loudly instead of rendering an empty greeting.
    """

    FILES = ("subject.txt", "body.txt", "body.html")

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else TEMPLATES_DIR
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.directory),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )
        self._languages: dict[str, list[str]] = {}

    def languages(self, template_id: str) -> list[str]:
        """Languages with a complete translation of `template_id` (read once per TemplateSet)."""
        if template_id not in self._languages:
            root = self.directory / template_id
            found = [] if not root.is_dir() else [p for p in root.iterdir() if p.is_dir()]
            self._languages[template_id] = sorted(
                p.name for p in found if all((p / name).is_file() for name in self.FILES)
            )
        return self._languages[template_id]

    def resolve(self, template_id: str, language: str) -> str:
        """The language that will be used for `language`: itself if translated, else English."""
        available = self.languages(template_id)
        if DEFAULT_LANGUAGE not in available:
            raise LookupError(f"template {template_id!r} has no {DEFAULT_LANGUAGE!r} version in {self.directory}")
        return language if language in available else DEFAULT_LANGUAGE

    def render(self, template_id: str, language: str, context: dict[str, Any]) -> RenderedTemplate:
        """Render one message; a missing translation falls back to English and says so."""
        used = self.resolve(template_id, language)

        def render(name: str) -> str:
            return self.environment.get_template(f"{template_id}/{used}/{name}").render(**context)

        return RenderedTemplate(
            subject=one_line(render("subject.txt")),
            text=render("body.txt").strip() + "\n",
            html=render("body.html"),
            used_language=used,
            fell_back=used != language,
        )


# ---- localized dates -------------------------------------------------------------------

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
}
_WEEKDAYS = {
    "en": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
    "de": "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
    "fr": "lundi mardi mercredi jeudi vendredi samedi dimanche",
}


def local_when(moment_utc: datetime, timezone: str | None, language: str) -> dict[str, str]:
    """Date, time and both together in the customer's timezone, worded for `language`.

    Languages without a table here use English wording (the template fell back to English too).
    """
    local = to_local(moment_utc, timezone)
    lang = language if language in _MONTHS else DEFAULT_LANGUAGE
    month = _MONTHS[lang].split()[local.month - 1]
    weekday = _WEEKDAYS[lang].split()[local.weekday()]
    zone_name = local.tzname() or "UTC"
    if lang == "de":
        day = f"{weekday}, {local.day}. {month} {local.year}"
        clock = f"{local:%H:%M} Uhr ({zone_name})"
        both = f"{day} um {clock}"
    elif lang == "fr":
        day = f"{weekday} {local.day} {month} {local.year}"
        clock = f"{local.hour}h{local:%M} ({zone_name})"
        both = f"{day} à {clock}"
    else:
        day = f"{weekday}, {month} {local.day}, {local.year}"
        clock = f"{(local.hour % 12) or 12}:{local:%M} {'AM' if local.hour < 12 else 'PM'} {zone_name}"
        both = f"{day} at {clock}"
    return {"event_date": day, "event_time": clock, "event_when": both, "event_timezone": str(timezone or "UTC")}
