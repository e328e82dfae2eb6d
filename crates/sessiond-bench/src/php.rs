//! A PHP session page behind the two usual fronts, driven by our own
//! HTTP/1.1 client (one connection per request, `Connection: close`):
//! - `php -S`, the built-in server with `PHP_CLI_SERVER_WORKERS` forked
//!   workers;
//! - php-fpm (`pm = static`, as many children as `php -S` has workers)
//!   behind nginx, the production setup (skipped when either is missing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::driver::{Lat, OpErr, Rng, drive};
use crate::report::PhpRow;
use crate::servers::{TempDir, free_port};

const PAGE: &str = r#"<?php
// The session page: read the session, change one key, write it back.
// sessiond: the PHP class; native: the extension's save handler, set up by
// the ini alone (session.save_handler=sessiond), no class loaded.
$bench_handler = getenv('BENCH_HANDLER');
if ($bench_handler === 'sessiond') {
    require getenv('BENCH_SESSIOND_PHP') . '/src/autoload.php';
    Sessiond\SessionHandler::register(getenv('BENCH_SESSIOND_URI'));
    if (!isset($_COOKIE['PHPSESSID'])) {
        // the requests that create the sessions write them, whatever the
        // mode measured (readonly never writes)
        Sessiond\SessionHandler::setMode('session');
    }
} elseif ($bench_handler === 'native' && !isset($_COOKIE['PHPSESSID'])) {
    sessiond_set_mode('session'); // as above
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

/// What serves the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// `php -S` with forked workers.
    BuiltIn,
    /// php-fpm behind nginx.
    Fpm,
}

impl Front {
    pub fn label(self) -> &'static str {
        match self {
            Front::BuiltIn => "php -S",
            Front::Fpm => "php-fpm + nginx",
        }
    }
}

/// php-fpm and nginx, when both are installed.
pub fn fpm_programs() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            ["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(n))
                .find(|p| p.is_file())
        })
    };
    let fpm = find(&[
        "php-fpm",
        "php-fpm8.4",
        "php-fpm8.3",
        "php-fpm8.2",
        "php-fpm8.1",
    ])?;
    Some((fpm, find(&["nginx"])?))
}

/// Whether the extension at `ext` has the native save handler
/// (`session.save_handler=sessiond`).
pub fn has_native_handler(ext: &Path) -> bool {
    Command::new("php")
        .arg("-d")
        .arg(format!("extension={}", ext.display()))
        .args([
            "-r",
            "exit(function_exists('sessiond_native_info') && @ini_set('session.save_handler', 'sessiond') !== false ? 0 : 1);",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How PHP keeps sessions in one run.
/// `env` may set `BENCH_HANDLER` (what the page sets up); by default it is
/// `sessiond` (the PHP class) for rows named `sessiond…`, nothing otherwise.
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
    path: &str,
    cookie: Option<&str>,
) -> std::io::Result<(u16, Option<String>, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
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
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    Ok((
        status,
        sid,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    ))
}

/// The body of a `Transfer-Encoding: chunked` response (nginx sends one to
/// HTTP/1.1 clients); what cannot be parsed ends it.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    for _ in 0..10_000 {
        let Some((size, after)) = rest.split_once("\r\n") else {
            break;
        };
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(next)) = (after.get(..n), after.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        rest = next.strip_prefix("\r\n").unwrap_or(next);
    }
    out
}

pub struct Opts<'a> {
    pub workers: usize,
    pub conns: usize,
    pub sessions: usize,
    pub dur: Duration,
    pub php_client_dir: &'a Path,
    pub front: Front,
}

/// Starts `cmd` in its own process group (its workers with it), output to
/// `log`.
fn spawn_group(mut cmd: Command, log: &Path) -> Result<PhpServer> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", cmd.get_program().display()))?;
    crate::servers::register_group(child.id());
    Ok(PhpServer { child })
}

/// Serves `dir` on `addr` with `o.front`; `ini` are php.ini settings,
/// `env` the environment of the PHP workers.
fn start_front(
    o: &Opts,
    dir: &Path,
    addr: SocketAddr,
    ini: &[(String, String)],
    env: &[(String, String)],
) -> Result<Vec<PhpServer>> {
    match o.front {
        Front::BuiltIn => {
            let mut cmd = Command::new("php");
            // The system's php.ini and extensions, the same for every handler.
            for (k, v) in ini {
                cmd.arg("-d").arg(format!("{k}={v}"));
            }
            cmd.arg("-S")
                .arg(addr.to_string())
                .arg("-t")
                .arg(dir)
                .env("PHP_CLI_SERVER_WORKERS", o.workers.to_string())
                .envs(env.iter().map(|(k, v)| (k, v)));
            Ok(vec![spawn_group(cmd, &dir.join("php.log"))?])
        }
        Front::Fpm => {
            let Some((fpm, nginx)) = fpm_programs() else {
                bail!("php-fpm or nginx not installed");
            };
            let d = dir.display();
            let conf = format!(
                "[global]\nerror_log = {d}/fpm.log\ndaemonize = no\n[www]\nlisten = {d}/fpm.sock\nlisten.mode = 0666\npm = static\npm.max_children = {}\nclear_env = no\ncatch_workers_output = yes\n",
                o.workers
            );
            std::fs::write(dir.join("fpm.conf"), conf)?;
            let mut cmd = Command::new(&fpm);
            // SAFETY: getuid has no preconditions.
            if unsafe { libc::getuid() } == 0 {
                cmd.arg("-R");
            }
            // The settings as php.ini would give them, on the master's
            // command line: a pool's php_admin_value reaches only the
            // children, after opcache has done its preloading in the master
            // (so opcache.preload there was silently ignored).
            for (k, v) in ini {
                cmd.arg("-d").arg(format!("{k}={v}"));
            }
            cmd.arg("-y")
                .arg(dir.join("fpm.conf"))
                .envs(env.iter().map(|(k, v)| (k, v)));
            let fpm_proc = spawn_group(cmd, &dir.join("fpm.out"))?;
            for t in ["body", "fastcgi", "proxy", "uwsgi", "scgi"] {
                std::fs::create_dir_all(dir.join(t))?;
            }
            std::fs::write(
                dir.join("nginx.conf"),
                format!(
                    "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/body;\n fastcgi_temp_path {d}/fastcgi;\n proxy_temp_path {d}/proxy;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n server {{\n  listen {addr};\n  root {d};\n  location ~ \\.php$ {{\n   include /etc/nginx/fastcgi_params;\n   fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;\n   fastcgi_pass unix:{d}/fpm.sock;\n  }}\n }}\n}}\n"
                ),
            )?;
            let mut cmd = Command::new(&nginx);
            cmd.arg("-p")
                .arg(dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .arg("-e")
                .arg(dir.join("nginx-error.log"));
            let nginx_proc = spawn_group(cmd, &dir.join("nginx.out"))?;
            Ok(vec![nginx_proc, fpm_proc])
        }
    }
}

/// Runs the page behind `o.front` with `h` for `o.dur`.
pub fn run(h: &Handler, o: &Opts) -> Result<PhpRow> {
    let dir = TempDir::new("php")?;
    std::fs::write(dir.path().join("page.php"), PAGE)?;
    std::fs::write(dir.path().join("ping.php"), "<?php echo 'ok pong';")?;
    let sessdir = dir.path().join("sessions");
    std::fs::create_dir_all(&sessdir)?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut ini: Vec<(String, String)> = [
        ("opcache.enable", "1"),
        ("opcache.enable_cli", "1"),
        ("session.use_strict_mode", "1"),
        ("session.gc_probability", "0"),
        ("display_errors", "stderr"),
        ("log_errors", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for i in &h.ini {
        let i = i.replace("{SESSDIR}", &sessdir.display().to_string());
        if let Some((k, v)) = i.split_once('=') {
            ini.push((k.to_owned(), v.to_owned()));
        }
    }
    let mut env: Vec<(String, String)> = vec![(
        "BENCH_SESSIOND_PHP".into(),
        o.php_client_dir.display().to_string(),
    )];
    if !h.env.iter().any(|(k, _)| k == "BENCH_HANDLER") {
        env.push((
            "BENCH_HANDLER".into(),
            if h.name.starts_with("sessiond") {
                "sessiond".into()
            } else {
                String::new()
            },
        ));
    }
    env.extend(h.env.iter().cloned());
    let _servers = start_front(o, dir.path(), addr, &ini, &env)?;
    let log = || {
        [
            "php.log",
            "fpm.log",
            "fpm.out",
            "nginx.out",
            "nginx-error.log",
        ]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.path().join(f)).ok())
        .collect::<Vec<_>>()
        .join("\n")
    };
    let t0 = Instant::now();
    loop {
        let r = http_get(addr, "/ping.php", None);
        if let Ok((200, _, body)) = &r
            && body.starts_with("ok pong")
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("{} did not answer ({r:?}): {}", o.front.label(), log());
        }
        std::thread::sleep(Duration::from_millis(50));
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
                    match http_get(addr, "/page.php", None) {
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
            log()
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
                let (status, new_sid, body) = http_get(addr, "/page.php", Some(sid))?;
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
        front: o.front.label().into(),
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
        "  {:<15} {:<36} {:>7.0} req/s  p50 {:>8.1} µs  p99 {:>8.1} µs  errors {}{}",
        row.front,
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
