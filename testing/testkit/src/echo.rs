use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{HeaderMap, Method, Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{io::AsyncWriteExt as _, net::TcpListener, task::JoinHandle};

use crate::Error;

/// One request an [`EchoUpstream`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    /// The request target's path and query, as sent.
    pub path: String,
    pub headers: HeaderMap,
    /// Whether the whole body arrived (a request the sender aborted mid-body is `false`).
    pub complete: bool,
}

/// An HTTP/1.1 upstream on 127.0.0.1:0 that reads each whole request, records it, and answers
/// 200 with `upstream: NAME`, `method: …`, `path: …` (path and query) and every request header
/// as `name: value` lines. Stopped when dropped.
#[derive(Debug)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoUpstream {
    /// Starts it; `name` is the first line of every answer.
    pub async fn start(name: &'static str) -> Result<Self, Error> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(Error::Listen)?;
        Self::serve(name, listener)
    }

    /// Serves on a listener bound elsewhere (in another network namespace, say:
    /// [`crate::PodNetwork::listen`]).
    pub fn on(name: &'static str, listener: std::net::TcpListener) -> Result<Self, Error> {
        listener.set_nonblocking(true).map_err(Error::Listen)?;
        Self::serve(
            name,
            TcpListener::from_std(listener).map_err(Error::Listen)?,
        )
    }

    fn serve(name: &'static str, listener: TcpListener) -> Result<Self, Error> {
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&received);
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request| echo(name, request, Arc::clone(&recorded)));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// Every request received so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }

    /// The requests received for `path` (compared without the query).
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|request| request.path.split('?').next() == Some(path))
            .collect()
    }
}

async fn echo(
    name: &'static str,
    request: Request<Incoming>,
    recorded: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let complete = body.collect().await.is_ok();
    let mut text = format!("upstream: {name}\nmethod: {}\npath: {path}\n", parts.method);
    for (header, value) in &parts.headers {
        text.push_str(&format!("{header}: {}\n", value.to_str().unwrap_or("?")));
    }
    recorded.lock().expect("not poisoned").push(Received {
        method: parts.method,
        path,
        headers: parts.headers,
        complete,
    });
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("a valid response"))
}

/// The value of header `name` in an [`EchoUpstream`]'s answer.
pub fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

/// A TCP server on 127.0.0.1:0 that sends back every byte it reads, and closes its side once
/// the other side has closed its own. Stopped when dropped.
#[derive(Debug)]
pub struct TcpEcho {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub async fn start() -> Result<Self, Error> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(Error::Listen)?;
        let addr = listener.local_addr().map_err(Error::Listen)?;
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        // accept() is cancel-safe; the loop ends when the task is aborted on drop.
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            task,
        })
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
