//! The broadcaster's stream protocol: stage, then commit (published as blob `raw/{name}`) or abort.

use reqwest::StatusCode;
use serde_json::Value;

use crate::harness::{client, payload, raw_request, sha_hex, Node};

const ID: &str = "0123456789abcdef0123456789abcdef";
const ID2: &str = "fedcba9876543210fedcba9876543210";

#[tokio::test]
async fn stage_then_commit_publishes_raw_blob() {
    let node = Node::start();
    let http = client();
    let data = payload(3 << 20, 9);
    let r = http
        .put(node.url(&format!("/v1/uploads/{ID}/big%20file.iso")))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], data.len() as u64);
    assert_eq!(v["sha256"], sha_hex(&data));
    assert_eq!(node.staging_count(), 1);

    // Nothing is visible before the commit.
    let blob = node.blob_url("raw/big%20file.iso");
    assert_eq!(
        http.get(&blob).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // The same id cannot be staged twice.
    let r = http
        .put(node.url(&format!("/v1/uploads/{ID}/other")))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let r = http
        .post(node.url(&format!("/v1/uploads/{ID}/commit")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["key"], "raw/big file.iso");
    assert_eq!(v["sha256"], sha_hex(&data));
    assert_eq!(node.staging_count(), 0);

    let r = http.get(&blob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), data);

    // A second commit has nothing to publish; an abort after commit is harmless.
    let r = http
        .post(node.url(&format!("/v1/uploads/{ID}/commit")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .delete(node.url(&format!("/v1/uploads/{ID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        http.get(&blob).send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn abort_discards_and_is_idempotent() {
    let node = Node::start();
    let http = client();
    let r = http
        .put(node.url(&format!("/v1/uploads/{ID2}/gone.bin")))
        .body(payload(100_000, 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for _ in 0..2 {
        let r = http
            .delete(node.url(&format!("/v1/uploads/{ID2}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(node.staging_count(), 0);
    let r = http
        .post(node.url(&format!("/v1/uploads/{ID2}/commit")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        http.get(node.blob_url("raw/gone.bin"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_upload_requests() {
    let node = Node::start();
    for (method, target) in [
        ("PUT", "/v1/uploads/not-an-id/x".to_owned()),
        (
            "PUT",
            "/v1/uploads/0123456789ABCDEF0123456789ABCDEF/x".to_owned(),
        ),
        ("POST", "/v1/uploads/nope/commit".to_owned()),
        ("DELETE", "/v1/uploads/..".to_owned()),
        ("PUT", format!("/v1/uploads/{ID}/..")),
        ("PUT", format!("/v1/uploads/{ID}/a%2Fb")),
        ("PUT", format!("/v1/uploads/{ID}/{}", "n".repeat(256))),
    ] {
        let (status, body) = raw_request(node.addr, method, &target, b"data").await;
        assert_eq!(status, 400, "{method} {target}: {body}");
    }
    assert_eq!(node.staging_count(), 0);
    // A digest announced with the stage is checked too.
    let r = client()
        .put(node.url(&format!("/v1/uploads/{ID}/f")))
        .header("x-content-sha256", sha_hex(b"other"))
        .body("data")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(node.staging_count(), 0);
}

/// The resumable side of the stream protocol: appends at an offset (a wrong one refused with what is held,
/// one behind cut back), the held count, a body cut off part way keeping what arrived, and finish checked
/// against the SHA-256 of the whole.
#[tokio::test]
async fn resumable_appends_cut_back_and_finish() {
    const RID: &str = "00112233445566778899aabbccddeeff";
    let node = Node::start();
    let http = client();
    let data = payload(3 << 20, 7);
    let append = |offset: usize, bytes: Vec<u8>| {
        http.patch(node.url(&format!("/v1/uploads/{RID}/resumed.bin?offset={offset}")))
            .body(bytes)
            .send()
    };
    let held = || http.get(node.url(&format!("/v1/uploads/{RID}"))).send();
    assert_eq!(held().await.unwrap().status(), StatusCode::NOT_FOUND);

    // An append that does not start at 0 cannot open an upload.
    let r = append(5, data[5..10].to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 0);

    let r = append(0, data[..1 << 20].to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 1 << 20);

    // Past the end: refused, and told what is held.
    let r = append((1 << 20) + 1, vec![1]).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], 1 << 20);

    // A body that announces more than it sends is cut off: what arrived stays.
    {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let head = format!(
            "PATCH /v1/uploads/{RID}/resumed.bin?offset={} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            1 << 20,
            node.addr,
            2 << 20
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
            .write_all(&data[1 << 20..(1 << 20) + 4096])
            .await
            .unwrap();
        stream.flush().await.unwrap();
        drop(stream);
    }
    let mut now = 0;
    for _ in 0..50 {
        now = held().await.unwrap().json::<Value>().await.unwrap()["bytes"]
            .as_u64()
            .unwrap();
        if now == (1 << 20) + 4096 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(now, (1 << 20) + 4096, "a cut-off append keeps what arrived");

    // Behind the end (the broadcaster's checkpoint was earlier): cut back, then the rest.
    let r = append(1 << 20, data[1 << 20..].to_vec()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["bytes"], data.len());
    assert_eq!(node.staging_count(), 0, "appends are spooled, not staged");

    let r = http
        .post(node.url(&format!("/v1/uploads/{RID}/finish")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["bytes"], data.len() as u64);
    assert_eq!(v["sha256"], sha_hex(&data));
    let r = http
        .post(node.url(&format!("/v1/uploads/{RID}/commit")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = http
        .get(node.blob_url("raw/resumed.bin"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(sha_hex(&body), sha_hex(&data));
    assert_eq!(held().await.unwrap().status(), StatusCode::NOT_FOUND);
}

/// Hostile requests on the resumable side get a clear 4xx and leave nothing spooled or staged.
#[tokio::test]
async fn hostile_resumable_requests_are_refused_and_leave_nothing() {
    const RID: &str = "0123456789abcdef0123456789abcdee";
    let node = Node::start();
    let http = client();
    let cases = [
        (
            http.patch(node.url(&format!("/v1/uploads/{RID}/x.bin?offset=abc")))
                .body("x"),
            "a non-numeric offset",
        ),
        (
            http.patch(node.url(&format!("/v1/uploads/{RID}/x.bin")))
                .body("x"),
            "no offset",
        ),
        (
            http.patch(node.url(&format!("/v1/uploads/{RID}/x.bin?offset=0")))
                .header("x-distributary-keep-secs", "forever")
                .body("x"),
            "a bad keep header",
        ),
        (
            http.patch(node.url("/v1/uploads/NOT-AN-ID/x.bin?offset=0"))
                .body("x"),
            "a bad upload id",
        ),
        (
            http.patch(node.url(&format!("/v1/uploads/{RID}/a%00b?offset=0")))
                .body("x"),
            "a name with NUL",
        ),
        (
            http.patch(node.url(&format!("/v1/uploads/{RID}/x.bin?offset=0")))
                .header("x-distributary-video", "maybe")
                .body("x"),
            "a bad video header",
        ),
    ];
    for (req, what) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
    }
    for (status, req, what) in [
        (
            StatusCode::NOT_FOUND,
            http.post(node.url(&format!("/v1/uploads/{RID}/finish"))),
            "finishing an unknown upload",
        ),
        (
            StatusCode::BAD_REQUEST,
            http.post(node.url("/v1/uploads/NOT-AN-ID/finish")),
            "finishing a bad id",
        ),
        (
            StatusCode::NOT_FOUND,
            http.get(node.url(&format!("/v1/uploads/{RID}"))),
            "the held count of an unknown upload",
        ),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{what}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }
    assert_eq!(node.staging_count(), 0);
    let spool = node.data_dir.join("spool");
    assert_eq!(
        std::fs::read_dir(&spool).unwrap().count(),
        0,
        "spooled files left"
    );
}
