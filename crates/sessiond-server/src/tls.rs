//! TLS on the client port: rustls with the `ring` provider, TLS 1.2 and
//! 1.3 only, certificates and keys read as PEM (`rustls-pki-types`), client
//! certificates (mTLS) required, optional or not asked for, as Redis's
//! `tls-auth-clients yes|optional|no`.
//!
//! The rustls configuration sits behind a lock as an `Arc`: each handshake
//! takes the one in force, and [`Tls::reload`] (SIGHUP) swaps in one built
//! from the files read again. Connections already open keep the session
//! they negotiated.
//!
//! A handshake that fails (a client certificate from another CA, expired,
//! none where one is required, the client refusing ours, plaintext or
//! garbage sent to the TLS port, a client that stalls) ends that connection
//! only: one log line with the peer address and the reason, and
//! `sessiond_tls_handshake_failures_total{reason}`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    self, AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig,
};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long a client has from connecting to a finished handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether clients must show a certificate (Redis's `tls-auth-clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthClients {
    /// A certificate signed by `--tls-ca-cert-file` is required.
    Yes,
    /// A certificate is not asked for.
    No,
    /// A certificate is asked for; without one the client may still
    /// connect, with one it must be valid.
    Optional,
}

/// The TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Port of the TLS listener (0: a free one), on the same address as
    /// the plaintext one.
    pub port: u16,
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// The CA certificates client certificates are checked against (PEM).
    pub ca_cert_file: Option<PathBuf>,
    /// Client certificates.
    pub auth_clients: AuthClients,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that is not the
    /// certificate's).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS listener's state: its settings and the configuration in force.
pub struct Tls {
    settings: TlsSettings,
    // Swapped whole by `reload`; each handshake clones the Arc.
    current: Mutex<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate, key and CA files.
    ///
    /// # Errors
    /// [`TlsError`] naming the file or the mismatch.
    pub fn new(settings: TlsSettings) -> Result<Tls, TlsError> {
        let config = server_config(&settings)?;
        Ok(Tls {
            settings,
            current: Mutex::new(config),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Reads the files again; new handshakes use them, open connections
    /// are left as they are. On error nothing changes.
    ///
    /// # Errors
    /// As [`Tls::new`].
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.settings)?;
        *self.current.lock() = config;
        Ok(())
    }

    /// [`Tls::reload`], saying in the log what it did.
    pub fn reload_and_log(&self) {
        match self.reload() {
            Ok(()) => tracing::info!(
                cert = %self.settings.cert_file.display(),
                "TLS certificates reloaded: new handshakes use them"
            ),
            Err(e) => tracing::error!("TLS certificates not reloaded, the old ones stay: {e}"),
        }
    }

    /// Runs the handshake of a new connection (within
    /// [`HANDSHAKE_TIMEOUT`], or until shutdown). `None` when it failed:
    /// logged and counted.
    pub async fn accept(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(self.current.lock().clone());
        let handshake = async {
            // A TLS client starts with a handshake record (0x16); anything
            // else is told apart here, before rustls, for a clearer reason.
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(0) => return Err(Failure::new("eof", "closed before the handshake")),
                Ok(_) if first[0] != 0x16 => {
                    return Err(if first[0] == b'*' || first[0].is_ascii_alphabetic() {
                        Failure::new(
                            "plaintext",
                            "plaintext RESP sent to the TLS port (use the plaintext port, or TLS)",
                        )
                    } else {
                        Failure::new("not_tls", format!("not TLS (first byte {:#04x})", first[0]))
                    });
                }
                Ok(_) => {}
                Err(e) => return Err(Failure::new("io", e.to_string())),
            }
            acceptor.accept(stream).await.map_err(|e| classify(&e))
        };
        let failure = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => match r {
                Ok(Ok(s)) => return Some(s),
                Ok(Err(f)) => f,
                Err(_) => Failure::new(
                    "timeout",
                    format!("no handshake within {}s", HANDSHAKE_TIMEOUT.as_secs()),
                ),
            },
            _ = shutdown.cancelled() => return None,
        };
        tracing::warn!(%addr, reason = failure.reason, "TLS handshake failed: {}", failure.detail);
        metrics.tls_handshake_failed(failure.reason);
        None
    }
}

/// TLS between cluster nodes (`--tls-cluster yes`): each node shows its
/// certificate (`--tls-cert-file`) to the other and checks the other's
/// against `--tls-ca-cert-file`, in both directions. The node certificate
/// therefore serves as server and client certificate: it must name every
/// address peers dial it by and allow both uses (or name no extended key
/// usage). Read once, at start.
pub struct PeerTls {
    /// For connections from peers (client certificates required).
    pub acceptor: TlsAcceptor,
    /// For connections to peers (with this node's certificate).
    pub connector: TlsConnector,
}

impl PeerTls {
    /// Reads the files of `s` (a CA file is required).
    ///
    /// # Errors
    /// [`TlsError`] naming the file or the mismatch.
    pub fn new(s: &TlsSettings) -> Result<PeerTls, TlsError> {
        let Some(ca) = &s.ca_cert_file else {
            return Err(TlsError::Config(
                "--tls-cluster yes needs --tls-ca-cert-file (peers check each other)".into(),
            ));
        };
        let server = server_config(&TlsSettings {
            auth_clients: AuthClients::Yes,
            ..s.clone()
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in read_certs("--tls-ca-cert-file", ca)? {
            roots.add(c).map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| TlsError::File {
            what: "--tls-key-file",
            path: s.key_file.clone(),
            reason: e.to_string(),
        })?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(read_certs("--tls-cert-file", &s.cert_file)?, key)
            .map_err(|e| TlsError::Config(format!("node certificate: {e}")))?;
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a peer at `addr` (`host:port`) must carry in its
    /// certificate: its IP address, or its host name.
    ///
    /// # Errors
    /// A host that is neither.
    pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| format!("peer address {addr}: {e}"))
    }
}

struct Failure {
    reason: &'static str,
    detail: String,
}

impl Failure {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Failure {
            reason,
            detail: detail.into(),
        }
    }
}

/// The metric's reason label and the log's detail for a failed handshake.
fn classify(e: &std::io::Error) -> Failure {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Failure::new("io", e.to_string());
    };
    let detail = tls.to_string();
    let reason = match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "expired_certificate"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::AlertReceived(a) => match a {
            AlertDescription::UnknownCA => "peer_alert_unknown_ca",
            AlertDescription::CertificateExpired => "peer_alert_certificate_expired",
            AlertDescription::BadCertificate => "peer_alert_bad_certificate",
            _ => "peer_alert",
        },
        rustls::Error::InvalidMessage(_) => "not_tls",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "protocol",
    };
    Failure { reason, detail }
}

/// A rustls server configuration from the settings: TLS 1.2 and 1.3, the
/// `ring` provider, client certificates as asked.
fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("--tls-cert-file", &s.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| TlsError::File {
        what: "--tls-key-file",
        path: s.key_file.clone(),
        reason: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (s.auth_clients, &s.ca_cert_file) {
        (AuthClients::No, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "--tls-auth-clients yes or optional needs --tls-ca-cert-file".into(),
            ));
        }
        (auth, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("--tls-ca-cert-file", ca)? {
                roots.add(c).map_err(|e| TlsError::File {
                    what: "--tls-ca-cert-file",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == AuthClients::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?,
            )
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
    Ok(Arc::new(config))
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}
