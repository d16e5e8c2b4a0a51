//! The manifest a video plays from while it is still being transcoded.
//!
//! ffmpeg's own manifest exists only once the whole video is encoded (its intermediate ones are `dynamic`: a
//! player joining one starts at the live edge, not at the beginning). Everything a static manifest needs is
//! known before ffmpeg starts, though: the renditions (the ladder), the duration (the probe), and the segment
//! names and lengths, since keyframes are forced every `segment_secs` in every rendition
//! ([`super::ffmpeg_args`]). So the transcoder publishes this one first; a viewer plays from the start, and a
//! segment not yet written is waited for by the gateway. ffmpeg's exact manifest (with a `SegmentTimeline`)
//! replaces it when the transcode ends.
//!
//! Segment `n` (from 1) is the one that starts at the first frame at or after `(n - 1) * segment_secs`, which
//! is what the dash muxer cuts. A source with long gaps between frames gets fewer, longer segments than this
//! manifest announces; a player on the provisional manifest then finds the missing numbers answered 404 once the
//! transcode ended and ffmpeg's manifest is the one served.

use std::fmt::Write as _;

use super::{Probe, Rendition, AUDIO_KBPS};

/// `codecs` of every video representation: H.264 High profile, level 4.0. The declared level is a ceiling,
/// not a promise; browsers' Media Source Extensions check only that they can decode the profile, and a High
/// decoder decodes what the faster presets produce (Main, Constrained Baseline).
const VIDEO_CODECS: &str = "avc1.640028";
/// `codecs` of the audio representation: AAC-LC.
const AUDIO_CODECS: &str = "mp4a.40.2";

/// The static manifest of `ladder` (plus one AAC representation when the source has audio), laid out as
/// [`super::transcode`] writes its files.
pub fn provisional_manifest(probe: &Probe, ladder: &[Rendition], segment_secs: u32) -> String {
    let seg_ms = u64::from(segment_secs.max(1)) * 1000;
    let duration = iso_duration(probe.duration_ms);
    let template = format!(
        "<SegmentTemplate timescale=\"1000\" duration=\"{seg_ms}\" startNumber=\"1\" \
         initialization=\"init-$RepresentationID$.m4s\" media=\"chunk-$RepresentationID$-$Number%05d$.m4s\"/>"
    );
    let mut out = String::with_capacity(2048);
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <MPD xmlns=\"urn:mpeg:dash:schema:mpd:2011\" profiles=\"urn:mpeg:dash:profile:isoff-live:2011\" \
         type=\"static\" mediaPresentationDuration=\"{duration}\" minBufferTime=\"PT{segment_secs}S\">\n\
         <Period id=\"0\" start=\"PT0S\">\n\
         <AdaptationSet id=\"0\" contentType=\"video\" mimeType=\"video/mp4\" segmentAlignment=\"true\" \
         startWithSAP=\"1\">\n"
    );
    for (i, r) in ladder.iter().enumerate() {
        let _ = writeln!(
            out,
            "<Representation id=\"{i}\" codecs=\"{VIDEO_CODECS}\" bandwidth=\"{}\" width=\"{}\" height=\"{}\">\
             {template}</Representation>",
            u64::from(r.video_kbps.max(1)) * 1000,
            r.width,
            r.height,
        );
    }
    out.push_str("</AdaptationSet>\n");
    if probe.has_audio {
        let _ = writeln!(
            out,
            "<AdaptationSet id=\"1\" contentType=\"audio\" mimeType=\"audio/mp4\" segmentAlignment=\"true\" \
             startWithSAP=\"1\">\n\
             <Representation id=\"{}\" codecs=\"{AUDIO_CODECS}\" bandwidth=\"{}\">{template}</Representation>\n\
             </AdaptationSet>",
            ladder.len(),
            u64::from(AUDIO_KBPS) * 1000,
        );
    }
    out.push_str("</Period>\n</MPD>\n");
    out
}

/// `PT…S` with millisecond precision.
fn iso_duration(ms: u64) -> String {
    format!("PT{}.{:03}S", ms / 1000, ms % 1000)
}

/// How many segments the provisional manifest announces per representation.
pub fn announced_segments(duration_ms: u64, segment_secs: u32) -> u64 {
    let seg_ms = u64::from(segment_secs.max(1)) * 1000;
    duration_ms.div_ceil(seg_ms).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dash::{ladder, Container};

    fn probe(width: u32, height: u32, duration_ms: u64, has_audio: bool) -> Probe {
        Probe {
            duration_ms,
            width,
            height,
            fps: 30.0,
            video_codec: "h264".into(),
            has_audio,
            container: Container::Mov,
        }
    }

    #[test]
    fn the_manifest_lists_every_rendition_and_the_audio_with_the_segment_names_of_the_transcode() {
        let p = probe(1280, 720, 10_500, true);
        let l = ladder(&p);
        let xml = provisional_manifest(&p, &l, 4);
        let reps = crate::dash::mpd::representations(&xml).expect("our own manifest parses");
        assert_eq!(reps.len(), l.len() + 1, "{xml}");
        for (i, r) in l.iter().enumerate() {
            assert_eq!(reps[i].id, i.to_string());
            assert_eq!(reps[i].kind, "video");
            assert_eq!(
                (reps[i].width, reps[i].height),
                (Some(r.width), Some(r.height))
            );
        }
        assert_eq!(reps[l.len()].kind, "audio");
        assert!(xml.contains("type=\"static\""));
        assert!(xml.contains("mediaPresentationDuration=\"PT10.500S\""));
        assert!(xml.contains("media=\"chunk-$RepresentationID$-$Number%05d$.m4s\""));
        assert!(xml.contains("initialization=\"init-$RepresentationID$.m4s\""));
        assert!(xml.contains("duration=\"4000\""));
    }

    #[test]
    fn a_silent_video_has_no_audio_set() {
        let p = probe(640, 360, 3_000, false);
        let xml = provisional_manifest(&p, &ladder(&p), 4);
        assert!(!xml.contains("audio"), "{xml}");
    }

    #[test]
    fn segments_announced_cover_the_duration() {
        assert_eq!(announced_segments(10_000, 4), 3);
        assert_eq!(announced_segments(8_000, 4), 2);
        assert_eq!(announced_segments(8_001, 4), 3);
        assert_eq!(announced_segments(0, 4), 1);
    }
}
