//! The embedded backend: one SQLite file in WAL mode.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool; one connection behind a
//! mutex is enough because metadata writes are tiny and rare next to the uploads they describe,
//! and it makes each operation trivially serialisable within the process. Other processes
//! sharing the file are serialised by SQLite's own locking (a busy timeout turns short waits
//! into waits, long ones into `Unavailable`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};

use crate::record::{
    from_json, previous_file, sort_files, sort_leases, sort_tokens, sort_videos, to_json,
    unix_ms_now, LockRecord,
};
use crate::{
    FileRecord, MetaError, MetaStore, ResumableUpload, RingLayout, TokenRecord, UploadLease,
    VideoRecord,
};

/// The schema this code reads and writes; stored in `schema_version` so a future version can
/// migrate, and an older binary refuses a newer file instead of misreading it.
pub const SQLITE_SCHEMA_VERSION: i64 = 1;

/// How long a statement waits for another process's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
-- One row (id = 1). `version` is duplicated out of the JSON so compare-and-swap is one UPDATE.
CREATE TABLE IF NOT EXISTS layout (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);
-- Added after version 1 shipped; IF NOT EXISTS creates them in older files when they are opened,
-- and older binaries never look at them, so the version stays 1.
CREATE TABLE IF NOT EXISTS leases (id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resumable (id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);
-- `hash` is duplicated out of the JSON so lookup by hash is indexed and UNIQUE refuses a second
-- token with the same secret in the same INSERT that checks the id.
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    json TEXT NOT NULL
);
";

/// [`MetaStore`] on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// The single connection; the mutex also orders this process's transactions.
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, its parent directory included.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, MetaError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|e| MetaError::Sqlite(format!("open task failed: {e}")))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, MetaError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, MetaError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no half-done work behind: an open
            // transaction is rolled back when it is dropped during unwinding.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| MetaError::Sqlite(format!("metadata task failed: {e}")))?
    }
}

fn open_blocking(path: &Path) -> Result<Connection, MetaError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            MetaError::Io(format!(
                "creating the metadata directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let conn = Connection::open(path)
        .map_err(|e| MetaError::Sqlite(format!("opening {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    // WAL lets readers proceed during a write; FULL fsyncs the WAL on every commit, so an
    // acknowledged write survives a power cut (NORMAL would only survive a process crash).
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(MetaError::Config(format!(
            "{}: SQLite refused WAL mode (got {mode}); is it on a network file system?",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Creates the schema in a new file and checks the version of an existing one.
fn migrate(conn: &Connection, path: &Path) -> Result<(), MetaError> {
    conn.execute_batch(&format!("BEGIN IMMEDIATE; {SCHEMA}"))
        .map_err(sql)?;
    let result = (|| {
        let found: Option<i64> = conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(sql)?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO schema_version (version) VALUES (?1)",
                    [SQLITE_SCHEMA_VERSION],
                )
                .map_err(sql)?;
                Ok(())
            }
            Some(v) if v == SQLITE_SCHEMA_VERSION => Ok(()),
            Some(v) => Err(MetaError::Config(format!(
                "{} has metadata schema version {v}, this build knows {SQLITE_SCHEMA_VERSION}",
                path.display()
            ))),
        }
    })();
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(sql)?;
    result
}

/// Maps an SQLite error; lock contention that outlasted the busy timeout is `Unavailable`
/// because waiting and retrying is the right reaction.
fn sql(e: rusqlite::Error) -> MetaError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            MetaError::Unavailable(format!("sqlite: {e}"))
        }
        _ => MetaError::Sqlite(e.to_string()),
    }
}

fn is_constraint(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation)
}

/// SQLite integers are signed 64-bit; the layout version is only compared for equality, so a
/// bit-for-bit reinterpretation keeps every u64 distinct.
fn version_col(v: u64) -> i64 {
    v as i64
}

fn text(bytes: Vec<u8>) -> String {
    // serde_json only emits UTF-8.
    String::from_utf8(bytes).expect("JSON is UTF-8")
}

/// Rows of the `(id TEXT PRIMARY KEY, json TEXT)` tables, by table: one place for the SQL they share.
/// Table names are constants of this module, never input.
impl SqliteStore {
    async fn upsert(&self, table: &'static str, id: String, json: String) -> Result<(), MetaError> {
        self.call(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO {table} (id, json) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET json = excluded.json"
                ),
                params![id, json],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn get_row<T>(
        &self,
        table: &'static str,
        what: &'static str,
        id: &str,
    ) -> Result<Option<T>, MetaError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        let id = id.to_string();
        self.call(move |c| {
            let json: Option<String> = c
                .query_row(
                    &format!("SELECT json FROM {table} WHERE id = ?1"),
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            json.map(|j| from_json(what, &id, j.as_bytes())).transpose()
        })
        .await
    }

    async fn delete_row(&self, table: &'static str, id: &str) -> Result<(), MetaError> {
        let id = id.to_string();
        self.call(move |c| {
            c.execute(&format!("DELETE FROM {table} WHERE id = ?1"), [&id])
                .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn list_rows<T>(
        &self,
        table: &'static str,
        what: &'static str,
    ) -> Result<Vec<T>, MetaError>
    where
        T: serde::de::DeserializeOwned + Send + 'static,
    {
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!("SELECT id, json FROM {table} ORDER BY id"))
                .map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, json) = row.map_err(sql)?;
                out.push(from_json(what, &id, json.as_bytes())?);
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl MetaStore for SqliteStore {
    async fn get_layout(&self) -> Result<Option<RingLayout>, MetaError> {
        self.call(|c| {
            let json: Option<String> = c
                .query_row("SELECT json FROM layout WHERE id = 1", [], |r| r.get(0))
                .optional()
                .map_err(sql)?;
            json.map(|j| from_json("layout", "layout", j.as_bytes()))
                .transpose()
        })
        .await
    }

    async fn put_layout(
        &self,
        expected_version: Option<u64>,
        layout: &RingLayout,
    ) -> Result<(), MetaError> {
        let json = text(to_json(layout));
        let new_version = version_col(layout.version);
        self.call(move |c| match expected_version {
            // The primary key makes a second "first layout" fail instead of overwriting.
            None => match c.execute(
                "INSERT INTO layout (id, version, json) VALUES (1, ?1, ?2)",
                params![new_version, json],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(MetaError::Conflict),
                Err(e) => Err(sql(e)),
            },
            // One UPDATE guarded by the old version is the compare-and-swap: it is atomic on
            // its own, and zero rows changed means another writer got there first.
            Some(expected) => {
                let n = c
                    .execute(
                        "UPDATE layout SET version = ?1, json = ?2 WHERE id = 1 AND version = ?3",
                        params![new_version, json, version_col(expected)],
                    )
                    .map_err(sql)?;
                if n == 1 {
                    Ok(())
                } else {
                    Err(MetaError::Conflict)
                }
            }
        })
        .await
    }

    async fn create_video(&self, video: &VideoRecord) -> Result<(), MetaError> {
        let (id, json) = (video.id.clone(), text(to_json(video)));
        self.call(move |c| {
            match c.execute(
                "INSERT INTO videos (id, json) VALUES (?1, ?2)",
                params![id, json],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(MetaError::AlreadyExists),
                Err(e) => Err(sql(e)),
            }
        })
        .await
    }

    async fn put_video(&self, video: &VideoRecord) -> Result<(), MetaError> {
        self.upsert("videos", video.id.clone(), text(to_json(video)))
            .await
    }

    async fn get_video(&self, id: &str) -> Result<Option<VideoRecord>, MetaError> {
        self.get_row("videos", "video", id).await
    }

    async fn list_videos(&self) -> Result<Vec<VideoRecord>, MetaError> {
        let mut out = self.list_rows("videos", "video").await?;
        sort_videos(&mut out);
        Ok(out)
    }

    async fn delete_video(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_string();
        self.call(move |c| {
            let n = c
                .execute("DELETE FROM videos WHERE id = ?1", [&id])
                .map_err(sql)?;
            Ok(n > 0)
        })
        .await
    }

    async fn put_file(&self, file: &FileRecord) -> Result<Option<FileRecord>, MetaError> {
        let (name, json) = (file.name.clone(), text(to_json(file)));
        self.call(move |c| {
            // IMMEDIATE takes the write lock before the read, so the record returned is exactly
            // the one replaced, even with another process writing the same file.
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let old: Option<String> = tx
                .query_row("SELECT json FROM files WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            tx.execute(
                "INSERT INTO files (name, json) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET json = excluded.json",
                params![name, &json],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(old
                // Re-putting the identical record replaced nothing the caller should clean up.
                .filter(|j| *j != json)
                .and_then(|j| previous_file(&name, j.as_bytes())))
        })
        .await
    }

    async fn create_file(&self, file: &FileRecord) -> Result<(), MetaError> {
        let (name, json) = (file.name.clone(), text(to_json(file)));
        self.call(move |c| {
            match c.execute(
                "INSERT INTO files (name, json) VALUES (?1, ?2)",
                params![name, json],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(MetaError::AlreadyExists),
                Err(e) => Err(sql(e)),
            }
        })
        .await
    }

    async fn get_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError> {
        let name = name.to_string();
        self.call(move |c| {
            let json: Option<String> = c
                .query_row("SELECT json FROM files WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            json.map(|j| from_json("file", &name, j.as_bytes()))
                .transpose()
        })
        .await
    }

    async fn list_files(&self) -> Result<Vec<FileRecord>, MetaError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT name, json FROM files").map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (name, json) = row.map_err(sql)?;
                out.push(from_json("file", &name, json.as_bytes())?);
            }
            sort_files(&mut out);
            Ok(out)
        })
        .await
    }

    async fn delete_file(&self, name: &str) -> Result<Option<FileRecord>, MetaError> {
        let name = name.to_string();
        self.call(move |c| {
            let old: Option<String> = c
                .query_row(
                    "DELETE FROM files WHERE name = ?1 RETURNING json",
                    [&name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql)?;
            Ok(old.and_then(|j| previous_file(&name, j.as_bytes())))
        })
        .await
    }

    async fn put_lease(&self, lease: &UploadLease) -> Result<(), MetaError> {
        self.upsert("leases", lease.id.clone(), text(to_json(lease)))
            .await
    }

    async fn delete_lease(&self, id: &str) -> Result<(), MetaError> {
        self.delete_row("leases", id).await
    }

    async fn list_leases(&self) -> Result<Vec<UploadLease>, MetaError> {
        let mut out = self.list_rows("leases", "lease").await?;
        sort_leases(&mut out);
        Ok(out)
    }

    async fn put_resumable(&self, upload: &ResumableUpload) -> Result<(), MetaError> {
        self.upsert("resumable", upload.id.clone(), text(to_json(upload)))
            .await
    }

    async fn replace_resumable(
        &self,
        old: &ResumableUpload,
        new: &ResumableUpload,
    ) -> Result<bool, MetaError> {
        let (id, old, new) = (new.id.clone(), text(to_json(old)), text(to_json(new)));
        self.call(move |c| {
            let n = c
                .execute(
                    "UPDATE resumable SET json = ?1 WHERE id = ?2 AND json = ?3",
                    params![new, id, old],
                )
                .map_err(sql)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_resumable(&self, id: &str) -> Result<Option<ResumableUpload>, MetaError> {
        self.get_row("resumable", "resumable upload", id).await
    }

    async fn delete_resumable(&self, id: &str) -> Result<(), MetaError> {
        self.delete_row("resumable", id).await
    }

    async fn list_resumable(&self) -> Result<Vec<ResumableUpload>, MetaError> {
        self.list_rows("resumable", "resumable upload").await
    }

    async fn try_lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, MetaError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.call(move |c| {
            // IMMEDIATE takes the write lock before the read, so no other process can take the
            // lock between our seeing it free and writing it: read-decide-write is one step.
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            // Read the clock only once the write lock is ours: waiting for it must not count
            // against the holder we might find.
            let now = unix_ms_now();
            let current: Option<String> = tx
                .query_row("SELECT json FROM locks WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(sql)?;
            if let Some(json) = current {
                let held: LockRecord = from_json("lock", &name, json.as_bytes())?;
                if held.bars(&holder, now) {
                    return Ok(false);
                }
            }
            let json = text(to_json(&LockRecord::new(&holder, now, ttl)));
            tx.execute(
                "INSERT INTO locks (name, json) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET json = excluded.json",
                params![name, json],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(true)
        })
        .await
    }

    async fn unlock(&self, name: &str, holder: &str) -> Result<(), MetaError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.call(move |c| {
            // The holder check inside the DELETE makes check-and-release one atomic statement.
            c.execute(
                "DELETE FROM locks WHERE name = ?1 AND json_extract(json, '$.holder') = ?2",
                params![name, holder],
            )
            .map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<(), MetaError> {
        let (id, hash, json) = (token.id.clone(), token.hash.clone(), text(to_json(token)));
        self.call(move |c| {
            // One INSERT checks both the primary key and the UNIQUE hash, atomically.
            match c.execute(
                "INSERT INTO tokens (id, hash, json) VALUES (?1, ?2, ?3)",
                params![id, hash, json],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_constraint(&e) => Err(MetaError::AlreadyExists),
                Err(e) => Err(sql(e)),
            }
        })
        .await
    }

    async fn get_token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, MetaError> {
        let hash = hash.to_string();
        self.call(move |c| {
            let row: Option<(String, String)> = c
                .query_row(
                    "SELECT id, json FROM tokens WHERE hash = ?1",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            row.map(|(id, json)| from_json("token", &id, json.as_bytes()))
                .transpose()
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, MetaError> {
        self.call(|c| {
            let mut stmt = c.prepare("SELECT id, json FROM tokens").map_err(sql)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(sql)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, json) = row.map_err(sql)?;
                out.push(from_json("token", &id, json.as_bytes())?);
            }
            sort_tokens(&mut out);
            Ok(out)
        })
        .await
    }

    async fn delete_token(&self, id: &str) -> Result<bool, MetaError> {
        let id = id.to_string();
        self.call(move |c| {
            // The row carries its hash, so one DELETE removes the token from both lookups.
            let n = c
                .execute("DELETE FROM tokens WHERE id = ?1", [&id])
                .map_err(sql)?;
            Ok(n > 0)
        })
        .await
    }

    async fn health(&self) -> Result<(), MetaError> {
        self.call(|c| {
            c.query_row("SELECT count(*) FROM schema_version", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql)?;
            Ok(())
        })
        .await
    }
}
