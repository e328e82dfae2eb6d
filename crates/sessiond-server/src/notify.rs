//! systemd's readiness protocol (`sd_notify`): one datagram of
//! `KEY=value` lines to the Unix socket named by `NOTIFY_SOCKET`, so a
//! `Type=notify` unit knows when the server is ready, stopping, or alive
//! (watchdog). Without `NOTIFY_SOCKET` (not started by systemd) nothing is
//! sent.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where to send notifications, from the environment.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: String,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, if set (a path, or an
    /// abstract socket written with a leading `@`).
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var("NOTIFY_SOCKET").ok()?;
        (!socket.is_empty()).then_some(Notifier { socket })
    }

    /// Sends `state` (newline-separated `KEY=value` assignments).
    ///
    /// # Errors
    /// The socket cannot be reached.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        match self.socket.strip_prefix('@') {
            Some(name) => {
                #[cfg(target_os = "linux")]
                {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    sock.send_to_addr(state.as_bytes(), &addr)?;
                }
                #[cfg(not(target_os = "linux"))]
                {
                    let _ = name;
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "abstract sockets are Linux-only",
                    ));
                }
            }
            None => {
                sock.send_to(state.as_bytes(), &self.socket)?;
            }
        }
        Ok(())
    }

    /// Sends `state`, logging a failure instead of returning it: a
    /// supervisor that cannot be told is no reason to stop serving.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.notify(state) {
            tracing::warn!(socket = %self.socket, error = %e, "sd_notify failed");
        }
    }
}

/// How often to send `WATCHDOG=1`: half the interval systemd expects
/// (`WATCHDOG_USEC`), when it expects one of this process (`WATCHDOG_PID`
/// unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: path.to_string_lossy().into_owned(),
        };
        n.notify("READY=1\nSTATUS=hi").unwrap();
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hi");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let n = Notifier {
            socket: "/nonexistent/notify".into(),
        };
        assert!(n.notify("READY=1").is_err());
    }
}
