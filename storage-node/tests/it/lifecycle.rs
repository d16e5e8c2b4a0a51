//! Process behaviour: health, SIGTERM, configuration errors.

use reqwest::StatusCode;

use crate::harness::{client, run_cli, Node};

#[tokio::test]
async fn healthz_and_sigterm() {
    let mut node = Node::start();
    let r = client().get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
    let status = node.stop().await.expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        node.log().contains("listening on 127.0.0.1:"),
        "{}",
        node.log()
    );
}

#[tokio::test]
async fn bad_configuration_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    for (var, value) in [
        ("STORAGE_NODE_HTTP_PORT", "99999"),
        ("STORAGE_NODE_HTTP_HOST", "somewhere"),
        ("STORAGE_NODE_BUFFER_SIZE", "tiny"),
        ("STORAGE_NODE_MAX_BLOB_BYTES", "-1"),
        ("STORAGE_NODE_STAGING_TTL_SECS", "0"),
        ("STORAGE_NODE_SHUTDOWN_GRACE_SECS", "x"),
        ("STORAGE_NODE_DATA_DIR", ""),
    ] {
        let mut env = vec![(var, value), ("STORAGE_NODE_HTTP_PORT", "0")];
        if var != "STORAGE_NODE_DATA_DIR" {
            env.push(("STORAGE_NODE_DATA_DIR", data_dir.as_str()));
        }
        // The variable under test goes last so it wins over the defaults above.
        env.retain(|(k, _)| *k != var);
        env.push((var, value));
        let (status, stdout, stderr) = run_cli(&[], &env).await;
        assert!(!status.success(), "{var}={value} was accepted");
        assert!(
            stderr.contains(var),
            "{var}={value}: the message names the variable:\n{stdout}{stderr}"
        );
    }
}

#[tokio::test]
async fn help_and_unknown_arguments() {
    let (status, stdout, _) = run_cli(&["--help"], &[]).await;
    assert!(status.success());
    assert!(stdout.contains("admin"), "{stdout}");
    let (status, _, stderr) = run_cli(&["serve-everything"], &[]).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
}
