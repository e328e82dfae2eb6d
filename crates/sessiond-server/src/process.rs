//! Facts about this process.

/// The process's resident memory: resident pages from /proc times the page
/// size the kernel reports (`sysconf(_SC_PAGESIZE)`; 4 KiB on most x86, 16
/// or 64 KiB on some arm64 and ppc64 kernels). 0 where there is no /proc.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| resident_pages(&s))
        .map_or(0, |pages| pages.saturating_mul(page_size()))
}

/// Most malloc arenas glibc may create under `--max-memory`: see
/// [`limit_malloc_arenas`].
pub const MAX_MALLOC_ARENAS: i32 = 2;

/// Limits glibc's malloc to [`MAX_MALLOC_ARENAS`] arenas (`M_ARENA_MAX`,
/// as the `MALLOC_ARENA_MAX` variable does). By default glibc gives
/// threads that allocate at the same time arenas of their own, up to eight
/// per core, and each keeps the memory freed into it: with sessions
/// allocated on the runtime's threads and their changes freed on the
/// writer's, resident memory under `everysec` stood 20 % above the data
/// (docs/benchmarks.md, "Memory limit"). Called before any thread starts,
/// only when `--max-memory` is set. Elsewhere than glibc, nothing.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before
    // the runtime starts its threads.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MAX_MALLOC_ARENAS);
    }
}

/// The second field of /proc/self/statm.
fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// The memory page size in bytes.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_resident_field() {
        assert_eq!(resident_pages("100 25 3 1 0 20 0\n"), Some(25));
        assert_eq!(resident_pages("100"), None);
    }

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
    }
}
