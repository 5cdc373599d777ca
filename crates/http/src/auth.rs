//! Bearer-token checks for every HTTP listener (a worker's, the router's, the metrics port):
//! [`flotilla_core::auth::http_access`] says what a request needs, [`Auth::check`] decides, and
//! a refusal goes out through the one error table (401 with `WWW-Authenticate: Bearer`, or 403).
//! The caller's [`Identity`] travels in the request's extensions for handlers that check a
//! scope themselves (GraphQL's fields).

use crate::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use flotilla_core::auth::{http_access, Auth};
use flotilla_core::error::ErrorKind;
use std::sync::Arc;

/// `router` behind the token check, or as it is when `auth` is `None` (authentication off).
pub fn guard(router: Router, auth: Option<Arc<Auth>>) -> Router {
    match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, check)),
        None => router,
    }
}

async fn check(State(auth): State<Arc<Auth>>, mut request: Request, next: Next) -> Response {
    let access = http_access(request.method().as_str(), request.uri().path());
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match auth.check(header, access) {
        Ok(identity) => {
            if let Some(identity) = identity {
                request.extensions_mut().insert(identity);
            }
            next.run(request).await
        }
        Err(e) => {
            tracing::debug!(method = %request.method(), path = request.uri().path(), error = %e, "request refused");
            let challenge = e.kind == ErrorKind::Unauthenticated;
            let mut response = ApiError(e).into_response();
            if challenge {
                response
                    .headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}
