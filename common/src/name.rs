//! Names chosen by users become file names on every target, so they are checked once, at the edge.

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
            _ => continue,
        };
        return Err(NameError::BadChar(bad));
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
