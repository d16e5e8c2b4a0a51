//! Multipart bodies (`POST /broadcast`, `POST /upload` on the broadcaster, the seed's `POST /upload` on a
//! reader): an arbitrary body with a fixed boundary, read field by field to the end, must end in fields or an
//! error, never a panic, and never allocate more than a constant plus a small multiple of the body: a counting
//! allocator measures the peak of live heap bytes while one input is read.
//!
//! Input: the first byte picks the reader (bit 0: axum's `Multipart` extractor as the routes use it, or
//! `multer` with size constraints) and the chunk size the body arrives in (bits 1..7: 1 to 128 bytes, so
//! boundaries and headers are split across chunks); the rest is the body.
#![no_main]
use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{header, Request};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts live heap bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(now, Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                let now =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(now, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap a read may use beyond the body's own size: buffers, a field's headers map, the runtime's task.
const HEAP_SLACK: usize = 1 << 20;
/// Copies of the body a reader may hold at once (the chunks, the parser's buffer, a field's bytes).
const HEAP_PER_BODY_BYTE: usize = 8;

const BOUNDARY: &str = "XfuzzBOUNDARY";
const WHOLE_LIMIT: u64 = 2048;
const FIELD_LIMIT: u64 = 512;
/// No real form has more fields than this; more would mean a field is returned without consuming input.
const MAX_FIELDS: usize = 10_000;

fn chunks(body: &[u8], size: usize) -> Vec<Result<Bytes, std::io::Error>> {
    body.chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

async fn via_axum(body: &[u8], size: usize) {
    let req = Request::builder()
        .method("POST")
        .uri("/broadcast")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from_stream(futures_util::stream::iter(chunks(
            body, size,
        ))))
        .expect("request");
    let mut form = Multipart::from_request(req, &())
        .await
        .expect("boundary is valid");
    let mut fields = 0;
    while let Ok(Some(mut field)) = form.next_field().await {
        fields += 1;
        assert!(fields <= MAX_FIELDS, "more fields than the body could hold");
        // What the routes do with a field's names.
        if field.name() == Some("file") {
            if let Some(name) = field.file_name() {
                let _ = common::name::validate_name(name);
                let _ = common::name::video_id(name);
            }
        }
        let _ = field.content_type();
        let mut read = 0usize;
        loop {
            match field.chunk().await {
                Ok(Some(c)) => read += c.len(),
                Ok(None) | Err(_) => break,
            }
        }
        assert!(read <= body.len(), "field longer than the body");
    }
}

async fn via_multer(body: &[u8], size: usize) {
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(WHOLE_LIMIT)
            .per_field(FIELD_LIMIT),
    );
    let stream = futures_util::stream::iter(chunks(body, size));
    let mut form = multer::Multipart::with_constraints(stream, BOUNDARY, constraints);
    let mut fields = 0;
    let mut total = 0u64;
    while let Ok(Some(mut field)) = form.next_field().await {
        fields += 1;
        assert!(fields <= MAX_FIELDS, "more fields than the body could hold");
        let _ = (
            field.name(),
            field.file_name(),
            field.content_type(),
            field.headers().len(),
        );
        let mut read = 0u64;
        loop {
            match field.chunk().await {
                Ok(Some(c)) => read += c.len() as u64,
                Ok(None) | Err(_) => break,
            }
        }
        assert!(
            read <= FIELD_LIMIT,
            "field of {read} bytes past the per-field limit"
        );
        total += read;
        assert!(
            total <= WHOLE_LIMIT,
            "{total} bytes past the whole-stream limit"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let size = usize::from(mode >> 1) + 1;
    let rt = distributary_fuzz::runtime();
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    if mode & 1 == 0 {
        rt.block_on(via_axum(body, size));
    } else {
        rt.block_on(via_multer(body, size));
    }
    let used = PEAK.load(Relaxed).saturating_sub(base);
    assert!(
        used <= HEAP_SLACK + HEAP_PER_BODY_BYTE * body.len(),
        "reading a {}-byte body took {used} bytes of heap",
        body.len()
    );
});
