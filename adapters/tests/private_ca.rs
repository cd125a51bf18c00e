//! A private CA (`ca_file`): an account's HTTP client trusts it besides the
//! public roots. A real TLS server on loopback, with a certificate from a
//! test CA (`tests/data/private-ca/`, see its README), answers a webhook
//! publish only when the account trusts that CA.

use std::sync::Arc;
use std::time::Duration;

use herald_adapters::registry::{self, AccountSettings, HttpOptions, Platform};
use herald_adapters::{Adapter, PublishRequest, Rendered, Services};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CA: &[u8] = include_bytes!("data/private-ca/ca.pem");
const SERVER_CERT: &[u8] = include_bytes!("data/private-ca/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("data/private-ca/server.key");

/// An HTTPS server on 127.0.0.1 that answers every request `200 {"id":"tls-1"}`;
/// its URL.
async fn tls_server() -> String {
    let certs = CertificateDer::pem_slice_iter(SERVER_CERT).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(SERVER_KEY).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the certificate ends the handshake.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head and the body its Content-Length announces.
                loop {
                    let Ok(n) = tls.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = "{\"id\":\"tls-1\"}";
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    format!("https://{addr}/hook")
}

fn webhook(url: &str, extra_roots_pem: Option<&[u8]>) -> Arc<dyn Adapter> {
    let table = serde_json::json!({ "url": url });
    let settings = AccountSettings::deserialize(Platform::Webhook, table).unwrap();
    let http = HttpOptions {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(10),
        extra_roots_pem: extra_roots_pem.map(Into::into),
    };
    registry::build(&settings, http, &Services::in_memory("office-hook")).unwrap()
}

fn request(content: &Rendered) -> PublishRequest<'_> {
    PublishRequest {
        delivery_id: "d-tls",
        post_id: "p",
        account_id: "office-hook",
        occurrence: "2026-12-01T01:00:00Z",
        attempt: 1,
        uncertain: false,
        content,
    }
}

#[tokio::test]
async fn an_account_with_the_private_ca_publishes_and_one_without_is_refused() {
    let url = tls_server().await;
    let content = Rendered { text: "Beware.".into(), ..Rendered::default() };

    let receipt = webhook(&url, Some(CA)).publish(request(&content)).await.expect("the private CA is trusted");
    assert_eq!(receipt.remote_id.as_deref(), Some("tls-1"));

    // The same server, an account without `ca_file`: the public roots do not
    // vouch for it, and nothing is published.
    let error = webhook(&url, None).publish(request(&content)).await.unwrap_err();
    assert!(!error.maybe_sent, "a failed TLS handshake cannot have sent the post: {error:?}");
    assert!(error.reason.contains("could not connect"), "{}", error.reason);
}

#[test]
fn a_bundle_that_is_not_pem_fails_the_account_build() {
    let table = serde_json::json!({ "url": "https://127.0.0.1:9/hook" });
    let settings = AccountSettings::deserialize(Platform::Webhook, table).unwrap();
    let http = HttpOptions {
        extra_roots_pem: Some(b"-----BEGIN CERTIFICATE-----\nnot base64!\n".as_slice().into()),
        ..HttpOptions::default()
    };
    assert!(registry::build(&settings, http, &Services::in_memory("x")).is_err());
}
