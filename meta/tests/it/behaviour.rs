//! One behaviour suite, run against each backend: whatever the broadcaster relies on must hold
//! for SQLite and etcd alike.

use std::sync::Arc;
use std::time::Duration;

use meta::{
    FileRecord, MetaError, MetaStore, ResumableUpload, RingLayout, SqliteStore, TokenRecord,
    UploadLease, VideoRecord,
};

use crate::etcd_cluster::{fast_options, EtcdCluster};

pub fn layout(version: u64, nodes: &[&str]) -> RingLayout {
    RingLayout {
        version,
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        vnodes: 64,
        replication: 2,
        ids: vec![],
        next: None,
    }
}

pub fn video(id: &str, created_unix_ms: u64) -> VideoRecord {
    VideoRecord {
        id: id.into(),
        status: VideoRecord::PROCESSING.into(),
        created_unix_ms,
        duration_ms: None,
        files: vec![],
        error: None,
        digests: Default::default(),
        progress_percent: None,
        upload: None,
    }
}

pub fn file(name: &str, upload_id: &str) -> FileRecord {
    FileRecord {
        name: name.into(),
        size: 1_000_000,
        sha256: "ab".repeat(32),
        chunk_size: 262_144,
        chunks: 4,
        upload_id: upload_id.into(),
        created_unix_ms: 1_700_000_000_000,
        chunk_sha256: vec![],
    }
}

/// Asserts the error variant, printing what came instead.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            other => panic!("expected {}, got {other:?}", stringify!($pattern)),
        }
    };
}
pub(crate) use assert_err;

async fn layout_cas(store: &Arc<dyn MetaStore>) {
    assert_eq!(store.get_layout().await.expect("get layout"), None);
    // Nothing stored yet: only "must not exist" may write.
    assert_err!(
        store.put_layout(Some(1), &layout(2, &["a:1"])).await,
        MetaError::Conflict
    );
    store
        .put_layout(None, &layout(1, &["a:1", "b:1"]))
        .await
        .expect("first layout");
    assert_err!(
        store.put_layout(None, &layout(1, &["z:1"])).await,
        MetaError::Conflict
    );
    store
        .put_layout(Some(1), &layout(2, &["a:1", "b:1", "c:1"]))
        .await
        .expect("CAS 1 -> 2");
    // A writer still holding version 1 loses.
    assert_err!(
        store.put_layout(Some(1), &layout(2, &["x:1"])).await,
        MetaError::Conflict
    );
    assert_eq!(
        store.get_layout().await.expect("get layout"),
        Some(layout(2, &["a:1", "b:1", "c:1"]))
    );

    // Eight broadcasters race from version 2: exactly one wins.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let node = format!("racer{i}:1");
                let l = layout(3, &["a:1", "b:1", "c:1", &node]);
                (store.put_layout(Some(2), &l).await, l)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer task") {
            (Ok(()), l) => winners.push(l),
            (Err(MetaError::Conflict), _) => {}
            (Err(e), _) => panic!("racer failed with {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one CAS wins");
    assert_eq!(
        store.get_layout().await.expect("get"),
        Some(winners[0].clone())
    );
}

async fn videos(store: &Arc<dyn MetaStore>) {
    assert_eq!(store.list_videos().await.expect("list"), vec![]);
    for (id, t) in [("a", 100), ("b", 300), ("c", 200), ("d", 300)] {
        store
            .create_video(&video(id, t))
            .await
            .expect("create video");
    }
    let mut dup = video("a", 999);
    dup.status = VideoRecord::READY.into();
    assert_err!(store.create_video(&dup).await, MetaError::AlreadyExists);
    assert_eq!(
        store.get_video("a").await.expect("get"),
        Some(video("a", 100)),
        "a refused create must not overwrite"
    );

    let ids: Vec<String> = store
        .list_videos()
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["b", "d", "c", "a"], "newest first, ties by id");

    let mut ready = video("a", 100);
    ready.status = VideoRecord::READY.into();
    ready.duration_ms = Some(61_000);
    ready.files = vec!["manifest.mpd".into(), "init-0.m4s".into()];
    store.put_video(&ready).await.expect("put video");
    assert_eq!(store.get_video("a").await.expect("get"), Some(ready));
    // put creates a missing record too.
    store.put_video(&video("e f.ü", 50)).await.expect("put new");
    assert_eq!(
        store
            .get_video("e f.ü")
            .await
            .expect("get")
            .map(|v| v.created_unix_ms),
        Some(50)
    );
    assert_eq!(store.get_video("nope").await.expect("get"), None);

    assert!(store.delete_video("c").await.expect("delete"));
    assert!(!store.delete_video("c").await.expect("delete again"));
    assert_eq!(store.get_video("c").await.expect("get"), None);

    // Concurrent uploads of the same id: one creates, the others are told it is taken.
    let racers: Vec<_> = (0..8u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let v = video("race", 1000 + i);
                (store.create_video(&v).await, v)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer task") {
            (Ok(()), v) => winners.push(v),
            (Err(MetaError::AlreadyExists), _) => {}
            (Err(e), _) => panic!("racer failed with {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins");
    assert_eq!(
        store.get_video("race").await.expect("get"),
        Some(winners[0].clone())
    );
}

async fn files(store: &Arc<dyn MetaStore>) {
    store.create_file(&file("f1", "u1")).await.expect("create");
    assert_err!(
        store.create_file(&file("f1", "u2")).await,
        MetaError::AlreadyExists
    );
    assert_eq!(
        store.get_file("f1").await.expect("get"),
        Some(file("f1", "u1"))
    );

    // Replacing returns the old record, whose chunks the caller deletes.
    assert_eq!(
        store.put_file(&file("f1", "u2")).await.expect("put"),
        Some(file("f1", "u1"))
    );
    assert_eq!(
        store.put_file(&file("f0", "u3")).await.expect("put new"),
        None
    );
    assert_eq!(
        store
            .put_file(&file("f0", "u3"))
            .await
            .expect("put identical"),
        None,
        "an identical record replaced nothing to clean up"
    );
    let names: Vec<String> = store
        .list_files()
        .await
        .expect("list")
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["f0", "f1"]);

    assert_eq!(
        store.delete_file("f0").await.expect("delete"),
        Some(file("f0", "u3"))
    );
    assert_eq!(store.delete_file("f0").await.expect("delete again"), None);
    assert_eq!(store.get_file("f0").await.expect("get"), None);
    store
        .create_file(&file("f0", "u4"))
        .await
        .expect("re-create after delete");
}

pub fn lease(id: &str, expires_unix_ms: u64) -> UploadLease {
    UploadLease {
        id: id.into(),
        prefixes: vec![format!("raw.{id}")],
        holder: "broadcaster-1".into(),
        expires_unix_ms,
    }
}

async fn leases(store: &Arc<dyn MetaStore>) {
    assert_eq!(store.list_leases().await.expect("list"), vec![]);
    store.put_lease(&lease("u2", 2_000)).await.expect("put u2");
    store.put_lease(&lease("u1", 1_000)).await.expect("put u1");
    assert_eq!(
        store.list_leases().await.expect("list"),
        vec![lease("u1", 1_000), lease("u2", 2_000)],
        "sorted by id"
    );

    // Renewal replaces the whole lease, later expiry and any new prefixes included.
    let mut renewed = lease("u1", 5_000);
    renewed.prefixes.push("video-u1".into());
    store.put_lease(&renewed).await.expect("renew u1");
    assert_eq!(
        store.list_leases().await.expect("list"),
        vec![renewed, lease("u2", 2_000)]
    );

    store.delete_lease("u1").await.expect("delete u1");
    store.delete_lease("u1").await.expect("delete u1 again");
    store.delete_lease("never").await.expect("delete absent");
    assert_eq!(
        store.list_leases().await.expect("list"),
        vec![lease("u2", 2_000)]
    );
}

fn resumable(id: &str, offset: u64) -> ResumableUpload {
    ResumableUpload {
        id: id.into(),
        name: format!("{id}.bin"),
        video: false,
        owner: Some("anonymous".into()),
        length: Some(1 << 20),
        offset,
        sha256_state: format!("state-at-{offset}"),
        targets: vec![
            ("127.0.0.1:1".into(), None),
            ("ring".into(), Some("gone".into())),
        ],
        ring_chunks: vec!["ab".into()],
        state: "open".into(),
        summary: None,
        created_unix_ms: 1,
        expires_unix_ms: 2,
    }
}

/// Resumable uploads: stored whole, listed by id, and checkpointed with a compare-and-swap that refuses a
/// writer whose view is stale (another broadcaster appended meanwhile) or whose upload is gone.
async fn resumables(store: &Arc<dyn MetaStore>) {
    assert_eq!(store.get_resumable("r1").await.expect("get"), None);
    store
        .put_resumable(&resumable("r2", 0))
        .await
        .expect("put r2");
    store
        .put_resumable(&resumable("r1", 0))
        .await
        .expect("put r1");
    assert_eq!(
        store.get_resumable("r1").await.expect("get"),
        Some(resumable("r1", 0))
    );
    let ids: Vec<String> = store
        .list_resumable()
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(ids, vec!["r1", "r2"], "sorted by id");

    assert!(store
        .replace_resumable(&resumable("r1", 0), &resumable("r1", 10))
        .await
        .expect("cas"));
    // A second writer that still believes the upload is at 0 is refused, and changes nothing.
    assert!(!store
        .replace_resumable(&resumable("r1", 0), &resumable("r1", 20))
        .await
        .expect("stale cas"));
    assert_eq!(
        store.get_resumable("r1").await.expect("get"),
        Some(resumable("r1", 10))
    );
    store.delete_resumable("r1").await.expect("delete");
    store.delete_resumable("r1").await.expect("delete again");
    assert!(!store
        .replace_resumable(&resumable("r1", 10), &resumable("r1", 30))
        .await
        .expect("cas on a removed upload"));
    assert_eq!(store.get_resumable("r1").await.expect("get"), None);
}

/// A stand-in for the hex SHA-256 of a secret: 64 hex digits, distinct per `n`.
pub fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

pub fn token(id: &str, hash_n: u8, created_unix_ms: u64) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        name: format!("for {id}"),
        hash: hash(hash_n),
        scopes: vec!["read".into()],
        prefix: None,
        created_unix_ms,
        expires_unix_ms: None,
    }
}

async fn tokens(store: &Arc<dyn MetaStore>) {
    assert_eq!(store.list_tokens().await.expect("list"), vec![]);
    assert_eq!(store.get_token_by_hash(&hash(1)).await.expect("get"), None);

    let mut alice = token("tb", 1, 200);
    alice.name = "alice".into();
    alice.scopes = vec!["upload".into(), "read".into()];
    alice.prefix = Some("alice-".into());
    alice.expires_unix_ms = Some(86_400_200);
    store.create_token(&alice).await.expect("create tb");
    store
        .create_token(&token("ta", 2, 200))
        .await
        .expect("create ta");
    store
        .create_token(&token("tc", 3, 100))
        .await
        .expect("create tc");

    // A taken id, with a fresh hash: refused, and the fresh hash finds nothing afterwards.
    assert_err!(
        store.create_token(&token("tb", 9, 999)).await,
        MetaError::AlreadyExists
    );
    assert_eq!(
        store.get_token_by_hash(&hash(9)).await.expect("get"),
        None,
        "a refused create leaves no hash behind"
    );
    // A taken hash under a fresh id: refused, and the fresh id is not created.
    assert_err!(
        store.create_token(&token("td", 1, 999)).await,
        MetaError::AlreadyExists
    );
    assert_eq!(
        store.get_token_by_hash(&hash(1)).await.expect("get"),
        Some(alice.clone()),
        "a refused create must not overwrite, whether by id or by hash"
    );

    let ids: Vec<String> = store
        .list_tokens()
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["tc", "ta", "tb"], "oldest first, ties by id");
    // The id refused above is free: the refused create left no record behind either.
    store
        .create_token(&token("td", 4, 300))
        .await
        .expect("create td");
    assert_eq!(
        store.get_token_by_hash(&hash(4)).await.expect("get"),
        Some(token("td", 4, 300))
    );

    assert!(store.delete_token("ta").await.expect("delete"));
    assert!(!store.delete_token("ta").await.expect("delete again"));
    assert!(!store.delete_token("never").await.expect("delete absent"));
    assert_eq!(store.get_token_by_hash(&hash(2)).await.expect("get"), None);
    assert_eq!(
        store
            .list_tokens()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        ["tc", "tb", "td"]
    );
    // Deleting freed both the id and the hash.
    store
        .create_token(&token("ta", 2, 400))
        .await
        .expect("re-create after delete");
    assert!(store.delete_token("ta").await.expect("delete"));

    // Racing creates: of eight for one hash under distinct ids, and of eight for one id with
    // distinct hashes, exactly one wins each time, and no loser's id or hash is left findable.
    let racers: Vec<_> = (0..16u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let t = if i < 8 {
                    token(&format!("same-hash-{i}"), 100, 500)
                } else {
                    token("same-id", 100 + i, 500)
                };
                (store.create_token(&t).await, t)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer task") {
            (Ok(()), t) => winners.push(t),
            (Err(MetaError::AlreadyExists), _) => {}
            (Err(e), _) => panic!("racer failed with {e:?}"),
        }
    }
    let by_hash: Vec<_> = winners.iter().filter(|t| t.hash == hash(100)).collect();
    let by_id: Vec<_> = winners.iter().filter(|t| t.id == "same-id").collect();
    assert_eq!(
        (by_hash.len(), by_id.len()),
        (1, 1),
        "exactly one create wins each race: {winners:?}"
    );
    for i in 0..16u8 {
        let found = store.get_token_by_hash(&hash(100 + i)).await.expect("get");
        assert_eq!(
            found.as_ref(),
            winners.iter().find(|t| t.hash == hash(100 + i))
        );
    }
    let listed = store.list_tokens().await.expect("list");
    assert_eq!(
        listed.iter().filter(|t| t.created_unix_ms == 500).count(),
        2,
        "only the two winners are stored: {listed:?}"
    );
}

/// Long enough that a lock taken with it cannot lapse during a test, however loaded the machine.
const LIVE: Duration = Duration::from_secs(60);
/// Short enough to sleep past.
const SHORT: Duration = Duration::from_millis(300);

async fn locks(store: &Arc<dyn MetaStore>) {
    assert!(store.try_lock("gc", "a", LIVE).await.expect("a takes"));
    assert!(
        store.try_lock("gc", "a", LIVE).await.expect("a again"),
        "the holder re-takes its own lock"
    );
    assert!(
        !store.try_lock("gc", "b", LIVE).await.expect("b tries"),
        "refused while another holder's lock is live"
    );
    // Independent names do not share a lock.
    assert!(store.try_lock("other", "b", LIVE).await.expect("other"));

    // Renewing replaces the expiry: shortened to SHORT, it lapses although LIVE has not passed.
    assert!(store.try_lock("gc", "a", SHORT).await.expect("a renews"));
    tokio::time::sleep(SHORT + Duration::from_millis(200)).await;
    assert!(
        store.try_lock("gc", "b", LIVE).await.expect("b takes over"),
        "a lapsed lock is taken over"
    );
    assert!(!store.try_lock("gc", "a", LIVE).await.expect("a tries"));

    store.unlock("gc", "a").await.expect("unlock by non-holder");
    assert!(
        !store.try_lock("gc", "a", LIVE).await.expect("a tries"),
        "unlock by a non-holder does nothing"
    );
    store.unlock("gc", "b").await.expect("unlock by holder");
    assert!(
        store.try_lock("gc", "a", LIVE).await.expect("a takes"),
        "unlock by the holder frees it"
    );
    store.unlock("gc", "a").await.expect("unlock");
    store.unlock("gc", "a").await.expect("unlock a free lock");
    store
        .unlock("never", "a")
        .await
        .expect("unlock an absent lock");
}

/// Eight broadcasters, spread over `stores` (handles on one store), race for one free lock: exactly
/// one gets it, and it stays theirs.
pub async fn lock_race(stores: &[Arc<dyn MetaStore>], name: &str) -> String {
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let holder = format!("racer{i}");
                let won = store.try_lock(&name, &holder, LIVE).await;
                (won, holder)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for r in racers {
        match r.await.expect("racer task") {
            (Ok(true), holder) => winners.push(holder),
            (Ok(false), _) => {}
            (Err(e), _) => panic!("racer failed with {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one try_lock wins: {winners:?}");
    let winner = winners.remove(0);
    for store in stores {
        assert!(store.try_lock(name, &winner, LIVE).await.expect("renew"));
        assert!(!store.try_lock(name, "late", LIVE).await.expect("late"));
    }
    winner
}

/// The state `exercise` leaves behind, compared after reopening.
async fn snapshot(
    store: &Arc<dyn MetaStore>,
) -> (
    Option<RingLayout>,
    Vec<VideoRecord>,
    Vec<FileRecord>,
    Vec<UploadLease>,
    Vec<TokenRecord>,
) {
    (
        store.get_layout().await.expect("layout"),
        store.list_videos().await.expect("videos"),
        store.list_files().await.expect("files"),
        store.list_leases().await.expect("leases"),
        store.list_tokens().await.expect("tokens"),
    )
}

/// Runs the whole suite on a fresh, empty store.
async fn exercise(store: &Arc<dyn MetaStore>) {
    store.health().await.expect("health");
    layout_cas(store).await;
    videos(store).await;
    files(store).await;
    leases(store).await;
    resumables(store).await;
    tokens(store).await;
    locks(store).await;
}

#[tokio::test]
async fn sqlite_behaviour_and_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A nested path: open creates the directory.
    let path = dir.path().join("nested/dir/meta.db");
    let spec = meta::parse_spec(&format!("sqlite:{}", path.display())).expect("spec");
    let store = meta::open(&spec).await.expect("open sqlite");
    exercise(&store).await;
    let before = snapshot(&store).await;
    drop(store);

    let reopened = meta::open(&spec).await.expect("reopen sqlite");
    assert_eq!(snapshot(&reopened).await, before, "everything persisted");
    assert_eq!(
        before.4.len(),
        5,
        "tokens left by the suite: {:?}",
        before.4
    );
    assert_eq!(
        reopened.get_token_by_hash(&hash(1)).await.expect("get"),
        before.4.iter().find(|t| t.id == "tb").cloned(),
        "found by hash after reopening"
    );
    assert_eq!(
        reopened
            .get_layout()
            .await
            .expect("layout")
            .map(|l| l.version),
        Some(3)
    );
}

#[tokio::test]
async fn sqlite_two_handles_on_one_file_race_safely() {
    // Two stores on one file stand for two processes: the atomicity comes from SQLite, not
    // from the in-process mutex.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.db");
    let a: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&path).await.expect("open a"));
    let b: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&path).await.expect("open b"));
    a.put_layout(None, &layout(1, &["n:1"]))
        .await
        .expect("first layout");
    let tasks: Vec<_> = (0..10u64)
        .map(|i| {
            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                let cas = s
                    .put_layout(Some(1), &layout(2, &["n:1", &format!("m{i}:1")]))
                    .await;
                let create = s.create_video(&video("same", i)).await;
                let token = s.create_token(&token(&format!("t{i}"), 7, i)).await;
                (cas.is_ok(), create.is_ok(), token.is_ok())
            })
        })
        .collect();
    let (mut cas_wins, mut create_wins, mut token_wins) = (0, 0, 0);
    for t in tasks {
        let (c, v, k) = t.await.expect("task");
        cas_wins += usize::from(c);
        create_wins += usize::from(v);
        token_wins += usize::from(k);
    }
    assert_eq!((cas_wins, create_wins, token_wins), (1, 1, 1));
}

#[tokio::test]
async fn sqlite_lock_race_over_two_handles() {
    // As above: two handles stand for two processes, so only SQLite's locking can keep it atomic.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.db");
    let a: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&path).await.expect("open a"));
    let b: Arc<dyn MetaStore> = Arc::new(SqliteStore::open(&path).await.expect("open b"));
    let winner = lock_race(&[a, b], "gc").await;

    // The stored form other tools (and older or newer builds) read.
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let json: String = conn
        .query_row("SELECT json FROM locks WHERE name = 'gc'", [], |r| r.get(0))
        .expect("lock row");
    let value: serde_json::Value = serde_json::from_str(&json).expect("lock JSON");
    assert_eq!(value["holder"], winner.as_str());
    assert!(value["expires_unix_ms"].as_u64().is_some(), "{json}");
}

#[tokio::test]
async fn sqlite_reports_corrupt_records_and_newer_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store.create_video(&video("v", 1)).await.expect("create");
    drop(store);

    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.execute("UPDATE videos SET json = '{not json' WHERE id = 'v'", [])
        .expect("corrupt the record");
    let store = SqliteStore::open(&path).await.expect("reopen");
    assert_err!(store.get_video("v").await, MetaError::Corrupt(_));
    assert_err!(store.list_videos().await, MetaError::Corrupt(_));
    drop(store);

    conn.execute("UPDATE schema_version SET version = 99", [])
        .expect("pretend a newer build wrote the file");
    match SqliteStore::open(&path).await {
        Err(MetaError::Config(msg)) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_token_rows_and_older_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("meta.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store
        .create_token(&token("t1", 1, 10))
        .await
        .expect("create");
    drop(store);

    // The stored form: the hash in its own column beside the JSON, no secret anywhere.
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let (h, json): (String, String) = conn
        .query_row("SELECT hash, json FROM tokens WHERE id = 't1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("token row");
    assert_eq!(h, hash(1));
    let value: serde_json::Value = serde_json::from_str(&json).expect("token JSON");
    assert_eq!(value["hash"], hash(1).as_str());

    // A record written without the optional fields still decodes.
    conn.execute(
        "INSERT INTO tokens (id, hash, json) VALUES ('old', ?1, ?2)",
        rusqlite::params![
            hash(2),
            format!(
                r#"{{"id":"old","name":"n","hash":"{}","scopes":["admin"],"created_unix_ms":5}}"#,
                hash(2)
            )
        ],
    )
    .expect("insert an older record");
    // A file from before tokens existed gains the table when opened; its version stays 1.
    let dir2 = tempfile::tempdir().expect("temp dir");
    let old_path = dir2.path().join("old.db");
    drop(SqliteStore::open(&old_path).await.expect("create old file"));
    let old = rusqlite::Connection::open(&old_path).expect("raw open old");
    old.execute("DROP TABLE tokens", []).expect("drop tokens");
    drop(old);

    let store = SqliteStore::open(&path).await.expect("reopen");
    let older = store
        .get_token_by_hash(&hash(2))
        .await
        .expect("get")
        .expect("older record found");
    assert_eq!((older.prefix, older.expires_unix_ms), (None, None));
    assert_eq!(
        store
            .list_tokens()
            .await
            .expect("list")
            .into_iter()
            .map(|t| t.id)
            .collect::<Vec<_>>(),
        ["old", "t1"]
    );

    let upgraded = SqliteStore::open(&old_path).await.expect("open old file");
    upgraded
        .create_token(&token("t1", 1, 10))
        .await
        .expect("tokens work in an older file");
    let version: i64 = rusqlite::Connection::open(&old_path)
        .expect("raw open old")
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, meta::SQLITE_SCHEMA_VERSION);
}

#[tokio::test]
async fn etcd_behaviour_and_reconnect() {
    let mut cluster = EtcdCluster::start().await;
    let spec = meta::parse_spec(&format!("etcd:{}", cluster.endpoints().join(","))).expect("spec");
    // The public entry point with default timeouts.
    let store = meta::open(&spec).await.expect("open etcd");
    exercise(&store).await;
    let before = snapshot(&store).await;

    let reconnected: Arc<dyn MetaStore> = Arc::new(
        meta::EtcdStore::connect(&cluster.endpoints(), fast_options())
            .await
            .expect("reconnect"),
    );
    assert_eq!(snapshot(&reconnected).await, before, "everything persisted");
    // Two clients stand for two broadcasters; the cluster orders their compare-and-swaps.
    lock_race(&[store.clone(), reconnected.clone()], "race").await;
    drop(store);

    // A value that is not our JSON is reported, not misread.
    let mut raw = etcd_client::Client::connect(cluster.endpoints(), None)
        .await
        .expect("raw client");
    raw.put(
        format!("{}videos/bad", meta::ETCD_PREFIX),
        "{not json",
        None,
    )
    .await
    .expect("raw put");
    assert_err!(reconnected.get_video("bad").await, MetaError::Corrupt(_));
    assert_err!(reconnected.list_videos().await, MetaError::Corrupt(_));

    // A token's stored form: the record under `tokens/`, its hash key holding the id.
    let hash_key = |h: &str| format!("{}token-hashes/{h}", meta::ETCD_PREFIX);
    let resp = raw.get(hash_key(&hash(1)), None).await.expect("raw get");
    assert_eq!(resp.kvs().first().map(|kv| kv.value()), Some(&b"tb"[..]));
    // A hash key that does not lead back to a record with that hash grants nothing.
    raw.put(hash_key(&hash(200)), "tb", None)
        .await
        .expect("raw put");
    raw.put(hash_key(&hash(201)), "ghost", None)
        .await
        .expect("raw put");
    for h in [200, 201] {
        assert_eq!(
            reconnected.get_token_by_hash(&hash(h)).await.expect("get"),
            None
        );
    }
    // An unreadable token record is reported, and can still be revoked.
    raw.put(
        format!("{}tokens/bad", meta::ETCD_PREFIX),
        "{not json",
        None,
    )
    .await
    .expect("raw put");
    raw.put(hash_key(&hash(202)), "bad", None)
        .await
        .expect("raw put");
    assert_err!(reconnected.list_tokens().await, MetaError::Corrupt(_));
    assert_err!(
        reconnected.get_token_by_hash(&hash(202)).await,
        MetaError::Corrupt(_)
    );
    assert!(reconnected.delete_token("bad").await.expect("delete bad"));
    assert_eq!(
        reconnected
            .get_token_by_hash(&hash(202))
            .await
            .expect("get"),
        None
    );
    assert_eq!(reconnected.list_tokens().await.expect("list"), before.4);

    cluster.stop(&[0, 1, 2]).await;
}
