//! What a ring blob's recorded digest means, and the windowed digest that lets a reader check a blob piece
//! by piece while it streams.
//!
//! A blob recorded with a plain SHA-256 can only be checked once every byte has arrived, so a reader must
//! hold the whole blob before sending any of it. A windowed digest is the SHA-256 of the blob's length and of
//! the SHA-256 of every [`WINDOW`]-byte window: the storage node keeps that table of window digests beside
//! the payload, a reader fetches it once (a few KiB), checks it against the recorded digest, and then checks
//! each window against its entry before any byte of it is sent. Memory per read is one window, and a window
//! that fails is read again from another replica.
//!
//! Textual forms: 64 hex digits are a plain SHA-256 (records and blobs written before windows, and the
//! stream protocol's whole-upload digests); `w1:` followed by 64 hex digits is a windowed digest.

use sha2::{Digest, Sha256};

/// Bytes per window of a `w1:` digest.
pub const WINDOW: usize = 64 * 1024;

/// Prefix of a windowed digest's textual form.
const WINDOWED_PREFIX: &str = "w1:";

/// Domain separation: a table root can never equal the plain SHA-256 of some payload.
const ROOT_TAG: &[u8] = b"distributary blob windows v1\0";

/// One window's digest.
pub type WindowDigest = [u8; 32];

/// A blob digest of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobDigest {
    /// SHA-256 of the whole payload.
    Sha256([u8; 32]),
    /// The root over the payload's length and window digests (see [`root`]).
    Windowed([u8; 32]),
}

/// Which kind of digest a blob carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    /// See [`BlobDigest::Sha256`].
    Sha256,
    /// See [`BlobDigest::Windowed`].
    Windowed,
}

/// A malformed digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a blob digest is 64 hex digits, or `w1:` and 64 hex digits")]
pub struct BadDigest;

impl BlobDigest {
    /// Parses either textual form (hex in either case).
    pub fn parse(text: &str) -> Result<Self, BadDigest> {
        let text = text.trim();
        let (windowed, hex_part) = match text.strip_prefix(WINDOWED_PREFIX) {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let mut d = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut d).map_err(|_| BadDigest)?;
        Ok(if windowed {
            Self::Windowed(d)
        } else {
            Self::Sha256(d)
        })
    }

    /// The digest of `data` of the given kind.
    pub fn compute(kind: DigestKind, data: &[u8]) -> Self {
        match kind {
            DigestKind::Sha256 => Self::Sha256(Sha256::digest(data).into()),
            DigestKind::Windowed => {
                let mut h = WindowHasher::new();
                h.update(data);
                h.finish().0
            }
        }
    }

    /// Its kind.
    pub fn kind(&self) -> DigestKind {
        match self {
            Self::Sha256(_) => DigestKind::Sha256,
            Self::Windowed(_) => DigestKind::Windowed,
        }
    }

    /// The 32 digest bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        match self {
            Self::Sha256(d) | Self::Windowed(d) => d,
        }
    }

    /// Whether `data` hashes to this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        Self::compute(self.kind(), data) == *self
    }
}

impl std::fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sha256(d) => f.write_str(&hex::encode(d)),
            Self::Windowed(d) => write!(f, "{WINDOWED_PREFIX}{}", hex::encode(d)),
        }
    }
}

/// Whether the textual digest `recorded` is that of `data` (a malformed one matches nothing).
pub fn matches(recorded: &str, data: &[u8]) -> bool {
    BlobDigest::parse(recorded).is_ok_and(|d| d.matches(data))
}

/// Windows in a payload of `len` bytes.
pub fn window_count(len: u64) -> u64 {
    len.div_ceil(WINDOW as u64)
}

/// The length of window `index` of a payload of `len` bytes.
pub fn window_len(len: u64, index: u64) -> usize {
    let start = index * WINDOW as u64;
    len.saturating_sub(start).min(WINDOW as u64) as usize
}

/// The digest of one window's bytes.
pub fn window_digest(data: &[u8]) -> WindowDigest {
    Sha256::digest(data).into()
}

/// The windowed digest of a payload of `len` bytes whose windows hash to `table`. The length is covered, so
/// a node cannot pass off a shortened last window.
pub fn root(len: u64, table: &[WindowDigest]) -> BlobDigest {
    let mut h = Sha256::new();
    h.update(ROOT_TAG);
    h.update(len.to_le_bytes());
    for w in table {
        h.update(w);
    }
    BlobDigest::Windowed(h.finalize().into())
}

/// Parses a table of window digests as a node stores and sends it (32 bytes per window, in order) and
/// checks it against `expected` for a payload of `len` bytes.
pub fn check_table(
    expected: &BlobDigest,
    len: u64,
    bytes: &[u8],
) -> Result<Vec<WindowDigest>, TableError> {
    if bytes.len() as u64 != window_count(len) * 32 {
        return Err(TableError::Size {
            len,
            got: bytes.len(),
        });
    }
    let table: Vec<WindowDigest> = bytes
        .chunks_exact(32)
        .map(|c| {
            let mut d = [0u8; 32];
            d.copy_from_slice(c);
            d
        })
        .collect();
    if root(len, &table) != *expected {
        return Err(TableError::Mismatch);
    }
    Ok(table)
}

/// Why a window table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("a window table for {len} bytes cannot be {got} bytes long")]
    Size { len: u64, got: usize },
    #[error("the window table does not hash to the recorded digest")]
    Mismatch,
}

/// Computes a windowed digest as the bytes stream, keeping the table.
#[derive(Debug, Clone)]
pub struct WindowHasher {
    current: Sha256,
    in_window: usize,
    len: u64,
    table: Vec<WindowDigest>,
}

impl Default for WindowHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowHasher {
    /// An empty payload so far.
    pub fn new() -> Self {
        Self {
            current: Sha256::new(),
            in_window: 0,
            len: 0,
            table: Vec::new(),
        }
    }

    /// Adds the next bytes of the payload.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        while !data.is_empty() {
            let take = data.len().min(WINDOW - self.in_window);
            self.current.update(&data[..take]);
            self.in_window += take;
            data = &data[take..];
            if self.in_window == WINDOW {
                self.close_window();
            }
        }
    }

    fn close_window(&mut self) {
        let done = std::mem::take(&mut self.current);
        self.table.push(done.finalize().into());
        self.in_window = 0;
    }

    /// The digest and the table of window digests.
    pub fn finish(mut self) -> (BlobDigest, Vec<WindowDigest>) {
        if self.in_window > 0 {
            self.close_window();
        }
        (root(self.len, &self.table), self.table)
    }
}

/// The table as stored and sent: 32 bytes per window.
pub fn encode_table(table: &[WindowDigest]) -> Vec<u8> {
    table.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn forms_round_trip_and_kinds_differ() {
        let data = payload(3 * WINDOW + 17);
        let plain = BlobDigest::compute(DigestKind::Sha256, &data);
        let windowed = BlobDigest::compute(DigestKind::Windowed, &data);
        assert_eq!(plain.to_string().len(), 64);
        assert!(windowed.to_string().starts_with("w1:"));
        assert_eq!(BlobDigest::parse(&plain.to_string()), Ok(plain));
        assert_eq!(BlobDigest::parse(&windowed.to_string()), Ok(windowed));
        assert_eq!(
            BlobDigest::parse(&windowed.to_string().to_uppercase().replace("W1", "w1")),
            Ok(windowed)
        );
        assert_ne!(plain.bytes(), windowed.bytes());
        assert!(matches(&windowed.to_string(), &data));
        assert!(matches(&plain.to_string(), &data));
        assert!(!matches(&windowed.to_string(), &data[1..]));
        assert!(!matches("w1:zz", &data));
        assert_eq!(BlobDigest::parse("w2:00"), Err(BadDigest));
    }

    #[test]
    fn streaming_equals_one_shot_at_every_split() {
        for n in [
            0,
            1,
            WINDOW - 1,
            WINDOW,
            WINDOW + 1,
            2 * WINDOW,
            5 * WINDOW + 3,
        ] {
            let data = payload(n);
            let whole = BlobDigest::compute(DigestKind::Windowed, &data);
            for step in [1usize, 1000, WINDOW - 7, WINDOW, 3 * WINDOW] {
                let mut h = WindowHasher::new();
                for piece in data.chunks(step.max(1)) {
                    h.update(piece);
                }
                let (d, table) = h.finish();
                assert_eq!(d, whole, "n={n} step={step}");
                assert_eq!(table.len() as u64, window_count(n as u64));
            }
        }
    }

    #[test]
    fn tables_are_checked_against_the_root() {
        let data = payload(2 * WINDOW + 5);
        let mut h = WindowHasher::new();
        h.update(&data);
        let (d, table) = h.finish();
        let bytes = encode_table(&table);
        let len = data.len() as u64;
        assert_eq!(check_table(&d, len, &bytes), Ok(table.clone()));
        for (i, w) in data.chunks(WINDOW).enumerate() {
            assert_eq!(window_digest(w), table[i]);
            assert_eq!(window_len(len, i as u64), w.len());
        }
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        assert_eq!(check_table(&d, len, &bad), Err(TableError::Mismatch));
        // The length is part of the root: the same windows cannot claim a shorter payload.
        assert_eq!(check_table(&d, len - 1, &bytes), Err(TableError::Mismatch));
        assert!(matches!(
            check_table(&d, len, &bytes[..64]),
            Err(TableError::Size { .. })
        ));
    }
}
