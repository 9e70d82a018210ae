//! Queries. Each runs inside one SQLite read transaction, so a range and the revision it reports
//! come from the same snapshot.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::types::{Event, EventKind, KeyRange, KeyValue, RangeRequest, RangeResponse};

/// The current and the compacted revision.
pub(crate) fn meta(conn: &Connection) -> Result<(i64, i64)> {
    let get = |name: &str| {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get::<_, i64>(0)
        })
    };
    Ok((get("revision")?, get("compacted")?))
}

/// One key's current state.
pub(crate) fn current(conn: &Connection, key: &[u8]) -> Result<Option<KeyValue>> {
    Ok(conn
        .query_row(
            "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key = ?1",
            [key],
            row_to_kv,
        )
        .optional()?)
}

fn row_to_kv(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: r.get(0)?,
        value: r.get(1)?,
        create_revision: r.get(2)?,
        mod_revision: r.get(3)?,
        version: r.get(4)?,
    })
}

/// The upper bound of a key range as SQL on parameter ?2. Written out only when there is one:
/// SQLite cannot bound an index search by `(?2 IS NULL OR key < ?2)`, so every read — a get of
/// one key too — scanned from its key to the end of the table.
fn upper(column: &str, bounded: bool) -> String {
    if bounded {
        format!("{column} < ?2")
    } else {
        "?2 IS NULL".to_string()
    }
}

/// The current values in [?1, ?2), at most ?3 of them.
fn current_rows_sql(value: &str, below: &str) -> String {
    format!(
        "SELECT key, {value}, create_rev, mod_rev, version FROM kv
         WHERE key >= ?1 AND {below} ORDER BY key LIMIT ?3"
    )
}

/// Current keys of a range (for a transaction's delete, inside the write transaction).
pub(crate) fn current_range(conn: &Connection, range: &KeyRange) -> Result<Vec<KeyValue>> {
    let (start, end) = range.bounds();
    let below = upper("key", end.is_some());
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT key, value, create_rev, mod_rev, version FROM kv WHERE key >= ?1 AND {below} ORDER BY key"
    ))?;
    let rows = stmt.query_map(params![start, end], row_to_kv)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A range, now or at a past revision. `conn` must be inside a transaction.
pub(crate) fn range(conn: &Connection, req: &RangeRequest) -> Result<RangeResponse> {
    req.range.validate()?;
    let (current, compacted) = meta(conn)?;
    let at = req.revision.filter(|r| *r > 0).unwrap_or(current);
    if at > current {
        return Err(Error::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < compacted {
        return Err(Error::Compacted {
            requested: at,
            compacted,
        });
    }
    let (start, end) = req.range.bounds();
    let fetch = if req.limit == 0 {
        -1
    } else {
        req.limit as i64 + 1
    };
    let value = if req.keys_only { "x''" } else { "value" };
    let below = upper("key", end.is_some());
    let below_l = upper("l.key", end.is_some());
    let (rows_sql, count_sql) = if at == current {
        (
            current_rows_sql(value, &below),
            format!("SELECT count(*) FROM kv WHERE key >= ?1 AND {below}"),
        )
    } else {
        let latest = "l.rev = (SELECT max(rev) FROM log m WHERE m.key = l.key AND m.rev <= ?4) AND l.deleted = 0";
        (
            format!(
                "SELECT l.key, l.{value}, l.create_rev, l.rev, l.version FROM log l
                 WHERE l.key >= ?1 AND {below_l} AND l.rev <= ?4 AND {latest}
                 ORDER BY l.key LIMIT ?3"
            ),
            format!(
                "SELECT count(*) FROM log l WHERE l.key >= ?1 AND {below_l} AND l.rev <= ?4 AND {latest}"
            ),
        )
    };
    let mut kvs: Vec<KeyValue> = if at == current {
        let mut stmt = conn.prepare_cached(&rows_sql)?;
        stmt.query_map(params![start, end, fetch], row_to_kv)?
            .collect::<rusqlite::Result<_>>()?
    } else {
        let mut stmt = conn.prepare_cached(&rows_sql)?;
        stmt.query_map(params![start, end, fetch, at], row_to_kv)?
            .collect::<rusqlite::Result<_>>()?
    };
    let more = req.limit > 0 && kvs.len() > req.limit;
    if more {
        kvs.truncate(req.limit);
    }
    let count = if more {
        if at == current {
            conn.query_row(&count_sql, params![start, end], |r| r.get(0))?
        } else {
            // The count has no LIMIT but binds the revision as ?4, like the rows query.
            conn.query_row(&count_sql, params![start, end, fetch, at], |r| r.get(0))?
        }
    } else {
        kvs.len() as i64
    };
    Ok(RangeResponse {
        kvs,
        more,
        count,
        revision: current,
    })
}

/// The changes to `range` with revisions in `[from, to]`, in order, each with its previous
/// value, grouped by revision. `conn` must be inside a transaction.
pub(crate) fn changes(
    conn: &Connection,
    range: &KeyRange,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, Vec<Event>)>> {
    let (start, end) = range.bounds();
    let mut stmt = conn.prepare_cached(
        "SELECT rev, key, deleted, value, create_rev, version FROM log
         WHERE rev >= ?1 AND rev <= ?2 AND +key >= ?3 AND (?4 IS NULL OR +key < ?4) ORDER BY rev, seq",
    )?;
    let rows = stmt.query_map(params![from, to, start, end], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, bool>(2)?,
            r.get::<_, Vec<u8>>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
        ))
    })?;
    let mut prev_stmt = conn.prepare_cached(
        "SELECT rev, deleted, value, create_rev, version FROM log WHERE key = ?1 AND rev < ?2 ORDER BY rev DESC LIMIT 1",
    )?;
    let mut out: Vec<(i64, Vec<Event>)> = Vec::new();
    for row in rows {
        let (rev, key, deleted, value, create_rev, version) = row?;
        let prev_kv = prev_stmt
            .query_row(params![key, rev], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()?
            .and_then(
                |(prev_rev, prev_deleted, value, create_revision, version)| {
                    (!prev_deleted).then(|| KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: prev_rev,
                        version,
                    })
                },
            );
        let event = if deleted {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key,
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
                prev_kv,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key,
                    value,
                    create_revision: create_rev,
                    mod_revision: rev,
                    version,
                },
                prev_kv,
            }
        };
        match out.last_mut() {
            Some((r, events)) if *r == rev => events.push(event),
            _ => out.push((rev, vec![event])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query plan's details, one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args = params![b"/a".to_vec(), b"/a\0".to_vec(), -1];
        let rows = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
        rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_bounded_range_is_searched_between_both_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::schema::open_writer(&dir.path().join("s.db")).unwrap();
        // A get is the range [key, key+\0): the search must stop at the upper bound, not scan
        // to the end of the table.
        let bounded = plan(&conn, &current_rows_sql("value", &upper("key", true)));
        assert!(bounded.contains("key>? AND key<?"), "{bounded}");
        // Negative control: the condition this replaced bounds the search below only.
        let old = plan(
            &conn,
            &current_rows_sql("value", "(?2 IS NULL OR key < ?2)"),
        );
        assert!(old.contains("key>?") && !old.contains("key<?"), "{old}");
    }
}
