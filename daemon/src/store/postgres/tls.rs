//! TLS to PostgreSQL: the URL's `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` options ([`Settings::take`]), and a rustls connector for the
//! client ([`Connector`]), with the ring provider that reqwest already brings.
//!
//! - `disable` (or no `sslmode`): plain TCP (or a unix socket).
//! - `require`: encrypted, the server's certificate not checked (stops a
//!   passive listener, not an active attacker).
//! - `verify-ca`: encrypted, the certificate chain checked against the CA.
//! - `verify-full`: the chain and the host name (or IP address, against the
//!   certificate's IP subjectAltNames) checked: the recommended mode.
//!
//! `prefer` and `allow` are refused: they fall back to plain text without a
//! word when the server does not offer TLS. verify-* need `sslrootcert`
//! (a PEM file, or `system` for the public web's CAs, Mozilla's list built
//! into herald). Channel binding is not offered (SCRAM without `-PLUS`).
//!
//! The connector is our own (the three small types at the end) rather than
//! a crate: `tokio-postgres-rustls` 0.13/0.14 bring x509-cert, der, spki and
//! more (0.14 a second sha2) only to compute channel binding, and
//! `postgres_rustls` needs Rust 1.93 (0.1.5) or 1.97 (0.1.6), newer than the
//! workspace's rust-version. rustls, tokio-rustls and webpki-roots were
//! already in the tree through reqwest.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How a connection is protected: the URL's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

/// The CAs a verify-* mode trusts: `sslrootcert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// `sslrootcert=system`: the public web's CAs (Mozilla's list, `webpki-roots`).
    System,
}

/// The TLS options of one connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub roots: Option<Roots>,
    /// `sslcert` and `sslkey`: a client certificate, for servers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The options this module reads (and removes before the client parses the rest).
const OPTIONS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

impl Settings {
    /// Read the TLS options out of `url` (a `postgres://` URL, whose query
    /// values are percent-decoded, or `key=value` pairs), and return them
    /// with the connection string left without them. The error never
    /// quotes the connection string (it may hold a password).
    pub fn take(url: &str) -> Result<(Settings, String), String> {
        let (found, rest) = split_options(url);
        let mut values = std::collections::HashMap::new();
        for (key, value) in found {
            if values.insert(key.clone(), value).is_some() {
                return Err(format!("it gives `{key}` twice"));
            }
        }
        let mode = match values.get("sslmode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None | Some("disable") => Mode::Disable,
            Some("require") => Mode::Require,
            Some("verify-ca") => Mode::VerifyCa,
            Some("verify-full") => Mode::VerifyFull,
            Some(weak @ ("prefer" | "allow")) => {
                return Err(format!(
                    "asks for sslmode={weak}, which falls back to plain text without a word when the server does not \
                     offer TLS; herald refuses it: use sslmode=verify-full (with sslrootcert) to encrypt and verify \
                     the server, or sslmode=disable for a unix socket or a private network"
                ));
            }
            Some(other) => {
                return Err(format!(
                    "has sslmode={other}; expected disable, require, verify-ca or verify-full (the recommended one)"
                ));
            }
        };
        let roots = values.get("sslrootcert").map(|r| match r.as_str() {
            "system" => Roots::System,
            path => Roots::File(PathBuf::from(path)),
        });
        let client = match (values.get("sslcert"), values.get("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => return Err("gives only one of sslcert and sslkey: a client certificate needs both".to_string()),
        };
        // A relative path would depend on the directory herald was started in (/ under systemd).
        for option in &OPTIONS[1..] {
            if let Some(path) = values.get(*option)
                && !(*option == "sslrootcert" && path == "system")
                && !Path::new(path).is_absolute()
            {
                return Err(format!(
                    "gives {option} as a relative path ({path}); write it absolute, e.g. /etc/herald/{path}"
                ));
            }
        }
        if mode == Mode::Disable && (roots.is_some() || client.is_some()) {
            return Err(format!(
                "gives {} without TLS (sslmode is disable or absent): add sslmode=verify-full",
                OPTIONS[1..].iter().filter(|o| values.contains_key(**o)).copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) && roots.is_none() {
            return Err(format!(
                "asks for sslmode={} but names no CA to verify the server with: add \
                 sslrootcert=/path/to/ca.pem (the CA that signed the server's certificate), or sslrootcert=system \
                 for a server whose certificate comes from a public CA",
                mode.name()
            ));
        }
        Ok((Settings { mode, roots, client }, rest))
    }

    /// "plain text", "TLS require (server not verified)", "TLS verify-full", ...: for `herald check`.
    pub fn describe(&self) -> String {
        match self.mode {
            Mode::Disable => "plain text".to_string(),
            Mode::Require => "TLS require (the server is not verified)".to_string(),
            Mode::VerifyCa => "TLS verify-ca (the host name is not verified)".to_string(),
            Mode::VerifyFull => "TLS verify-full".to_string(),
        }
    }

    /// The connector for these settings (reads the CA and client files),
    /// or `None` for plain text.
    pub fn connector(&self) -> Result<Option<Connector>, String> {
        if self.mode == Mode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS cannot be set up: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            Mode::Disable => unreachable!("returned above"),
            Mode::Require => Arc::new(Lenient { chain: None, provider: provider.clone() }),
            Mode::VerifyCa | Mode::VerifyFull => {
                let roots = Arc::new(self.root_store()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert cannot be used: {e}"))?;
                if self.mode == Mode::VerifyCa {
                    Arc::new(Lenient { chain: Some(webpki), provider: provider.clone() })
                } else {
                    webpki
                }
            }
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        let config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert, "sslcert")?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("sslkey {} is not a PEM private key: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("sslcert and sslkey do not make a client certificate: {e}"))?
            }
        };
        Ok(Some(Connector { config: Arc::new(config), settings: Arc::new(self.clone()) }))
    }

    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            None => return Err("no sslrootcert".to_string()),
            Some(Roots::System) => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(Roots::File(path)) => {
                for cert in read_certificates(path, "sslrootcert")? {
                    store.add(cert).map_err(|e| {
                        format!("sslrootcert {} holds a certificate that cannot be a CA: {e}", path.display())
                    })?;
                }
            }
        }
        Ok(store)
    }

    /// What went wrong in a handshake, and what to fix, in words.
    pub fn explain(&self, e: &rustls::Error, host: &str) -> String {
        let ca = match &self.roots {
            Some(Roots::File(path)) => format!("the CA in sslrootcert ({})", path.display()),
            Some(Roots::System) => "a public CA (sslrootcert=system)".to_string(),
            None => "a CA herald trusts".to_string(),
        };
        match e {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by {ca}: set sslrootcert to the CA that signed the \
                 server's certificate (ask the database's administrator for it)"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate is not valid for the host {host}: connect with a host name or IP address \
                 the certificate names (its subjectAltName), or have the certificate reissued for {host}"
            ),
            rustls::Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                "the server's certificate has expired: have it renewed".to_string()
            }
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => "the server's certificate is not valid yet: check the clocks of both hosts".to_string(),
            other => format!("the TLS handshake failed: {other}"),
        }
    }
}

/// Every certificate in a PEM file (at least one).
fn read_certificates(path: &Path, option: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{option} {} cannot be read as PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{option} {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// Split the TLS options out of a connection string: `(key, value)` for
/// each, and the string without them.
fn split_options(url: &str) -> (Vec<(String, String)>, String) {
    let mut found = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (found, url.to_string()) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if OPTIONS.contains(&key) {
                found.push((key.to_string(), percent_encoding::percent_decode_str(value).decode_utf8_lossy().into()));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        (found, rest)
    } else {
        // key=value pairs, separated by blanks; a value may be 'quoted'.
        let mut kept = Vec::new();
        for token in kv_tokens(url) {
            match token.split_once('=') {
                Some((key, value)) if OPTIONS.contains(&key) => {
                    found.push((key.to_string(), value.trim_matches('\'').to_string()));
                }
                _ => kept.push(token),
            }
        }
        (found, kept.join(" "))
    }
}

/// The blank-separated tokens of a `key=value` string, quotes kept.
fn kv_tokens(s: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let (mut start, mut quoted, mut escaped) = (None, false, false);
    for (i, c) in s.char_indices() {
        if start.is_none() {
            if c.is_whitespace() {
                continue;
            }
            start = Some(i);
        }
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '\'' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                tokens.push(&s[start.take().unwrap_or(i)..i]);
            }
            _ => {}
        }
    }
    if let Some(start) = start {
        tokens.push(&s[start..]);
    }
    tokens
}

/// `require` (`chain` None: any certificate) and `verify-ca` (the chain
/// verified, a host name the certificate does not name accepted: webpki
/// checks the name after the chain). Either way the handshake's signatures
/// are checked, so the session is encrypted with the key of whoever
/// answered. (`verify-full` is rustls's own `WebPkiServerVerifier`.)
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a TLS handshake failed, for the pool to explain ([`Settings::explain`]).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The server's certificate, or the TLS protocol itself.
    #[error("{0}")]
    Tls(rustls::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("`{0}` is not a host name or IP address that TLS can verify")]
    Name(String),
}

/// The client's TLS: a `MakeTlsConnect` for `postgres::Config::connect`.
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    pub settings: Arc<Settings>,
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, HandshakeError> {
        let name = ServerName::try_from(domain.to_string()).map_err(|_| HandshakeError::Name(domain.to_string()))?;
        Ok(Connect { config: self.config.clone(), name })
    }
}

/// One handshake, to one host.
pub struct Connect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = HandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = tokio_rustls::TlsConnector::from(self.config);
            connector.connect(self.name, stream).await.map(Stream).map_err(|e| {
                match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                    Some(tls) => HandshakeError::Tls(tls.clone()),
                    None => HandshakeError::Io(e),
                }
            })
        })
    }
}

/// A TLS session with the server.
pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_read_out_of_a_url_and_the_rest_is_kept() {
        let (s, rest) = Settings::take(
            "postgres://u:p%3Fw@db:5432/h?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem&options=-c%20a%3D1",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::VerifyFull);
        assert_eq!(s.roots, Some(Roots::File("/etc/ca x.pem".into())));
        assert_eq!(rest, "postgres://u:p%3Fw@db:5432/h?options=-c%20a%3D1");
        let (s, rest) = Settings::take("postgres://u@db/h?sslmode=require").unwrap();
        assert_eq!((s.mode, rest.as_str()), (Mode::Require, "postgres://u@db/h"));
        let (s, rest) = Settings::take("postgres://u@db/h").unwrap();
        assert_eq!((s.mode, s.describe().as_str(), rest.as_str()), (Mode::Disable, "plain text", "postgres://u@db/h"));
        let (s, rest) =
            Settings::take("host=db password='a b\\' c' sslmode=verify-ca sslrootcert=system user=u").unwrap();
        assert_eq!((s.mode, s.roots), (Mode::VerifyCa, Some(Roots::System)));
        assert_eq!(rest, "host=db password='a b\\' c' user=u");
    }

    #[test]
    fn weak_or_unknown_modes_and_incomplete_options_are_refused_without_quoting_the_url() {
        for (url, says) in [
            ("postgres://u:hunter2@db/h?sslmode=prefer", "falls back to plain text"),
            ("postgres://u:hunter2@db/h?sslmode=allow", "falls back to plain text"),
            ("postgres://u:hunter2@db/h?sslmode=verify", "expected disable, require, verify-ca or verify-full"),
            ("postgres://u:hunter2@db/h?sslmode=verify-full", "add sslrootcert=/path/to/ca.pem"),
            ("postgres://u:hunter2@db/h?sslmode=require&sslcert=/c.pem", "needs both"),
            ("postgres://u:hunter2@db/h?sslrootcert=/ca.pem", "without TLS"),
            ("postgres://u:hunter2@db/h?sslmode=require&sslmode=disable", "twice"),
            ("postgres://u:hunter2@db/h?sslmode=verify-full&sslrootcert=ca.pem", "relative path (ca.pem)"),
        ] {
            let err = Settings::take(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let url = format!("postgres://u@db/h?sslmode=verify-full&sslrootcert={}", missing.display());
        let err = Settings::take(&url).unwrap().0.connector().err().unwrap();
        assert!(err.contains("sslrootcert") && err.contains("missing.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let url = format!("postgres://u@db/h?sslmode=verify-full&sslrootcert={}", empty.display());
        let err = Settings::take(&url).unwrap().0.connector().err().unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let url = "postgres://u@db/h?sslmode=verify-full&sslrootcert=system";
        assert!(Settings::take(url).unwrap().0.connector().unwrap().is_some());
    }
}
