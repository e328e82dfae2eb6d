//! Starts and stops what the lab needs: sessiond, redis-server, memcached
//! and the PHP app (php-fpm behind nginx, or `php -S` when those are
//! missing), all on free loopback ports, with every file (configs, pids,
//! logs, nginx temp dirs, session files) in one temporary directory.
//!
//! Each child runs in its own process group: nginx and php-fpm fork workers,
//! and a signal to the group reaches them all. A separate group also keeps a
//! terminal's Ctrl-C away from the children, so the lab itself decides the
//! shutdown order. [`Supervisor::stop`] sends SIGTERM, waits, then SIGKILL;
//! `Drop` sends SIGKILL to whatever is still running (errors, panics).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::http::{self, BaseUrl};

/// What to run; the peers, php-fpm and nginx are found in PATH and sbin.
pub struct Options {
    pub sessiond: PathBuf,
    pub app_dir: PathBuf,
    pub php_client_src: PathBuf,
    /// Use `php -S` even when nginx and php-fpm are installed.
    pub builtin_server: bool,
}

/// What was started, for the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Started {
    pub base_url: String,
    /// e.g. "nginx + php-fpm8.2 (pm=static, 32 workers)" or "php -S with …".
    pub php_server: String,
    pub peers: Vec<String>,
    pub missing: Vec<String>,
    pub temp_dir: String,
}

struct Proc {
    name: String,
    child: Child,
    pgid: i32,
}

pub struct Supervisor {
    dir: PathBuf,
    keep: bool,
    procs: Vec<Proc>,
    pub started: Option<Started>,
}

/// PHP workers: more than the largest burst of concurrent requests, so a
/// request never queues for a worker, only for the session.
const PHP_WORKERS: usize = 32;

impl Supervisor {
    /// A new, empty temporary directory for this run.
    pub fn new(keep: bool) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("racelab-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self {
            dir,
            keep,
            procs: Vec::new(),
            started: None,
        })
    }

    /// The temporary directory of this run.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the PHP app is given in every run.
    fn app_env(&self, opts: &Options) -> Result<Vec<(String, String)>> {
        Ok(vec![
            (
                "RACELAB_STATE_DIR".into(),
                self.mkdir("state")?.display().to_string(),
            ),
            (
                "RACELAB_FILES_DIR".into(),
                self.mkdir("files")?.display().to_string(),
            ),
            (
                "RACELAB_SESSIOND_PHP".into(),
                opts.php_client_src.display().to_string(),
            ),
        ])
    }

    /// Starts only the PHP app, its sessiond handlers pointed at
    /// `sessiond_url` (a cluster's node list, `tcp://a,b,c`), and no peers.
    pub async fn start_app_for(
        &mut self,
        opts: &Options,
        sessiond_url: &str,
        peers: Vec<String>,
    ) -> Result<Started> {
        let mut env = self.app_env(opts)?;
        env.push(("RACELAB_SESSIOND".into(), sessiond_url.to_owned()));
        let mut missing = Vec::new();
        let (port, php_server) = self.start_app(opts, &env, &mut missing).await?;
        let started = Started {
            base_url: format!("http://127.0.0.1:{port}/"),
            php_server,
            peers,
            missing,
            temp_dir: self.dir.display().to_string(),
        };
        self.started = Some(started.clone());
        Ok(started)
    }

    /// Starts sessiond, the peers that are installed, and the PHP app.
    pub async fn start(&mut self, opts: &Options) -> Result<Started> {
        let mut peers = Vec::new();
        let mut missing = Vec::new();
        let mut env = self.app_env(opts)?;

        let addr = self.start_sessiond(&opts.sessiond).await?;
        peers.push(format!("sessiond {addr} ({})", opts.sessiond.display()));
        env.push(("RACELAB_SESSIOND".into(), format!("tcp://{addr}")));

        if let Some(bin) = find_program(&["redis-server"]) {
            let port = free_port()?;
            let dir = self.mkdir("redis")?;
            let mut cmd = Command::new(&bin);
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir);
            self.spawn("redis-server", cmd)?;
            wait_tcp(port, "redis-server").await?;
            peers.push(format!("redis-server 127.0.0.1:{port}"));
            env.push(("RACELAB_REDIS".into(), format!("127.0.0.1:{port}")));
        } else {
            missing.push("redis-server".into());
        }

        if let Some(bin) = find_program(&["memcached"]) {
            let port = free_port()?;
            let mut cmd = Command::new(&bin);
            cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"]);
            if is_root() {
                cmd.args(["-u", "root"]); // memcached refuses root without it
            }
            self.spawn("memcached", cmd)?;
            wait_tcp(port, "memcached").await?;
            peers.push(format!("memcached 127.0.0.1:{port}"));
            env.push(("RACELAB_MEMCACHED".into(), format!("127.0.0.1:{port}")));
        } else {
            missing.push("memcached".into());
        }

        let (port, php_server) = self.start_app(opts, &env, &mut missing).await?;
        let started = Started {
            base_url: format!("http://127.0.0.1:{port}/"),
            php_server,
            peers,
            missing,
            temp_dir: self.dir.display().to_string(),
        };
        self.started = Some(started.clone());
        Ok(started)
    }

    /// The PHP app: php-fpm behind nginx, or `php -S`; its port and what
    /// serves it.
    async fn start_app(
        &mut self,
        opts: &Options,
        env: &[(String, String)],
        missing: &mut Vec<String>,
    ) -> Result<(u16, String)> {
        let public = opts.app_dir.join("public");
        if !public.join("index.php").is_file() {
            bail!("{}: no index.php (use --app)", public.display());
        }
        let fpm = find_program(&[
            "php-fpm",
            "php-fpm8.4",
            "php-fpm8.3",
            "php-fpm8.2",
            "php-fpm8.1",
        ]);
        let nginx = find_program(&["nginx"]);
        match (fpm, nginx, opts.builtin_server) {
            (Some(fpm), Some(nginx), false) => {
                self.start_fpm_nginx(&fpm, &nginx, &public, env).await
            }
            (fpm, nginx, _) => {
                if fpm.is_none() {
                    missing.push("php-fpm".into());
                }
                if nginx.is_none() {
                    missing.push("nginx".into());
                }
                self.start_builtin(&public, env).await
            }
        }
    }

    async fn start_sessiond(&mut self, bin: &Path) -> Result<String> {
        if !bin.is_file() {
            bail!(
                "sessiond binary not found at {} (cargo build --release -p sessiond-server, or --sessiond PATH)",
                bin.display()
            );
        }
        let data = self.mkdir("sessiond")?;
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--port", "0", "--metrics-addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped());
        let child = self.spawn("sessiond", cmd)?;
        let stdout = child.stdout.take().context("sessiond stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("sessiond ready: resp=") {
                    return Ok::<_, anyhow::Error>(Some(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    ));
                }
            }
            Ok(None)
        })
        .await
        .context("sessiond did not print its ready line within 15 s")??;
        let addr = ready.with_context(|| {
            format!(
                "sessiond exited before it was ready (see {}/sessiond.log)",
                self.dir.display()
            )
        })?;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(addr)
    }

    async fn start_fpm_nginx(
        &mut self,
        fpm: &Path,
        nginx: &Path,
        public: &Path,
        env: &[(String, String)],
    ) -> Result<(u16, String)> {
        let root = is_root();
        let sock = self.dir.join("php-fpm.sock");
        let mut conf = format!(
            "[global]\npid = {d}/php-fpm.pid\nerror_log = {d}/php-fpm.log\ndaemonize = no\n\n\
             [racelab]\nlisten = {sock}\nlisten.mode = 0660\npm = static\npm.max_children = {PHP_WORKERS}\n\
             clear_env = yes\ncatch_workers_output = yes\nphp_admin_value[error_log] = {d}/php-errors.log\n\
             php_admin_flag[log_errors] = on\n",
            d = self.dir.display(),
            sock = sock.display(),
        );
        if root {
            conf.push_str("user = root\ngroup = root\n");
        }
        for (k, v) in env {
            conf.push_str(&format!("env[{k}] = {v}\n"));
        }
        let fpm_conf = self.dir.join("php-fpm.conf");
        fs::write(&fpm_conf, conf)?;
        let mut cmd = Command::new(fpm);
        cmd.arg("--nodaemonize").arg("--fpm-config").arg(&fpm_conf);
        if root {
            cmd.arg("--allow-to-run-as-root");
        }
        self.spawn("php-fpm", cmd)?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!(
                    "php-fpm did not create its socket (see {}/php-fpm.log)",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let port = free_port()?;
        let d = self.dir.display();
        for t in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            self.mkdir(&format!("nginx/{t}"))?;
        }
        let index = public.join("index.php");
        let nginx_conf = format!(
            "{user}worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\ndaemon off;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n\
               client_body_temp_path {d}/nginx/body;\n  proxy_temp_path {d}/nginx/proxy;\n\
               fastcgi_temp_path {d}/nginx/fastcgi;\n  uwsgi_temp_path {d}/nginx/uwsgi;\n  scgi_temp_path {d}/nginx/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n    root {public};\n\
                 location / {{\n      fastcgi_pass unix:{sock};\n      fastcgi_read_timeout 120s;\n\
                   fastcgi_param SCRIPT_FILENAME {index};\n      fastcgi_param SCRIPT_NAME /index.php;\n\
                   fastcgi_param QUERY_STRING $query_string;\n      fastcgi_param REQUEST_METHOD $request_method;\n\
                   fastcgi_param CONTENT_TYPE $content_type;\n      fastcgi_param CONTENT_LENGTH $content_length;\n\
                   fastcgi_param REQUEST_URI $request_uri;\n      fastcgi_param DOCUMENT_ROOT $document_root;\n\
                   fastcgi_param SERVER_PROTOCOL $server_protocol;\n      fastcgi_param SERVER_SOFTWARE nginx/$nginx_version;\n\
                   fastcgi_param REMOTE_ADDR $remote_addr;\n      fastcgi_param SERVER_ADDR $server_addr;\n\
                   fastcgi_param SERVER_PORT $server_port;\n      fastcgi_param SERVER_NAME $server_name;\n\
                 }}\n  }}\n}}\n",
            // Workers of a root master would run as "nobody", who cannot
            // open php-fpm's socket in our private temp dir.
            user = if root { "user root;\n" } else { "" },
            public = public.display(),
            sock = sock.display(),
            index = index.display(),
        );
        let nginx_conf_path = self.dir.join("nginx.conf");
        fs::write(&nginx_conf_path, nginx_conf)?;
        let mut cmd = Command::new(nginx);
        // -e: the error log before the config is read (the default one is
        // under /var/log, not writable for a non-root user).
        cmd.arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&nginx_conf_path)
            .arg("-e")
            .arg(self.dir.join("nginx-error.log"));
        self.spawn("nginx", cmd)?;
        wait_http(port, "nginx + php-fpm").await?;
        let fpm_name = fpm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok((
            port,
            format!("nginx + {fpm_name} (pm=static, {PHP_WORKERS} workers)"),
        ))
    }

    async fn start_builtin(
        &mut self,
        public: &Path,
        env: &[(String, String)],
    ) -> Result<(u16, String)> {
        let php = find_program(&["php"]).context("neither php-fpm + nginx nor php found")?;
        let port = free_port()?;
        let mut cmd = Command::new(php);
        cmd.arg("-S")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-t")
            .arg(public)
            .env("PHP_CLI_SERVER_WORKERS", PHP_WORKERS.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.spawn("php-builtin", cmd)?;
        wait_http(port, "php -S").await?;
        Ok((
            port,
            format!("php -S with PHP_CLI_SERVER_WORKERS={PHP_WORKERS} (nginx/php-fpm not used)"),
        ))
    }

    /// Spawns `cmd` in its own process group, stderr (and stdout unless the
    /// caller piped it) into `<name>.log` in the temp dir.
    fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<&mut Child> {
        let log = File::create(self.dir.join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stderr(log.try_clone()?)
            .process_group(0)
            .kill_on_drop(true);
        if name != "sessiond" {
            cmd.stdout(log);
        }
        let child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let pgid = child.id().context("child has no pid")? as i32;
        self.procs.push(Proc {
            name: name.to_string(),
            child,
            pgid,
        });
        Ok(&mut self.procs.last_mut().expect("just pushed").child)
    }

    fn mkdir(&self, rel: &str) -> Result<PathBuf> {
        let p = self.dir.join(rel);
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Stops everything, the app first (it talks to the stores), then the
    /// stores: SIGTERM to each process group, then SIGKILL after 5 s.
    pub async fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            signal_group(p.pgid, libc::SIGTERM);
            let exited = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
            if exited.is_err() {
                eprintln!("racelab: {} did not stop on SIGTERM; killing it", p.name);
            }
            // Also reaps workers left in the group (nginx, php-fpm).
            signal_group(p.pgid, libc::SIGKILL);
            let _ = p.child.wait().await;
        }
        if !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for p in &self.procs {
            signal_group(p.pgid, libc::SIGKILL);
        }
        if !self.procs.is_empty() && !self.keep {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child (process_group(0) makes pgid == its pid).
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A free loopback port: bind port 0, read it, close. Another process could
/// take it before the child binds; the child then fails loudly.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The first of `names` found in PATH or the sbin directories (Debian puts
/// php-fpm, nginx and memcached there, outside a normal user's PATH).
pub fn find_program(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        dirs.push(PathBuf::from(d));
    }
    for name in names {
        for d in &dirs {
            let p = d.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

async fn wait_tcp(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} is not listening on 127.0.0.1:{port} after 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_http(port: u16, what: &str) -> Result<()> {
    let base = BaseUrl::parse(&format!("http://127.0.0.1:{port}/"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match http::get(&base, "ep=info", None, Duration::from_secs(5)).await {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) if Instant::now() > deadline => {
                bail!(
                    "{what}: the app answers {} to ?ep=info: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )
            }
            Err(e) if Instant::now() > deadline => bail!("{what} is not serving the app: {e:#}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
