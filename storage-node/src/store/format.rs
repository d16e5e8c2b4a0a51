//! The on-disk blob format, version 1.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "DSTBLOB1" (format and version: a later format gets a new magic)
//!      8    32  SHA-256 of the payload
//!     40     8  payload length, u64 little-endian
//!     48     n  payload
//! ```
//!
//! The checksum lives in the same file as the bytes it covers, so one rename publishes both and no crash can
//! leave a blob with a missing or stale checksum. The length makes truncation detectable without hashing.

use std::fs::File;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

/// Magic and version of the format.
pub const MAGIC: &[u8; 8] = b"DSTBLOB1";
/// Bytes before the payload.
pub const HEADER_LEN: u64 = 48;
/// Read size while verifying a payload.
const VERIFY_CHUNK: usize = 256 * 1024;

/// What the header of a blob file says about its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// SHA-256 of the payload.
    pub sha256: [u8; 32],
    /// Payload length in bytes.
    pub len: u64,
}

/// Why a blob file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated(u64),
    #[error("unknown format marker {0:?}")]
    BadMagic(String),
    #[error("header says {header} payload bytes, the file holds {actual}")]
    LengthMismatch { header: u64, actual: u64 },
    #[error("stored SHA-256 {stored}, computed {computed}")]
    ChecksumMismatch { stored: String, computed: String },
}

impl Header {
    /// The 48 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[..8].copy_from_slice(MAGIC);
        out[8..40].copy_from_slice(&self.sha256);
        out[40..48].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses the 48 header bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN as usize]) -> Result<Self, FormatError> {
        if &bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic(
                String::from_utf8_lossy(&bytes[..8]).into_owned(),
            ));
        }
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&bytes[8..40]);
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[40..48]);
        Ok(Self {
            sha256,
            len: u64::from_le_bytes(len),
        })
    }

    /// The checksum as lowercase hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Reads the header of `file` (positioned at its start) and checks it against the file's size, without
/// hashing: what a listing needs. `Ok(Err(_))` is a damaged file, `Err(_)` an I/O failure.
pub fn read_header(file: &mut File) -> io::Result<Result<Header, FormatError>> {
    let size = file.metadata()?.len();
    if size < HEADER_LEN {
        return Ok(Err(FormatError::Truncated(size)));
    }
    let mut buf = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut buf)?;
    let header = match Header::decode(&buf) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let actual = size - HEADER_LEN;
    if header.len != actual {
        return Ok(Err(FormatError::LengthMismatch {
            header: header.len,
            actual,
        }));
    }
    Ok(Ok(header))
}

/// Reads the header and hashes the whole payload, leaving `file` positioned at its end. Blocking: call from
/// a blocking thread.
pub fn verify(file: &mut File) -> io::Result<Result<Header, FormatError>> {
    let header = match read_header(file)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; VERIFY_CHUNK];
    let mut seen = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        seen += n as u64;
    }
    if seen != header.len {
        // The file changed size under us: it was truncated or appended to after the header check.
        return Ok(Err(FormatError::LengthMismatch {
            header: header.len,
            actual: seen,
        }));
    }
    let computed: [u8; 32] = hasher.finalize().into();
    if computed != header.sha256 {
        return Ok(Err(FormatError::ChecksumMismatch {
            stored: header.sha256_hex(),
            computed: hex::encode(computed),
        }));
    }
    Ok(Ok(header))
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, Write};

    use super::*;

    fn blob_file(payload: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tempfile");
        let h = Header {
            sha256: Sha256::digest(payload).into(),
            len: payload.len() as u64,
        };
        f.write_all(&h.encode()).expect("write");
        f.write_all(payload).expect("write");
        f.rewind().expect("rewind");
        f
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            sha256: [7; 32],
            len: 0x0102_0304_0506_0708,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"DSTBLOB1");
        assert_eq!(&bytes[40..48], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Header::decode(&bytes), Ok(h));
        let mut other = bytes;
        other[7] = b'2';
        assert!(matches!(
            Header::decode(&other),
            Err(FormatError::BadMagic(m)) if m == "DSTBLOB2"
        ));
    }

    #[test]
    fn verifies_good_and_bad_payloads() {
        let mut f = blob_file(b"hello world");
        let h = verify(&mut f).expect("io").expect("valid");
        assert_eq!(h.len, 11);
        assert_eq!(h.sha256_hex(), hex::encode(Sha256::digest(b"hello world")));

        let mut empty = blob_file(b"");
        assert_eq!(verify(&mut empty).expect("io").expect("valid").len, 0);

        // One flipped payload byte.
        let mut f = blob_file(b"hello world");
        f.seek(std::io::SeekFrom::Start(HEADER_LEN + 4))
            .expect("seek");
        f.write_all(b"O").expect("write");
        f.rewind().expect("rewind");
        assert!(matches!(
            verify(&mut f).expect("io"),
            Err(FormatError::ChecksumMismatch { .. })
        ));

        // Truncated payload, truncated header.
        let mut f = blob_file(b"hello world");
        f.set_len(HEADER_LEN + 3).expect("truncate");
        assert!(matches!(
            verify(&mut f).expect("io"),
            Err(FormatError::LengthMismatch {
                header: 11,
                actual: 3
            })
        ));
        f.set_len(10).expect("truncate");
        f.rewind().expect("rewind");
        assert_eq!(verify(&mut f).expect("io"), Err(FormatError::Truncated(10)));
    }
}
