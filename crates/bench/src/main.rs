//! `flotilla-load`: an HTTP/1.1 and gRPC load generator for `bench/` that can offer more than a
//! server can take, which Python clients on the same cores cannot.
//!
//! - closed loop (no `--rate`): each of `--connections` client tasks sends its next request when
//!   the last one is answered; what the server completes per second is its capacity for the mix;
//! - open loop (`--rate R`): a schedule sends R requests a second whatever the answers, each to an
//!   idle client task; a request that finds every task busy is counted `not_sent` (the schedule
//!   never waits, so the offered rate is what the report says it is).
//!
//! With `--honour-retry-after SCALE` a client task that gets 429 with `Retry-After: s` sends
//! nothing for s × SCALE seconds, as a polite client would. Writes one JSON report (`--out`, or
//! stdout): answers by kind and outcome with latency percentiles, a per-second timeline, totals.
//!
//! Modules: `mix` (the request kinds, prepared once), `stats` (recording and the report).

mod mix;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use flotilla_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mix::{Mix, Request};
use stats::Recorder;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(name = "flotilla-load", about = "Open- or closed-loop HTTP/gRPC load with a mix of request kinds")]
struct Cli {
    /// The request mix (JSON; see crates/bench/src/mix.rs).
    #[arg(long)]
    mix: PathBuf,
    /// HTTP address (host:port) for the mix's HTTP kinds.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// gRPC address (host:port) for the mix's gRPC kinds.
    #[arg(long)]
    grpc: Option<SocketAddr>,
    /// Requests per second to offer (open loop); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Client tasks, each with its own HTTP/1.1 connection.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// HTTP/2 connections the gRPC requests share.
    #[arg(long, default_value_t = 4)]
    grpc_channels: usize,
    /// After a 429 with Retry-After: s, a client task waits s × SCALE seconds (0: does not wait).
    #[arg(long, default_value_t = 0.0)]
    honour_retry_after: f64,
    /// Runtime worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed for the draws from the mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the JSON report (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A request due at `due` (open loop) of kind `kind`.
struct Job {
    kind: usize,
    due: Instant,
}

struct Shared {
    mix: Mix,
    http: Option<SocketAddr>,
    start: Instant,
    end: Instant,
    retry_scale: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = cli.threads {
        rt.worker_threads(t.max(1));
    }
    rt.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let mix = Mix::load(&cli.mix)?;
    let (needs_http, needs_grpc) = mix.needs();
    if needs_http && cli.http.is_none() {
        anyhow::bail!("the mix has HTTP kinds: give --http");
    }
    let mut channels = Vec::new();
    if needs_grpc {
        let addr = cli.grpc.context("the mix has gRPC kinds: give --grpc")?;
        for _ in 0..cli.grpc_channels.max(1) {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to gRPC {addr}"))?;
            channels.push(
                GrpcInferenceServiceClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
    }
    let names: Vec<String> = mix.kinds.iter().map(|k| k.name.clone()).collect();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(cli.duration.max(0.0));
    let shared = Arc::new(Shared { mix, http: cli.http, start, end, retry_scale: cli.honour_retry_after.max(0.0) });
    let n = cli.connections.max(1);
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..n {
        let grpc = channels.get(i % channels.len().max(1)).cloned();
        let (tx, rx) = match cli.rate {
            Some(_) => {
                let (tx, rx) = mpsc::channel::<Job>(1);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        senders.extend(tx);
        let seed = cli.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.push(tokio::spawn(client(shared.clone(), grpc, rx, seed)));
    }
    let (mut scheduled, mut not_sent) = (0u64, 0u64);
    if let Some(rate) = cli.rate {
        (scheduled, not_sent) = schedule(&shared, rate, senders, cli.seed).await;
    }
    let mut total = Recorder::default();
    for t in tasks {
        total.merge(t.await?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let answered = total.answered();
    let mut report = total.report(&names);
    report["mode"] = serde_json::json!(if cli.rate.is_some() { "open" } else { "closed" });
    report["offered_rate"] = serde_json::json!(cli.rate);
    report["duration_s"] = serde_json::json!(elapsed);
    report["connections"] = serde_json::json!(n);
    report["scheduled"] = serde_json::json!(scheduled);
    report["not_sent"] = serde_json::json!(not_sent);
    report["answered"] = serde_json::json!(answered);
    report["answered_per_s"] = serde_json::json!(answered as f64 / elapsed.max(1e-9));
    let text = serde_json::to_string_pretty(&report)?;
    match cli.out {
        Some(path) => std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

/// The open-loop schedule: `rate` requests a second, each handed to the next idle client task.
/// Returns (scheduled, not sent because every task was busy).
async fn schedule(shared: &Shared, rate: f64, senders: Vec<mpsc::Sender<Job>>, seed: u64) -> (u64, u64) {
    let mut rng = Rng(seed | 1);
    let (mut scheduled, mut not_sent, mut next) = (0u64, 0u64, 0usize);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= shared.end {
            break;
        }
        let due = ((now - shared.start).as_secs_f64() * rate) as u64;
        while scheduled < due {
            scheduled += 1;
            let at = shared.start + Duration::from_secs_f64(scheduled as f64 / rate);
            let mut job = Job { kind: shared.mix.pick(rng.uniform()), due: at };
            let mut sent = false;
            for _ in 0..senders.len() {
                let tx = &senders[next];
                next = (next + 1) % senders.len();
                match tx.try_send(job) {
                    Ok(()) => {
                        sent = true;
                        break;
                    }
                    Err(mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j)) => job = j,
                }
            }
            not_sent += u64::from(!sent);
        }
    }
    (scheduled, not_sent)
}

/// One client task: its own HTTP/1.1 connection (opened again when the server closes it) and a
/// handle on a shared gRPC channel. Closed loop when `jobs` is `None`.
async fn client(
    shared: Arc<Shared>,
    mut grpc: Option<GrpcInferenceServiceClient<tonic::transport::Channel>>,
    mut jobs: Option<mpsc::Receiver<Job>>,
    seed: u64,
) -> Recorder {
    let mut rec = Recorder::default();
    let mut rng = Rng(seed | 1);
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let (kind, due) = match &mut jobs {
            Some(rx) => match tokio::time::timeout_at(shared.end.into(), rx.recv()).await {
                Ok(Some(job)) => (job.kind, Some(job.due)),
                _ => break,
            },
            None if Instant::now() >= shared.end => break,
            None => (shared.mix.pick(rng.uniform()), None),
        };
        let sent = Instant::now();
        let (outcome, retry_after) = match &shared.mix.kinds[kind].request {
            Request::Http { method, path, body, content_type } => {
                http_call(&mut conn, shared.http, method, path, body, content_type.as_deref()).await
            }
            Request::Grpc(req) => match &mut grpc {
                Some(client) => match client.model_infer(tonic::Request::new((**req).clone())).await {
                    Ok(_) => ("grpc Ok".to_string(), None),
                    Err(status) => (format!("grpc {:?}", status.code()), None),
                },
                None => ("error: no gRPC address".to_string(), None),
            },
        };
        let done = Instant::now();
        let second = (done - shared.start).as_secs() as usize;
        rec.record(kind, outcome, second, done - sent, due.map(|d| sent.saturating_duration_since(d)));
        if let Some(secs) = retry_after {
            rec.shed_with_retry_after += 1;
            if shared.retry_scale > 0.0 {
                let wait = Duration::from_secs_f64((secs * shared.retry_scale).min(60.0));
                tokio::time::sleep_until((Instant::now() + wait).min(shared.end).into()).await;
            }
        }
    }
    rec
}

/// One HTTP/1.1 exchange on `conn`, (re)connecting first when needed. Returns the status (or an
/// `error: …` outcome) and, for a 429, its Retry-After in seconds.
async fn http_call(
    conn: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    addr: Option<SocketAddr>,
    method: &hyper::Method,
    path: &str,
    body: &Bytes,
    content_type: Option<&str>,
) -> (String, Option<f64>) {
    let Some(addr) = addr else { return ("error: no HTTP address".to_string(), None) };
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        match connect(addr).await {
            Ok(c) => *conn = Some(c),
            Err(e) => return (format!("error: connect ({e})"), None),
        }
    }
    let Some(sender) = conn.as_mut() else { return ("error: no connection".to_string(), None) };
    let mut req = hyper::Request::builder().method(method.clone()).uri(path).header("host", addr.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let Ok(req) = req.body(Full::new(body.clone())) else { return ("error: bad request line".to_string(), None) };
    let answer = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let closing = resp.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.trim().parse::<f64>().ok());
        resp.into_body().collect().await?;
        Ok::<_, hyper::Error>((status, closing, retry))
    };
    match answer.await {
        Ok((status, closing, retry)) => {
            if closing {
                *conn = None;
            }
            (status.to_string(), retry.filter(|_| status == 429))
        }
        Err(e) => {
            *conn = None;
            let why = if e.is_closed() || e.is_incomplete_message() { "connection closed" } else { "io" };
            (format!("error: {why}"), None)
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// xorshift64*: the mix's draws, reproducible from `--seed`, no dependency.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}
