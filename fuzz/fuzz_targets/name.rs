//! `common::name::validate_name` and `video_id`: names chosen by users become file names on every target.
#![no_main]
use common::name::{validate_name, video_id, MAX_NAME_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Names reach the services as UTF-8 (a path segment, a multipart filename): lossy keeps every input useful.
    let name = String::from_utf8_lossy(data);
    let name = name.as_ref();
    if validate_name(name).is_ok() {
        assert!(!name.is_empty() && name.len() <= MAX_NAME_BYTES, "{name:?}");
        assert!(name != "." && name != "..", "{name:?}");
        assert!(
            !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control()),
            "accepted a separator or control character: {name:?}"
        );
    }
    if let Ok(id) = video_id(name) {
        assert!(
            validate_name(name).is_ok(),
            "video id of a refused name {name:?}"
        );
        assert!(validate_name(&id).is_ok(), "refused id {id:?} of {name:?}");
        assert!(
            name.starts_with(id.as_str()),
            "id {id:?} is not a prefix of {name:?}"
        );
    }
});
