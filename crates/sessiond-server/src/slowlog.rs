//! The slow log (Redis's SLOWLOG): the last commands that took longer than
//! a threshold, newest first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

/// Arguments kept per entry, as Redis: beyond, one last argument says how
/// many more there were.
const MAX_ARGS: usize = 32;
/// Bytes kept per argument, as Redis.
const MAX_ARG_BYTES: usize = 128;

/// One slow command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Grows by one per entry, from 0; RESET does not start it again.
    pub id: u64,
    /// When it ran, seconds since the Unix epoch.
    pub unix_time: u64,
    /// How long it took, in microseconds (lock waits not counted).
    pub micros: u64,
    /// The command and its arguments, shortened.
    pub args: Vec<Bytes>,
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's name, or empty.
    pub name: String,
}

/// The log: its settings (atomics: SIGHUP may change them, every command
/// reads them) and entries.
#[derive(Debug)]
pub struct SlowLog {
    threshold_micros: AtomicI64,
    max_len: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    entries: VecDeque<Entry>,
}

impl SlowLog {
    /// A log of commands slower than `threshold_micros` (negative: none, 0:
    /// all), keeping the last `max_len`.
    pub fn new(threshold_micros: i64, max_len: usize) -> Self {
        Self {
            threshold_micros: AtomicI64::new(threshold_micros),
            max_len: AtomicUsize::new(max_len),
            inner: Mutex::default(),
        }
    }

    /// Changes the threshold and the length (the oldest entries beyond it
    /// go now).
    pub fn set(&self, threshold_micros: i64, max_len: usize) {
        self.threshold_micros
            .store(threshold_micros, Ordering::Relaxed);
        self.max_len.store(max_len, Ordering::Relaxed);
        self.inner.lock().entries.truncate(max_len);
    }

    /// Whether commands are logged at all (callers keep the arguments
    /// only then).
    pub fn enabled(&self) -> bool {
        self.threshold_micros.load(Ordering::Relaxed) >= 0
            && self.max_len.load(Ordering::Relaxed) > 0
    }

    /// Whether a command that took `took` goes into the log.
    pub fn is_slow(&self, took: Duration) -> bool {
        self.enabled()
            && u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
                >= self.threshold_micros.load(Ordering::Relaxed).unsigned_abs()
    }

    /// Logs a command if it was slow. Password-bearing commands keep only
    /// their name.
    pub fn record(&self, argv: &[Bytes], took: Duration, addr: SocketAddr, name: &str) {
        if !self.is_slow(took) {
            return;
        }
        let args = shorten(argv);
        let unix_time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut inner = self.inner.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.entries.push_front(Entry {
            id,
            unix_time,
            micros: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            args,
            addr,
            name: name.to_owned(),
        });
        inner.entries.truncate(self.max_len.load(Ordering::Relaxed));
    }

    /// The newest `n` entries (all when `None`), newest first.
    pub fn get(&self, n: Option<usize>) -> Vec<Entry> {
        let inner = self.inner.lock();
        let n = n.unwrap_or(inner.entries.len());
        inner.entries.iter().take(n).cloned().collect()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every entry.
    pub fn reset(&self) {
        self.inner.lock().entries.clear();
    }
}

fn shorten(argv: &[Bytes]) -> Vec<Bytes> {
    let secret = argv.first().is_some_and(|n| {
        [&b"AUTH"[..], b"HELLO"]
            .iter()
            .any(|c| n.eq_ignore_ascii_case(c))
    });
    if secret {
        let mut args: Vec<Bytes> = argv.iter().take(1).cloned().collect();
        if argv.len() > 1 {
            args.push(Bytes::from_static(b"(redacted)"));
        }
        return args;
    }
    let keep = if argv.len() > MAX_ARGS {
        MAX_ARGS - 1
    } else {
        argv.len()
    };
    let mut args: Vec<Bytes> = argv[..keep]
        .iter()
        .map(|a| {
            if a.len() > MAX_ARG_BYTES {
                let mut s = a.slice(..MAX_ARG_BYTES).to_vec();
                s.extend_from_slice(
                    format!("... ({} more bytes)", a.len() - MAX_ARG_BYTES).as_bytes(),
                );
                Bytes::from(s)
            } else {
                a.clone()
            }
        })
        .collect();
    if argv.len() > keep {
        args.push(Bytes::from(format!(
            "... ({} more arguments)",
            argv.len() - keep
        )));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn keeps_the_newest_slow_commands() {
        let log = SlowLog::new(1000, 2);
        let cmd = |s: &'static str| vec![Bytes::from_static(s.as_bytes())];
        log.record(&cmd("FAST"), Duration::from_micros(999), addr(), "");
        for c in ["A", "B", "C"] {
            log.record(&cmd(c), Duration::from_millis(1), addr(), "n");
        }
        let got = log.get(None);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].id, got[0].args[0].as_ref()), (2, &b"C"[..]));
        assert_eq!((got[1].id, got[1].args[0].as_ref()), (1, &b"B"[..]));
        assert_eq!(log.get(Some(1)).len(), 1);
        log.reset();
        assert!(log.is_empty());
        log.record(&cmd("D"), Duration::from_millis(1), addr(), "");
        assert_eq!(log.get(None)[0].id, 3, "ids go on after a reset");
    }

    #[test]
    fn negative_threshold_logs_nothing_zero_everything() {
        let off = SlowLog::new(-1, 10);
        off.record(
            &[Bytes::from_static(b"X")],
            Duration::from_secs(5),
            addr(),
            "",
        );
        assert!(off.is_empty());
        let all = SlowLog::new(0, 10);
        all.record(&[Bytes::from_static(b"X")], Duration::ZERO, addr(), "");
        assert_eq!(all.len(), 1);
    }

    #[test]
    fn shortens_long_commands_and_hides_passwords() {
        let argv: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("a{i}"))).collect();
        let args = shorten(&argv);
        assert_eq!(args.len(), 32);
        assert_eq!(args[31].as_ref(), b"... (9 more arguments)");
        let long = shorten(&[Bytes::from(vec![b'x'; 200])]);
        assert!(long[0].ends_with(b"... (72 more bytes)"));
        let auth = shorten(&[Bytes::from_static(b"auth"), Bytes::from_static(b"pw")]);
        assert_eq!(auth[1].as_ref(), b"(redacted)");
    }
}
