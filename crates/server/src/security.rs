//! The security settings of a server or router, from its flags: the token file (authentication
//! and scopes, [`flotilla_core::auth`]), the fleet token its links carry
//! and the TLS settings of its links ([`flotilla_fleet::link`]), and TLS on its listeners
//! ([`crate::tls`]); and the task that
//! re-reads the token and certificate files when they change.

use crate::config::SecurityArgs;
use crate::tls::{Tls, TlsFiles};
use anyhow::Context;
use flotilla_core::auth::Auth;
use flotilla_core::secret::Secret;
use flotilla_core::tls::{ClientTls, Verify};
use flotilla_fleet::link::Link;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the token and certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Security {
    /// Tokens and scopes; `None`: every endpoint is open (the default, for local use).
    pub auth: Option<Arc<Auth>>,
    /// TLS on every listener; `None`: plain TCP.
    pub tls: Option<Arc<Tls>>,
    /// How this process authenticates to the rest of its fleet.
    pub link: Link,
}

impl Security {
    /// Reads the files the flags name; a file that does not load stops the start with its reason.
    pub fn from_args(args: &SecurityArgs) -> anyhow::Result<Security> {
        let auth = match &args.auth_tokens {
            Some(path) => {
                let auth = Auth::load(path).context("--auth-tokens")?;
                tracing::info!(path = %path.display(), tokens = auth.len(), "authentication on: bearer tokens required");
                Some(Arc::new(auth))
            }
            None => None,
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: args.tls_client_ca.clone() };
                let tls = Tls::load(files).context("--tls-cert/--tls-key/--tls-client-ca")?;
                tracing::info!(cert = %cert.display(), mutual = tls.mutual(), "TLS on");
                Some(tls)
            }
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        if let Some(token) = &args.fleet_token {
            anyhow::ensure!(
                token.len() >= flotilla_core::auth::MIN_TOKEN_LEN,
                "--fleet-token: a token is at least {} characters",
                flotilla_core::auth::MIN_TOKEN_LEN
            );
        }
        let mut link = Link::new(args.fleet_token.clone().map(Secret::new));
        if args.fleet_ca.is_some() || args.tls_cert.is_some() {
            let tls = ClientTls {
                roots: args.fleet_ca.clone().or_else(|| args.tls_client_ca.clone()),
                identity: args.tls_cert.clone().zip(args.tls_key.clone()),
                verify: Verify::Full,
            };
            match link.clone().with_tls(&tls) {
                Ok(with_tls) => link = with_tls,
                // No CA named and none in the system's store: a server that is not in a fleet
                // still starts; links to https:// members would not verify, and say so then.
                Err(e) if tls.roots.is_none() => {
                    tracing::warn!(error = %e, "no CA for links to https:// fleet members (give --fleet-ca)")
                }
                Err(e) => return Err(e).context("TLS on fleet links (--fleet-ca, --tls-cert/--tls-key)"),
            }
        }
        Ok(Security { auth, tls, link })
    }

    /// Re-reads the token and TLS files when they change, until `stop` turns true: one task
    /// checks both every [`RELOAD_EVERY`]; a file that does not load leaves what is in force.
    pub fn spawn_reload(&self, tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>, stop: &watch::Sender<bool>) {
        if self.auth.is_none() && self.tls.is_none() {
            return;
        }
        let (auth, tls, mut stop) = (self.auth.clone(), self.tls.clone(), stop.subscribe());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
                if let Some(auth) = &auth {
                    match auth.reload_if_changed() {
                        Ok(true) => {
                            tracing::info!(path = %auth.path().display(), tokens = auth.len(), "token file reloaded")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "token file not reloaded; the previous tokens stay in force")
                        }
                    }
                }
                if let Some(tls) = &tls {
                    match tls.reload_if_changed() {
                        Ok(true) => tracing::info!(cert = %tls.cert().display(), "TLS certificate reloaded"),
                        Ok(false) => {}
                        Err(e) => tracing::error!(error = %e, "TLS files not reloaded; the certificate in force stays"),
                    }
                }
            }
        });
    }
}
