//! TLS on the listener (rustls with ring): the certificate, which a reload swaps for new
//! handshakes, and how a failed handshake is counted.

use std::io;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::stats::HandshakeFailure;

/// A certificate chain with its key, read from their files and checked to match.
pub(crate) struct Loaded {
    key: Arc<CertifiedKey>,
    /// The leaf certificate's `notAfter`, in seconds since the Unix epoch.
    not_after: i64,
}

impl Loaded {
    /// Reads `cert` (PEM, the chain, leaf first) and `key` (PEM). Errors are one line naming
    /// the flag and the file, and never quote the key.
    pub(crate) fn read(cert: &Path, key: &Path) -> Result<Self, String> {
        let bad_cert =
            |why: &dyn std::fmt::Display| format!("invalid --tls-cert {}: {why}", cert.display());
        let bad_key =
            |why: &dyn std::fmt::Display| format!("invalid --tls-key {}: {why}", key.display());
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| bad_cert(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_cert(&e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad_cert(&"no PEM certificate in the file"))?;
        let not_after = match x509_parser::parse_x509_certificate(leaf) {
            Ok((_, parsed)) => parsed.validity().not_after.timestamp(),
            Err(e) => return Err(bad_cert(&format_args!("the first certificate: {e}"))),
        };
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(e) => bad_key(&e),
            // Other errors may describe the file's content: say only what is wrong.
            _ => bad_key(&"no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file"),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, private, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                bad_key(&format_args!("not the key of {}", cert.display()))
            }
            _ => bad_key(&"a private key rustls cannot use"),
        })?;
        Ok(Self {
            key: Arc::new(key),
            not_after,
        })
    }

    /// When the leaf certificate expires, in seconds since the Unix epoch.
    pub(crate) fn not_after(&self) -> i64 {
        self.not_after
    }
}

/// The certificate new handshakes get; [`Certificate::replace`] swaps it, and connections
/// already open keep theirs.
pub(crate) struct Certificate {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    pub(crate) fn replace(&self, loaded: Loaded) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded.key;
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate").finish_non_exhaustive()
    }
}

/// The listener's TLS: the acceptor every worker uses, and its certificate.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) certificate: Arc<Certificate>,
}

impl Listener {
    /// TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`, no client certificates.
    pub(crate) fn new(loaded: Loaded) -> Result<Self, String> {
        let certificate = Arc::new(Certificate {
            current: RwLock::new(loaded.key),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

/// Why a handshake that ended in `error` failed.
pub(crate) fn failure(error: &io::Error) -> HandshakeFailure {
    if let Some(e) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return match e {
            // Not TLS at all (cleartext HTTP, garbage) or broken TLS.
            rustls::Error::InvalidMessage(_) => HandshakeFailure::Malformed,
            // TLS, but nothing in common (version, cipher suite, ALPN), or the client's alert.
            _ => HandshakeFailure::Refused,
        };
    }
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
        io::ErrorKind::InvalidData => HandshakeFailure::Malformed,
        _ => HandshakeFailure::Other,
    }
}
