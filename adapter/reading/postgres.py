"""PostgreSQL: a period's usage in one statement and one scan of its reports.

Reports inside the period come back aggregated per meter by the server (exact NUMERIC
sums), so a billing period of hundreds of reports costs one short row per meter. Reports
that straddle an edge of the period come back as rows, for the caller to open up. The
``last``-only aggregates, which need a sort, are computed only for ``last`` meters, with
the ids of the reports holding the newest event time (``newest_ids``: several when the
newest time is a tie, which the caller settles by event id).
"""

from __future__ import annotations

import sqlalchemy as sa

from adapter.store.models import UtcDateTime

PERIOD_SQL = sa.text(
    """
WITH r AS MATERIALIZED (
    SELECT id, meter_id, status, total, events, max_value, last_value, last_at, sent_value,
        sent_timestamp,
        window_start >= :start AND window_end <= :end AS covered
    FROM usage_report
    WHERE account_id = :account_id AND meter_id = ANY(:meter_ids)
        AND window_end > :start AND window_start < :end AND events > 0
), s AS (
    SELECT r.*, COALESCE(sent_value, CASE
        WHEN meter_id = ANY(:count_ids) THEN events::numeric
        WHEN meter_id = ANY(:max_ids) THEN max_value
        WHEN meter_id = ANY(:last_ids) THEN last_value
        ELSE total END) AS sent,
        meter_id = ANY(:last_ids) AS is_last,
        last_at = max(last_at) OVER (PARTITION BY meter_id) AS at_newest
    FROM r WHERE covered
)
SELECT false AS straddling, meter_id, NULL::bigint AS id, NULL::varchar AS status,
    sum(total) AS total, sum(events)::bigint AS events, max(max_value) AS max_value,
    (array_agg(last_value ORDER BY last_at DESC, id DESC) FILTER (WHERE is_last))[1] AS last_value,
    max(last_at) AS last_at,
    COALESCE((array_agg(id ORDER BY last_at DESC, id DESC) FILTER (WHERE is_last))[1],
        max(id)) AS last_id,
    count(*) FILTER (WHERE status = 'sent') AS sent_reports,
    sum(sent) FILTER (WHERE status = 'sent') AS sent_sum,
    max(sent) FILTER (WHERE status = 'sent') AS sent_max,
    (array_agg(sent ORDER BY sent_timestamp DESC NULLS LAST, id DESC)
        FILTER (WHERE status = 'sent' AND is_last))[1] AS sent_last,
    max(sent_timestamp) FILTER (WHERE status = 'sent') AS sent_last_at,
    COALESCE((array_agg(id ORDER BY sent_timestamp DESC NULLS LAST, id DESC)
        FILTER (WHERE status = 'sent' AND is_last))[1],
        max(id) FILTER (WHERE status = 'sent')) AS sent_last_id,
    array_agg(id) FILTER (WHERE is_last AND at_newest) AS newest_ids,
    NULL::timestamptz AS sent_timestamp
FROM s GROUP BY meter_id
UNION ALL
SELECT true, meter_id, id, status, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, sent_timestamp
FROM r WHERE NOT covered
"""
).columns(last_at=UtcDateTime(), sent_last_at=UtcDateTime(), sent_timestamp=UtcDateTime())
