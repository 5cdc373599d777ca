//! TLS on the listeners (rustls on ring; no OpenSSL): `--tls-cert`/`--tls-key` serve HTTP, gRPC
//! and the metrics port over TLS (ALPN `h2` and `http/1.1`), and `--tls-client-ca` asks every
//! client for a certificate that CA signed (mutual TLS). The files are read again when they
//! change, so a renewed certificate takes effect without a restart; connections already open
//! keep the one they started with. A file that does not load is refused with its path and the
//! reason, at start (the server does not start) or on reload (the certificate in force stays).

pub use flotilla_core::tls::TlsError;
use flotilla_core::tls::{file_error, load_certs, load_key, load_roots, provider};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Where the certificate, key and client CA come from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut paths = vec![self.cert.as_path(), self.key.as_path()];
        paths.extend(self.client_ca.as_deref());
        paths
    }

    /// Reads the files into a server configuration.
    fn build(&self) -> Result<ServerConfig, TlsError> {
        let certs = load_certs("certificate", &self.cert)?;
        let key = load_key(&self.key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = load_roots("client CA", path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| file_error("client CA", path, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| file_error("certificate and key", &self.cert, e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    files.paths().into_iter().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
}

/// The TLS configuration in force, swapped when the files change.
pub struct Tls {
    files: TlsFiles,
    config: arc_swap::ArcSwap<ServerConfig>,
    stamps: parking_lot::Mutex<Vec<Option<SystemTime>>>,
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Arc<Tls>, TlsError> {
        let stamps = parking_lot::Mutex::new(stamps(&files));
        let config = arc_swap::ArcSwap::from_pointee(files.build()?);
        Ok(Arc::new(Tls { files, config, stamps }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// Reads the files again when one changed. `Ok(true)` when a new configuration is in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamps(&self.files);
        let mut last = self.stamps.lock();
        if now == *last {
            return Ok(false);
        }
        *last = now;
        self.config.store(Arc::new(self.files.build()?));
        Ok(true)
    }

    /// The certificate file.
    pub fn cert(&self) -> &Path {
        &self.files.cert
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection after its TLS handshake.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().0.connect_info()
    }
}

/// Connections of a TLS listener, handshaken concurrently (a slow or hostile client holds up
/// only its own connection) and handed over in order of completion.
pub struct TlsListener {
    ready: mpsc::Receiver<TlsConn>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `tls`'s configuration in force at each accept.
    pub fn new(listener: TcpListener, tls: Arc<Tls>, name: &'static str) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, as axum does.
                            tracing::warn!(listener = name, error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = tx.closed() => return,
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (tls.acceptor(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(TlsConn { stream, peer }).await;
                        }
                        Ok(Err(e)) => tracing::info!(listener = name, %peer, error = %e, "TLS handshake refused"),
                        Err(_) => tracing::info!(listener = name, %peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }

    /// The connections as the stream tonic serves.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<TlsConn>> {
        use futures::StreamExt;
        tokio_stream::wrappers::ReceiverStream::new(self.ready).map(Ok)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => {
                let peer = conn.peer;
                (conn, peer)
            }
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}
