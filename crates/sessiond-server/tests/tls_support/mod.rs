//! For the TLS and user tests: certificates made in the test with rcgen (a
//! CA, server and client certificates, expired ones), the `sessiond`
//! binary started with a TLS port, a metrics scrape.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority whose certificate is in `cert` (PEM).
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    /// Its certificate file.
    pub cert: PathBuf,
    dir: PathBuf,
}

/// A certificate and its key, as files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    /// A new CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            params,
            key,
            cert: path,
            dir: dir.to_owned(),
        }
    }

    /// A cluster node's certificate: for `127.0.0.1` and `localhost`, as
    /// server and as client.
    pub fn node(&self, name: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    fn issue(&self, name: &str, client: bool, expired: bool) -> Issued {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = if client {
            vec![]
        } else {
            vec!["localhost".into(), "127.0.0.1".into()]
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let issued = Issued {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server(&self, name: &str) -> Issued {
        self.issue(name, false, false)
    }

    /// A server certificate that expired in 2021.
    pub fn expired_server(&self, name: &str) -> Issued {
        self.issue(name, false, true)
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, true, false)
    }

    /// A client certificate that expired in 2021.
    pub fn expired_client(&self, name: &str) -> Issued {
        self.issue(name, true, true)
    }
}

/// `sessiond` started as a child process with a TLS port.
pub struct TlsServer {
    pub child: Child,
    /// The plaintext port, unless `--plaintext no`.
    pub resp: Option<SocketAddr>,
    pub tls: SocketAddr,
    pub metrics: SocketAddr,
    /// What it logged (warnings and errors).
    pub log: tempfile::NamedTempFile,
}

impl TlsServer {
    /// `sessiond serve --port 0 --tls-port 0 --storage memory` with metrics
    /// on a free port, the server's certificate `server`, and `args`.
    pub fn start(dir: &Path, server: &Issued, args: &[&str]) -> TlsServer {
        Self::try_start(dir, server, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TlsServer::start`], or what it said when it did not start.
    pub fn try_start(dir: &Path, server: &Issued, args: &[&str]) -> Result<TlsServer, String> {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sessiond"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SESSIOND_") {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .args(["--port", "0", "--tls-port", "0", "--storage", "memory"])
            .args(["--metrics-addr", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .args(args)
            .env("SESSIOND_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        match (field("tls="), field("metrics=")) {
            (Some(tls), Some(metrics)) => Ok(TlsServer {
                resp: field("resp="),
                tls,
                metrics,
                child,
                log,
            }),
            _ => {
                let _ = child.wait();
                Err(std::fs::read_to_string(log.path()).unwrap())
            }
        }
    }

    /// What the server logged so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The value of `sessiond_tls_handshake_failures_total{reason}` (0 when
    /// absent), once it is at least `at_least` or 5 s have passed: the
    /// server counts a failure after the client has seen it.
    pub fn handshake_failures(&self, reason: &str, at_least: u64) -> u64 {
        let mut n = 0;
        for _ in 0..100 {
            n = labelled(
                &scrape(self.metrics),
                "sessiond_tls_handshake_failures_total",
                reason,
            );
            if n >= at_least {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        n
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The metrics page.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.") && out.contains(" 200 "), "{out}");
    out
}

/// The value of `metric{reason="reason"}`.
pub fn labelled(text: &str, metric: &str, reason: &str) -> u64 {
    let prefix = format!("{metric}{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
