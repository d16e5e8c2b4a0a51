//! Environment values arrive as strings; each is parsed and range-checked here so that a bad value stops the
//! process at start with a message naming the variable.

use std::fmt::Display;
use std::str::FromStr;

/// A configuration value that was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        var: String,
        value: String,
        reason: String,
    },
    #[error("{var} must be set: {reason}")]
    Missing { var: String, reason: String },
    #[error("environment: {0}")]
    Envy(String),
}

impl EnvError {
    /// A refused value of `var`.
    pub fn invalid(var: &str, value: &str, reason: impl Display) -> Self {
        Self::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<envy::Error> for EnvError {
    fn from(e: envy::Error) -> Self {
        Self::Envy(e.to_string())
    }
}

/// Parses an optional number, falling back to `default`, and checks it lies in `min..=max`.
pub fn number<T>(var: &str, raw: Option<&str>, default: T, min: T, max: T) -> Result<T, EnvError>
where
    T: FromStr + PartialOrd + Display + Copy,
    T::Err: Display,
{
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(default);
    };
    let v: T = raw.parse().map_err(|e| EnvError::invalid(var, raw, e))?;
    if v < min || v > max {
        return Err(EnvError::invalid(
            var,
            raw,
            format_args!("must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// Parses an optional bind host, an IP address.
pub fn ip(
    var: &str,
    raw: Option<&str>,
    default: std::net::IpAddr,
) -> Result<std::net::IpAddr, EnvError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| EnvError::invalid(var, s, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("X", None, 5u32, 1, 10).expect("default"), 5);
        assert_eq!(number("X", Some(" 7 "), 5u32, 1, 10).expect("value"), 7);
        let e = number("X_SIZE", Some("abc"), 5u32, 1, 10).expect_err("bad");
        assert!(e.to_string().contains("X_SIZE"), "{e}");
        let e = number("X_SIZE", Some("11"), 5u32, 1, 10).expect_err("range");
        assert!(e.to_string().contains("between 1 and 10"), "{e}");
    }
}
