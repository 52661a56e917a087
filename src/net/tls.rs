//! TLS configuration: termination on the client leg (SSLRequest and PostgreSQL 17 direct TLS)
//! and origination on the upstream leg with libpq's `sslmode` semantics.
use crate::config::SslMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::Arc;

/// The ALPN protocol name PostgreSQL 17 uses; required for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate file {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read TLS private key file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("cannot read sslrootcert {path}: {reason}")]
    RootCert { path: String, reason: String },
    #[error("TLS configuration rejected: {0}")]
    Config(String),
}

/// Installs the aws-lc-rs provider once; a builder panics if two providers are linked and
/// none was chosen (STACK.md).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Server-side config for the client leg from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.display().to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.display().to_string(),
            reason: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Client-side config for the upstream leg, or `None` when `sslmode` never encrypts.
///
/// - `disable`, `allow`: no TLS (allow would only retry with TLS if the server demanded it,
///   which needs a server-side rule we treat as a configuration error).
/// - `prefer`, `require`: encrypt without verifying, as libpq does, unless `sslrootcert` is
///   given, in which case the chain is verified (libpq's "verify-ca if a root cert exists").
/// - `verify-ca`: chain verified against `sslrootcert`, host name not checked.
/// - `verify-full`: chain and host name verified.
pub fn upstream_client_config(
    mode: SslMode,
    rootcert: Option<&Path>,
) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    install_crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, rootcert) {
        (SslMode::Disable | SslMode::Allow, _) => return Ok(None),
        (SslMode::Prefer | SslMode::Require, None) => Arc::new(NoVerification::new()),
        (SslMode::VerifyFull, Some(path)) => webpki(path)?,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(path)) => {
            Arc::new(IgnoreHostName(webpki(path)?))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::Config(
                "sslmode verify-ca and verify-full need sslrootcert".into(),
            ));
        }
    };
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A client config that trusts only `ca` (for tests and tools that talk TLS to tokengate).
pub fn client_config_trusting(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(webpki(ca)?)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

fn webpki(path: &Path) -> Result<Arc<dyn ServerCertVerifier>, TlsError> {
    let err = |reason: String| TlsError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate found".into()));
    }
    let v = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| err(e.to_string()))?;
    Ok(v)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// libpq's `sslmode=require` without a root certificate: encryption, no authentication.
/// Handshake signatures are still checked so the session keys belong to the presented cert.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl NoVerification {
    fn new() -> Self {
        NoVerification(provider())
    }
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root, but the host name is not checked.
#[derive(Debug)]
struct IgnoreHostName(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
