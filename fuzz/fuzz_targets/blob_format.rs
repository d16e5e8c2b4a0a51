//! The storage node's on-disk blob formats: `Header::decode` on the first 48 bytes, then `read_header` and
//! `verify` on the whole input written to a temporary file, then on the same payload made a valid plain
//! blob and a valid windowed blob (which must both verify).
#![no_main]
use std::cell::RefCell;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use common::blob_digest::{self, BlobDigest, WindowHasher};
use storage_node::store::format::{
    read_header, verify, FormatError, Header, HEADER_LEN, MAGIC, MAGIC_WINDOWED,
};

const H: usize = HEADER_LEN as usize;

thread_local! {
    static FILE: RefCell<File> = RefCell::new(tempfile::tempfile().expect("temporary file"));
}

fn rewrite(file: &mut File, bytes: &[u8]) {
    file.set_len(0).expect("truncate");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(bytes).expect("write");
    file.seek(SeekFrom::Start(0)).expect("seek");
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= H {
        let head: &[u8; H] = data[..H].try_into().expect("48 bytes");
        match Header::decode(head) {
            Ok(h) => assert_eq!(&h.encode(), head, "decode/encode does not round-trip"),
            Err(FormatError::BadMagic(_)) => {
                assert!(&head[..8] != MAGIC && &head[..8] != MAGIC_WINDOWED)
            }
            Err(e) => panic!("decode of 48 bytes failed with {e}"),
        }
    }
    FILE.with(|f| {
        let file = &mut *f.borrow_mut();

        rewrite(file, data);
        let listed = read_header(file).expect("read_header I/O");
        file.seek(SeekFrom::Start(0)).expect("seek");
        let verified = verify(file).expect("verify I/O");
        if let Ok(h) = &verified {
            assert_eq!(
                listed.as_ref().ok(),
                Some(h),
                "verify accepted what read_header refused"
            );
            assert_eq!(h.len + h.table_len(), (data.len() - H) as u64);
            let payload = &data[H..H + h.len as usize];
            let computed = BlobDigest::compute(h.digest.kind(), payload);
            assert_eq!(h.digest, computed, "verify accepted a wrong checksum");
        }
        if let Ok(h) = &listed {
            assert_eq!(
                h.len + HEADER_LEN + h.table_len(),
                data.len() as u64,
                "read_header accepted a wrong length"
            );
        }
        let _ = verified.map_err(|e| e.to_string());

        // The same payload behind a correct header always verifies.
        let payload = data.get(H..).unwrap_or(data);
        let good = Header {
            digest: BlobDigest::Sha256(Sha256::digest(payload).into()),
            len: payload.len() as u64,
        };
        let mut blob = good.encode().to_vec();
        blob.extend_from_slice(payload);
        rewrite(file, &blob);
        assert_eq!(
            verify(file).expect("verify I/O"),
            Ok(good),
            "a well-formed blob did not verify"
        );
        let mut hasher = WindowHasher::new();
        hasher.update(payload);
        let (digest, table) = hasher.finish();
        let good = Header {
            digest,
            len: payload.len() as u64,
        };
        let mut blob = good.encode().to_vec();
        blob.extend_from_slice(payload);
        blob.extend_from_slice(&blob_digest::encode_table(&table));
        rewrite(file, &blob);
        assert_eq!(
            verify(file).expect("verify I/O"),
            Ok(good),
            "a well-formed windowed blob did not verify"
        );
    });
});
