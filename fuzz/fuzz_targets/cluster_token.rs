//! The cluster secret's request proofs and tokens: `common::cluster::valid_token` on arbitrary strings, and
//! `ClusterSecret::verify_request` on an arbitrary `X-Distributary-Auth` value (never accepted, never a panic),
//! plus a freshly signed one for the same request (accepted once, then refused as a replay).
#![no_main]
use common::cluster::{valid_token, ClusterSecret, ReplayGuard, MAX_NONCE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    if valid_token(s) {
        assert!(!s.is_empty() && s.len() <= MAX_NONCE_LEN, "{s:?}");
        assert!(
            s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "{s:?}"
        );
    }
    // The first line is the path and query; the rest the header as a client sent it.
    let (pq, header) = s.split_once('\n').unwrap_or(("/v1/blobs/x", s));
    let secret = ClusterSecret::new(&[7u8; 32]).expect("secret");
    let replay = ReplayGuard::default();
    if let Ok(()) = secret.verify_request("PUT", pq, Some(header), &replay) {
        panic!("accepted a forged header {header:?}");
    }
    let signed = secret.sign_request("PUT", pq);
    assert!(
        secret
            .verify_request("PUT", pq, Some(&signed), &replay)
            .is_ok(),
        "{signed:?}"
    );
    assert!(
        secret
            .verify_request("PUT", pq, Some(&signed), &replay)
            .is_err(),
        "replay accepted"
    );
    assert!(secret
        .verify_request("GET", pq, Some(&signed), &ReplayGuard::default())
        .is_err());
});
