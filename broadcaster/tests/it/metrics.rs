//! `GET /metrics` on every service, scraped after real uploads.

use crate::data::gen_bytes;
use crate::harness::{client, scratch_dir, Broadcaster, Reader};
use crate::ring::Node;

/// The value of the first sample of `name` whose labels contain every `label`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(url: String) -> String {
    let resp = client().get(url).send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain"));
    resp.text().await.expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exports_prometheus_metrics() {
    let dir = scratch_dir("metrics-");
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start(&dir.path().join(format!("n{i}")), 0))
        .collect();
    let reader = Reader::start_with(&[]);
    let members = nodes.iter().map(|n| n.addr()).collect::<Vec<_>>().join(";");
    let db = format!("sqlite:{}", dir.path().join("meta.db").display());
    let b = Broadcaster::start(
        &[reader.target(), "ring".to_owned()],
        &[
            ("BROADCASTER_METADATA", &db),
            ("BROADCASTER_STORAGE_NODES", &members),
            ("BROADCASTER_RING_CHUNK_SIZE", "65536"),
        ],
    );
    let data = gen_bytes(3, 300_000);
    let resp = client()
        .put(b.put_url("m.bin"))
        .body(data.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 201);
    let resp = client()
        .get(b.url("/files/m.bin"))
        .send()
        .await
        .expect("read back");
    assert_eq!(resp.bytes().await.expect("body").len(), data.len());

    let text = scrape(b.url("/metrics")).await;
    let target = format!("target=\"{}\"", reader.target());
    assert_eq!(
        sample(
            &text,
            "distributary_uploads_total",
            &["outcome=\"committed\""]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "distributary_upload_bytes_received_total", &[]),
        Some(300_000.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "distributary_target_bytes_sent_total", &[&target]),
        Some(300_000.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "distributary_target_bytes_sent_total",
            &["target=\"ring\""]
        ),
        Some(300_000.0)
    );
    assert_eq!(
        sample(&text, "distributary_uploads_active", &[]),
        Some(0.0),
        "{text}"
    );
    // 5 chunks of 64 KiB, each on 2 nodes, read back once.
    assert!(
        sample(&text, "distributary_ring_writes_total", &["result=\"ok\""]).is_some(),
        "{text}"
    );
    assert!(
        sample(&text, "distributary_ring_reads_total", &["result=\"ok\""]).is_some(),
        "{text}"
    );
    assert!(
        text.contains("distributary_upload_seconds_bucket"),
        "{text}"
    );

    let text = scrape(reader.url("/metrics")).await;
    assert_eq!(
        sample(&text, "distributary_reader_commits_total", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "distributary_reader_bytes_received_total", &[]),
        Some(300_000.0),
        "{text}"
    );

    let mut puts = 0.0;
    for n in &nodes {
        let text = scrape(format!("http://{}/metrics", n.addr())).await;
        puts += sample(&text, "distributary_blob_puts_total", &["result=\"ok\""]).unwrap_or(0.0);
    }
    assert_eq!(puts, 10.0, "5 chunks × 2 replicas");
}
