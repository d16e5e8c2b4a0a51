//! The reader's MPD scanner (`reader/src/dash/mpd.rs`), which checks the manifest of every transcode.
//!
//! The module is private to the reader (`mod mpd` with `pub(crate)` items), so its source file is compiled into
//! this target as it stands; `#[cfg(test)]` items are left out. Once the reader exposes it (for example
//! `#[doc(hidden)] pub mod mpd`), call `reader::dash::mpd::representations` instead.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../../reader/src/dash/mpd.rs"]
mod mpd;

fuzz_target!(|data: &[u8]| {
    let Ok(xml) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reps) = mpd::representations(xml) {
        // Every representation comes from a tag naming it (`< Representation` and `</Representation>` count too).
        let tags = xml.matches("Representation").count();
        assert!(
            reps.len() <= tags,
            "{} representations from {tags} tags",
            reps.len()
        );
        for r in &reps {
            if let Some(secs) = r.timeline_secs {
                assert!(secs >= 0.0, "negative timeline {secs}");
            }
            if let Some(n) = r.segments {
                assert!(n >= 1, "a timeline with no segments");
            }
        }
    }
});
