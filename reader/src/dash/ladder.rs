//! The adaptive bitrate ladder: which renditions to encode for a given source.

use super::Probe;

/// One H.264 video rendition of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rendition {
    pub height: u32,
    pub width: u32,
    pub video_kbps: u32,
}

/// Standard rungs (short side in pixels, video bitrate in kb/s), highest first: the usual 16:9 H.264 ladder.
pub const RUNGS: [(u32, u32); 4] = [(1080, 5000), (720, 2800), (480, 1400), (360, 800)];

/// Chooses the renditions for `p`, highest first (the highest becomes representation 0).
///
/// A rung is kept when it does not exceed the source's short side (so a source is never upscaled, and a portrait
/// 1080x1920 phone video gets a 1080x1920 top rung rather than a 608x1080 one). The other side keeps the aspect
/// ratio, rounded to an even number because 4:2:0 chroma needs even dimensions. A source smaller than the lowest
/// rung gets a single rendition at its own size (rounded down to even), with a bitrate scaled by pixel count.
pub fn ladder(p: &Probe) -> Vec<Rendition> {
    let (w, h) = (p.width.max(2), p.height.max(2));
    let portrait = h > w;
    let short = w.min(h);
    let mut out: Vec<Rendition> = RUNGS
        .iter()
        .filter(|(rung, _)| *rung <= short)
        .map(|&(rung, video_kbps)| {
            // The long side, scaled from the source and capped at the source's own (even) size.
            let scale = |long: u32| {
                let exact = f64::from(long) * f64::from(rung) / f64::from(short);
                (((exact / 2.0).round() as u32) * 2).clamp(2, even_down(long))
            };
            let (width, height) = if portrait {
                (rung, scale(h))
            } else {
                (scale(w), rung)
            };
            Rendition {
                height,
                width,
                video_kbps,
            }
        })
        .collect();
    if out.is_empty() {
        let (width, height) = (even_down(w), even_down(h));
        let (base_short, base_kbps) = RUNGS[RUNGS.len() - 1];
        let base_pixels = f64::from(base_short) * f64::from(base_short) * 16.0 / 9.0;
        let kbps = f64::from(base_kbps) * f64::from(width) * f64::from(height) / base_pixels;
        out.push(Rendition {
            height,
            width,
            video_kbps: (kbps.round() as u32).clamp(150, base_kbps),
        });
    }
    out
}

fn even_down(x: u32) -> u32 {
    (x & !1).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(width: u32, height: u32) -> Probe {
        Probe {
            duration_ms: 10_000,
            width,
            height,
            fps: 30.0,
            video_codec: "h264".into(),
            has_audio: true,
            container: crate::dash::Container::Mov,
        }
    }

    fn sizes(p: &Probe) -> Vec<(u32, u32)> {
        ladder(p).iter().map(|r| (r.width, r.height)).collect()
    }

    #[test]
    fn never_upscales() {
        assert_eq!(
            sizes(&probe(3840, 2160)),
            [(1920, 1080), (1280, 720), (854, 480), (640, 360)]
        );
        assert_eq!(
            sizes(&probe(1920, 1080)),
            [(1920, 1080), (1280, 720), (854, 480), (640, 360)]
        );
        assert_eq!(
            sizes(&probe(1280, 720)),
            [(1280, 720), (854, 480), (640, 360)]
        );
        assert_eq!(sizes(&probe(1279, 719)), [(854, 480), (640, 360)]);
        assert_eq!(sizes(&probe(640, 360)), [(640, 360)]);
        assert_eq!(sizes(&probe(320, 181)), [(320, 180)]);
        assert_eq!(sizes(&probe(1, 1)), [(2, 2)]);
    }

    #[test]
    fn keeps_aspect_and_even_sizes() {
        assert_eq!(
            sizes(&probe(1080, 1920)),
            [(1080, 1920), (720, 1280), (480, 854), (360, 640)]
        );
        assert_eq!(
            sizes(&probe(1440, 1080)),
            [(1440, 1080), (960, 720), (640, 480), (480, 360)]
        );
        assert_eq!(sizes(&probe(1000, 1000))[0], (720, 720));
        for r in ladder(&probe(1921, 1037)) {
            assert!(r.width % 2 == 0 && r.height % 2 == 0, "{r:?}");
            assert!(r.width <= 1921 && r.height <= 1037, "{r:?}");
        }
    }

    #[test]
    fn bitrates_descend() {
        let l = ladder(&probe(1920, 1080));
        assert_eq!(
            l.iter().map(|r| r.video_kbps).collect::<Vec<_>>(),
            [5000, 2800, 1400, 800]
        );
        let tiny = ladder(&probe(160, 90));
        assert_eq!(tiny.len(), 1);
        assert!((150..800).contains(&tiny[0].video_kbps));
    }
}
