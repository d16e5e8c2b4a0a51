//! The allocator of static musl builds (`dist/release.sh`). musl's own malloc takes one lock for every
//! allocation across threads and cost the fan-out about a quarter of its throughput (163 against 214 MB/s
//! at 1 GiB, `bench/fanout.sh`); mimalloc keeps glibc's. glibc builds keep glibc's allocator.
//!
//! mimalloc backs its arenas with transparent huge pages where the kernel allows them on request (`madvise`
//! mode, Debian's default): a few touched bytes then cost 2 MiB each, and the broadcaster's and readers'
//! peak RSS went from 13-17 MiB to 40-43 MiB. [`init`] turns huge pages off for the process.

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Call first thing in `main`: keeps a musl build's memory in small pages (a no-op on glibc builds). A
/// kernel that refuses (it cannot, short of seccomp) only costs memory, so the error is logged, not fatal.
pub fn init() {
    #[cfg(target_env = "musl")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: transparent huge pages stay on ({e}); memory use may be higher");
    }
}
