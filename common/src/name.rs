//! Names chosen by users become file names on every target, so they are checked once, at the edge.
//!
//! Beyond what a file system refuses, names that would mislead a person are refused too: bidirectional
//! overrides (`evil\u{202E}gpj.exe` shows as `evilexe.jpg`), zero-width characters (two names that look
//! the same), and names not in Unicode NFC (`é` as one code point or as `e` + accent would be two files
//! that look alike): the gateway normalises to NFC ([`normalize_name`]), every other service refuses
//! anything else ([`validate_name`]).

use unicode_normalization::{is_nfc, UnicodeNormalization};

/// Longest accepted name in bytes: the limit of one path component on common file systems.
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {0} bytes long; at most {MAX_NAME_BYTES} are allowed")]
    TooLong(usize),
    #[error("name may not be `.` or `..`")]
    Dots,
    #[error("name may not contain {0}")]
    BadChar(&'static str),
    #[error("name is not in Unicode normalisation form C (NFC)")]
    NotNfc,
}

/// Characters that change how text around them is displayed or hide in it.
fn invisible(c: char) -> Option<&'static str> {
    match c {
        '\u{202A}'..='\u{202E}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200E}'
        | '\u{200F}'
        | '\u{061C}' => Some("bidirectional control characters"),
        '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' => {
            Some("zero-width or invisible characters")
        }
        _ => None,
    }
}

/// The NFC form of `name`, validated: what the gateway stores a user's name as.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let nfc: String = name.nfc().collect();
    validate_name(&nfc)?;
    Ok(nfc)
}

/// Accepts a name that is safe as a single path component on every target.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong(name.len()));
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots);
    }
    for c in name.chars() {
        let bad = match c {
            '/' => "`/`",
            '\\' => "`\\`",
            '\0' => "NUL",
            c if c.is_control() => "control characters",
            c => match invisible(c) {
                Some(what) => what,
                None => continue,
            },
        };
        return Err(NameError::BadChar(bad));
    }
    if !is_nfc(name) {
        return Err(NameError::NotNfc);
    }
    Ok(())
}

/// The video id of an uploaded file: its name without the last extension (`clip.mp4` → `clip`).
pub fn video_id(name: &str) -> Result<String, NameError> {
    validate_name(name)?;
    let id = match name.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => name,
    };
    validate_name(id)?;
    Ok(id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in [
            "a",
            "big.iso",
            "video 1.mp4",
            "..a",
            "a..",
            "ünïcødé",
            &"x".repeat(255),
        ] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn misleading_names_are_refused_and_twins_collapse() {
        for n in [
            "evil\u{202E}gpj.exe",
            "a\u{200B}b",
            "\u{FEFF}bom",
            "x\u{2066}y",
        ] {
            assert!(
                matches!(validate_name(n), Err(NameError::BadChar(_))),
                "{n:?}"
            );
        }
        let nfd = "cafe\u{301}.txt";
        assert_eq!(validate_name(nfd), Err(NameError::NotNfc));
        assert_eq!(normalize_name(nfd).as_deref(), Ok("caf\u{e9}.txt"));
        assert_eq!(
            normalize_name("caf\u{e9}.txt").as_deref(),
            Ok("caf\u{e9}.txt")
        );
    }

    #[test]
    fn video_ids() {
        assert_eq!(video_id("clip.mp4").as_deref(), Ok("clip"));
        assert_eq!(video_id("a.b.mp4").as_deref(), Ok("a.b"));
        assert_eq!(video_id("noext").as_deref(), Ok("noext"));
        assert_eq!(video_id(".mp4").as_deref(), Ok(".mp4"));
        assert_eq!(video_id("...mp4"), Err(NameError::Dots));
        assert!(video_id("").is_err());
    }

    #[test]
    fn refuses_dangerous_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name("."), Err(NameError::Dots));
        assert_eq!(validate_name(".."), Err(NameError::Dots));
        assert_eq!(
            validate_name(&"x".repeat(256)),
            Err(NameError::TooLong(256))
        );
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("../etc").is_err());
        assert!(validate_name("a\\b").is_err());
        assert!(validate_name("a\0b").is_err());
        assert!(validate_name("a\nb").is_err());
    }
}
