//! The links between members of a fleet: the HTTP clients and gRPC channels a router uses to
//! reach its workers and a worker its routers. When members check tokens (`--auth-tokens`),
//! every call on a link carries the fleet token (`--fleet-token`); when members serve TLS, links
//! to their `https://` addresses verify them against the fleet's CA and present this member's
//! certificate when asked (mutual TLS). Both are set in one place, here.

use flotilla_core::secret::Secret;
use flotilla_core::tls::{ClientTls, TlsError};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How this process authenticates to the other members of its fleet.
#[derive(Clone, Debug, Default)]
pub struct Link {
    token: Option<Secret>,
    tls: Option<LinkTls>,
}

/// TLS on links: one client configuration for HTTP and the same files for gRPC.
#[derive(Clone)]
struct LinkTls {
    http: Arc<rustls::ClientConfig>,
    grpc: tonic::transport::ClientTlsConfig,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls")
    }
}

impl Link {
    pub fn new(token: Option<Secret>) -> Link {
        Link { token, tls: None }
    }

    /// Links to `https://` members verify them with `tls` (the fleet's CA, or the system's
    /// roots) and present `tls.identity` to members that ask for a client certificate. Without
    /// this, `https://` links use the system's roots and no client certificate.
    pub fn with_tls(mut self, tls: &ClientTls) -> Result<Link, TlsError> {
        let http = Arc::new(tls.config(&[])?);
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| flotilla_core::tls::file_error(what, path, e))
        };
        let mut grpc = tonic::transport::ClientTlsConfig::new();
        grpc = match &tls.roots {
            Some(ca) => grpc.ca_certificate(tonic::transport::Certificate::from_pem(read("CA", ca)?)),
            None => grpc.with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            let identity = tonic::transport::Identity::from_pem(read("certificate", cert)?, read("private key", key)?);
            grpc = grpc.identity(identity);
        }
        self.tls = Some(LinkTls { http, grpc });
        Ok(self)
    }

    /// `Bearer <token>`, marked sensitive (never logged by the HTTP stack).
    fn authorization(&self) -> Option<http::HeaderValue> {
        let token = self.token.as_ref()?;
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// An HTTP client with this timeout whose every request carries the fleet token (and,
    /// to `https://` members, this link's TLS settings).
    pub fn http(&self, timeout: Duration) -> reqwest::Client {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = self.authorization() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder().timeout(timeout).default_headers(headers);
        if let Some(tls) = &self.tls {
            builder = builder.use_preconfigured_tls((*tls.http).clone());
        }
        builder.build().unwrap_or_else(|e| {
            tracing::error!(error = %e, "fleet link: HTTP client settings refused; using the defaults");
            reqwest::Client::new()
        })
    }

    /// A lazily connected channel to `endpoint` with the fleet token on every call; over TLS
    /// when the address is `https://`.
    pub fn grpc(&self, endpoint: Endpoint) -> Result<Authorized, String> {
        let endpoint = if endpoint.uri().scheme_str() == Some("https") {
            let config = match &self.tls {
                Some(tls) => tls.grpc.clone(),
                None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
            };
            let uri = endpoint.uri().to_string();
            endpoint.tls_config(config).map_err(|e| format!("TLS to {uri}: {e}"))?
        } else {
            endpoint
        };
        Ok(Authorized { inner: endpoint.connect_lazy(), authorization: self.authorization() })
    }
}

/// A gRPC channel to a member that adds the fleet token to each call.
#[derive(Clone, Debug)]
pub struct Authorized {
    inner: Channel,
    authorization: Option<http::HeaderValue>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Authorized {
    type Response = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Response;
    type Error = <Channel as tower::Service<http::Request<tonic::body::Body>>>::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(http::header::AUTHORIZATION, value.clone());
        }
        Box::pin(self.inner.call(request))
    }
}
