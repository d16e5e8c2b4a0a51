//! `Config::from_vars` of the broadcaster, the reader and the storage node: arbitrary `(name, value)` pairs
//! must give a config or an error naming the variable, never a panic.
//!
//! Input: one `NAME=VALUE` per line. A name made only of digits stands for the n-th known variable of the
//! three services (so the fuzzer reaches every setting without guessing names). Variables whose name contains
//! `FILE` name files the services read (cluster secret, admin token): their non-blank values are replaced by
//! one of a few fixture paths (good secret, short secret, non-UTF-8 bytes, a directory, a missing file), so a
//! fuzzer cannot make the harness read `/dev/zero` or block on a FIFO.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

fn known() -> &'static [&'static str] {
    static KNOWN: OnceLock<Vec<&'static str>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        let mut v: Vec<&'static str> = Vec::new();
        v.extend_from_slice(broadcaster::config::VARS);
        v.extend_from_slice(reader::config::VARS);
        v.extend_from_slice(storage_node::config::VARS);
        v.push(common::cluster::SECRET_FILE_VAR);
        v
    })
}

fn fixtures() -> &'static [String] {
    static FIX: OnceLock<(tempfile::TempDir, Vec<String>)> = OnceLock::new();
    &FIX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary dir");
        let file = |name: &str, bytes: &[u8]| -> String {
            let p: PathBuf = dir.path().join(name);
            std::fs::write(&p, bytes).expect("fixture");
            p.to_string_lossy().into_owned()
        };
        let paths = vec![
            file("good", format!("{SECRET}\n").as_bytes()),
            file("short", b"short\n"),
            file("binary", &[0xff; 40]),
            dir.path().to_string_lossy().into_owned(),
            dir.path().join("missing").to_string_lossy().into_owned(),
        ];
        (dir, paths)
    })
    .1
}

fn vars(data: &[u8]) -> Vec<(String, String)> {
    let known = known();
    let fix = fixtures();
    let text = String::from_utf8_lossy(data);
    text.split('\n')
        .map(|line| {
            let (name, value) = line.split_once('=').unwrap_or((line, ""));
            let name = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                known[name.parse::<usize>().unwrap_or(0) % known.len()].to_owned()
            } else {
                name.to_owned()
            };
            let value = if name.to_ascii_uppercase().contains("FILE") && !value.trim().is_empty() {
                fix[value.len() % fix.len()].clone()
            } else {
                value.to_owned()
            };
            (name, value)
        })
        .collect()
}

fn check<T: std::fmt::Debug, E: std::fmt::Display>(service: &str, r: Result<T, E>) {
    match r {
        Ok(c) => {
            let shown = format!("{c:?}");
            assert!(
                !shown.contains(SECRET),
                "{service} config's Debug shows the secret: {shown}"
            );
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                !shown.contains(SECRET),
                "{service} error shows the secret: {shown}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let vars = vars(data);
    // The secret must not leak from the file it is read from. An input that types the same text into
    // another variable (a host list, say) makes it no secret: an error may quote that variable's value.
    if vars.iter().any(|(_, v)| v.contains(SECRET)) {
        return;
    }
    check("broadcaster", broadcaster::Config::from_vars(vars.clone()));
    check("reader", reader::Config::from_vars(vars.clone()));
    check("storage-node", storage_node::Config::from_vars(vars));
});
