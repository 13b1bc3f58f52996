//! The process's memory allocator: jemalloc, for every allocation of the process on Linux/glibc
//! — Rust's through `#[global_allocator]`, and libtorch's, librdkafka's and the tokenizer's
//! through jemalloc's unprefixed `malloc`, which the executable exports in place of glibc's.
//!
//! Why: the live heap of a worker is flat over a long backlog (97.4 MB after 10 000 tweets,
//! 96.7 MB after 200 000, jemalloc heap profile), but the model allocates and frees ~1 GiB/s of
//! tensors, and an allocator that keeps freed pages makes peak RSS follow the backlog's length:
//! glibc (2 arenas) +42 MiB and jemalloc's defaults +41 MiB from a 10 000- to a 200 000-tweet
//! backlog. Handing dirty pages back after about a second, on jemalloc's own background
//! thread (not on the model thread's next allocation), keeps it at +19 MiB (+4 %) with the same
//! throughput (docs/performance.md, Memory).
//!
//! Guarantees: one allocator for the whole process (no pointer is freed by another allocator
//! than the one that made it); the defaults below can be changed at start-up without a rebuild
//! through jemalloc's own `MALLOC_CONF` variable (e.g. `MALLOC_CONF=dirty_decay_ms:10000`).
//! [`memory`] tells the live heap from what the process holds, so a leak (the heap grows) can
//! be told from retention (only the resident memory grows).

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's compiled-in options (it reads this symbol at its first allocation; `MALLOC_CONF`
/// overrides it): dirty pages go back to the system after ~1 s instead of 10, at once without
/// the "muzzy" stage, purged by a background thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(non_upper_case_globals)]
#[no_mangle]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// What the process holds, in bytes: `resident` (RSS, from `/proc/self/status`) and
/// `allocated` (live allocations, as jemalloc counts them); `None` for what this platform
/// cannot tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub resident: Option<u64>,
    pub allocated: Option<u64>,
}

/// Reads [`Memory`] now (cheap: one small file and one counter; done at each scrape).
pub fn memory() -> Memory {
    Memory {
        resident: resident_bytes(),
        allocated: allocated_bytes(),
    }
}

fn resident_bytes() -> Option<u64> {
    vm_rss_bytes(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// The `VmRSS` of a `/proc/PID/status` text, in bytes (the bench reads its workers' with it).
pub fn vm_rss_bytes(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn allocated_bytes() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // jemalloc's statistics are a snapshot refreshed by advancing the epoch.
    epoch::advance().ok()?;
    stats::allocated::read().ok().map(|b| b as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn allocated_bytes() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn vm_rss_is_read_from_a_proc_status_text() {
        let status =
            "Name:\tvaxpulse\nVmPeak:\t 3055496 kB\nVmRSS:\t  476028 kB\nRssAnon:\t  250888 kB\n";
        assert_eq!(super::vm_rss_bytes(status), Some(476_028 * 1024));
        assert_eq!(
            super::vm_rss_bytes("Name:\tkthreadd\n"),
            None,
            "kernel threads have none"
        );
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn this_process_reports_what_it_holds() {
        let m = super::memory();
        let (resident, allocated) = (m.resident.expect("RSS"), m.allocated.expect("heap"));
        assert!(
            allocated > 0 && allocated < resident,
            "{allocated} / {resident}"
        );
    }
}
