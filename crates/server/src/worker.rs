//! A worker's identity in a fleet: its id, the addresses routers reach it at, its hardware
//! kind, and the defaults that let several workers run in one folder (each its own embedded
//! online store and drift state under `.flotilla/workers/<id>/`; workers that share features
//! use Redis).

use crate::config::{CapacityClassArg, ServeConfig};
use crate::Listeners;
use anyhow::Context;
use flotilla_fleet::agent::AgentSettings;
use flotilla_fleet::record::CapacityClass;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// `<hostname>-<HTTP port>` with only the characters a worker id may hold.
fn default_id(http_port: u16) -> String {
    let host: String =
        hostname().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    format!("{host}-{http_port}")
}

/// The local address on the route to `target` (a URL whose host:port we may reach).
fn local_address_towards(target: &str) -> Option<IpAddr> {
    let rest = target.split_once("://").map(|(_, r)| r).unwrap_or(target);
    let authority = rest.split('/').next()?;
    let remote: SocketAddr = authority.to_socket_addrs().ok()?.next()?;
    let bind = if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

fn url(scheme: &str, host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// What [`prepare`] decides.
pub struct Prepared {
    pub agent: AgentSettings,
    /// The stream consumer identity, when this worker's online store is its own (the whole
    /// stream must reach it; see `StreamSpec::for_consumer`).
    pub consumer: Option<String>,
}

/// Fills in the worker's defaults (id; with --join, its own online store and drift state
/// folder) and returns its agent's settings.
pub fn prepare(config: &mut ServeConfig, listeners: &Listeners) -> anyhow::Result<Prepared> {
    let http = listeners.http.local_addr().context("HTTP listener")?;
    let grpc = listeners.grpc.local_addr().context("gRPC listener")?;
    let f = &config.fleet;
    let id = f.worker_id.clone().unwrap_or_else(|| default_id(http.port()));
    let mut consumer = None;
    if config.joins() {
        let own = PathBuf::from(".flotilla/workers").join(&id);
        if config.online_store.is_none() {
            consumer = Some(id.clone());
            let path = own.join("online.redb");
            config.online_store = Some(format!("embedded:{}", path.display()).parse().map_err(anyhow::Error::msg)?);
        }
        if config.drift_state_dir.is_none() {
            config.drift_state_dir = Some(own.join("drift"));
        }
    }
    let f = &config.fleet;
    let host = match &f.advertise_host {
        Some(h) => h.clone(),
        None if !http.ip().is_unspecified() => http.ip().to_string(),
        None => f
            .join
            .first()
            .and_then(|t| local_address_towards(t))
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "127.0.0.1".into()),
    };
    let allowance = flotilla_fleet::capacity::cpu_allowance();
    let hardware = f.hardware.clone().unwrap_or_else(|| format!("cpu-{}c", allowance.ceil().max(1.0) as u64));
    if f.heartbeat_ms == 0 {
        anyhow::bail!("--heartbeat-ms must be at least 1");
    }
    if !(f.latency_target_ms > 0.0 && f.latency_target_ms.is_finite()) {
        anyhow::bail!("--latency-target-ms must be a positive number of milliseconds");
    }
    for target in &f.join {
        if !["http://", "https://", "nats://"].iter().any(|s| target.starts_with(s)) {
            anyhow::bail!("--join {target:?}: expected a router's HTTP address (http[s]://host:8000) or a NATS registry (nats://host:4222)");
        }
    }
    // A worker that serves TLS is reached over TLS: it advertises https:// addresses.
    let scheme = if config.security.tls_cert.is_some() { "https" } else { "http" };
    let agent = AgentSettings {
        join: f.join.clone(),
        bucket: f.registry_bucket.clone(),
        id,
        http: url(scheme, &host, http.port()),
        grpc: url(scheme, &host, grpc.port()),
        class: match f.capacity_class {
            CapacityClassArg::Guaranteed => CapacityClass::Guaranteed,
            CapacityClassArg::Opportunistic => CapacityClass::Opportunistic,
        },
        hardware,
        heartbeat: Duration::from_millis(f.heartbeat_ms),
        latency_target: Duration::from_secs_f64(f.latency_target_ms / 1000.0),
        features: false,
        drift: false,
        link: Default::default(),
    };
    Ok(Prepared { agent, consumer })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_urls() {
        let id = default_id(8010);
        assert!(id.ends_with("-8010"));
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        assert_eq!(url("http", "10.0.0.1", 1), "http://10.0.0.1:1");
        assert_eq!(url("https", "::1", 2), "https://[::1]:2");
        assert_eq!(local_address_towards("http://127.0.0.1:8000"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(local_address_towards("nats://127.0.0.1:4222/x"), Some("127.0.0.1".parse().unwrap()));
    }
}
