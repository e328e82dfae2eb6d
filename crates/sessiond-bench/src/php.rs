//! A PHP session page served by `php -S` (the built-in server with
//! `PHP_CLI_SERVER_WORKERS` forked workers), driven by our own HTTP/1.1
//! client: one connection per request (`php -S` closes after each response).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::driver::{Lat, OpErr, Rng, drive};
use crate::report::PhpRow;
use crate::servers::{TempDir, free_port};

const PAGE: &str = r#"<?php
// The session page: read the session, change one key, write it back.
if (getenv('BENCH_HANDLER') === 'sessiond') {
    require getenv('BENCH_SESSIOND_PHP') . '/src/autoload.php';
    Sessiond\SessionHandler::register(getenv('BENCH_SESSIOND_URI'));
}
session_start();
if (!isset($_SESSION['k0'])) {
    for ($i = 0; $i < 10; $i++) {
        $_SESSION["k$i"] = str_repeat(chr(97 + $i), 100);
    }
    $_SESSION['counter'] = 0;
}
$_SESSION['counter']++;
echo 'ok ', $_SESSION['counter'], "\n";
"#;

/// How PHP keeps sessions in one run.
pub struct Handler {
    pub name: String,
    pub server: String,
    pub ini: Vec<String>,
    pub env: Vec<(String, String)>,
}

struct PhpServer {
    child: Child,
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        // php -S forks its workers into its own process group (set below):
        // stop the whole group.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls on the group we created.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        std::thread::sleep(Duration::from_millis(100));
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        crate::servers::unregister_group(self.child.id());
    }
}

fn http_get(
    addr: SocketAddr,
    cookie: Option<&str>,
) -> std::io::Result<(u16, Option<String>, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req =
        String::from("GET /page.php HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(c) = cookie {
        req.push_str("Cookie: PHPSESSID=");
        req.push_str(c);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let sid = head.lines().find_map(|l| {
        let v = l.strip_prefix("Set-Cookie: PHPSESSID=")?;
        Some(v.split(';').next()?.to_string())
    });
    Ok((status, sid, body.to_string()))
}

pub struct Opts<'a> {
    pub workers: usize,
    pub conns: usize,
    pub sessions: usize,
    pub dur: Duration,
    pub php_client_dir: &'a Path,
}

/// Runs the page on `php -S` with `h` for `o.dur`.
pub fn run(h: &Handler, o: &Opts) -> Result<PhpRow> {
    let dir = TempDir::new("php")?;
    std::fs::write(dir.path().join("page.php"), PAGE)?;
    let sessdir = dir.path().join("sessions");
    std::fs::create_dir_all(&sessdir)?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = Command::new("php");
    // The system's php.ini and extensions, the same for every handler.
    cmd.args([
        "-d",
        "opcache.enable_cli=1",
        "-d",
        "session.use_strict_mode=1",
        "-d",
        "session.gc_probability=0",
        "-d",
        "display_errors=stderr",
        "-d",
        "log_errors=0",
    ]);
    for i in &h.ini {
        cmd.arg("-d")
            .arg(i.replace("{SESSDIR}", &sessdir.display().to_string()));
    }
    cmd.arg("-S")
        .arg(addr.to_string())
        .arg("-t")
        .arg(dir.path())
        .env("PHP_CLI_SERVER_WORKERS", o.workers.to_string())
        .env(
            "BENCH_HANDLER",
            if h.name.starts_with("sessiond") {
                "sessiond"
            } else {
                ""
            },
        )
        .env("BENCH_SESSIOND_PHP", o.php_client_dir)
        .envs(h.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("php.log"))?);
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let child = cmd.spawn().context("spawn php -S")?;
    crate::servers::register_group(child.id());
    let _php = PhpServer { child };
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!(
                "php -S did not listen: {}",
                std::fs::read_to_string(dir.path().join("php.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Create the sessions: a request without a cookie gets a new id.
    let ids = std::sync::Mutex::new(Vec::with_capacity(o.sessions));
    let err: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..o.conns {
            let (ids, err) = (&ids, &err);
            let count = o.sessions / o.conns + usize::from(t < o.sessions % o.conns);
            s.spawn(move || {
                for _ in 0..count {
                    match http_get(addr, None) {
                        Ok((200, Some(sid), body)) if body.starts_with("ok 1") => {
                            if let Ok(mut v) = ids.lock() {
                                v.push(sid);
                            }
                        }
                        r => {
                            if let Ok(mut e) = err.lock() {
                                *e = Some(format!("{r:?}"));
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        bail!(
            "creating sessions through {}: {e}; php log: {}",
            h.name,
            std::fs::read_to_string(dir.path().join("php.log")).unwrap_or_default()
        );
    }
    let ids = ids.into_inner().unwrap_or_default();
    let nids = ids.len() as u64;
    let m = drive(
        &format!("php {}", h.name),
        o.conns,
        Duration::from_millis(500),
        o.dur,
        |_| {
            let ids = &ids;
            Ok(move |rng: &mut Rng| -> Result<(), OpErr> {
                let sid = &ids[rng.below(nids) as usize];
                let (status, new_sid, body) = http_get(addr, Some(sid))?;
                if status != 200
                    || !body.starts_with("ok ")
                    || new_sid.as_deref().is_some_and(|n| n != sid)
                {
                    return Err(OpErr::App(format!("HTTP {status}: {}", body.trim())));
                }
                Ok(())
            })
        },
    );
    let row = PhpRow {
        handler: h.name.clone(),
        server: if h.server.is_empty() {
            "local files".into()
        } else {
            h.server.clone()
        },
        workers: o.workers,
        conns: o.conns,
        sessions: ids.len(),
        secs: m.secs,
        requests: m.ops,
        rps: m.ops_per_sec(),
        errors: m.errors,
        first_error: m.first_error.clone(),
        lat: Lat::of(&m.hist),
    };
    eprintln!(
        "  php {:<22} {:>7.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}{}",
        row.handler,
        row.rps,
        row.lat.p50_us,
        row.lat.p99_us,
        row.errors,
        row.first_error
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})"))
    );
    Ok(row)
}
