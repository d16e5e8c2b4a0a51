//! A SHA-256 whose state can be saved and taken up again in another process: the digest of a resumable
//! upload spans many requests and survives a broadcaster restart, so its state lives in the metadata store.
//!
//! `sha2` keeps its state private; this drives its public block function (`compress256`, the same SHA-NI or
//! assembly code `Sha256` uses) and does the padding itself, which is all SHA-256 adds on top.

use sha2::digest::generic_array::GenericArray;

use crate::digest::Sha256Digest;

const IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// SHA-256 in progress: the chaining state after every whole 64-byte block, and the bytes of the block
/// not yet complete.
#[derive(Clone, PartialEq, Eq)]
pub struct Sha256State {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    buf: [u8; 64],
}

impl std::fmt::Debug for Sha256State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sha256State")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Default for Sha256State {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a saved state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a saved SHA-256 state")]
pub struct BadState;

impl Sha256State {
    /// The state of the empty message.
    pub fn new() -> Self {
        Self {
            state: IV,
            len: 0,
            buf: [0; 64],
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes `data`.
    pub fn update(&mut self, mut data: &[u8]) {
        let pending = (self.len % 64) as usize;
        self.len += data.len() as u64;
        if pending > 0 {
            let take = data.len().min(64 - pending);
            self.buf[pending..pending + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if pending + take < 64 {
                return;
            }
            sha2::compress256(
                &mut self.state,
                &[GenericArray::clone_from_slice(&self.buf)],
            );
        }
        let whole = data.len() / 64 * 64;
        for block in data[..whole].chunks_exact(64) {
            sha2::compress256(
                &mut self.state,
                std::slice::from_ref(GenericArray::from_slice(block)),
            );
        }
        let rest = &data[whole..];
        self.buf[..rest.len()].copy_from_slice(rest);
    }

    /// The digest of everything hashed; the state is left as it was.
    pub fn finish(&self) -> Sha256Digest {
        let mut state = self.state;
        let pending = (self.len % 64) as usize;
        let mut tail = [0u8; 128];
        tail[..pending].copy_from_slice(&self.buf[..pending]);
        tail[pending] = 0x80;
        let total = if pending < 56 { 64 } else { 128 };
        tail[total - 8..total].copy_from_slice(&(self.len * 8).to_be_bytes());
        let blocks: Vec<GenericArray<u8, _>> = tail[..total]
            .chunks_exact(64)
            .map(GenericArray::clone_from_slice)
            .collect();
        sha2::compress256(&mut state, &blocks);
        let mut out = [0u8; 32];
        for (o, w) in out.chunks_exact_mut(4).zip(state) {
            o.copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    /// The state as text: chaining words, length, then the incomplete block, all hex.
    pub fn save(&self) -> String {
        let mut bytes = Vec::with_capacity(32 + 8 + 64);
        for w in self.state {
            bytes.extend_from_slice(&w.to_be_bytes());
        }
        bytes.extend_from_slice(&self.len.to_be_bytes());
        bytes.extend_from_slice(&self.buf[..(self.len % 64) as usize]);
        hex::encode(bytes)
    }

    /// Takes up a state [`Sha256State::save`] wrote.
    pub fn load(text: &str) -> Result<Self, BadState> {
        let bytes = hex::decode(text).map_err(|_| BadState)?;
        if bytes.len() < 40 {
            return Err(BadState);
        }
        let mut state = [0u32; 8];
        for (w, b) in state.iter_mut().zip(bytes[..32].chunks_exact(4)) {
            *w = u32::from_be_bytes(b.try_into().map_err(|_| BadState)?);
        }
        let len = u64::from_be_bytes(bytes[32..40].try_into().map_err(|_| BadState)?);
        let rest = &bytes[40..];
        if rest.len() as u64 != len % 64 {
            return Err(BadState);
        }
        let mut buf = [0u8; 64];
        buf[..rest.len()].copy_from_slice(rest);
        Ok(Self { state, len, buf })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha256_across_saves_at_every_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0usize, 1, 55, 56, 63, 64, 65, 119, 120, 128, 999, 1000] {
            let want: [u8; 32] = Sha256::digest(&data[..len]).into();
            for split in [0, 1, len / 3, len / 2, len.saturating_sub(1), len] {
                let split = split.min(len);
                let mut s = Sha256State::new();
                s.update(&data[..split]);
                let mut s = Sha256State::load(&s.save()).expect("load");
                for piece in data[split..len].chunks(17) {
                    s.update(piece);
                }
                assert_eq!(s.finish(), want, "len {len} split {split}");
                assert_eq!(s.len(), len as u64);
            }
        }
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(Sha256State::load("zz"), Err(BadState));
        assert_eq!(Sha256State::load(""), Err(BadState));
        let mut s = Sha256State::new();
        s.update(b"abc");
        let mut t = s.save();
        t.push_str("00");
        assert_eq!(Sha256State::load(&t), Err(BadState));
    }
}
