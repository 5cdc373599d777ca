//! Closed-loop HTTP/1.1 load generator for the serving benchmark's overload point
//! (`bench/serving/run.sh`): C keep-alive connections each POST the same body back to back,
//! and every answer's latency is recorded under its status code, so admitted (2xx) and
//! rejected (429) requests get their own percentiles (wrk reports one latency for all).
//!
//! Usage: `bench_load URL BODY_FILE [--connections C] [--seconds S] [--threads T]`; prints JSON.

use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection's answers: status → latencies; plus transport errors.
#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, Vec<Duration>>,
    errors: u64,
}

/// Sends one request and reads one response; returns its status.
async fn exchange(stream: &mut TcpStream, request: &[u8], buf: &mut Vec<u8>) -> anyhow::Result<u16> {
    stream.write_all(request).await?;
    buf.clear();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let status: u16 = head.get(9..12).context("short status line")?.parse()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .map(|(_, v)| v.trim().parse())
        .transpose()?
        .context("response without content-length")?;
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed mid-body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

async fn connection(addr: String, request: Vec<u8>, until: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut buf = Vec::with_capacity(16384);
    while Instant::now() < until {
        let Ok(mut stream) = TcpStream::connect(&addr).await else {
            tally.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < until {
            let t = Instant::now();
            match exchange(&mut stream, &request, &mut buf).await {
                Ok(status) => tally.by_status.entry(status).or_default().push(t.elapsed()),
                Err(_) => {
                    tally.errors += 1;
                    break;
                }
            }
        }
    }
    tally
}

fn main() -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let (mut connections, mut seconds, mut threads) = (8usize, 5.0f64, 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--connections" => connections = value()?.parse()?,
            "--seconds" => seconds = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            _ if a.starts_with('-') => bail!("unknown flag {a}"),
            _ => positional.push(a),
        }
    }
    let [url, body_file] = positional.as_slice() else {
        bail!("usage: bench_load URL BODY_FILE [--connections C] [--seconds S] [--threads T]");
    };
    let rest = url.strip_prefix("http://").context("URL must start with http://")?;
    let (addr, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let body = std::fs::read(body_file).with_context(|| format!("cannot read {body_file}"))?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(seconds);
    let tallies = runtime.block_on(async {
        let tasks: Vec<_> =
            (0..connections).map(|_| tokio::spawn(connection(addr.to_string(), request.clone(), until))).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("connection task panicked"));
        }
        out
    });
    let elapsed = start.elapsed().as_secs_f64();

    let mut by_status: BTreeMap<u16, Vec<Duration>> = BTreeMap::new();
    let mut errors = 0;
    for t in tallies {
        errors += t.errors;
        for (s, mut v) in t.by_status {
            by_status.entry(s).or_default().append(&mut v);
        }
    }
    let mut statuses = serde_json::Map::new();
    for (status, mut v) in by_status {
        v.sort();
        let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;
        statuses.insert(
            status.to_string(),
            serde_json::json!({
                "count": v.len(), "per_s": v.len() as f64 / elapsed,
                "p50_us": pct(0.5), "p99_us": pct(0.99), "max_us": pct(1.0),
            }),
        );
    }
    println!(
        "{}",
        serde_json::json!({ "connections": connections, "seconds": elapsed, "errors": errors, "status": statuses })
    );
    Ok(())
}
