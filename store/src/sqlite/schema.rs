//! The database file: refused unless it is ours (or new), never overwritten.
//!
//! `kv` holds the current value of each key; `log` holds every change (one row per key per
//! revision, deletions as tombstones) for reads at past revisions and for watch replay; `meta`
//! holds the current and the compacted revision. The file is marked with our application id so
//! a foreign SQLite file is never mistaken for a store.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// `PRAGMA application_id`: "TRLS".
const APPLICATION_ID: i64 = 0x5452_4C53;
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE kv (
    key BLOB PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE log (
    rev INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    key BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (rev, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX log_key_rev ON log (key, rev);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
";

fn corrupt(path: &Path, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Opens (creating if absent) the store file for the writer, checking it is ours and intact.
pub(crate) fn open_writer(path: &Path) -> Result<Connection> {
    let existed = path.exists();
    if existed {
        check_header(path)?;
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| corrupt(path, format!("cannot open: {e}")))?;
    let describe = |e: rusqlite::Error| corrupt(path, format!("not a usable store database: {e}"));
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(describe)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(describe)?;
    match (app_id, tables) {
        (APPLICATION_ID, _) => {
            let version: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(describe)?;
            if version != SCHEMA_VERSION {
                return Err(corrupt(
                    path,
                    format!("schema version {version}, this build reads {SCHEMA_VERSION}"),
                ));
            }
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(describe)?;
            if check != "ok" {
                return Err(corrupt(path, format!("integrity check failed: {check}")));
            }
        }
        (0, 0) => {
            // A new (or empty) file: make it ours. auto_vacuum must be set before any table.
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
                .map_err(describe)?;
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(describe)?;
        }
        (other, _) => {
            return Err(corrupt(
                path,
                format!(
                    "a foreign SQLite database (application id {other:#x}, {tables} tables): refusing to touch it"
                ),
            ));
        }
    }
    // WAL with a full sync on commit: an acknowledged write is on disk before we answer.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA journal_size_limit = 67108864; PRAGMA busy_timeout = 5000;",
    )
    .map_err(describe)?;
    Ok(conn)
}

/// Opens a read connection to a file the writer has already checked.
pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("PRAGMA busy_timeout = 5000;")?;
    Ok(conn)
}

/// A non-empty file must start with SQLite's magic: anything else is refused before SQLite
/// (which would treat a zero-filled or foreign file in surprising ways) gets to open it.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::Io {
        what: format!("open {}", path.display()),
        source: e,
    })?;
    let mut head = [0u8; 16];
    let n = f.read(&mut head).map_err(|e| Error::Io {
        what: format!("read {}", path.display()),
        source: e,
    })?;
    if n == 0 {
        return Ok(());
    }
    if n < 16 || &head != b"SQLite format 3\0" {
        return Err(corrupt(
            path,
            "not an SQLite database (bad header): refusing to touch it",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What README's durability claim rests on, beyond the kill -9 test: the connection that
    /// commits runs in WAL mode with a full fsync per commit.
    #[test]
    fn the_writer_commits_in_wal_mode_with_a_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&dir.path().join("store.db")).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "2 is FULL");
    }
}
