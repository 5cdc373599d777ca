//! A small PostgreSQL frontend: start-up and authentication (trust, password, MD5, SCRAM-SHA-256),
//! the simple query protocol with rows read one at a time, and the copy-both sub-protocol of a
//! replication connection. Enough for logical replication and an exported-snapshot copy; values
//! travel in text form. TLS as libpq negotiates it (`SSLRequest`, then rustls), with libpq's
//! `sslmode` meanings: see [`SslMode`].

use bytes::{Buf, Bytes, BytesMut};
use flotilla_core::secret::Secret;
use flotilla_core::tls::{ClientTls, Verify};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest a connection attempt (TCP connect and start-up) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the socket per read, at least (a backlog is read in large pieces).
const READ_CHUNK: usize = 256 * 1024;
/// Largest message accepted from the server (a row or a change), against a corrupt length.
const MAX_MESSAGE: usize = 1 << 30;

/// Where and as whom to connect, read from a `postgresql://user:password@host:port/dbname` URL.
/// The password is a [`Secret`]: `Debug` shows `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub ssl: SslMode,
    /// `sslrootcert`: the CA bundle that signed the server's certificate; `None` with
    /// `sslrootcert=system` (the system's trust store) or when none was given.
    pub ssl_root_cert: Option<std::path::PathBuf>,
    /// `sslrootcert=system`.
    pub ssl_system_roots: bool,
    /// `sslcert` and `sslkey`: a client certificate, for servers with `clientcert` in pg_hba.conf.
    pub ssl_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// libpq's `sslmode`, with libpq's meanings (the default is `prefer`). TLS is asked for over
/// TCP only; over a Unix socket `require` and the `verify-*` modes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// Plain TCP (libpq would try TLS only after a plain connection is refused).
    Allow,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked.
    Prefer,
    /// TLS or no connection; the certificate is checked only against a given `sslrootcert`.
    Require,
    /// TLS, the certificate's chain checked against `sslrootcert`.
    VerifyCa,
    /// TLS, the chain and the host name checked.
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

impl std::str::FromStr for SslMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!("sslmode={other}: give disable, allow, prefer, require, verify-ca or verify-full"))
            }
        })
    }
}

impl ConnInfo {
    /// Reads a libpq-style URL. A host starting with `/` (or `?host=/path`) is a Unix socket
    /// folder. Without a password in the URL, `PGPASSWORD` is used when set; `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT` and `PGSSLKEY` stand in for the URL's TLS parameters.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("postgresql://").or_else(|| url.strip_prefix("postgres://")).ok_or_else(|| {
            "a PostgreSQL URL starts with postgresql:// (postgresql://user@host:5432/dbname)".to_string()
        })?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, dbname) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (decode(u)?, Some(decode(p)?)),
                None => (decode(u)?, None),
            },
            None => (String::new(), None),
        };
        let (mut host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || p.parse::<u16>().is_ok() => {
                (h.to_string(), p.parse::<u16>().map_err(|_| format!("port '{p}' is not a number"))?)
            }
            _ => (hostport.to_string(), 5432),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let (mut sslmode, mut root, mut cert, mut key) =
            (env("PGSSLMODE"), env("PGSSLROOTCERT"), env("PGSSLCERT"), env("PGSSLKEY"));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "host" => host = decode(v)?,
                "sslmode" => sslmode = Some(decode(v)?),
                "sslrootcert" => root = Some(decode(v)?),
                "sslcert" => cert = Some(decode(v)?),
                "sslkey" => key = Some(decode(v)?),
                "application_name" | "connect_timeout" => {}
                other => return Err(format!("unknown PostgreSQL URL parameter '{other}'")),
            }
        }
        let ssl: SslMode = sslmode.as_deref().unwrap_or("prefer").parse()?;
        let ssl_system_roots = root.as_deref() == Some("system");
        let ssl_root_cert = root.filter(|r| r != "system").map(std::path::PathBuf::from);
        let ssl_identity = match (cert, key) {
            (Some(c), Some(k)) => Some((c.into(), k.into())),
            (None, None) => None,
            _ => return Err("give sslcert and sslkey together (a client certificate and its key)".into()),
        };
        if ssl_system_roots && ssl != SslMode::VerifyFull {
            return Err("sslrootcert=system needs sslmode=verify-full (as libpq)".into());
        }
        let host = if host.is_empty() { "127.0.0.1".to_string() } else { decode(&host)? };
        let user = if user.is_empty() { std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()) } else { user };
        let password = password.or_else(|| std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty())).map(Secret::new);
        let dbname = if dbname.is_empty() { user.clone() } else { decode(dbname)? };
        Ok(Self { host, port, user, password, dbname, ssl, ssl_root_cert, ssl_system_roots, ssl_identity })
    }

    /// The TLS client settings for this connection; `None` when TLS is not asked for.
    fn tls(&self) -> Result<Option<ClientTls>, PgError> {
        let given = self.ssl_root_cert.clone();
        let default_root = || {
            let home = std::env::var_os("HOME").map(std::path::PathBuf::from).unwrap_or_default();
            home.join(".postgresql/root.crt")
        };
        let (verify, roots) = match self.ssl {
            SslMode::Disable | SslMode::Allow => return Ok(None),
            SslMode::Prefer => (Verify::Nothing, None),
            SslMode::Require if given.is_some() => (Verify::ChainOnly, given),
            SslMode::Require => (Verify::Nothing, None),
            SslMode::VerifyCa => (Verify::ChainOnly, Some(given.unwrap_or_else(default_root))),
            SslMode::VerifyFull if self.ssl_system_roots => (Verify::Full, None),
            SslMode::VerifyFull => (Verify::Full, Some(given.unwrap_or_else(default_root))),
        };
        if let Some(path) = roots.as_ref().filter(|p| !p.exists()) {
            return Err(tls_error(format!(
                "sslmode={} checks the server's certificate against {}, which does not exist: give \
                 sslrootcert=PATH (or sslrootcert=system with verify-full)",
                self.ssl,
                path.display()
            )));
        }
        Ok(Some(ClientTls { roots, identity: self.ssl_identity.clone(), verify }))
    }

    /// The URL without its password (for logs, labels and what is stored).
    pub fn redacted(&self) -> String {
        format!("postgresql://{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

fn decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(|| format!("bad %-escape in '{s}'"))?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad %-escape in '{s}'"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("'{s}' is not UTF-8 once decoded"))
}

/// An error the server sent, a broken connection, or a TLS set-up that cannot work.
#[derive(Debug, Clone)]
pub struct PgError {
    /// SQLSTATE (`""` for connection errors, [`TLS`] for TLS set-up and certificate errors).
    pub code: String,
    pub message: String,
}

/// The code of a TLS error: a CA file that is missing, a server without TLS when TLS is
/// required, a certificate that does not verify. Retrying will not mend it.
pub const TLS: &str = "TLS";

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.code.is_empty() || self.code == TLS {
            f.write_str(&self.message)
        } else {
            write!(f, "{} (SQLSTATE {})", self.message, self.code)
        }
    }
}

impl From<PgError> for String {
    fn from(e: PgError) -> String {
        e.to_string()
    }
}

/// A refused login (SQLSTATE class 28: a wrong password or user) or a TLS set-up that cannot
/// work will not mend by retrying; a broken connection or any other server error may.
impl From<PgError> for crate::streams::ConsumerError {
    fn from(e: PgError) -> Self {
        if e.code.starts_with("28") || e.code == TLS {
            Self::Stop(e.to_string())
        } else {
            Self::Retry(e.to_string())
        }
    }
}

fn io(e: impl std::fmt::Display) -> PgError {
    PgError { code: String::new(), message: format!("PostgreSQL connection: {e}") }
}

fn tls_error(e: impl std::fmt::Display) -> PgError {
    PgError { code: TLS.into(), message: format!("PostgreSQL TLS: {e}") }
}

fn protocol(what: impl std::fmt::Display) -> PgError {
    PgError { code: String::new(), message: format!("PostgreSQL protocol: {what}") }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One connection, normal or replication (`replication=database`).
pub struct Conn {
    stream: Box<dyn Stream>,
    read: BytesMut,
    write: BytesMut,
}

/// A query's result columns: name and type OID.
pub type Columns = Vec<(String, u32)>;

// === impl Conn ===

impl Conn {
    pub async fn connect(info: &ConnInfo, replication: bool) -> Result<Self, PgError> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::start(info, replication))
            .await
            .map_err(|_| io(format!("no answer from {}:{} within {CONNECT_TIMEOUT:?}", info.host, info.port)))?
    }

    async fn start(info: &ConnInfo, replication: bool) -> Result<Self, PgError> {
        let where_ = format!("{}:{}", info.host, info.port);
        let stream: Box<dyn Stream> = if info.host.starts_with('/') {
            if matches!(info.ssl, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) {
                return Err(tls_error(format!(
                    "sslmode={} over the Unix socket {}: TLS is spoken over TCP only; give a host name",
                    info.ssl, info.host
                )));
            }
            let path = format!("{}/.s.PGSQL.{}", info.host, info.port);
            Box::new(
                tokio::net::UnixStream::connect(&path)
                    .await
                    .map_err(|e| io(format!("cannot connect to {path}: {e}")))?,
            )
        } else {
            let s = tokio::net::TcpStream::connect(&where_)
                .await
                .map_err(|e| io(format!("cannot connect to {where_}: {e}")))?;
            let _ = s.set_nodelay(true);
            match info.tls()? {
                Some(tls) => Self::negotiate_tls(s, info, &tls).await?,
                None => Box::new(s),
            }
        };
        let mut conn = Self { stream, read: BytesMut::with_capacity(64 * 1024), write: BytesMut::with_capacity(1024) };
        // Text output in fixed forms, whatever the server's defaults: ISO dates in UTC, hex bytea,
        // floats that round-trip.
        let mut params = vec![
            ("user", info.user.as_str()),
            ("database", info.dbname.as_str()),
            ("application_name", "flotilla"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
            ("TimeZone", "UTC"),
            ("bytea_output", "hex"),
            ("extra_float_digits", "3"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params, &mut conn.write).map_err(io)?;
        conn.flush().await?;
        conn.authenticate(info).await?;
        loop {
            let (tag, _) = conn.message().await?;
            match tag {
                b'Z' => return Ok(conn),
                b'S' | b'K' | b'N' => {}
                other => return Err(protocol(format!("unexpected message '{}' after authentication", other as char))),
            }
        }
    }

    /// Asks the server for TLS (`SSLRequest`) and runs the handshake when it agrees; under
    /// `sslmode=prefer` a server without TLS is spoken to in plain.
    async fn negotiate_tls(
        mut s: tokio::net::TcpStream,
        info: &ConnInfo,
        tls: &ClientTls,
    ) -> Result<Box<dyn Stream>, PgError> {
        // The configuration is read before anything is sent: a missing CA file is not a server's fault.
        let config = tls.config(&[b"postgresql"]).map_err(tls_error)?;
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        s.write_all(&request).await.map_err(io)?;
        // Exactly one byte: anything the server sent after it belongs to the handshake.
        let answer = s.read_u8().await.map_err(io)?;
        match answer {
            b'S' => {}
            b'N' if info.ssl == SslMode::Prefer => return Ok(Box::new(s)),
            b'N' => {
                return Err(tls_error(format!(
                    "{}:{} does not accept TLS (ssl = off in postgresql.conf), and sslmode={} requires it",
                    info.host, info.port, info.ssl
                )))
            }
            other => return Err(protocol(format!("answer {other:#x} to SSLRequest"))),
        }
        let name = flotilla_core::tls::server_name(&info.host).map_err(tls_error)?;
        let stream =
            tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, s).await.map_err(|e| {
                tls_error(format!("handshake with {}:{} (sslmode={}): {e}", info.host, info.port, info.ssl))
            })?;
        Ok(Box::new(stream))
    }

    async fn authenticate(&mut self, info: &ConnInfo) -> Result<(), PgError> {
        let need_password = || PgError {
            code: "28P01".into(),
            message: format!("PostgreSQL asks a password for user '{}': put it in the URL or in PGPASSWORD", info.user),
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.message().await?;
            if tag != b'R' {
                return Err(protocol(format!("expected authentication, got '{}'", tag as char)));
            }
            let kind = take_i32(&mut body)?;
            match kind {
                0 => return Ok(()),
                3 => {
                    let password = info.password.as_ref().map(Secret::expose).ok_or_else(need_password)?;
                    frontend::password_message(password.as_bytes(), &mut self.write).map_err(io)?;
                }
                5 => {
                    let password = info.password.as_ref().map(Secret::expose).ok_or_else(need_password)?;
                    let salt: [u8; 4] =
                        body.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| protocol("short MD5 salt"))?;
                    let hash =
                        postgres_protocol::authentication::md5_hash(info.user.as_bytes(), password.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), &mut self.write).map_err(io)?;
                }
                10 => {
                    let password = info.password.as_ref().map(Secret::expose).ok_or_else(need_password)?;
                    let offers = String::from_utf8_lossy(&body).to_string();
                    if !offers.split('\0').any(|m| m == SCRAM_SHA_256) {
                        return Err(protocol(format!("no supported SASL mechanism in {offers:?}")));
                    }
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.write).map_err(io)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| protocol("SASL continue without a start"))?;
                    s.update(&body).map_err(|e| protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write).map_err(io)?;
                }
                12 => {
                    let s = scram.as_mut().ok_or_else(|| protocol("SASL final without a start"))?;
                    s.finish(&body).map_err(|e| protocol(format!("SCRAM: {e}")))?;
                    continue;
                }
                other => return Err(protocol(format!("authentication method {other} is not supported"))),
            }
            self.flush().await?;
        }
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        self.stream.write_all(&self.write).await.map_err(io)?;
        self.write.clear();
        self.stream.flush().await.map_err(io)
    }

    /// Whether a whole message is already buffered (reading it will not wait on the network).
    pub fn has_message(&self) -> bool {
        self.read.len() >= 5 && self.read.len() > be_len(&self.read[1..5])
    }

    /// The next message: its tag and body. An `E` message becomes an error.
    async fn message(&mut self) -> Result<(u8, Bytes), PgError> {
        loop {
            if self.read.len() >= 5 {
                let len = be_len(&self.read[1..5]);
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(protocol(format!("message length {len}")));
                }
                if self.read.len() > len {
                    let tag = self.read[0];
                    let mut msg = self.read.split_to(1 + len).freeze();
                    msg.advance(5);
                    if tag == b'E' {
                        return Err(server_error(&msg));
                    }
                    return Ok((tag, msg));
                }
                self.read.reserve((1 + len - self.read.len()).max(READ_CHUNK));
            } else {
                self.read.reserve(READ_CHUNK);
            }
            if self.stream.read_buf(&mut self.read).await.map_err(io)? == 0 {
                return Err(io("the server closed the connection"));
            }
        }
    }

    /// Runs statements with the simple query protocol and returns every row of their results.
    pub async fn query(&mut self, sql: &str) -> Result<(Columns, Vec<Vec<Option<String>>>), PgError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = Vec::new();
        while let Some(step) = self.next_row().await? {
            match step {
                Step::Columns(c) => columns = c,
                Step::Row(r) => rows.push(r),
            }
        }
        Ok((columns, rows))
    }

    /// Sends a simple query; read its results with [`Conn::next_row`] until `None`.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        frontend::query(sql, &mut self.write).map_err(io)?;
        self.flush().await
    }

    /// The next column list or row of the running query; `None` once it is done. After an
    /// error the connection is drained to the next ReadyForQuery, so it stays usable.
    pub async fn next_row(&mut self) -> Result<Option<Step>, PgError> {
        loop {
            let (tag, body) = match self.message().await {
                Ok(m) => m,
                Err(e) if !e.code.is_empty() => {
                    self.until_ready().await?;
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            match tag {
                b'T' => return Ok(Some(Step::Columns(row_description(body)?))),
                b'D' => return Ok(Some(Step::Row(data_row(body)?))),
                b'Z' => return Ok(None),
                b'C' | b'I' | b'N' | b'S' => {}
                other => return Err(protocol(format!("unexpected message '{}' in a query", other as char))),
            }
        }
    }

    async fn until_ready(&mut self) -> Result<(), PgError> {
        loop {
            match self.message().await {
                Ok((b'Z', _)) => return Ok(()),
                Ok(_) => {}
                Err(e) if !e.code.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `START_REPLICATION ...` and waits for the copy-both response.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), PgError> {
        self.send_query(command).await?;
        loop {
            let (tag, _) = self.message().await?;
            match tag {
                b'W' => return Ok(()),
                b'N' | b'S' => {}
                other => {
                    return Err(protocol(format!("expected copy-both for START_REPLICATION, got '{}'", other as char)))
                }
            }
        }
    }

    /// The next CopyData payload of a replication stream; `None` when the server ends the copy.
    pub async fn copy_data(&mut self) -> Result<Option<Bytes>, PgError> {
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'd' => return Ok(Some(body)),
                b'c' => return Ok(None),
                b'N' | b'S' => {}
                other => {
                    return Err(protocol(format!("unexpected message '{}' in the replication stream", other as char)))
                }
            }
        }
    }

    /// Sends one CopyData message (a standby status update).
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        frontend::CopyData::new(payload).map_err(io)?.write(&mut self.write);
        self.flush().await
    }

    /// Says goodbye (best effort).
    pub async fn close(mut self) {
        frontend::terminate(&mut self.write);
        let _ = self.flush().await;
    }
}

/// One step of a query's results.
pub enum Step {
    Columns(Columns),
    Row(Vec<Option<String>>),
}

fn be_len(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn take_i32(b: &mut Bytes) -> Result<i32, PgError> {
    if b.len() < 4 {
        return Err(protocol("short message"));
    }
    Ok(b.get_i32())
}

fn take_i16(b: &mut Bytes) -> Result<i16, PgError> {
    if b.len() < 2 {
        return Err(protocol("short message"));
    }
    Ok(b.get_i16())
}

fn take_cstr(b: &mut Bytes) -> Result<String, PgError> {
    let end = b.iter().position(|c| *c == 0).ok_or_else(|| protocol("unterminated string"))?;
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    b.advance(end + 1);
    Ok(s)
}

fn row_description(mut body: Bytes) -> Result<Columns, PgError> {
    let n = take_i16(&mut body)?.max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = take_cstr(&mut body)?;
        if body.len() < 18 {
            return Err(protocol("short row description"));
        }
        body.advance(6); // table OID, column number
        let type_oid = body.get_u32();
        body.advance(8); // type size, modifier, format
        out.push((name, type_oid));
    }
    Ok(out)
}

fn data_row(mut body: Bytes) -> Result<Vec<Option<String>>, PgError> {
    let n = take_i16(&mut body)?.max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = take_i32(&mut body)?;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(protocol("short data row"));
        }
        let v = body.split_to(len);
        out.push(Some(String::from_utf8(v.to_vec()).map_err(|_| protocol("a value is not UTF-8"))?));
    }
    Ok(out)
}

fn server_error(body: &[u8]) -> PgError {
    let (mut code, mut message, mut detail, mut hint) = (String::new(), String::new(), String::new(), String::new());
    for field in body.split(|c| *c == 0).filter(|f| !f.is_empty()) {
        let text = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'C' => code = text,
            b'M' => message = text,
            b'D' => detail = text,
            b'H' => hint = text,
            _ => {}
        }
    }
    for extra in [detail, hint].into_iter().filter(|s| !s.is_empty()) {
        message = format!("{message}; {extra}");
    }
    PgError { code: if code.is_empty() { "XX000".into() } else { code }, message }
}

/// A string as an SQL literal (`'it''s'`).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A name as an SQL identifier (`"My Table"`).
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_escapes_and_sockets() {
        let c = ConnInfo::parse("postgresql://app:p%40ss@db.local:6543/features").unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_ref().map(Secret::expose), c.host.as_str(), c.port),
            ("app", Some("p@ss"), "db.local", 6543)
        );
        assert_eq!(c.dbname, "features");
        assert_eq!(c.redacted(), "postgresql://app@db.local:6543/features");
        assert!(!format!("{c:?}").contains("p@ss"), "{c:?}");
        let s = ConnInfo::parse("postgres://postgres@/test?host=%2Fvar%2Frun%2Fpostgresql").unwrap();
        assert_eq!((s.host.as_str(), s.port), ("/var/run/postgresql", 5432));
        assert!(ConnInfo::parse("mysql://x").unwrap_err().contains("postgresql://"));
        assert!(ConnInfo::parse("postgresql://u@h:port/db").unwrap_err().contains("port"));
        assert!(ConnInfo::parse("postgresql://u@h/db?bogus=1").unwrap_err().contains("bogus"));
    }

    #[test]
    fn sslmode_reads_as_libpq() {
        let c = ConnInfo::parse("postgresql://u@h/db").unwrap();
        assert_eq!(c.ssl, SslMode::Prefer, "libpq's default");
        let c = ConnInfo::parse("postgresql://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem").unwrap();
        assert_eq!(
            (c.ssl, c.ssl_root_cert.as_deref()),
            (SslMode::VerifyFull, Some(std::path::Path::new("/tmp/ca.pem")))
        );
        let c = ConnInfo::parse("postgresql://u@h/db?sslmode=verify-full&sslrootcert=system").unwrap();
        assert!(c.ssl_system_roots && c.ssl_root_cert.is_none());
        let err = |url: &str| ConnInfo::parse(url).unwrap_err();
        assert!(err("postgresql://u@h/db?sslmode=on").contains("verify-full"));
        assert!(err("postgresql://u@h/db?sslmode=require&sslcert=c.pem").contains("together"));
        assert!(err("postgresql://u@h/db?sslmode=require&sslrootcert=system").contains("verify-full"));
        // What each mode checks.
        let tls = |url: &str| ConnInfo::parse(url).unwrap().tls();
        assert!(tls("postgresql://u@h/db?sslmode=disable").unwrap().is_none());
        assert_eq!(tls("postgresql://u@h/db?sslmode=require").unwrap().unwrap().verify, Verify::Nothing);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let with_ca = |mode: &str| format!("postgresql://u@h/db?sslmode={mode}&sslrootcert={}", ca.display());
        assert_eq!(tls(&with_ca("require")).unwrap().unwrap().verify, Verify::ChainOnly, "as libpq, with a root file");
        assert_eq!(tls(&with_ca("verify-ca")).unwrap().unwrap().verify, Verify::ChainOnly);
        assert_eq!(tls(&with_ca("verify-full")).unwrap().unwrap().verify, Verify::Full);
        let missing = tls("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert_eq!(missing.code, TLS);
        assert!(missing.message.contains("/nonexistent/ca.pem"), "{missing}");
    }

    #[test]
    fn server_errors_keep_code_detail_and_hint() {
        let body = b"SERROR\0C42P01\0Mrelation \"x\" does not exist\0Hcreate it\0\0";
        let e = server_error(body);
        assert_eq!(e.code, "42P01");
        assert_eq!(e.to_string(), "relation \"x\" does not exist; create it (SQLSTATE 42P01)");
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        assert!(data_row(Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'a'])).is_err());
        assert!(row_description(Bytes::from_static(&[0, 1, b'a', 0, 1])).is_err());
        assert_eq!(
            data_row(Bytes::from_static(&[0, 2, 255, 255, 255, 255, 0, 0, 0, 1, b'x'])).unwrap(),
            vec![None, Some("x".into())]
        );
    }
}
