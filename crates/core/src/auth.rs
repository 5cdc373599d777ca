//! Bearer tokens and scopes, written once for every adapter (HTTP, gRPC, the metrics port, the
//! router): what each endpoint needs ([`http_access`], [`grpc_access`]) and whether a request's
//! `Authorization` header grants it ([`Auth::check`]).
//!
//! Off by default. `--auth-tokens FILE` turns it on with a TOML file of named tokens:
//!
//! ```toml
//! [[token]]
//! name = "scoring-service"          # what logs and errors say; the token itself never appears
//! token_env = "SCORING_TOKEN"       # or: token = "…" (at least 16 characters)
//! scopes = ["infer", "features:read"]
//! ```
//!
//! The file is read again when it changes (a bad edit is refused with its line, and the tokens
//! in force stay). Tokens are compared in constant time, each presented token against every
//! entry.

use crate::error::Error;
use crate::secret::Secret;
use arc_swap::ArcSwap;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// What a token may do. Scopes are independent: `admin` does not imply `infer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Inference, and reading models: metadata, config, readiness, statistics, drift, the index.
    Infer,
    /// Online feature reads (Feast's `/get-online-features`, gRPC `GetOnlineFeatures`, GraphQL).
    FeaturesRead,
    /// Writes into the online store (Feast's `/push`).
    FeaturesWrite,
    /// Repository load/unload, preemption, fleet membership and changes, and every other write.
    Admin,
}

/// Every scope, in the order the README lists them.
pub const ALL_SCOPES: [Scope; 4] = [Scope::Infer, Scope::FeaturesRead, Scope::FeaturesWrite, Scope::Admin];

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::FeaturesRead => "features:read",
            Scope::FeaturesWrite => "features:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        ALL_SCOPES.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (liveness and readiness probes, the dashboard's static page).
    Open,
    /// Any known token, whatever its scopes (reads of server-wide state, `/metrics`).
    Authenticated,
    /// A token holding this scope.
    Scope(Scope),
}

/// The access an HTTP request needs, from its method and raw path (not percent-decoded, so an
/// encoded separator cannot make a path look like a lesser one). Paths not listed need `admin`
/// to write and any token to read.
pub fn http_access(method: &str, path: &str) -> Access {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let read = method == "GET" || method == "HEAD";
    match segments.as_slice() {
        ["v2", "health", "live" | "ready"] | ["health"] => Access::Open,
        ["openapi.json"] if read => Access::Open,
        // The dashboard's page and assets carry no data; its API calls do.
        ["dashboard"] | ["dashboard", ""] if read => Access::Open,
        ["dashboard", "assets", _] if read => Access::Open,
        ["dashboard", page] if read && *page != "api" => Access::Open,
        ["v2", "models", _, "infer"] | ["v2", "models", _, "versions", _, "infer"] if method == "POST" => {
            Access::Scope(Scope::Infer)
        }
        ["v2"] | ["v2", "models", ..] if read => Access::Scope(Scope::Infer),
        ["v2", "repository", "index"] if method == "POST" => Access::Scope(Scope::Infer),
        ["get-online-features"] if method == "POST" => Access::Scope(Scope::FeaturesRead),
        ["push"] if method == "POST" => Access::Scope(Scope::FeaturesWrite),
        // Queries only; each field checks its own scope (online features need features:read).
        ["graphql"] => Access::Authenticated,
        _ if read => Access::Authenticated,
        _ => Access::Scope(Scope::Admin),
    }
}

/// The access a gRPC call needs, from its path (`/package.Service/Method`).
pub fn grpc_access(path: &str) -> Access {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    match (service, method) {
        ("grpc.health.v1.Health", _) => Access::Open,
        ("inference.GRPCInferenceService", "ServerLive" | "ServerReady") => Access::Open,
        (
            "inference.GRPCInferenceService",
            "ModelInfer" | "ModelStreamInfer" | "ServerMetadata" | "ModelReady" | "ModelMetadata" | "ModelConfig"
            | "ModelStatistics" | "RepositoryIndex",
        ) => Access::Scope(Scope::Infer),
        ("feast.serving.ServingService", "GetOnlineFeatures") => Access::Scope(Scope::FeaturesRead),
        ("feast.serving.ServingService", "GetFeastServingInfo") => Access::Authenticated,
        (s, _) if s.starts_with("grpc.reflection.") => Access::Authenticated,
        _ => Access::Scope(Scope::Admin),
    }
}

/// Who made a request: the token's name and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub scopes: BTreeSet<Scope>,
}

impl Identity {
    /// Whether this identity may do what `access` describes.
    pub fn allows(&self, access: Access) -> bool {
        match access {
            Access::Open | Access::Authenticated => true,
            Access::Scope(s) => self.scopes.contains(&s),
        }
    }

    /// `Ok` when this identity holds `scope`, else the 403 a client sees.
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(denied(&self.name, scope))
        }
    }
}

fn denied(name: &str, scope: Scope) -> Error {
    Error::denied(format!("token '{name}' does not have the '{scope}' scope this operation needs"))
}

/// A token file that cannot be used, with the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the token file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    token: Option<String>,
    token_env: Option<String>,
    scopes: Vec<String>,
}

/// The shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

struct Entry {
    secret: Secret,
    identity: Identity,
}

/// The tokens of one reading of the file.
struct Tokens {
    entries: Vec<Entry>,
}

impl Tokens {
    /// Parses a token file's text; `env` resolves `token_env`.
    fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Tokens, String> {
        let file: TokenFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if file.token.is_empty() {
            return Err("no [[token]] entries: with --auth-tokens every request would be refused".into());
        }
        let mut names = BTreeSet::new();
        let mut entries: Vec<Entry> = Vec::new();
        for (i, t) in file.token.into_iter().enumerate() {
            let at = format!("[[token]] #{} ({:?})", i + 1, t.name);
            if t.name.is_empty() || !names.insert(t.name.clone()) {
                return Err(format!("{at}: every token needs a name of its own"));
            }
            let value = match (t.token, t.token_env) {
                (Some(v), None) => v,
                (None, Some(var)) => env(&var)
                    .ok_or_else(|| format!("{at}: token_env names {var:?}, which is not set in the environment"))?,
                _ => return Err(format!("{at}: give exactly one of token or token_env")),
            };
            let value = value.trim().to_string();
            if value.len() < MIN_TOKEN_LEN || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("{at}: a token is at least {MIN_TOKEN_LEN} printable characters without spaces"));
            }
            let mut scopes = BTreeSet::new();
            for s in &t.scopes {
                let scope = Scope::parse(s).ok_or_else(|| {
                    let known: Vec<&str> = ALL_SCOPES.iter().map(|s| s.as_str()).collect();
                    format!("{at}: unknown scope {s:?} (known: {})", known.join(", "))
                })?;
                scopes.insert(scope);
            }
            let secret = Secret::new(value);
            if entries.iter().any(|e| e.secret == secret) {
                return Err(format!("{at}: the same token is given twice"));
            }
            entries.push(Entry { secret, identity: Identity { name: t.name, scopes } });
        }
        Ok(Tokens { entries })
    }

    /// The identity of `presented`, comparing it with every entry (no early exit).
    fn find(&self, presented: &Secret) -> Option<&Identity> {
        let mut found = None;
        for e in &self.entries {
            if e.secret == *presented && found.is_none() {
                found = Some(&e.identity);
            }
        }
        found
    }
}

/// The tokens in force and where they come from.
pub struct Auth {
    path: PathBuf,
    tokens: ArcSwap<Tokens>,
    modified: parking_lot::Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("path", &self.path).field("tokens", &self.tokens.load().entries.len()).finish()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read(path: &Path) -> Result<Tokens, TokensError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read { path: path.into(), source })?;
    Tokens::parse(&text, &|var| std::env::var(var).ok())
        .map_err(|message| TokensError::Invalid { path: path.into(), message })
}

impl Auth {
    /// Reads the token file at `path`.
    pub fn load(path: &Path) -> Result<Auth, TokensError> {
        let stamp = modified(path);
        let tokens = read(path)?;
        Ok(Auth { path: path.into(), tokens: ArcSwap::from_pointee(tokens), modified: parking_lot::Mutex::new(stamp) })
    }

    /// How many tokens are in force.
    pub fn len(&self) -> usize {
        self.tokens.load().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again when it changed since the last reading. `Ok(true)` when new tokens
    /// are in force; an error leaves the old ones.
    pub fn reload_if_changed(&self) -> Result<bool, TokensError> {
        let stamp = modified(&self.path);
        let mut last = self.modified.lock();
        if stamp == *last {
            return Ok(false);
        }
        *last = stamp;
        let tokens = read(&self.path)?;
        self.tokens.store(Arc::new(tokens));
        Ok(true)
    }

    /// The token file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity behind an `Authorization` header value (`Bearer <token>`), or the 401.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, Error> {
        let Some(value) = authorization else {
            return Err(Error::unauthenticated("authentication required: send 'Authorization: Bearer <token>'"));
        };
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(Error::unauthenticated("the Authorization header must be 'Bearer <token>'")),
        };
        self.tokens
            .load()
            .find(&Secret::new(token))
            .cloned()
            .ok_or_else(|| Error::unauthenticated("unknown bearer token"))
    }

    /// Checks a request needing `access`: `Ok(None)` for an open endpoint, `Ok(Some(identity))`
    /// when the token grants it, else 401 (no or unknown token) or 403 (a scope is missing).
    pub fn check(&self, authorization: Option<&str>, access: Access) -> Result<Option<Identity>, Error> {
        if access == Access::Open {
            return Ok(None);
        }
        let identity = self.identify(authorization)?;
        if let Access::Scope(scope) = access {
            identity.require(scope)?;
        }
        Ok(Some(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[token]]
name = "scorer"
token = "s3cr3t-scoring-token"
scopes = ["infer", "features:read"]

[[token]]
name = "ops"
token_env = "OPS_TOKEN"
scopes = ["admin"]
"#;

    fn env(var: &str) -> Option<String> {
        (var == "OPS_TOKEN").then(|| "ops-token-0123456789".to_string())
    }

    fn auth(text: &str) -> Auth {
        let tokens = Tokens::parse(text, &env).unwrap();
        Auth { path: "t.toml".into(), tokens: ArcSwap::from_pointee(tokens), modified: parking_lot::Mutex::new(None) }
    }

    #[test]
    fn tokens_grant_their_scopes_only() {
        let a = auth(FILE);
        let scorer = Some("Bearer s3cr3t-scoring-token");
        let ops = Some("bearer ops-token-0123456789");
        assert_eq!(a.check(scorer, Access::Scope(Scope::Infer)).unwrap().unwrap().name, "scorer");
        assert_eq!(a.check(ops, Access::Scope(Scope::Admin)).unwrap().unwrap().name, "ops");
        let e = a.check(scorer, Access::Scope(Scope::Admin)).unwrap_err();
        assert_eq!((e.http_status(), e.grpc_code()), (403, tonic::Code::PermissionDenied));
        assert!(e.message.contains("'scorer'") && e.message.contains("'admin'"), "{e}");
        assert_eq!(a.check(ops, Access::Scope(Scope::Infer)).unwrap_err().http_status(), 403);
        assert!(a.check(ops, Access::Authenticated).is_ok());
        assert_eq!(a.check(None, Access::Open).unwrap(), None);
        for bad in [None, Some("Bearer nope-nope-nope-nope"), Some("Basic czNjcjN0"), Some("s3cr3t-scoring-token")] {
            let e = a.check(bad, Access::Authenticated).unwrap_err();
            assert_eq!((e.http_status(), e.grpc_code()), (401, tonic::Code::Unauthenticated), "{bad:?}");
            assert!(!e.message.contains("s3cr3t"), "{e}");
        }
        assert!(!format!("{a:?}").contains("s3cr3t"));
    }

    #[test]
    fn bad_token_files_are_refused_with_the_reason() {
        let cases = [
            ("", "no [[token]]"),
            ("[[token]]\nname='a'\ntoken='0123456789abcdef'\nscopes=['root']", "unknown scope \"root\""),
            ("[[token]]\nname='a'\ntoken='short'\nscopes=[]", "at least 16"),
            ("[[token]]\nname='a'\ntoken_env='NOPE'\nscopes=[]", "not set"),
            ("[[token]]\nname='a'\nscopes=[]", "exactly one"),
            ("[[token]]\nname='a'\ntoken='0123456789abcdef'\nscopes=[]\n[[token]]\nname='a'\ntoken='0123456789abcdeg'\nscopes=[]", "name of its own"),
            ("[[token]]\nname='a'\ntoken='0123456789abcdef'\nscopes=[]\n[[token]]\nname='b'\ntoken='0123456789abcdef'\nscopes=[]", "twice"),
            ("[[token]]\nname='a'\ntoken='0123456789abcdef'\nscope=[]", "unknown field"),
            ("[[token]\n", "line 1"),
        ];
        for (text, want) in cases {
            let e = Tokens::parse(text, &env).err().unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains("0123456789abcde"), "{e}");
        }
    }

    #[test]
    fn endpoints_need_the_documented_access() {
        use Access::*;
        let infer = Scope(super::Scope::Infer);
        let admin = Scope(super::Scope::Admin);
        let cases = [
            ("GET", "/v2/health/ready", Open),
            ("GET", "/v2/health/live", Open),
            ("POST", "/v2/models/m/infer", infer),
            ("POST", "/v2/models/m/versions/2/infer", infer),
            ("POST", "/v2/models/m%2Finfer", admin),
            ("POST", "/v2/models/m/infer/x", admin),
            ("GET", "/v2/models/m/config", infer),
            ("GET", "/v2", infer),
            ("POST", "/v2/repository/index", infer),
            ("POST", "/v2/repository/models/m/load", admin),
            ("POST", "/v2/repository/models/m/unload", admin),
            ("POST", "/get-online-features", Scope(super::Scope::FeaturesRead)),
            ("POST", "/push", Scope(super::Scope::FeaturesWrite)),
            ("POST", "/v2/admin/preempt", admin),
            ("PUT", "/v2/fleet/leases/slot", admin),
            ("GET", "/v2/fleet", Authenticated),
            ("GET", "/metrics", Authenticated),
            ("GET", "/dashboard", Open),
            ("GET", "/openapi.json", Open),
            ("GET", "/dashboard/drift", Open),
            ("GET", "/dashboard/assets/app.js", Open),
            ("GET", "/dashboard/api/series", Authenticated),
            ("POST", "/graphql", Authenticated),
            ("DELETE", "/v2/models/m/config", admin),
        ];
        for (method, path, want) in cases {
            assert_eq!(http_access(method, path), want, "{method} {path}");
        }
        assert_eq!(grpc_access("/grpc.health.v1.Health/Check"), Open);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/ServerReady"), Open);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/ModelInfer"), infer);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/RepositoryModelLoad"), admin);
        assert_eq!(grpc_access("/inference.GRPCInferenceService/CudaSharedMemoryRegister"), admin);
        assert_eq!(grpc_access("/feast.serving.ServingService/GetOnlineFeatures"), Scope(super::Scope::FeaturesRead));
        assert_eq!(grpc_access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"), Authenticated);
        assert_eq!(grpc_access("/other.Service/Do"), admin);
    }
}
