//! The links between members of a fleet: the HTTP clients and gRPC channels a router uses to
//! reach its workers and a worker its routers. When members check tokens (`--auth-tokens`),
//! every call on a link carries the fleet token (`--fleet-token`), set in one place here.

use flotilla_core::secret::Secret;
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::Channel;

/// How this process authenticates to the other members of its fleet.
#[derive(Clone, Debug, Default)]
pub struct Link {
    token: Option<Secret>,
}

impl Link {
    pub fn new(token: Option<Secret>) -> Link {
        Link { token }
    }

    /// `Bearer <token>`, marked sensitive (never logged by the HTTP stack).
    fn authorization(&self) -> Option<http::HeaderValue> {
        let token = self.token.as_ref()?;
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose())).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// An HTTP client with this timeout whose every request carries the fleet token.
    pub fn http(&self, timeout: Duration) -> reqwest::Client {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = self.authorization() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
        reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new())
    }

    /// `channel` with the fleet token on every call.
    pub fn grpc(&self, channel: Channel) -> Authorized {
        Authorized { inner: channel, authorization: self.authorization() }
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
