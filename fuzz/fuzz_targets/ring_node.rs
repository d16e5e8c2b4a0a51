//! Addresses from configuration and the admin API: `hashring::validate_node` (a ring member `host:port` or
//! `https://host:port`), and on the same string the broadcaster's target list (`Target::parse_list`) and the
//! metadata spec (`meta::parse_spec`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    if hashring::validate_node(s).is_ok() {
        // `host:port`, or `https://host:port` for a node serving HTTPS.
        let addr = s.strip_prefix("https://").unwrap_or(s);
        let (host, port) = addr
            .rsplit_once(':')
            .expect("accepted a node without a port");
        assert!(!host.is_empty(), "accepted an empty host: {s:?}");
        assert!(port.parse::<u16>().is_ok(), "accepted port {port:?}");
        assert!(
            !addr.chars().any(|c| c.is_whitespace()
                || c.is_control()
                || matches!(c, '/' | '\\' | '?' | '#' | '@')),
            "accepted a delimiter: {s:?}"
        );
        assert!(
            !host.contains(':') || host.starts_with('['),
            "accepted a bare IPv6 host: {s:?}"
        );
    }
    if let Ok(targets) = broadcaster::target::Target::parse_list(s) {
        assert!(targets.len() <= s.split(';').count());
        let _ = format!("{targets:?}");
    }
    let _ = meta::parse_spec(s).map_err(|e| e.to_string());
});
