//! Malformed blob keys get a 400 and leave nothing behind. Requests are written by hand so that `..` and
//! empty segments reach the server exactly as sent (HTTP clients normalise them away).

use crate::harness::{raw_request, Node};

#[tokio::test]
async fn bad_keys_are_refused() {
    let node = Node::start();
    let long = "x".repeat(256);
    let bad = [
        "/v1/blobs/../x".to_owned(),
        "/v1/blobs/x/..".to_owned(),
        "/v1/blobs/./x".to_owned(),
        "/v1/blobs/%2E%2E/x".to_owned(),
        "/v1/blobs//x".to_owned(),
        "/v1/blobs/x/".to_owned(),
        "/v1/blobs/x".to_owned(),
        "/v1/blobs/a/b/c".to_owned(),
        "/v1/blobs/a%2Fb/c".to_owned(),
        "/v1/blobs/a/b%00c".to_owned(),
        "/v1/blobs/a%5Cb/c".to_owned(),
        format!("/v1/blobs/{long}/f"),
        format!("/v1/blobs/v/{long}"),
    ];
    for target in &bad {
        for method in ["PUT", "GET", "HEAD", "DELETE"] {
            let (status, body) = raw_request(node.addr, method, target, b"data").await;
            assert_eq!(status, 400, "{method} {target}: {body}");
            if method != "HEAD" {
                assert!(body.contains("bad blob key"), "{method} {target}: {body}");
            }
        }
    }
    let blobs = std::fs::read_dir(node.data_dir.join("blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "nothing was created");
    assert_eq!(node.staging_count(), 0);

    // The longest allowed segments work.
    let ok = "y".repeat(255);
    let (status, body) =
        raw_request(node.addr, "PUT", &format!("/v1/blobs/{ok}/{ok}"), b"data").await;
    assert_eq!(status, 201, "{body}");
    // Percent-encoded names are decoded once.
    let (status, body) = raw_request(node.addr, "PUT", "/v1/blobs/my%20video/a%2Bb", b"x").await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""key":"my video/a+b""#), "{body}");
    assert!(node.blob_path("my video/a+b").is_file());
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let node = Node::start();
    for target in ["/", "/files/x", "/v1", "/v1/blob/a/b", "/admin/nodes"] {
        let (status, body) = raw_request(node.addr, "GET", target, b"").await;
        assert_eq!(status, 404, "{target}: {body}");
        assert!(body.contains("no such route"), "{target}: {body}");
    }
    let (status, _) = raw_request(node.addr, "POST", "/v1/blobs/a/b", b"").await;
    assert_eq!(status, 405);
}
