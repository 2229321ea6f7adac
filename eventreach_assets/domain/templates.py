"""Versioned email templates on disk, the language each marketplace reads, and dates worded for it.

Pure code, no Dagster. A missing translation falls back to English and says so, and dates are
worded in the language actually used, so a message never mixes two languages.

Templates are compiled once per TemplateSet. A campaign renders thousands of messages from one
template whose only per-recipient variables are a few links and a first name: `segment_renderer`
renders the template once per segment with placeholders for those, and each message only fills
them in (escaped as Jinja would), which is what Jinja would have produced (tests compare both).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import markupsafe
from jinja2 import meta, nodes

from eventreach_assets.domain.campaigns import to_local
from eventreach_assets.domain.email_wire import QuotedPrintablePieces, encoded_text, one_line

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
        self._compiled: dict[str, jinja2.Template] = {}
        self._segments: dict[tuple[Any, ...], SegmentRenderer] = {}

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
            return self.template(f"{template_id}/{used}/{name}").render(**context)

        return RenderedTemplate(
            subject=one_line(render("subject.txt")),
            text=_text_body(render("body.txt")),
            html=render("body.html"),
            used_language=used,
            fell_back=used != language,
        )

    def template(self, name: str) -> jinja2.Template:
        """The compiled template `name`, compiled once (Jinja's own cache stats the file on every use)."""
        compiled = self._compiled.get(name)
        if compiled is None:
            compiled = self._compiled[name] = self.environment.get_template(name)
        return compiled

    def segment_renderer(
        self,
        template_id: str,
        language: str,
        shared: Mapping[str, Any],
        per_recipient: Iterable[str],
        prefixes: Mapping[str, str] | None = None,
    ) -> SegmentRenderer:
        """A renderer of `template_id` in `language` with `shared` (the same for every message of a
        segment) rendered in once; each message passes only the `per_recipient` values. A name in
        `prefixes` stands for that text followed by the value passed (a link's address before its
        token). Cached."""
        names = tuple(sorted(per_recipient))
        try:
            key: tuple[Any, ...] | None = (template_id, language, frozen_context(shared), names,
                                           frozen_context(prefixes or {}))  # fmt: skip
            hash(key)
        except TypeError:
            key = None
        found = self._segments.get(key) if key is not None else None
        if found is None:
            found = SegmentRenderer(self, template_id, language, dict(shared), names, dict(prefixes or {}))
            if key is not None:
                if len(self._segments) >= _MAX_SEGMENTS:
                    self._segments.clear()
                self._segments[key] = found
        return found


def frozen_context(value: Any) -> Any:
    """A hashable stand-in for a template context or value (lists and dicts as tuples), for cache keys."""
    if isinstance(value, Mapping):
        return tuple(sorted((key, frozen_context(item)) for key, item in value.items()))
    if isinstance(value, list | tuple | set | frozenset):
        return tuple(frozen_context(item) for item in value)
    return value


_MAX_SEGMENTS = 1024
_MARK = "\x1a"  # SUB: a slot's delimiter; a template or shared value holding it is rendered by Jinja
_SLOTS = re.compile("\x1a([0-9]+)\x1a")
_MAX_TESTED = 3  # per-recipient names used in {% if %}: one pre-rendered variant per truth value each


class _Slot:
    """Stands for a per-recipient value while the template is rendered once per segment: prints
    as its marker after the value's fixed `prefix` (escaped for HTML as Jinja would), and is true
    or false as the variant being rendered needs."""

    __slots__ = ("html", "marker", "truthy")

    def __init__(self, index: int, truthy: bool, prefix: str = "") -> None:
        self.marker = f"{prefix}{_MARK}{index}{_MARK}"
        self.html = f"{markupsafe.escape(prefix)}{_MARK}{index}{_MARK}"
        self.truthy = truthy

    def __str__(self) -> str:
        return self.marker

    def __html__(self) -> str:
        return self.html

    def __bool__(self) -> bool:
        return self.truthy


class _NotSplittable(Exception):
    """A per-recipient value is used other than as `{{ name }}` or `{% if name %}`."""


def _tested_names(node: nodes.Node, names: frozenset[str]) -> set[str]:
    """The `names` a template tests with `{% if name %}`; _NotSplittable if one is used any other
    way than that or `{{ name }}` (a filter, a comparison, an assignment, an include...)."""
    if isinstance(node, nodes.Include | nodes.Extends | nodes.Import | nodes.FromImport):
        raise _NotSplittable(type(node).__name__)
    tested: set[str] = set()
    for field, value in node.iter_fields():
        for child in value if isinstance(value, list) else [value]:
            if not isinstance(child, nodes.Node):
                continue
            if isinstance(child, nodes.Name) and child.name in names:
                if isinstance(node, nodes.If) and field == "test":
                    tested.add(child.name)
                elif not (isinstance(node, nodes.Output) and field == "nodes"):
                    raise _NotSplittable(child.name)
                continue
            tested |= _tested_names(child, names)
    return tested


class SegmentRenderer:
    """`template_id` in one language with a segment's shared values rendered in once.

    `render(values)` takes the per-recipient values (at least `needs`; for a name with a prefix,
    what follows the prefix) and returns what `TemplateSet.render` would for the shared values
    plus these. Templates that use a per-recipient value other than as `{{ name }}` or
    `{% if name %}` are rendered by Jinja each time.
    """

    def __init__(self, templates: TemplateSet, template_id: str, language: str, shared: dict[str, Any],
                 per_recipient: tuple[str, ...], prefixes: dict[str, str]) -> None:  # fmt: skip
        self._templates, self._template_id, self._shared = templates, template_id, shared
        self._prefixes = {name: prefix for name, prefix in prefixes.items() if name in per_recipient and prefix}
        self.requested = language
        self.used = templates.resolve(template_id, language)
        self.fell_back = self.used != language
        self.needs: frozenset[str] = frozenset(per_recipient)
        self._variants: dict[tuple[bool, ...], tuple[str | _Filler, str | _Filler, str | _Filler]] | None = None
        self._tested: tuple[str, ...] = ()
        try:
            self._split(frozenset(per_recipient))
        except _NotSplittable:
            self._variants = None

    def _split(self, names: frozenset[str]) -> None:
        files = [f"{self._template_id}/{self.used}/{name}" for name in TemplateSet.FILES]
        environment = self._templates.environment
        sources = [environment.loader.get_source(environment, name)[0] for name in files]  # type: ignore[union-attr]
        if any(_MARK in source for source in sources) or _MARK in repr(self._shared):
            raise _NotSplittable(_MARK)
        trees = [environment.parse(source) for source in sources]
        tested = sorted(set().union(*(_tested_names(tree, names) for tree in trees)))
        if len(tested) > _MAX_TESTED or set(tested) & self._prefixes.keys():
            raise _NotSplittable("too many tests, or a test of a prefixed value")
        used = set().union(*(meta.find_undeclared_variables(tree) for tree in trees)) & names
        order = sorted(names)
        variants = {}
        for truths in itertools.product((True, False), repeat=len(tested)):
            truth = dict(zip(tested, truths, strict=True))
            slots = {
                name: _Slot(index, truth.get(name, True), self._prefixes.get(name, ""))
                for index, name in enumerate(order)
            }
            subject, text, html = (self._templates.template(name).render({**self._shared, **slots}) for name in files)
            variants[truths] = (
                self._pieces(subject, order, "subject"),
                self._pieces(text, order, "text"),
                self._pieces(html, order, "html"),
            )
        self._tested, self.needs, self._variants = tuple(tested), frozenset(used), variants

    @staticmethod
    def _pieces(rendered: str, order: list[str], role: str) -> str | _Filler:
        """A file as rendered for the segment: its final text when it has no slot, else its
        literals (quoted-printable encoded once, for bodies) and the names between them."""
        parts = _SLOTS.split(rendered)
        literals, names = parts[0::2], tuple(order[int(index)] for index in parts[1::2])
        if role == "subject":
            return one_line(rendered) if not names else _Filler(tuple(literals), names, None)
        if not names:
            return encoded_text(_text_body(rendered) if role == "text" else rendered)
        strip = (False, False)
        if role == "text":  # _text_body: strip() + "\n", reaching into a value next to the ends
            strip = (not literals[0].strip(), not literals[-1].strip())
            literals[0], literals[-1] = literals[0].lstrip(), literals[-1].rstrip() + "\n"
        return _Filler(tuple(literals), names, QuotedPrintablePieces(tuple(literals)), strip)

    def render(self, values: Mapping[str, Any]) -> RenderedTemplate:
        """The message for one recipient's `values`."""
        if self._variants is None:
            prefixed = {name: f"{self._prefixes.get(name, '')}{value}" if name in self._prefixes else value
                        for name, value in values.items()}  # fmt: skip
            return self._templates.render(self._template_id, self.requested, {**self._shared, **prefixed})
        subject, text, html = self._variants[tuple(bool(values[name]) for name in self._tested)]
        return RenderedTemplate(
            subject=subject if isinstance(subject, str) else one_line(subject.fill(values, escape=False)),
            text=text if isinstance(text, str) else text.fill(values, escape=False),
            html=html if isinstance(html, str) else html.fill(values, escape=True),
            used_language=self.used,
            fell_back=self.fell_back,
        )


class _Filler:
    """A file's literals with per-recipient names between them; `fill` puts the values in (escaped
    as Jinja's autoescape would), encoded as quoted-printable on the way when `encoder` is given.

    `strip` (first, last): the file is a text body whose first (last) literal was all whitespace,
    so `_text_body`'s strip() reaches into the first (last) value.
    """

    def __init__(self, literals: tuple[str, ...], names: tuple[str, ...], encoder: QuotedPrintablePieces | None,
                 strip: tuple[bool, bool] = (False, False)) -> None:  # fmt: skip
        self.literals, self.names, self.encoder, self.strip = literals, names, encoder, strip

    def fill(self, values: Mapping[str, Any], *, escape: bool) -> str:
        texts = [str(markupsafe.escape(values[name])) if escape else str(values[name]) for name in self.names]
        if self.strip[0]:
            texts[0] = texts[0].lstrip()
        if self.strip[1]:
            texts[-1] = texts[-1].rstrip()
        if (self.strip[0] and not texts[0]) or (self.strip[1] and not texts[-1]):  # strip() would go on
            return _text_body(_interleave(self.literals, texts))
        return self.encoder.join(texts) if self.encoder is not None else _interleave(self.literals, texts)


def _interleave(literals: tuple[str, ...], values: list[str]) -> str:
    """literals[0] + values[0] + literals[1] + ... + literals[-1]."""
    return "".join([piece for pair in zip(literals, values, strict=False) for piece in pair] + [literals[-1]])


def _text_body(rendered: str) -> str:
    return rendered.strip() + "\n"


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
    Worked out once per (moment, timezone, language): a campaign asks the same for every message.
    """
    return dict(_local_when(moment_utc, timezone, language))


@lru_cache(maxsize=4096)
def _local_when(moment_utc: datetime, timezone: str | None, language: str) -> tuple[tuple[str, str], ...]:
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
    when = {"event_date": day, "event_time": clock, "event_when": both, "event_timezone": str(timezone or "UTC")}
    return tuple(when.items())
