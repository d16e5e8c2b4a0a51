//! The on-disk blob formats.
//!
//! ```text
//! version 1 (a plain SHA-256: stream-protocol uploads, and blobs written before windows)
//! offset  size  field
//!      0     8  magic "DSTBLOB1"
//!      8    32  SHA-256 of the payload
//!     40     8  payload length n, u64 little-endian
//!     48     n  payload
//!
//! version 2 (a windowed digest, see common::blob_digest: what the ring writes)
//!      0     8  magic "DSTBLOB2"
//!      8    32  root of the window table (covers the length)
//!     40     8  payload length n, u64 little-endian
//!     48     n  payload
//!   48+n  32*w  SHA-256 of each 64 KiB window of the payload, w = ceil(n / 64 KiB)
//! ```
//!
//! The checksum lives in the same file as the bytes it covers, so one rename publishes both and no crash can
//! leave a blob with a missing or stale checksum. The length makes truncation detectable without hashing.
//! A version 2 blob is served without hashing: the reader checks every window against the table, and the
//! table against the digest it recorded. A version 1 blob is hashed whole before it is served.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use common::blob_digest::{self, BlobDigest, WindowHasher};
use sha2::{Digest, Sha256};

/// Magic and version of the plain format.
pub const MAGIC: &[u8; 8] = b"DSTBLOB1";
/// Magic and version of the windowed format.
pub const MAGIC_WINDOWED: &[u8; 8] = b"DSTBLOB2";
/// Bytes before the payload.
pub const HEADER_LEN: u64 = 48;
/// Read size while verifying a payload.
const VERIFY_CHUNK: usize = 256 * 1024;

/// What the header of a blob file says about its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The payload's digest; its kind is the file's version.
    pub digest: BlobDigest,
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
    #[error("stored digest {stored}, computed {computed}")]
    ChecksumMismatch { stored: String, computed: String },
}

impl Header {
    /// The 48 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        let magic = match self.digest {
            BlobDigest::Sha256(_) => MAGIC,
            BlobDigest::Windowed(_) => MAGIC_WINDOWED,
        };
        out[..8].copy_from_slice(magic);
        out[8..40].copy_from_slice(self.digest.bytes());
        out[40..48].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// Parses the 48 header bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN as usize]) -> Result<Self, FormatError> {
        let mut d = [0u8; 32];
        d.copy_from_slice(&bytes[8..40]);
        let digest = match &bytes[..8] {
            m if m == MAGIC => BlobDigest::Sha256(d),
            m if m == MAGIC_WINDOWED => BlobDigest::Windowed(d),
            m => {
                return Err(FormatError::BadMagic(
                    String::from_utf8_lossy(m).into_owned(),
                ))
            }
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[40..48]);
        Ok(Self {
            digest,
            len: u64::from_le_bytes(len),
        })
    }

    /// The digest in its textual form (see [`common::blob_digest`]).
    pub fn digest_text(&self) -> String {
        self.digest.to_string()
    }

    /// Whether the file carries a window table.
    pub fn windowed(&self) -> bool {
        matches!(self.digest, BlobDigest::Windowed(_))
    }

    /// Bytes of the window table after the payload.
    pub fn table_len(&self) -> u64 {
        if self.windowed() {
            blob_digest::window_count(self.len) * 32
        } else {
            0
        }
    }

    /// The whole file's size; `None` for a length no file can have (a hostile or damaged header).
    fn file_len(&self) -> Option<u64> {
        HEADER_LEN
            .checked_add(self.len)?
            .checked_add(self.table_len())
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
    if header.file_len() != Some(size) {
        return Ok(Err(FormatError::LengthMismatch {
            header: header.len,
            actual: size.saturating_sub(HEADER_LEN + header.table_len()),
        }));
    }
    Ok(Ok(header))
}

/// The stored window table of a version 2 blob (empty for version 1).
pub fn read_table(file: &File, header: &Header) -> io::Result<Vec<u8>> {
    let mut table = vec![0u8; header.table_len() as usize];
    file.read_exact_at(&mut table, HEADER_LEN + header.len)?;
    Ok(table)
}

/// What a `GET` needs before it sends payload bytes: a version 2 blob only its header (the reader checks
/// every window), a version 1 blob its whole payload hashed. Blocking.
pub fn check_for_serving(file: &mut File) -> io::Result<Result<Header, FormatError>> {
    let header = match read_header(file)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if header.windowed() {
        return Ok(Ok(header));
    }
    file.seek(SeekFrom::Start(0))?;
    verify(file)
}

/// Reads the header and hashes the whole payload (and, for version 2, checks the stored table too).
/// Blocking: call from a blocking thread.
pub fn verify(file: &mut File) -> io::Result<Result<Header, FormatError>> {
    let header = match read_header(file)? {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    let mut plain = Sha256::new();
    let mut windows = WindowHasher::new();
    let mut buf = vec![0u8; VERIFY_CHUNK];
    let mut seen = 0u64;
    let mut payload = (&mut *file).take(header.len);
    loop {
        let n = payload.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if header.windowed() {
            windows.update(&buf[..n]);
        } else {
            plain.update(&buf[..n]);
        }
        seen += n as u64;
    }
    if seen != header.len {
        // The file changed size under us: it was truncated after the header check.
        return Ok(Err(FormatError::LengthMismatch {
            header: header.len,
            actual: seen,
        }));
    }
    let computed = if header.windowed() {
        let (digest, table) = windows.finish();
        // The stored table is what readers check windows against: it must be the payload's.
        if read_table(file, &header)? != blob_digest::encode_table(&table) {
            return Ok(Err(FormatError::ChecksumMismatch {
                stored: header.digest_text(),
                computed: "a window table that differs from the payload's".into(),
            }));
        }
        digest
    } else {
        BlobDigest::Sha256(plain.finalize().into())
    };
    if computed != header.digest {
        return Ok(Err(FormatError::ChecksumMismatch {
            stored: header.digest_text(),
            computed: computed.to_string(),
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
            digest: BlobDigest::Sha256(Sha256::digest(payload).into()),
            len: payload.len() as u64,
        };
        f.write_all(&h.encode()).expect("write");
        f.write_all(payload).expect("write");
        f.rewind().expect("rewind");
        f
    }

    fn windowed_file(payload: &[u8]) -> File {
        let mut f = tempfile::tempfile().expect("tempfile");
        let mut h = WindowHasher::new();
        h.update(payload);
        let (digest, table) = h.finish();
        let header = Header {
            digest,
            len: payload.len() as u64,
        };
        f.write_all(&header.encode()).expect("write");
        f.write_all(payload).expect("write");
        f.write_all(&blob_digest::encode_table(&table))
            .expect("write");
        f.rewind().expect("rewind");
        f
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            digest: BlobDigest::Sha256([7; 32]),
            len: 0x0102_0304_0506_0708,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..8], b"DSTBLOB1");
        assert_eq!(&bytes[40..48], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(Header::decode(&bytes), Ok(h));
        let w = Header {
            digest: BlobDigest::Windowed([7; 32]),
            len: 5,
        };
        assert_eq!(&w.encode()[..8], b"DSTBLOB2");
        assert_eq!(Header::decode(&w.encode()), Ok(w));
        let mut other = bytes;
        other[7] = b'9';
        assert!(matches!(
            Header::decode(&other),
            Err(FormatError::BadMagic(m)) if m == "DSTBLOB9"
        ));
    }

    #[test]
    fn windowed_blobs_verify_and_serve_without_hashing() {
        let payload: Vec<u8> = (0..(3 * blob_digest::WINDOW + 100))
            .map(|i| (i % 253) as u8)
            .collect();
        let mut f = windowed_file(&payload);
        let h = verify(&mut f).expect("io").expect("valid");
        assert!(h.windowed());
        assert_eq!(
            h.digest_text(),
            BlobDigest::compute(blob_digest::DigestKind::Windowed, &payload).to_string()
        );
        assert_eq!(read_table(&f, &h).expect("table").len(), 4 * 32);

        // A flipped payload byte: the scrub finds it, serving does not hash (the reader's window check
        // does), and a flipped table byte is found by the scrub too.
        let mut f = windowed_file(&payload);
        f.write_all_at(b"X", HEADER_LEN + 70_000).expect("write");
        assert!(matches!(
            verify(&mut f).expect("io"),
            Err(FormatError::ChecksumMismatch { .. })
        ));
        f.rewind().expect("rewind");
        assert!(check_for_serving(&mut f).expect("io").is_ok());
        let mut f = windowed_file(&payload);
        f.write_all_at(b"X", HEADER_LEN + payload.len() as u64 + 3)
            .expect("write");
        assert!(matches!(
            verify(&mut f).expect("io"),
            Err(FormatError::ChecksumMismatch { .. })
        ));

        // A missing table is a size mismatch, found without hashing.
        let f2 = windowed_file(&payload);
        f2.set_len(HEADER_LEN + payload.len() as u64)
            .expect("truncate");
        let mut f2 = f2;
        assert!(matches!(
            read_header(&mut f2).expect("io"),
            Err(FormatError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn a_header_claiming_an_impossible_length_is_refused() {
        // Found by the blob_format fuzz target: the size check overflowed.
        for digest in [BlobDigest::Sha256([1; 32]), BlobDigest::Windowed([1; 32])] {
            let mut f = tempfile::tempfile().expect("tempfile");
            let h = Header {
                digest,
                len: u64::MAX - 20,
            };
            f.write_all(&h.encode()).expect("write");
            f.write_all(b"payload").expect("write");
            f.rewind().expect("rewind");
            assert!(matches!(
                read_header(&mut f).expect("io"),
                Err(FormatError::LengthMismatch { .. })
            ));
        }
    }

    #[test]
    fn plain_blobs_are_hashed_before_serving() {
        let mut f = blob_file(b"hello world");
        f.write_all_at(b"O", HEADER_LEN + 4).expect("write");
        assert!(matches!(
            check_for_serving(&mut f).expect("io"),
            Err(FormatError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn verifies_good_and_bad_payloads() {
        let mut f = blob_file(b"hello world");
        let h = verify(&mut f).expect("io").expect("valid");
        assert_eq!(h.len, 11);
        assert_eq!(h.digest_text(), hex::encode(Sha256::digest(b"hello world")));

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
