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

/// The calling thread's kernel id, for [`set_thread_background`]; 0
/// where threads have no such id.
pub fn current_thread_id() -> i32 {
    #[cfg(target_os = "linux")]
    {
        rustix::thread::gettid().as_raw_nonzero().get()
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// Moves thread `tid` (of this process) into the background
/// (`SCHED_IDLE`: it runs on a CPU nothing else wants, and any other
/// thread that wakes up takes the CPU from it at once) or back into the
/// normal class (`SCHED_OTHER`).
///
/// # Errors
/// What the kernel said (leaving `SCHED_IDLE` needs `RLIMIT_NICE` or
/// `CAP_SYS_NICE` for an unprivileged user; see
/// [`background_threads_allowed`]). Elsewhere than Linux: `Unsupported`.
pub fn set_thread_background(tid: i32, background: bool) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = if background {
            libc::SCHED_IDLE
        } else {
            libc::SCHED_OTHER
        };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration;
        // the call only changes the scheduling class of thread `tid`.
        #[allow(unsafe_code)]
        let r = unsafe { libc::sched_setscheduler(tid, policy, &raw const param) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tid, background);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// Whether thread `tid` is in the background class (`SCHED_IDLE`);
/// `None` when that cannot be read.
pub fn thread_in_background(tid: i32) -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: reads the scheduling class of thread `tid`; no memory is
        // passed.
        #[allow(unsafe_code)]
        let policy = unsafe { libc::sched_getscheduler(tid) };
        (policy >= 0).then_some(policy == libc::SCHED_IDLE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = tid;
        None
    }
}

/// Whether this process may move a thread into the background and back
/// (root, `CAP_SYS_NICE`, or an `RLIMIT_NICE` that allows nice 0: a
/// thread that could go but not come back could be starved by a busy
/// machine). Tried once, on a thread of its own.
pub fn background_threads_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::thread::Builder::new()
            .name("sessiond-probe".into())
            .spawn(|| {
                let tid = current_thread_id();
                set_thread_background(tid, true).is_ok()
                    && set_thread_background(tid, false).is_ok()
            })
            .ok()
            .and_then(|t| t.join().ok())
            .unwrap_or(false)
    })
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
    fn a_thread_goes_into_the_background_and_back() {
        if !background_threads_allowed() {
            return; // an unprivileged user without RLIMIT_NICE
        }
        std::thread::spawn(|| {
            let tid = current_thread_id();
            assert_eq!(thread_in_background(tid), Some(false));
            set_thread_background(tid, true).unwrap();
            assert_eq!(thread_in_background(tid), Some(true));
            set_thread_background(tid, false).unwrap();
            assert_eq!(thread_in_background(tid), Some(false));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
    }
}
