//! etcd member loss: 1 of 3 down is invisible, 2 of 3 down is a prompt `Unavailable`, and
//! restarting the members brings everything back with the data intact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use meta::{EtcdStore, MetaError, MetaStore, VideoRecord};

use crate::behaviour::{assert_err, file, layout, video};
use crate::etcd_cluster::{fast_options, pid_alive, EtcdCluster};

/// What the broadcaster does for one raw upload to the ring, then for a ring change.
async fn upload_and_rebalance(store: &Arc<dyn MetaStore>, name: &str, from_version: u64) {
    store
        .create_file(&file(name, &format!("{name}-u1")))
        .await
        .expect("create file");
    assert_eq!(
        store
            .get_file(name)
            .await
            .expect("get file")
            .map(|f| f.upload_id),
        Some(format!("{name}-u1"))
    );
    let nodes: Vec<String> = (0..=from_version).map(|i| format!("node{i}:1")).collect();
    let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
    store
        .put_layout(Some(from_version), &layout(from_version + 1, &nodes))
        .await
        .expect("layout CAS");
}

/// Runs `op` expecting `Unavailable` within the request timeout plus scheduling slack.
async fn expect_unavailable<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, MetaError>>,
) {
    let limit = fast_options().request_timeout + Duration::from_secs(2);
    let started = Instant::now();
    let result = tokio::time::timeout(limit + Duration::from_secs(5), op)
        .await
        .unwrap_or_else(|_| panic!("{what} hung past {limit:?} without quorum"));
    let took = started.elapsed();
    assert_err!(result, MetaError::Unavailable(_));
    assert!(took <= limit, "{what} took {took:?}, over {limit:?}");
}

#[tokio::test]
async fn etcd_survives_one_member_loss_fails_fast_without_quorum_and_recovers() {
    let mut cluster = EtcdCluster::start().await;
    let store: Arc<dyn MetaStore> = Arc::new(
        EtcdStore::connect(&cluster.endpoints(), fast_options())
            .await
            .expect("connect"),
    );

    // All three up.
    store
        .put_layout(None, &layout(1, &["node0:1"]))
        .await
        .expect("first layout");
    store
        .create_video(&video("v1", 1))
        .await
        .expect("create video");
    upload_and_rebalance(&store, "f1", 1).await;

    // Crash the leader: the hardest single loss (a re-election happens under our requests).
    let leader = cluster.leader(0).await;
    cluster.kill(leader);
    upload_and_rebalance(&store, "f2", 2).await;
    assert_eq!(store.list_files().await.expect("list").len(), 2);
    // A broadcaster starting now, given all three endpoints, starts fine.
    let fresh = meta::open(
        &meta::parse_spec(&format!("etcd:{}", cluster.endpoints().join(","))).expect("spec"),
    )
    .await
    .expect("open with one member down");
    assert_eq!(
        fresh.get_layout().await.expect("layout").map(|l| l.version),
        Some(3)
    );

    // Crash a second member: no quorum. Every call fails promptly with Unavailable.
    let second = (0..3).find(|&i| i != leader).expect("another member");
    let survivor = (0..3)
        .find(|&i| i != leader && i != second)
        .expect("the third member");
    cluster.kill(second);
    // All at once: concurrent callers must each get their answer in time too.
    let endpoints = cluster.endpoints();
    let (f3, x1) = (file("f3", "f3-u1"), layout(4, &["x:1"]));
    tokio::join!(
        expect_unavailable("create_file", store.create_file(&f3)),
        expect_unavailable("put_layout", store.put_layout(Some(3), &x1)),
        expect_unavailable("get_layout", store.get_layout()),
        expect_unavailable("list_videos", store.list_videos()),
        expect_unavailable("health", store.health()),
        expect_unavailable("connect", EtcdStore::connect(&endpoints, fast_options())),
    );

    // Restart both on their data: the same store recovers by itself and nothing acknowledged
    // was lost. A write that timed out has an unknown outcome (a leader that lost its quorum
    // may already have logged it, and commits it once the quorum is back), so the two writes
    // tried during the outage may or may not be there, but whole if at all.
    cluster.restart(leader);
    cluster.restart(second);
    cluster.wait_healthy(&[0, 1, 2]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = store.health().await {
        assert!(Instant::now() < deadline, "store did not recover: {e}");
    }
    let current = store.get_layout().await.expect("layout").expect("a layout");
    match current.version {
        3 => assert_eq!(current.nodes.len(), 3),
        4 => assert_eq!(current, layout(4, &["x:1"])),
        v => panic!("unexpected layout version {v}"),
    }
    let files = store.list_files().await.expect("list");
    assert_eq!(files[0], file("f1", "f1-u1"));
    assert_eq!(files[1], file("f2", "f2-u1"));
    if let Some(f3) = files.get(2) {
        assert_eq!(*f3, file("f3", "f3-u1"));
    }
    assert_eq!(
        store
            .get_video("v1")
            .await
            .expect("video")
            .map(|v| v.status),
        Some(VideoRecord::PROCESSING.to_string())
    );
    upload_and_rebalance(&store, "f5", current.version).await;

    // The member that never went down now goes: the client must be using the restarted ones.
    cluster.kill(survivor);
    upload_and_rebalance(&store, "f6", current.version + 1).await;
    let names: Vec<String> = store
        .list_files()
        .await
        .expect("list")
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert!(
        names.ends_with(&["f5".to_string(), "f6".to_string()]),
        "{names:?}"
    );

    let pids: Vec<u32> = (0..3).filter_map(|i| cluster.pid(i)).collect();
    cluster.stop(&[0, 1, 2]).await;
    for pid in pids {
        assert!(!pid_alive(pid), "etcd pid {pid} outlived stop");
    }
}

#[tokio::test]
async fn etcd_open_with_nothing_listening_is_unavailable() {
    // A port that was free a moment ago: connection refused, as with a wrong address.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoints = [format!("http://127.0.0.1:{port}")];
    expect_unavailable("connect", EtcdStore::connect(&endpoints, fast_options())).await;
}
