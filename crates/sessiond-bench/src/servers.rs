//! Starting, watching and stopping the servers under test.
//!
//! Every process the tool starts and every temp dir it makes is registered
//! here; `Drop` stops and removes them, and a watcher thread does the same on
//! SIGINT/SIGTERM before exiting, so nothing is left behind.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM cleanup.
pub fn install_cleanup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(50));
            if SIGNALLED.load(Ordering::SeqCst) {
                eprintln!("\ninterrupted: stopping the servers started by the bench");
                cleanup_all();
                std::process::exit(130);
            }
        }
    });
}

/// Kills every registered process and removes every registered dir.
pub fn cleanup_all() {
    for pid in CHILDREN.lock().map(|v| v.clone()).unwrap_or_default() {
        // SAFETY: plain syscall on a pid (or, negative, a process group) we
        // started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    for d in DIRS.lock().map(|v| v.clone()).unwrap_or_default() {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn register_child(pid: u32) {
    if let Ok(mut v) = CHILDREN.lock() {
        v.push(pid as i32);
    }
}

/// Registers a process group (led by `pid`) to kill on interrupt.
pub fn register_group(pid: u32) {
    if let Ok(mut v) = CHILDREN.lock() {
        v.push(-(pid as i32));
    }
}

pub fn unregister_group(pid: u32) {
    if let Ok(mut v) = CHILDREN.lock() {
        v.retain(|&p| p != -(pid as i32));
    }
}

fn unregister_child(pid: u32) {
    if let Ok(mut v) = CHILDREN.lock() {
        v.retain(|&p| p != pid as i32);
    }
}

/// A temp dir removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "sessiond-bench-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        if let Ok(mut v) = DIRS.lock() {
            v.push(p.clone());
        }
        Ok(TempDir(p))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        if let Ok(mut v) = DIRS.lock() {
            v.retain(|p| p != &self.0);
        }
    }
}

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, child: &mut Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening ({status})");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How to run sessiond: its binary, or this tool's embedded copy of it.
#[derive(Debug, Clone)]
pub struct SessiondCmd {
    pub program: PathBuf,
    pub pre_args: Vec<String>,
    pub description: String,
}

impl SessiondCmd {
    /// `explicit`, else `sessiond` next to this executable (or one level up,
    /// for test binaries in `deps/`), else this executable's `serve-sessiond`
    /// subcommand, which runs the same server library.
    pub fn find(explicit: Option<PathBuf>) -> Result<SessiondCmd> {
        if let Some(p) = explicit {
            return Ok(SessiondCmd {
                description: p.display().to_string(),
                program: p,
                pre_args: vec!["serve".into()],
            });
        }
        let me = std::env::current_exe()?;
        if let Some(dir) = me.parent() {
            for cand in [dir.join("sessiond"), dir.join("../sessiond")] {
                if cand.is_file() {
                    let cand = cand.canonicalize()?;
                    return Ok(SessiondCmd {
                        description: cand.display().to_string(),
                        program: cand,
                        pre_args: vec!["serve".into()],
                    });
                }
            }
        }
        Ok(SessiondCmd {
            description: format!("{} serve-sessiond (embedded server library)", me.display()),
            program: me,
            pre_args: vec!["serve-sessiond".into()],
        })
    }
}

/// A server under test: started here (and stopped on drop) or external.
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    child: Option<Child>,
    pub dir: Option<TempDir>,
    restart: Option<(PathBuf, Vec<String>)>,
}

impl Server {
    pub fn external(name: &str, addr: SocketAddr) -> Server {
        Server {
            name: name.into(),
            addr,
            child: None,
            dir: None,
            restart: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// sessiond with `--durability durability` and `extra` flags (a cluster
    /// node's) on a free port in a new temp dir.
    pub fn sessiond_with(
        cmd: &SessiondCmd,
        name: &str,
        durability: &str,
        extra: &[String],
    ) -> Result<Server> {
        let mut s = Self::sessiond_unstarted(cmd, name, durability)?;
        if let Some((_, args)) = &mut s.restart {
            // A port in `extra` replaces the default `--port 0`.
            if extra.iter().any(|a| a == "--port")
                && let Some(i) = args.iter().position(|a| a == "--port")
            {
                args.drain(i..i + 2);
            }
            args.extend(extra.iter().cloned());
        }
        s.start_sessiond()?;
        Ok(s)
    }

    /// SIGKILL, and wait for the process to go (a crash, for failover).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister_child(c.id());
        }
    }

    /// A Redis replica of `primary` (same settings as [`Server::redis`]
    /// without persistence).
    pub fn redis_replica(bin: &str, name: &str, primary: SocketAddr) -> Result<Server> {
        Self::redis_with(bin, name, None, Some(primary))
    }

    /// One member of an etcd cluster: `name` listens for clients on
    /// `client_port` and for peers on `peer_port`; `initial` lists every
    /// member (`n1=http://127.0.0.1:P,…`).
    pub fn etcd_member(
        bin: &str,
        name: &str,
        client_port: u16,
        peer_port: u16,
        initial: &str,
    ) -> Result<Server> {
        let dir = TempDir::new("etcd")?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            &dir.path().join("data").display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "sessiond-bench",
            "--log-level",
            "error",
        ]
        .map(String::from)
        .to_vec();
        Self::spawn_plain(bin, name, args, client_port, dir)
    }

    /// sessiond with `--durability durability` on a free port in a new temp dir.
    pub fn sessiond(cmd: &SessiondCmd, name: &str, durability: &str) -> Result<Server> {
        let mut s = Self::sessiond_unstarted(cmd, name, durability)?;
        s.start_sessiond()?;
        Ok(s)
    }

    fn sessiond_unstarted(cmd: &SessiondCmd, name: &str, durability: &str) -> Result<Server> {
        let dir = TempDir::new("sessiond")?;
        let mut args = cmd.pre_args.clone();
        args.extend(
            [
                "--port",
                "0",
                "--metrics-addr",
                "off",
                "--durability",
                durability,
                "--data-dir",
            ]
            .map(String::from),
        );
        args.push(dir.path().join("data").display().to_string());
        Ok(Server {
            name: name.into(),
            addr: "127.0.0.1:0".parse()?,
            child: None,
            dir: Some(dir),
            restart: Some((cmd.program.clone(), args)),
        })
    }

    /// sessiond as a cluster of one (node 1, `--raft-addr` on a free port)
    /// on a new data directory holding a copy of the single server's
    /// `sessions` file: its first start imports them. Not started.
    pub fn sessiond_cluster_of_one(
        cmd: &SessiondCmd,
        name: &str,
        sessions: &Path,
    ) -> Result<Server> {
        let mut s = Self::sessiond_unstarted(cmd, name, "everysec")?;
        let data = s
            .dir
            .as_ref()
            .map(|d| d.path().join("data"))
            .ok_or_else(|| anyhow!("no dir"))?;
        std::fs::create_dir_all(&data)?;
        std::fs::copy(sessions, data.join("sessions.redb"))
            .with_context(|| format!("copying {}", sessions.display()))?;
        let raft = format!("127.0.0.1:{}", free_port()?);
        if let Some((_, args)) = &mut s.restart {
            args.extend([
                "--node-id".to_string(),
                "1".to_string(),
                "--raft-addr".to_string(),
                raft.clone(),
                "--initial-cluster".to_string(),
                format!("1={raft}"),
            ]);
        }
        Ok(s)
    }

    /// Stops sessiond cleanly (everything synced) and starts it again on the
    /// same data with another durability policy.
    pub fn restart_with_durability(&mut self, durability: &str) -> Result<()> {
        if let Some((_, args)) = &mut self.restart
            && let Some(i) = args.iter().position(|a| a == "--durability")
        {
            args[i + 1] = durability.into();
        }
        self.stop();
        self.start_sessiond()?;
        Ok(())
    }

    /// Starts (or restarts) the sessiond process; returns the time until its
    /// ready line.
    pub fn start_sessiond(&mut self) -> Result<Duration> {
        let (program, args) = self
            .restart
            .clone()
            .ok_or_else(|| anyhow!("not restartable"))?;
        let log = self
            .dir
            .as_ref()
            .map(|d| d.path().join("sessiond.log"))
            .ok_or_else(|| anyhow!("no dir"))?;
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let t0 = Instant::now();
        let mut child = Command::new(&program)
            .args(&args)
            .env("SESSIOND_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawn {}", program.display()))?;
        register_child(child.id());
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut rd = BufReader::new(stdout);
        let mut line = String::new();
        rd.read_line(&mut line)?;
        let took = t0.elapsed();
        // Keep draining stdout so the server never writes into a closed pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = rd.read_to_end(&mut sink);
        });
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("resp="))
            .ok_or_else(|| {
                let _ = child.kill();
                anyhow!(
                    "sessiond did not print its ready line (got {line:?}); log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?
            .parse()?;
        self.addr = addr;
        self.child = Some(child);
        Ok(took)
    }

    /// redis-server with `appendonly` off or `appendfsync` = `fsync`.
    pub fn redis(bin: &str, name: &str, aof: Option<&str>) -> Result<Server> {
        Self::redis_with(bin, name, aof, None)
    }

    /// [`Server::redis`], a replica of `replica_of` when given.
    fn redis_with(
        bin: &str,
        name: &str,
        aof: Option<&str>,
        replica_of: Option<SocketAddr>,
    ) -> Result<Server> {
        let dir = TempDir::new("redis")?;
        let port = free_port()?;
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            &dir.path().display().to_string(),
            "--logfile",
            &dir.path().join("redis.log").display().to_string(),
        ]
        .map(String::from)
        .to_vec();
        match aof {
            None => args.extend(["--appendonly", "no"].map(String::from)),
            Some(f) => args.extend(["--appendonly", "yes", "--appendfsync", f].map(String::from)),
        }
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".to_owned(),
                primary.ip().to_string(),
                primary.port().to_string(),
            ]);
        }
        Self::spawn_plain(bin, name, args, port, dir)
    }

    /// memcached with enough memory for the sessions.
    pub fn memcached(bin: &str, name: &str) -> Result<Server> {
        let dir = TempDir::new("memcached")?;
        let port = free_port()?;
        let mut args: Vec<String> = [
            "-p",
            &port.to_string(),
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-m",
            "8192",
        ]
        .map(String::from)
        .to_vec();
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } == 0 {
            args.extend(["-u", "root"].map(String::from));
        }
        Self::spawn_plain(bin, name, args, port, dir)
    }

    fn spawn_plain(
        bin: &str,
        name: &str,
        args: Vec<String>,
        port: u16,
        dir: TempDir,
    ) -> Result<Server> {
        let log = std::fs::File::create(dir.path().join("stdout.log"))?;
        let mut child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {bin} (is it installed?)"))?;
        register_child(child.id());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        if let Err(e) = wait_for_port(addr, &mut child, name) {
            let _ = child.kill();
            let _ = child.wait();
            unregister_child(child.id());
            return Err(e);
        }
        Ok(Server {
            name: name.into(),
            addr,
            child: Some(child),
            dir: Some(dir),
            restart: None,
        })
    }

    /// Sends SIGTERM and returns at once (the process shuts down on its
    /// own; [`Server::stop`] waits for it).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            // SAFETY: plain syscall on our child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// SIGTERM, then wait (SIGKILL after 60 s); returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain syscall on our child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
            unregister_child(c.id());
        }
        t0.elapsed()
    }

    /// Resident set size of the process, from /proc.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_of(self.pid()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            unregister_child(c.id());
        }
    }
}

/// VmRSS of `pid` in bytes.
pub fn rss_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime of `pid` in seconds.
pub fn cpu_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: plain syscall.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((ut + st) / hz)
}
