//! HTTPS to the proxy: the origin a command talks to, TLS with the system roots (or a given
//! CA), and the two kinds of exchange the CLI makes — a small request whose answer is read
//! whole (login, token refresh), and an HTTP/1.1 upgrade that becomes a byte stream (tunnel).
//!
//! `localhost` and the names under it are loopback (RFC 6761 §6.3), as browsers have them,
//! without asking the system's resolver. A connection that fails says why in words: a name
//! that does not resolve, addresses that refuse, a port that speaks plain HTTP, a certificate
//! that is not trusted (and, when the local demo's development CA signed it, where that CA is).

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::secret::printable;

/// How long dialing the proxy (name lookup, TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a small request may take, start to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer a small request reads.
const MAX_BODY: usize = 1024 * 1024;
/// How many of the server's first bytes are kept, to tell what answered a TLS handshake.
const FIRST_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{0}` is not a host name, `host:port` or an https:// URL")]
    BadOrigin(String),
    #[error("cannot read the CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CA file {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("the name {host} does not resolve to an address")]
    NoSuchHost {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("nothing accepts connections at {} (connection refused): is the proxy running, on this port?", either(.addrs))]
    Refused { addrs: Vec<SocketAddr> },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Certificate(Box<CertificateRefusal>),
    #[error("port {port} speaks plain HTTP, not HTTPS")]
    PlainHttp { port: u16 },
    #[error("port {port} does not speak TLS (it answered \"{answer}\")")]
    NotTls { port: u16, answer: String },
    #[error("the TLS handshake with {origin} failed: {reason}")]
    Tls { origin: String, reason: String },
    #[error("{origin} did not answer in time")]
    Timeout { origin: String },
    #[error("the exchange with {origin} failed")]
    Http {
        origin: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{origin} sent an answer larger than {MAX_BODY} bytes")]
    TooLarge { origin: String },
}

impl NetError {
    /// What the person can do about it, when there is something to say beyond the message.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Certificate(refusal) => refusal.hint(),
            Self::PlainHttp { .. } | Self::NotTls { .. } => Some(
                "the proxy is reached over HTTPS: name its HTTPS port (the local demo's is 8443)"
                    .to_owned(),
            ),
            Self::NoSuchHost { .. } => Some(
                "check the name; for a proxy that DNS does not know yet, give its address with \
                 --connect-to ADDR (or SEKISHO_CONNECT_TO=ADDR)"
                    .to_owned(),
            ),
            _ => None,
        }
    }
}

/// `a`, `a or b`, `a, b or c`.
fn either(addrs: &[SocketAddr]) -> String {
    let words: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    match words.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A certificate the CLI did not accept, in words.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct CertificateRefusal {
    /// The name the certificate was checked for.
    pub name: String,
    pub problem: CertificateProblem,
    /// What was trusted.
    pub trust: Trust,
    /// Whether the proxy was dialed on a loopback address (a proxy on this machine).
    pub local: bool,
    /// The local demo's development CA, when it is on this machine and signed the certificate.
    pub dev_ca: Option<PathBuf>,
}

/// What was wrong with a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// No trusted CA signed it.
    UnknownIssuer,
    /// It does not name the host; it names these.
    WrongName(Vec<String>),
    Expired,
    NotYetValid,
    Revoked,
    /// Anything else, in words.
    Other(&'static str),
}

impl CertificateProblem {
    fn from_rustls(error: &rustls::CertificateError) -> Self {
        use rustls::CertificateError as E;
        match error {
            E::UnknownIssuer => Self::UnknownIssuer,
            E::NotValidForName => Self::WrongName(Vec::new()),
            E::NotValidForNameContext { presented, .. } => Self::WrongName(
                presented
                    .iter()
                    .map(|name| printable(name, 255))
                    .take(20)
                    .collect(),
            ),
            E::Expired | E::ExpiredContext { .. } => Self::Expired,
            E::NotValidYet | E::NotValidYetContext { .. } => Self::NotYetValid,
            E::Revoked => Self::Revoked,
            E::BadSignature => Self::Other("its signature does not check out"),
            E::BadEncoding => Self::Other("it is malformed"),
            E::InvalidPurpose | E::InvalidPurposeContext { .. } => {
                Self::Other("it is not a certificate for a server")
            }
            _ => Self::Other("it cannot be used"),
        }
    }
}

impl CertificateRefusal {
    fn describe(&self) -> String {
        let name = &self.name;
        match &self.problem {
            CertificateProblem::UnknownIssuer => match (&self.dev_ca, &self.trust) {
                (Some(dev_ca), _) => format!(
                    "the certificate of {name} is signed by the local demo's development CA \
                     ({}), which sekisho was not told to trust",
                    dev_ca.display()
                ),
                (None, Trust::System) => format!(
                    "the certificate of {name} is not signed by a certificate authority this \
                     machine trusts"
                ),
                (None, Trust::Only(file)) => format!(
                    "the certificate of {name} is not signed by a CA in {}",
                    file.display()
                ),
                (None, Trust::AlsoFile(file)) => format!(
                    "the certificate of {name} is signed neither by a certificate authority this \
                     machine trusts nor by a CA in {} (remembered from the login)",
                    file.display()
                ),
            },
            CertificateProblem::WrongName(names) if names.is_empty() => {
                format!("the certificate presented for {name} is for other names")
            }
            CertificateProblem::WrongName(names) => format!(
                "the certificate presented for {name} does not name it (it names {})",
                names.join(", ")
            ),
            CertificateProblem::Expired => format!("the certificate of {name} has expired"),
            CertificateProblem::NotYetValid => format!(
                "the certificate of {name} is not valid yet (is this machine's clock right?)"
            ),
            CertificateProblem::Revoked => {
                format!("the certificate of {name} has been revoked")
            }
            CertificateProblem::Other(what) => {
                format!("the certificate of {name} is not accepted: {what}")
            }
        }
    }

    fn hint(&self) -> Option<String> {
        if self.problem != CertificateProblem::UnknownIssuer {
            return None;
        }
        if let Some(dev_ca) = &self.dev_ca {
            let file = dev_ca.display();
            return Some(format!(
                "to trust it, add --ca {file} (or set SEKISHO_CA_FILE={file})"
            ));
        }
        let mut hint = "if you trust this proxy, give its CA certificate with --ca FILE (or \
                        SEKISHO_CA_FILE=FILE)"
            .to_owned();
        if self.local {
            hint.push_str(
                "; a proxy started by scripts/run-local.sh keeps its development CA in \
                 $SEKISHO_DEV_CA_DIR/ca.pem, else ~/.local/state/sekisho/dev-ca/ca.pem",
            );
        }
        Some(hint)
    }
}

/// Which certificates a [`Net`] trusts for the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's roots.
    System,
    /// Only the certificates in this file (`--ca`).
    Only(PathBuf),
    /// The system's roots and the certificates in this file (remembered from a login).
    AlsoFile(PathBuf),
}

impl Trust {
    /// The CA file, if one is trusted.
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            Self::System => None,
            Self::Only(file) | Self::AlsoFile(file) => Some(file),
        }
    }
}

/// An HTTPS origin: the host (for DNS, SNI and `Host`) and the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Origin {
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Reads `host`, `host:port` or `https://host[:port][/...]`; the port defaults to 443.
    pub fn parse(text: &str) -> Result<Self, NetError> {
        let bad = || NetError::BadOrigin(text.to_owned());
        let url = if text.contains("://") {
            url::Url::parse(text).map_err(|_| bad())?
        } else {
            url::Url::parse(&format!("https://{text}")).map_err(|_| bad())?
        };
        if url.scheme() != "https" || !url.username().is_empty() || url.password().is_some() {
            return Err(bad());
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(bad()),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(443),
        })
    }

    /// `https://host` or `https://host:port`.
    pub fn url(&self) -> String {
        format!("https://{}", self.authority())
    }

    /// `host` or `host:port`, as in `Host` (443 is left out).
    pub fn authority(&self) -> String {
        if self.port == 443 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The host without the brackets of an IPv6 literal.
    fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    fn server_name(&self) -> Result<ServerName<'static>, NetError> {
        ServerName::try_from(self.bare_host().to_owned())
            .map_err(|_| NetError::BadOrigin(self.host.clone()))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

/// Whether `host` is `localhost` or a name under it, which are loopback (RFC 6761 §6.3).
pub fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// The addresses to dial for `host` (a name, or an IP literal, IPv6 in brackets or not) and
/// `port`, in the order to try them: loopback for `localhost` and the names under it (IPv4
/// first) without asking the resolver; the system resolver's answer for other names.
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, NetError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if is_localhost(bare) {
        return Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]);
    }
    let no_such_host = |source| NetError::NoSuchHost {
        host: bare.to_owned(),
        source,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(no_such_host)?
        .collect();
    if addrs.is_empty() {
        return Err(no_such_host(io::Error::other(
            "the resolver gave no address",
        )));
    }
    Ok(addrs)
}

/// A TCP connection to the first of `addrs` that accepts one. When none does and some
/// refused, the error names those that refused.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, NetError> {
    let mut refused = Vec::new();
    let mut failed = None;
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => refused.push(addr),
            Err(source) => {
                failed.get_or_insert(NetError::Connect { addr, source });
            }
        }
    }
    match failed {
        Some(error) if refused.is_empty() => Err(error),
        _ => Err(NetError::Refused { addrs: refused }),
    }
}

/// The TCP connection under TLS. It keeps the first bytes the server sent: when a handshake
/// fails, they tell what answered instead of TLS.
#[derive(Debug)]
pub struct Socket {
    tcp: TcpStream,
    first: [u8; FIRST_BYTES],
    seen: usize,
}

impl Socket {
    fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            first: [0; FIRST_BYTES],
            seen: 0,
        }
    }

    /// The first bytes received (up to [`FIRST_BYTES`]).
    fn first(&self) -> &[u8] {
        &self.first[..self.seen]
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if this.seen < FIRST_BYTES {
            let new = &buf.filled()[before..];
            let n = new.len().min(FIRST_BYTES - this.seen);
            this.first[this.seen..this.seen + n].copy_from_slice(&new[..n]);
            this.seen += n;
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A TLS connection to a proxy.
pub type Stream = TlsStream<Socket>;

/// What answered a TLS handshake that failed, judged by its first bytes: `None` when they
/// could be TLS (or nothing came).
fn not_tls(port: u16, first: &[u8]) -> Option<NetError> {
    match first.first() {
        _ if first.starts_with(b"HTTP/") => Some(NetError::PlainHttp { port }),
        // change_cipher_spec, alert, handshake, application_data, heartbeat.
        None | Some(0x14..=0x18) => None,
        Some(_) => Some(NetError::NotTls {
            port,
            answer: first
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        char::from(b)
                    } else {
                        '.'
                    }
                })
                .collect(),
        }),
    }
}

/// A failed handshake's cause in words (what the dialer does not explain otherwise).
fn handshake_reason(error: &io::Error) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::AlertReceived(_)) => "the server ended the handshake".to_owned(),
        Some(rustls::Error::PeerIncompatible(_)) => {
            "the server and sekisho have no TLS version or cipher in common".to_owned()
        }
        Some(_) => "the server's TLS messages were not what sekisho expects".to_owned(),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection".to_owned()
        }
        None => error.to_string(),
    }
}

/// The local demo's development CA, where the proxy keeps it by default (as
/// `sekisho-proxy` chooses: `SEKISHO_DEV_CA_DIR`, else `$XDG_STATE_HOME/sekisho/dev-ca`, else
/// `~/.local/state/sekisho/dev-ca`; then the fallback under the temporary directory), if it is
/// on this machine.
pub fn dev_ca_file(env: &dyn Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| {
        env(name)
            .filter(|value| !value.is_empty())
            .map(PathBuf::from)
    };
    let dir = set("SEKISHO_DEV_CA_DIR")
        .or_else(|| set("XDG_STATE_HOME").map(|state| state.join("sekisho/dev-ca")))
        .or_else(|| set("HOME").map(|home| home.join(".local/state/sekisho/dev-ca")));
    let user = env("USER")
        .and_then(|user| user.into_string().ok())
        .unwrap_or_else(|| "user".to_owned());
    let fallback = std::env::temp_dir().join(format!("sekisho-dev-ca-{user}"));
    dir.into_iter()
        .chain([fallback])
        .map(|dir| dir.join("ca.pem"))
        .find(|file| file.is_file())
}

/// How the CLI reaches proxies.
#[derive(Clone)]
pub struct Net {
    tls: Arc<ClientConfig>,
    trust: Trust,
    /// Dial this address whatever the host name resolves to (like curl's `--connect-to`).
    connect_to: Option<SocketAddr>,
    /// The local demo's development CA, tried when a certificate turns out untrusted, to say
    /// so when it signed it.
    dev_ca: Option<PathBuf>,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("trust", &self.trust)
            .field("connect_to", &self.connect_to)
            .finish_non_exhaustive()
    }
}

/// TLS for HTTP/1.1 trusting `roots`.
fn client_config(roots: rustls::RootCertStore) -> Arc<ClientConfig> {
    let mut tls =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// Adds the certificates in the PEM file `path` to `roots`.
fn add_ca_file(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), NetError> {
    let pem = std::fs::read(path).map_err(|source| NetError::CaFile {
        path: path.to_owned(),
        source,
    })?;
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        if roots.add(cert).is_ok() {
            added += 1;
        }
    }
    if added == 0 {
        return Err(NetError::NoCertificate(path.to_owned()));
    }
    Ok(())
}

impl Net {
    /// TLS trusting the system's roots, or only the certificates in `ca_file` when given.
    pub fn new(ca_file: Option<&Path>, connect_to: Option<SocketAddr>) -> Result<Self, NetError> {
        let trust = match ca_file {
            Some(path) => Trust::Only(path.to_owned()),
            None => Trust::System,
        };
        Self::with_trust(trust, connect_to)
    }

    /// TLS trusting what `trust` says.
    pub fn with_trust(trust: Trust, connect_to: Option<SocketAddr>) -> Result<Self, NetError> {
        let mut roots = rustls::RootCertStore::empty();
        if matches!(trust, Trust::System | Trust::AlsoFile(_)) {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(path) = trust.ca_file() {
            add_ca_file(&mut roots, path)?;
        }
        Ok(Self {
            tls: client_config(roots),
            trust,
            connect_to,
            dev_ca: None,
        })
    }

    /// When a certificate is not trusted, checks whether the local demo's development CA in
    /// `file` signed it, to say so.
    pub fn with_dev_ca(mut self, file: Option<PathBuf>) -> Self {
        self.dev_ca = file;
        self
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    pub fn connect_to(&self) -> Option<SocketAddr> {
        self.connect_to
    }

    /// A TLS connection to the origin.
    pub async fn dial(&self, origin: &Origin) -> Result<Stream, NetError> {
        let connect = async {
            let addrs = match self.connect_to {
                Some(addr) => vec![addr],
                None => resolve(&origin.host, origin.port).await?,
            };
            let tcp = connect(&addrs).await?;
            let peer = tcp.peer_addr().ok();
            let _ = tcp.set_nodelay(true);
            let connector = TlsConnector::from(self.tls.clone());
            match connector
                .connect(origin.server_name()?, Socket::new(tcp))
                .into_fallible()
                .await
            {
                Ok(stream) => Ok(stream),
                Err((error, socket)) => {
                    Err(self.handshake_failed(origin, peer, error, &socket).await)
                }
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(dialed) => dialed,
            Err(_) => Err(NetError::Timeout {
                origin: origin.to_string(),
            }),
        }
    }

    /// Why a handshake with `origin` at `peer` failed.
    async fn handshake_failed(
        &self,
        origin: &Origin,
        peer: Option<SocketAddr>,
        error: io::Error,
        socket: &Socket,
    ) -> NetError {
        if let Some(error) = not_tls(origin.port, socket.first()) {
            return error;
        }
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let Some(rustls::Error::InvalidCertificate(problem)) = tls else {
            return NetError::Tls {
                origin: origin.to_string(),
                reason: handshake_reason(&error),
            };
        };
        let problem = CertificateProblem::from_rustls(problem);
        let dev_ca = match (&problem, peer) {
            (CertificateProblem::UnknownIssuer, Some(peer)) => {
                self.signed_by_dev_ca(origin, peer).await
            }
            _ => None,
        };
        NetError::Certificate(Box::new(CertificateRefusal {
            name: origin.bare_host().to_owned(),
            problem,
            trust: self.trust.clone(),
            local: peer.is_some_and(|peer| peer.ip().is_loopback()),
            dev_ca,
        }))
    }

    /// The development CA file, if it is not what was trusted already and a handshake with
    /// `origin` at `peer` trusting only it succeeds.
    async fn signed_by_dev_ca(&self, origin: &Origin, peer: SocketAddr) -> Option<PathBuf> {
        let file = self.dev_ca.as_ref()?;
        if self.trust.ca_file() == Some(file.as_path()) {
            return None;
        }
        let mut roots = rustls::RootCertStore::empty();
        add_ca_file(&mut roots, file).ok()?;
        let tcp = TcpStream::connect(peer).await.ok()?;
        TlsConnector::from(client_config(roots))
            .connect(origin.server_name().ok()?, tcp)
            .await
            .ok()
            .map(|_| file.clone())
    }

    /// Sends one request (its URI is the path and query; `Host` is set here) and reads the
    /// whole answer.
    pub async fn exchange(
        &self,
        origin: &Origin,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, NetError> {
        let http = |source| NetError::Http {
            origin: origin.to_string(),
            source,
        };
        let work = async {
            let stream = self.dial(origin).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http)?;
            tokio::spawn(conn);
            set_host(&mut req, origin);
            let response = sender.send_request(req).await.map_err(http)?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|_| NetError::TooLarge {
                    origin: origin.to_string(),
                })?
                .to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| {
                Err(NetError::Timeout {
                    origin: origin.to_string(),
                })
            })
    }

    /// Sends an HTTP/1.1 upgrade request. On `101` the answer comes with the upgraded
    /// connection; any other answer comes with its body, read whole.
    pub async fn upgrade(
        &self,
        origin: &Origin,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Upgrade, NetError> {
        let http = |source| NetError::Http {
            origin: origin.to_string(),
            source,
        };
        let stream = self.dial(origin).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn.with_upgrades());
        set_host(&mut req, origin);
        let mut response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req))
            .await
            .map_err(|_| NetError::Timeout {
                origin: origin.to_string(),
            })?
            .map_err(http)?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = hyper::upgrade::on(&mut response).await.map_err(http)?;
            return Ok(Upgrade::Switched(
                std::mem::take(response.headers_mut()),
                TokioIo::new(upgraded),
            ));
        }
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(Upgrade::Refused(Response::from_parts(parts, body)))
    }
}

/// What an upgrade request got.
#[derive(Debug)]
pub enum Upgrade {
    /// The `101`'s headers, and the connection.
    Switched(http::HeaderMap, TokioIo<Upgraded>),
    Refused(Response<Bytes>),
}

fn set_host<B>(req: &mut Request<B>, origin: &Origin) {
    let host = http::HeaderValue::from_str(&origin.authority())
        .expect("an origin's authority is a valid header value");
    req.headers_mut().insert(http::header::HOST, host);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_read_from_hosts_host_ports_and_urls() {
        for (text, host, port) in [
            ("box.example.com", "box.example.com", 443),
            ("Box.Example.com:8443", "box.example.com", 8443),
            ("https://auth.example.com:8443/x", "auth.example.com", 8443),
            ("127.0.0.1:9", "127.0.0.1", 9),
            ("[::1]:9", "[::1]", 9),
        ] {
            let origin = Origin::parse(text).unwrap();
            assert_eq!((origin.host.as_str(), origin.port), (host, port), "{text}");
        }
        for bad in [
            "http://a.example",
            "",
            "https://",
            "https://u:p@a.example",
            "a b",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn localhost_and_the_names_under_it_are_loopback_without_asking_the_resolver() {
        let loopback = |port| {
            vec![
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
            ]
        };
        // No resolver here knows `auth.localhost` or `a.b.localhost`.
        for host in [
            "localhost",
            "auth.localhost",
            "a.b.localhost",
            "SSH.Localhost",
            "localhost.",
        ] {
            assert_eq!(resolve(host, 8443).await.unwrap(), loopback(8443), "{host}");
        }
        assert_eq!(
            resolve("[::1]", 9).await.unwrap(),
            vec!["[::1]:9".parse().unwrap()]
        );
        assert_eq!(
            resolve("127.0.0.2", 9).await.unwrap(),
            vec!["127.0.0.2:9".parse().unwrap()]
        );
        for host in ["notlocalhost", "localhost.example.com", "localhostx", ""] {
            assert!(!is_localhost(host), "{host}");
        }
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_named() {
        // `.invalid` never resolves (RFC 6761 §6.4).
        let error = resolve("nowhere.invalid", 443).await.unwrap_err();
        assert!(matches!(error, NetError::NoSuchHost { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the name nowhere.invalid does not resolve to an address"
        );
        assert!(error.hint().unwrap().contains("--connect-to ADDR"));
    }

    #[tokio::test]
    async fn a_refused_connection_names_every_address_that_refused() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let error = connect(&[closed]).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "nothing accepts connections at {closed} (connection refused): is the proxy \
                 running, on this port?"
            )
        );
        let other: SocketAddr = format!("[::1]:{}", closed.port()).parse().unwrap();
        assert_eq!(either(&[closed, other]), format!("{closed} or {other}"));
        assert_eq!(
            either(&[closed, closed, other]),
            format!("{closed}, {closed} or {other}")
        );
    }

    #[test]
    fn what_answered_a_failed_handshake_is_told_by_its_first_bytes() {
        assert!(matches!(
            not_tls(8080, b"HTTP/1.1"),
            Some(NetError::PlainHttp { port: 8080 })
        ));
        assert_eq!(
            not_tls(8080, b"HTTP/1.1").unwrap().to_string(),
            "port 8080 speaks plain HTTP, not HTTPS"
        );
        let ssh = not_tls(22, b"SSH-2.0-").unwrap();
        assert_eq!(
            ssh.to_string(),
            "port 22 does not speak TLS (it answered \"SSH-2.0-\")"
        );
        assert_eq!(
            not_tls(9, b"\x00\x01ab\n").unwrap().to_string(),
            "port 9 does not speak TLS (it answered \"..ab.\")"
        );
        // TLS records (an alert, a handshake) and silence are for the TLS error to explain.
        for first in [&b"\x15\x03\x03\x00\x02"[..], b"\x16\x03\x03", b""] {
            assert!(not_tls(443, first).is_none(), "{first:?}");
        }
    }

    #[test]
    fn certificate_refusals_say_which_name_and_what_was_trusted_in_words() {
        let refusal = |problem, trust, dev_ca: Option<&str>| CertificateRefusal {
            name: "auth.localhost".into(),
            problem,
            trust,
            local: true,
            dev_ca: dev_ca.map(PathBuf::from),
        };
        let file = PathBuf::from("/ca.pem");
        for (refusal, message, hint) in [
            (
                refusal(CertificateProblem::UnknownIssuer, Trust::System, None),
                "the certificate of auth.localhost is not signed by a certificate authority this \
                 machine trusts",
                Some(
                    "--ca FILE (or SEKISHO_CA_FILE=FILE); a proxy started by scripts/run-local.sh",
                ),
            ),
            (
                refusal(
                    CertificateProblem::UnknownIssuer,
                    Trust::Only(file.clone()),
                    None,
                ),
                "the certificate of auth.localhost is not signed by a CA in /ca.pem",
                Some("--ca FILE"),
            ),
            (
                refusal(
                    CertificateProblem::UnknownIssuer,
                    Trust::AlsoFile(file.clone()),
                    None,
                ),
                "the certificate of auth.localhost is signed neither by a certificate authority \
                 this machine trusts nor by a CA in /ca.pem (remembered from the login)",
                Some("--ca FILE"),
            ),
            (
                refusal(
                    CertificateProblem::UnknownIssuer,
                    Trust::System,
                    Some("/state/dev-ca/ca.pem"),
                ),
                "the certificate of auth.localhost is signed by the local demo's development CA \
                 (/state/dev-ca/ca.pem), which sekisho was not told to trust",
                Some(
                    "to trust it, add --ca /state/dev-ca/ca.pem (or set \
                     SEKISHO_CA_FILE=/state/dev-ca/ca.pem)",
                ),
            ),
            (
                refusal(
                    CertificateProblem::WrongName(vec!["localhost".into(), "ssh.localhost".into()]),
                    Trust::System,
                    None,
                ),
                "the certificate presented for auth.localhost does not name it (it names \
                 localhost, ssh.localhost)",
                None,
            ),
            (
                refusal(CertificateProblem::Expired, Trust::System, None),
                "the certificate of auth.localhost has expired",
                None,
            ),
        ] {
            let error = NetError::Certificate(Box::new(refusal));
            assert_eq!(error.to_string(), message);
            match (error.hint(), hint) {
                (Some(got), Some(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => assert_eq!(got.as_deref(), want),
            }
        }
        let converted = CertificateProblem::from_rustls(&rustls::CertificateError::UnknownIssuer);
        assert_eq!(converted, CertificateProblem::UnknownIssuer);
    }

    #[test]
    fn the_development_ca_is_looked_for_where_the_proxy_keeps_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dev-ca");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----").unwrap();
        let env = |vars: Vec<(&'static str, OsString)>| {
            move |name: &str| {
                vars.iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, value)| value.clone())
            }
        };
        // A user name of its own, so that no fallback directory of this machine is found.
        let user = ("USER", OsString::from("sekisho-cli-unit-test-nobody"));
        assert_eq!(
            dev_ca_file(&env(vec![
                ("SEKISHO_DEV_CA_DIR", dir.clone().into()),
                user.clone()
            ])),
            Some(dir.join("ca.pem"))
        );
        std::fs::create_dir_all(root.path().join("state/sekisho")).unwrap();
        std::fs::rename(&dir, root.path().join("state/sekisho/dev-ca")).unwrap();
        assert_eq!(
            dev_ca_file(&env(vec![
                ("XDG_STATE_HOME", root.path().join("state").into()),
                user.clone()
            ])),
            Some(root.path().join("state/sekisho/dev-ca/ca.pem"))
        );
        assert_eq!(
            dev_ca_file(&env(vec![("HOME", root.path().into()), user])),
            None
        );
    }

    #[test]
    fn the_default_port_is_left_out_of_the_authority() {
        assert_eq!(Origin::parse("a.example").unwrap().authority(), "a.example");
        assert_eq!(
            Origin::parse("a.example:8443").unwrap().url(),
            "https://a.example:8443"
        );
    }
}
