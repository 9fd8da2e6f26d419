//! TLS to PostgreSQL: libpq's `sslmode` and certificate parameters, and the rustls settings
//! they make.
//!
//! rustls with the *ring* provider, the stack pgwire-replication already uses for the
//! replication connection, so both connections share one TLS library and one set of rules:
//! libpq's `sslmode` semantics, checked by the same verifier type here and mapped onto
//! pgwire-replication's `TlsConfig` in [`replication_tls`]. A leaf module: the configuration
//! builds these settings at load time, and the connections use them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// `sslmode` as libpq spells it (`allow` is not offered: it tries plain text first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, unverified; plain text when the server refuses TLS.
    Prefer,
    /// TLS or fail; the certificate is not checked unless `sslrootcert` is given (then as
    /// `verify-ca`, as libpq does).
    Require,
    /// TLS, and the server certificate must chain to a trusted CA.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Parses a URL's `sslmode` value.
    pub(crate) fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err(
                "sslmode `allow` is not supported: use disable, prefer, require, verify-ca or verify-full"
                    .into(),
            ),
            other => {
                return Err(format!(
                    "sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TLS to PostgreSQL, for every connection (SQL and replication).
#[derive(Clone)]
pub struct PgTls {
    /// `sslmode` (default `prefer`, as libpq).
    pub mode: SslMode,
    /// `sslrootcert`: the CA certificates (PEM) the server's chain must end in; without it,
    /// `verify-ca` and `verify-full` trust the Mozilla root store.
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: a client certificate (PEM) and its key, for certificate login.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The rustls settings built from the above (`None` for `disable`); building them at load
    /// time is what checks the files.
    pub rustls: Option<Arc<rustls::ClientConfig>>,
}

impl PgTls {
    /// Whether the server's certificate chain is checked (`require` with a root cert is).
    pub fn verifies_chain(&self) -> bool {
        match self.mode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.root_cert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

/// The rustls client settings for `tls` (`None` for `sslmode=disable`); reads and checks the
/// certificate files, so a wrong path is a configuration error naming the parameter and file.
pub fn rustls_config(tls: &PgTls) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if tls.mode == SslMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match &tls.root_cert {
        Some(path) => {
            let certs = read_certs("sslrootcert", path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("sslrootcert {}: no usable CA certificate in the file", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = if tls.verifies_chain() {
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
        Some(verifier)
    } else {
        None
    };
    let verifier = Arc::new(Verifier {
        webpki,
        check_host: tls.mode == SslMode::VerifyFull,
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs("sslcert", cert)?;
            if chain.is_empty() {
                return Err(format!("sslcert {}: no certificate in the file", cert.display()));
            }
            let bytes =
                std::fs::read(key).map_err(|e| format!("sslkey {}: cannot read: {e}", key.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("sslkey {}: no private key in PEM form: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sslcert {} / sslkey {}: {e}", cert.display(), key.display()))?
        }
    };
    Ok(Some(Arc::new(config)))
}

fn read_certs(param: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{param} {}: cannot read: {e}", path.display()))?;
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{param} {}: not a PEM certificate file: {e}", path.display()))
}

/// libpq's rules in one verifier: no chain check (`prefer`, `require` without root cert),
/// the chain only (`verify-ca`, `require` with a root cert), or chain and host name
/// (`verify-full`). Handshake signatures are always checked.
#[derive(Debug)]
struct Verifier {
    webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else { return Ok(ServerCertVerified::assertion()) };
        // webpki checks the chain before the name, so a name error means the chain was good.
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_host => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS failure, already worded for the operator (the cause, without the "TLS:" prefix).
#[derive(Debug)]
pub(crate) struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// tokio-postgres's TLS hook, backed by rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls {
    pub(crate) config: Arc<rustls::ClientConfig>,
    pub(crate) tls: PgTls,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsError> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|_| TlsError(format!("`{domain}` is not a host name or IP address TLS can check")))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            host: domain.to_string(),
            tls: self.tls.clone(),
        })
    }
}

/// One handshake towards one host.
pub(crate) struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    host: String,
    tls: PgTls,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            match self.connector.connect(self.name, stream).await {
                Ok(stream) => Ok(RustlsStream(Box::new(stream))),
                Err(e) => Err(TlsError(handshake_cause(&e, &self.host, &self.tls))),
            }
        })
    }
}

/// Why a handshake failed, in the operator's words.
fn handshake_cause(e: &io::Error, host: &str, tls: &PgTls) -> String {
    let Some(rustls_error) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        return e.to_string();
    };
    match rustls_error {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!("certificate not valid for host name {host}")
            }
            CertificateError::UnknownIssuer => match &tls.root_cert {
                Some(path) => format!("certificate not signed by a CA in sslrootcert {}", path.display()),
                None => "certificate not signed by a CA of the Mozilla root store: set sslrootcert to the server's CA"
                    .into(),
            },
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "certificate expired".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet".into()
            }
            _ => rustls_error.to_string(),
        },
        other => other.to_string(),
    }
}

/// A TLS stream to the server.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (SCRAM-SHA-256, not -PLUS), which every server accepts.
        ChannelBinding::none()
    }
}

/// The same TLS rules for pgwire-replication's replication connection to `host`.
pub fn replication_tls(tls: &PgTls, host: &str) -> pgwire_replication::TlsConfig {
    use pgwire_replication::TlsConfig;
    let root = tls.root_cert.clone();
    let config = match tls.mode {
        SslMode::Disable => TlsConfig::disabled(),
        SslMode::Prefer => TlsConfig { mode: pgwire_replication::SslMode::Prefer, ..TlsConfig::default() },
        SslMode::Require if root.is_none() => TlsConfig::require(),
        SslMode::Require | SslMode::VerifyCa => TlsConfig::verify_ca(root),
        // The host as SNI name: pgwire-replication refuses verify-full towards an IP address
        // otherwise, while rustls checks an IP against the certificate's IP entries itself.
        SslMode::VerifyFull => TlsConfig::verify_full(root).with_sni_hostname(host),
    };
    match &tls.client_cert {
        Some((cert, key)) => config.with_client_cert(cert.clone(), key.clone()),
        None => config,
    }
}
