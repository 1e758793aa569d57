"""``metersync sync``: backfill the mirror from Stripe's lists, or replay missed events.

:func:`sync` reads meters, prices, customers, subscriptions and invoices, in that order
(each may refer to the ones before), and hands every object to the mirror. After each
page it stores the page's last id in ``sync_state`` in its own transaction, so a run that
stops resumes after the last finished page. Stripe lists newest first, so resuming with
``starting_after`` skips only objects created after the first run began; the webhooks
bring those, and the next full pass (a finished resource starts over) reads them too.

:func:`sync_events` reads ``/v1/events`` newest first back to where its last complete run
began (less an overlap; the first run goes back as far as Stripe keeps events), stores
each as a delivery (one already stored is skipped), then applies the new ones oldest
first. Stripe keeps events for 30 days: older ones that were missed cannot be recovered
this way; :func:`sync` re-reads the objects instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, cast

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql, sqlite

from adapter.errors import MetersyncError
from adapter.gateway import Gateway, Page, PermanentError, StripeCallError, read_pace
from adapter.mirror import deliveries
from adapter.store.mirror_models import SyncState, WebhookDelivery
from adapter.store.models import table, utcnow

if TYPE_CHECKING:
    from adapter.mirror.context import Processed, Refetch
    from adapter.pushing.library import Library

log = structlog.get_logger("metersync.sync")

#: What ``sync`` reads, in dependency order, and the Stripe list behind each name.
LISTS = {
    "meters": "billing.meters",
    "prices": "prices",
    "customers": "customers",
    "subscriptions": "subscriptions",
    "invoices": "invoices",
}
RESOURCES: tuple[str, ...] = tuple(LISTS)
#: The ``sync_state`` row of ``sync_events``; its cursor is the newest event id of the
#: last complete run.
EVENTS = "events"
#: Events this far before the last run's newest are read again: Stripe's list may show an
#: event a little after its ``created``, and a duplicate costs one skipped insert.
EVENT_OVERLAP = timedelta(minutes=5)
#: How many failure texts a summary keeps per resource.
FAILURES_KEPT = 10

#: ``(resource, objects read so far, finished)``, after every page.
Progress = Callable[[str, int, bool], None]
_STATE = table(SyncState)
_DELIVERIES = table(WebhookDelivery)


class Mirror(Protocol):
    """What ``sync`` needs from the mirror: :mod:`adapter.mirror.process`, or a fake."""

    def sync_object(
        self,
        ms: Library,
        obj: dict[str, Any],
        *,
        read_at: datetime | None = None,
        refetch: Refetch | None = None,
    ) -> Processed: ...

    def process_delivery(
        self, ms: Library, delivery_id: int, *, refetch: Refetch | None = None
    ) -> Processed: ...


@dataclass
class ResourceSummary:
    """What one resource's pass did."""

    resource: str
    listed: int = 0
    pages: int = 0
    #: How the mirror took each object (``processed``, ``skipped``, ``failed``...).
    statuses: dict[str, int] = field(default_factory=dict)
    #: The first few ``id: error`` texts of objects the mirror could not apply.
    failures: list[str] = field(default_factory=list)
    #: The stored cursor this pass resumed after, if it did.
    resumed_after: str | None = None
    complete: bool = False
    #: Events only: deliveries this run stored (the rest were stored already).
    new: int = 0

    def count(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def fail(self, what: str, error: MetersyncError) -> None:
        self.count("failed")
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append(f"{what}: {error}")


@dataclass
class SyncSummary:
    """What a sync did, per resource, and the reports it closed and pushed."""

    resources: list[ResourceSummary] = field(default_factory=list)
    to_push: list[int] = field(default_factory=list)
    #: Push outcomes by status; empty when nothing was pushed (or no Stripe key).
    pushed: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (``metersync sync --json``)."""
        return asdict(self)


class SyncStopped(MetersyncError):
    """A Stripe call failed mid-sync; finished pages are kept, so a rerun resumes."""

    def __init__(self, cause: StripeCallError, *, resource: str, summary: SyncSummary) -> None:
        said = str(cause)
        if cause.request_id and cause.request_id not in said:
            said += f" [request {cause.request_id}]"
        rerun = (
            "stored events are kept; run `metersync sync --events` again"
            if resource == EVENTS
            else "finished pages are kept; run `metersync sync` again to resume"
        )
        super().__init__(f"sync of {resource} stopped: {said} ({rerun})")
        self.cause = cause
        self.resource = resource
        self.summary = summary


def sync(  # noqa: PLR0913  the library and its gateway, then keyword-only options
    ms: Library,
    gateway: Gateway,
    *,
    resources: Iterable[str] = RESOURCES,
    progress: Progress | None = None,
    restart: bool = False,
    pace: Callable[[], None] | None = None,
    mirror: Mirror | None = None,
) -> SyncSummary:
    """Read ``resources`` from Stripe into the mirror, resuming an interrupted pass unless
    ``restart``; raises :class:`SyncStopped` when a Stripe call fails. ``pace`` runs before
    every request (default: 80 % of Stripe's read limit)."""
    wanted = set(resources)
    if unknown := wanted - set(LISTS):
        raise MetersyncError(f"cannot sync {', '.join(sorted(unknown))}; known: {', '.join(LISTS)}")
    mirror = mirror or _mirror()
    paced = gateway.paced(pace or read_pace(ms.settings))
    summary = SyncSummary()
    for resource in (name for name in RESOURCES if name in wanted):
        result = ResourceSummary(resource)
        summary.resources.append(result)
        try:
            _pass(ms, paced, result, summary, mirror=mirror, restart=restart, progress=progress)
        except StripeCallError as error:
            summary.pushed = _push(ms, summary.to_push)
            raise SyncStopped(error, resource=resource, summary=summary) from error
    summary.pushed = _push(ms, summary.to_push)
    return summary


def _pass(  # noqa: PLR0913  one resource's pass: its state and keyword-only options
    ms: Library,
    gateway: Gateway,
    result: ResourceSummary,
    summary: SyncSummary,
    *,
    mirror: Mirror,
    restart: bool,
    progress: Progress | None,
) -> None:
    """Page through one resource, storing the cursor after every page."""
    resource = result.resource
    cursor, total = (None, 0) if restart else _resume(ms.engine, resource)
    result.resumed_after = cursor
    while True:
        # Taken before the request: an event Stripe created while it ran counts as newer
        # than this read, so the mirror never lets the read overwrite it.
        read_at = utcnow()
        page = _page(gateway, resource, cursor, resumed=result.resumed_after is not None)
        if page is None:  # the stored cursor is gone at Stripe: start the pass over
            cursor, total, result.resumed_after = None, 0, None
            continue
        for obj in page.objects:
            try:
                processed = mirror.sync_object(ms, obj, read_at=read_at, refetch=None)
            except StripeCallError:
                raise
            except MetersyncError as error:  # this object cannot be mirrored; the rest can
                log.warning(
                    "sync.object_failed", resource=resource, id=obj.get("id"), error=str(error)
                )
                result.fail(str(obj.get("id")), error)
                continue
            result.count(processed.status)
            summary.to_push.extend(processed.to_push)
        result.pages += 1
        result.listed += len(page.objects)
        total += len(page.objects)
        result.complete = not page.has_more or page.last_id is None
        cursor = page.last_id or cursor
        _save(ms.engine, resource, cursor=cursor, done=result.complete, count=total)
        if progress is not None:
            progress(resource, result.listed, result.complete)
        if result.complete:
            log.info("sync.resource", resource=resource, listed=result.listed, total=total)
            return


def _page(gateway: Gateway, resource: str, cursor: str | None, *, resumed: bool) -> Page | None:
    """The page after ``cursor``; ``None`` when a resumed cursor no longer exists."""
    try:
        return gateway.list_page(LISTS[resource], starting_after=cursor)
    except PermanentError as error:
        if cursor is None or not resumed or error.code != "resource_missing":
            raise
        log.warning("sync.cursor_gone", resource=resource, cursor=cursor)
        return None


def sync_events(  # noqa: PLR0913  the library and its gateway, then keyword-only options
    ms: Library,
    gateway: Gateway,
    *,
    progress: Progress | None = None,
    restart: bool = False,
    pace: Callable[[], None] | None = None,
    mirror: Mirror | None = None,
) -> SyncSummary:
    """Store the events Stripe still has (30 days) that are not stored yet, back to the
    last complete run (to the horizon with ``restart``), then apply them oldest first."""
    mirror = mirror or _mirror()
    paced = gateway.paced(pace or read_pace(ms.settings))
    result = ResourceSummary(EVENTS)
    summary = SyncSummary([result])
    since = None if restart else _events_mark(ms.engine)
    try:
        newest = _store_events(ms, paced, result, since=since, progress=progress)
        if newest is not None:
            _save(ms.engine, EVENTS, cursor=newest, done=True, count=result.new)
        for delivery_id in _pending(ms.engine):
            try:
                processed = mirror.process_delivery(ms, delivery_id, refetch=paced.retrieve)
            except StripeCallError:
                raise  # Stripe is unreachable for refetches: stop, the delivery stays pending
            except MetersyncError as error:  # stored on the delivery by the mirror
                result.fail(f"delivery {delivery_id}", error)
                continue
            result.count(processed.status)
            summary.to_push.extend(processed.to_push)
    except StripeCallError as error:
        summary.pushed = _push(ms, summary.to_push)
        raise SyncStopped(error, resource=EVENTS, summary=summary) from error
    result.complete = True
    log.info("sync.events", listed=result.listed, new=result.new, **result.statuses)
    summary.pushed = _push(ms, summary.to_push)
    return summary


def _store_events(
    ms: Library,
    gateway: Gateway,
    result: ResourceSummary,
    *,
    since: datetime | None,
    progress: Progress | None,
) -> str | None:
    """Store events newest first until one older than ``since`` less the overlap; returns
    the newest event id seen. An interrupted run is simply run again: the mark only moves
    when a run gets to the end, so nothing between is lost."""
    stop = None if since is None else int((since - EVENT_OVERLAP).timestamp())
    newest: str | None = None
    cursor: str | None = None
    while True:
        page = gateway.list_page("events", starting_after=cursor)
        result.pages += 1
        reached = False
        for event in page.objects:
            newest = newest or str(event["id"])
            if stop is not None and int(event["created"]) < stop:
                reached = True
                break
            result.listed += 1
            if deliveries.store(ms.engine, event, source="sync") is not None:
                result.new += 1
        if progress is not None:
            progress(EVENTS, result.listed, False)
        if reached or not page.has_more or page.last_id is None:
            return newest
        cursor = page.last_id


def _pending(engine: sa.Engine) -> list[int]:
    """Deliveries stored by a sync and not applied yet, oldest first. Within one second a
    later row came later in a newest-first list, so it is the older event."""
    query = (
        sa.select(_DELIVERIES.c.id)
        .where(_DELIVERIES.c.source == "sync", _DELIVERIES.c.status == "received")
        .order_by(_DELIVERIES.c.created.asc(), _DELIVERIES.c.id.desc())
    )
    with engine.connect() as conn:
        return list(conn.execute(query).scalars())


def _events_mark(engine: sa.Engine) -> datetime | None:
    """``created`` of the newest event the last complete ``sync_events`` run began from."""
    query = (
        sa.select(_DELIVERIES.c.created)
        .select_from(_STATE.join(_DELIVERIES, _DELIVERIES.c.event_id == _STATE.c.cursor))
        .where(_STATE.c.resource == EVENTS, _STATE.c.done.is_(True))
    )
    with engine.connect() as conn:
        return cast("datetime | None", conn.execute(query).scalar_one_or_none())


def _resume(engine: sa.Engine, resource: str) -> tuple[str | None, int]:
    """The cursor and count of an unfinished pass of ``resource``, else ``(None, 0)``."""
    query = sa.select(_STATE.c.cursor, _STATE.c.count).where(
        _STATE.c.resource == resource, _STATE.c.done.is_(False)
    )
    with engine.connect() as conn:
        row = conn.execute(query).one_or_none()
    if row is None or row[0] is None:
        return None, 0
    return str(row[0]), int(row[1])  # by position: a Row's ``count`` is tuple.count


def _save(engine: sa.Engine, resource: str, *, cursor: str | None, done: bool, count: int) -> None:
    """Store where ``resource`` got to, in a transaction of its own."""
    values = {"cursor": cursor, "done": done, "count": count, "updated_at": utcnow()}
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(_STATE)
        .values(resource=resource, **values)
        .on_conflict_do_update(index_elements=["resource"], set_=values)
    )
    with engine.begin() as conn:
        conn.execute(stmt)


def _push(ms: Library, report_ids: list[int]) -> dict[str, int]:
    """Push the reports the mirror closed, when a Stripe key is configured; otherwise the
    worker (or ``metersync report now``) pushes them."""
    if not report_ids or ms.gateway() is None:
        return {}
    pusher = ms.pusher()
    return dict(Counter(pusher.push(report_id).status for report_id in dict.fromkeys(report_ids)))


def _mirror() -> Mirror:
    """The webhook mirror, imported on first use: it loads every resource handler."""
    from adapter.mirror import process  # noqa: PLC0415  loads every resource handler

    return process
