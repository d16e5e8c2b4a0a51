//! Just enough MPD reading to check ffmpeg's output: representations, their kind and size, and how many segments
//! (and seconds) each `SegmentTimeline` lists.
//!
//! A full XML parser would be a dependency for one well-known, machine-written document; this scanner reads
//! tags and attributes, skips declarations and comments, and refuses anything it does not understand.

/// One `<Representation>` as the manifest describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Representation {
    pub(crate) id: String,
    /// `video` or `audio`, from the representation's or its adaptation set's `mimeType` / `contentType`.
    pub(crate) kind: String,
    pub(crate) width: Option<u32>,
    pub(crate) height: Option<u32>,
    /// Segments listed by the timeline (`None` when there is no `SegmentTimeline`).
    pub(crate) segments: Option<u64>,
    /// Seconds covered by the timeline (the sum of its segment durations).
    pub(crate) timeline_secs: Option<f64>,
    /// Where the timeline ends, in seconds from the period start (`t` of the first segment, or of any later
    /// one that sets it, plus the durations after it).
    pub(crate) timeline_end_secs: Option<f64>,
    pub(crate) start_number: u64,
}

#[derive(Debug)]
struct Tag<'a> {
    name: &'a str,
    attrs: Vec<(&'a str, &'a str)>,
    closing: bool,
    self_closing: bool,
}

impl Tag<'_> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

fn tags(xml: &str) -> Result<Vec<Tag<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        rest = &rest[start + 1..];
        if let Some(after) = rest.strip_prefix("!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
            continue;
        }
        if rest.starts_with('?') || rest.starts_with('!') {
            let end = rest.find('>').ok_or("unterminated declaration")?;
            rest = &rest[end + 1..];
            continue;
        }
        // Find the closing '>' outside quotes.
        let mut quote = None;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                (None, '<') => return Err("'<' inside a tag".into()),
                _ => {}
            }
        }
        let end = end.ok_or("unterminated tag")?;
        let body = &rest[..end];
        rest = &rest[end + 1..];
        out.push(parse_tag(body)?);
    }
    Ok(out)
}

fn parse_tag(body: &str) -> Result<Tag<'_>, String> {
    let closing = body.starts_with('/');
    let body = body.trim_start_matches('/');
    let self_closing = body.ends_with('/');
    let body = body.trim_end_matches('/').trim();
    let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
    let name = &body[..name_end];
    if name.is_empty() {
        return Err("tag without a name".into());
    }
    let mut attrs = Vec::new();
    let mut rest = body[name_end..].trim_start();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("attribute without value in <{name}>"))?;
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let q = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| format!("unquoted attribute {key} in <{name}>"))?;
        let close = after[1..]
            .find(q)
            .ok_or_else(|| format!("unterminated attribute {key} in <{name}>"))?;
        attrs.push((key, &after[1..1 + close]));
        rest = after[close + 2..].trim_start();
    }
    Ok(Tag {
        name,
        attrs,
        closing,
        self_closing,
    })
}

#[derive(Debug, Default, Clone)]
struct Template {
    timescale: Option<u64>,
    start_number: Option<u64>,
    /// (segments, ticks) summed over `<S>` entries; `None` without a timeline.
    timeline: Option<(u64, u128)>,
    /// End of the last `<S>` in ticks.
    end: u128,
}

/// Lists the representations of an MPD, in document order.
pub(crate) fn representations(xml: &str) -> Result<Vec<Representation>, String> {
    let tags = tags(xml)?;
    if !tags.iter().any(|t| t.name == "MPD" && !t.closing) {
        return Err("no <MPD> element".into());
    }
    let mut out = Vec::new();
    let mut set_kind = String::new();
    let mut set_template: Option<Template> = None;
    let mut current: Option<(Representation, Option<Template>)> = None;
    let mut template: Option<Template> = None; // the template being read

    for t in &tags {
        match (t.name, t.closing) {
            ("AdaptationSet", false) => {
                set_kind = kind_of(t).unwrap_or_default();
                set_template = None;
            }
            ("AdaptationSet", true) => set_kind.clear(),
            ("Representation", false) => {
                let rep = Representation {
                    id: t
                        .attr("id")
                        .ok_or("<Representation> without id")?
                        .to_owned(),
                    kind: kind_of(t).unwrap_or_else(|| set_kind.clone()),
                    width: t.attr("width").and_then(|v| v.parse().ok()),
                    height: t.attr("height").and_then(|v| v.parse().ok()),
                    segments: None,
                    timeline_secs: None,
                    timeline_end_secs: None,
                    start_number: 1,
                };
                if t.self_closing {
                    out.push(finish(rep, set_template.clone()));
                } else {
                    current = Some((rep, None));
                }
            }
            ("Representation", true) => {
                let (rep, own) = current.take().ok_or("stray </Representation>")?;
                out.push(finish(rep, own.or_else(|| set_template.clone())));
            }
            ("SegmentTemplate", false) => {
                let tpl = Template {
                    timescale: t.attr("timescale").and_then(|v| v.parse().ok()),
                    start_number: t.attr("startNumber").and_then(|v| v.parse().ok()),
                    timeline: None,
                    end: 0,
                };
                if t.self_closing {
                    store(&mut current, &mut set_template, tpl);
                } else {
                    template = Some(tpl);
                }
            }
            ("SegmentTemplate", true) => {
                let tpl = template.take().ok_or("stray </SegmentTemplate>")?;
                store(&mut current, &mut set_template, tpl);
            }
            ("S", false) => {
                let tpl = template.as_mut().ok_or("<S> outside a SegmentTemplate")?;
                let d: u64 = t
                    .attr("d")
                    .and_then(|v| v.parse().ok())
                    .ok_or("<S> without a valid duration")?;
                // r = -1 ("until the end") never appears in a static manifest; treat it as no repeat.
                let r: u64 = t
                    .attr("r")
                    .and_then(|v| v.parse::<i64>().ok())
                    .map_or(0, |r| r.max(0) as u64);
                let start = match t.attr("t") {
                    Some(v) => u128::from(v.parse::<u64>().map_err(|_| "<S> with an invalid t")?),
                    None => tpl.end,
                };
                let (n, ticks) = tpl.timeline.get_or_insert((0, 0));
                *n = n.saturating_add(r.saturating_add(1));
                let span = u128::from(d) * u128::from(r.saturating_add(1));
                *ticks = ticks.saturating_add(span);
                tpl.end = start.saturating_add(span);
            }
            _ => {}
        }
    }
    Ok(out)
}

fn store(
    current: &mut Option<(Representation, Option<Template>)>,
    set_template: &mut Option<Template>,
    tpl: Template,
) {
    match current {
        Some((_, own)) => *own = Some(tpl),
        None => *set_template = Some(tpl),
    }
}

fn finish(mut rep: Representation, tpl: Option<Template>) -> Representation {
    if let Some(tpl) = tpl {
        rep.start_number = tpl.start_number.unwrap_or(1);
        if let Some((n, ticks)) = tpl.timeline {
            rep.segments = Some(n);
            let scale = tpl.timescale.filter(|s| *s > 0).unwrap_or(1);
            rep.timeline_secs = Some(ticks as f64 / scale as f64);
            rep.timeline_end_secs = Some(tpl.end as f64 / scale as f64);
        }
    }
    rep
}

fn kind_of(t: &Tag<'_>) -> Option<String> {
    t.attr("contentType")
        .or_else(|| t.attr("mimeType").and_then(|m| m.split('/').next()))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT10.0S">
  <!-- a comment with <tags> -->
  <Period id="0" start="PT0.0S">
    <AdaptationSet id="0" contentType="video" segmentAlignment="true">
      <Representation id="0" mimeType="video/mp4" codecs="avc1.64001f" bandwidth="2800000" width="1280" height="720">
        <SegmentTemplate timescale="15360" initialization="init-$RepresentationID$.m4s" media="chunk-$RepresentationID$-$Number%05d$.m4s" startNumber="1">
          <SegmentTimeline>
            <S t="0" d="61440" r="1" />
            <S d="30720" />
          </SegmentTimeline>
        </SegmentTemplate>
      </Representation>
    </AdaptationSet>
    <AdaptationSet id="1" contentType="audio">
      <Representation id="1" mimeType="audio/mp4" bandwidth="128000">
        <SegmentTemplate timescale="44100" startNumber="1">
          <SegmentTimeline><S t="0" d="176128" r="1"/><S d="88200"/></SegmentTimeline>
        </SegmentTemplate>
      </Representation>
    </AdaptationSet>
  </Period>
</MPD>"#;

    #[test]
    fn reads_ffmpeg_manifest() {
        let reps = representations(SAMPLE).expect("parses");
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].id, "0");
        assert_eq!(reps[0].kind, "video");
        assert_eq!((reps[0].width, reps[0].height), (Some(1280), Some(720)));
        assert_eq!(reps[0].segments, Some(3));
        assert!((reps[0].timeline_secs.expect("timeline") - 10.0).abs() < 1e-9);
        assert!((reps[0].timeline_end_secs.expect("end") - 10.0).abs() < 1e-9);
        assert_eq!(reps[1].kind, "audio");
        assert_eq!(reps[1].segments, Some(3));
    }

    /// Regression found by the `mpd` fuzz target: repeat counts whose sum overflows.
    #[test]
    fn huge_repeat_counts_saturate_instead_of_overflowing() {
        let xml = r#"<MPD><SegmentTemplate><S d="1" r="9223372036854775807"/><S d="1" r="9223372036854775807"/><S d="18446744073709551615" r="9223372036854775807"/></SegmentTemplate></MPD>"#;
        let _ = representations(xml);
        let xml = r#"<MPD><AdaptationSet contentType="video"><Representation id="0"><SegmentTemplate timescale="1"><SegmentTimeline><S d="1" r="9223372036854775807"/><S d="1" r="9223372036854775807"/></SegmentTimeline></SegmentTemplate></Representation></AdaptationSet></MPD>"#;
        let reps = representations(xml).expect("parses");
        assert_eq!(reps[0].segments, Some(u64::MAX));
    }

    #[test]
    fn timeline_end_counts_start_offsets() {
        let xml = r#"<MPD><AdaptationSet contentType="video"><Representation id="0">
            <SegmentTemplate timescale="10"><SegmentTimeline>
              <S t="50" d="40" r="1"/><S d="5"/><S t="1000" d="10"/>
            </SegmentTimeline></SegmentTemplate></Representation></AdaptationSet></MPD>"#;
        let reps = representations(xml).expect("parses");
        assert_eq!(reps[0].segments, Some(4));
        assert!((reps[0].timeline_secs.expect("sum") - 9.5).abs() < 1e-9);
        assert!((reps[0].timeline_end_secs.expect("end") - 101.0).abs() < 1e-9);
    }

    #[test]
    fn rejects_garbage() {
        assert!(representations("not xml at all").is_err());
        assert!(representations("<MPD><Representation id=\"0\"").is_err());
        assert!(representations("<MPD><S d=\"1\"/></MPD>").is_err());
    }
}
