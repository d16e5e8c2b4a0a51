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
    /// Variables under a service's prefix that no setting reads: a typo must not be silently ignored.
    #[error("{}", unknown_message(.0))]
    Unknown(Vec<UnknownVar>),
}

/// A variable under a service's prefix that no setting reads, and the known name it most resembles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVar {
    /// The name as set.
    pub var: String,
    /// The closest known name, when one is close enough to be a likely typo.
    pub suggestion: Option<&'static str>,
}

fn unknown_message(vars: &[UnknownVar]) -> String {
    let parts: Vec<String> = vars
        .iter()
        .map(|u| match u.suggestion {
            Some(s) => format!("{} is not a known variable (did you mean {s}?)", u.var),
            None => format!("{} is not a known variable", u.var),
        })
        .collect();
    parts.join("; ")
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

/// Reads the variables under `prefix` into a raw config struct, refusing names that are not in `known`:
/// the one way every service turns its environment into strings before validating them.
pub fn load<R: serde::de::DeserializeOwned>(
    prefix: &str,
    known: &[&'static str],
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<R, EnvError> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    reject_unknown(prefix, known, vars.iter().map(|(k, _)| k.as_str()))?;
    Ok(envy::prefixed(prefix).from_iter(vars)?)
}

/// Refuses every variable that starts with `prefix` but is not in `known`, naming it and the known name it
/// most resembles. Names are compared case-insensitively, as `envy` reads them.
///
/// [`load`] calls this before `envy` reads the values, since `envy` ignores names it does not know.
pub fn reject_unknown<'a>(
    prefix: &str,
    known: &[&'static str],
    names: impl IntoIterator<Item = &'a str>,
) -> Result<(), EnvError> {
    let mut unknown: Vec<UnknownVar> = names
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .filter(|n| !known.iter().any(|k| k.eq_ignore_ascii_case(n)))
        .map(|n| UnknownVar {
            var: n.to_owned(),
            suggestion: closest(n, known),
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_by(|a, b| a.var.cmp(&b.var));
    unknown.dedup();
    Err(EnvError::Unknown(unknown))
}

/// The known name nearest to `name` by edit distance, if it is within a third of the name's length (at
/// least 2 edits): near enough to be a typo, far enough not to suggest nonsense.
fn closest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let name = name.to_ascii_uppercase();
    let (best, d) = known
        .iter()
        .map(|k| (*k, edit_distance(&name, &k.to_ascii_uppercase())))
        .min_by_key(|(_, d)| *d)?;
    (d <= (name.len() / 3).max(2)).then_some(best)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The field names of a `#[derive(Deserialize)]` struct, as serde sees them: lets a unit test check that a
/// service's `VARS` list and its raw config struct name the same variables.
pub fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Visitor};

    #[derive(Debug)]
    struct Captured(&'static [&'static str]);
    impl std::fmt::Display for Captured {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("not a struct")
        }
    }
    impl std::error::Error for Captured {}
    impl serde::de::Error for Captured {
        fn custom<M: Display>(_: M) -> Self {
            Captured(&[])
        }
    }
    struct FieldsOnly;
    impl<'de> Deserializer<'de> for FieldsOnly {
        type Error = Captured;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
            Err(Captured(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Captured> {
            Err(Captured(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(FieldsOnly) {
        Err(Captured(fields)) => fields,
        Ok(_) => &[],
    }
}

/// Handles the command line of a service binary that is otherwise configured by its environment:
/// nothing → returns, and the caller serves; `--check-config` → runs `check` (validate the environment as
/// at start, without binding or touching data), prints `config ok` and exits 0, or prints the error and
/// exits 2; `--help` → usage, exit 0; anything else → usage on stderr, exit 2.
pub fn handle_args(bin: &str, check: impl FnOnce() -> Result<(), EnvError>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = format!(
        "usage: {bin} [--check-config]\n\nConfigured by environment variables (see README.md). \
         --check-config validates them and exits: 0 if valid, 2 if not."
    );
    let code = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => return,
        ["--check-config"] => check_exit_code(check()),
        ["-h"] | ["--help"] => {
            println!("{usage}");
            0
        }
        _ => {
            eprintln!("{bin}: unexpected arguments {args:?}\n{usage}");
            2
        }
    };
    std::process::exit(code);
}

/// Prints the outcome of a configuration check (`config ok` on stdout, or the error on stderr) and returns
/// the exit code for it: 0 valid, 2 invalid.
pub fn check_exit_code<E: Display>(result: Result<(), E>) -> i32 {
    use std::io::Write;
    let code = match result {
        Ok(()) => {
            println!("config ok");
            0
        }
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            2
        }
    };
    let _ = std::io::stdout().flush();
    code
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

    const KNOWN: &[&str] = &["X_HTTP_PORT", "X_SINK", "X_DATA_DIR", "X_S3_BUCKET"];

    fn names(v: &[&'static str]) -> Vec<&'static str> {
        v.to_vec()
    }

    #[test]
    fn known_and_foreign_variables_pass() {
        reject_unknown(
            "X_",
            KNOWN,
            names(&["X_SINK", "x_http_port", "PATH", "RUST_LOG", "Y_SINK", "X"]),
        )
        .expect("only known names under the prefix");
    }

    #[test]
    fn typos_are_refused_with_a_suggestion() {
        let e = reject_unknown("X_", KNOWN, names(&["X_SNK", "X_HTTP_PROT", "X_SINK"]))
            .expect_err("typos");
        let msg = e.to_string();
        assert!(
            msg.contains("X_SNK is not a known variable (did you mean X_SINK?)"),
            "{msg}"
        );
        assert!(
            msg.contains("X_HTTP_PROT") && msg.contains("did you mean X_HTTP_PORT?"),
            "{msg}"
        );
        let e =
            reject_unknown("X_", KNOWN, names(&["X_COMPLETELY_DIFFERENT"])).expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "X_COMPLETELY_DIFFERENT is not a known variable",
            "no far-fetched suggestion"
        );
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn fields_of_a_struct() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Raw {
            http_port: Option<String>,
            sink: Option<String>,
        }
        assert_eq!(struct_fields::<Raw>(), &["http_port", "sink"]);
        assert!(struct_fields::<u32>().is_empty());
    }

    #[test]
    fn check_codes() {
        assert_eq!(check_exit_code::<EnvError>(Ok(())), 0);
        assert_eq!(
            check_exit_code(Err(EnvError::invalid("X_A", "b", "bad"))),
            2
        );
    }
}
