//! WebSockets: where their handshakes may come from ([`origin`]), and re-authorising them while
//! they are open.
//!
//! A WebSocket outlives the request that opened it, so a session that ends (expiry, logout,
//! back-channel logout) or a policy that stops allowing it must close it: the relay checks every
//! [`RECHECK_EVERY`] and, when the answer turns to no, sends the client a close frame with
//! status 1008 (policy violation) and ends both sides. To put the close frame between two of
//! the upstream's frames rather than inside one, the upstream-to-client direction follows the
//! frame boundaries (RFC 6455 §5.2 headers only; payloads pass through untouched).

pub mod origin;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::access::who_from_record;
use crate::policy::Decision;
use crate::server::Shared;
use crate::session::{SessionRecord, unix_now};

/// How often an open WebSocket's session and policy are checked again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// How long to wait for the upstream's current frame to end before cutting the connection
/// without a close frame.
const BOUNDARY_WAIT: Duration = Duration::from_secs(5);

/// What a WebSocket was allowed by, to ask again later.
#[derive(Debug)]
pub struct Guard {
    pub shared: Arc<Shared>,
    pub host: String,
    pub path: String,
    pub session: SessionRecord,
}

impl Guard {
    /// Whether the session is still current and the route's policy still lets it through.
    pub fn still_allowed(&self) -> bool {
        let snapshot = self.shared.snapshot.load();
        let Some(identity) = snapshot.identity.as_deref() else {
            return false;
        };
        let session = &self.session;
        if unix_now() >= session.expires_at
            || identity.state.is_revoked(
                &session.id.0,
                &session.issuer,
                &session.subject,
                session.issued_at,
            )
        {
            return false;
        }
        let Some(route) = snapshot.routes.find(&self.host, &self.path) else {
            return false;
        };
        let who = who_from_record(session.clone());
        matches!(
            route.access.decide(
                Some(&who.identity),
                &Method::GET,
                &self.path,
                &HeaderMap::new()
            ),
            Decision::Allow { .. }
        )
    }
}

/// Tracks where the frames of a WebSocket byte stream begin.
#[derive(Debug, Default)]
struct FrameCursor {
    /// Header bytes of the frame being read (at most 14).
    header: Vec<u8>,
    /// Payload bytes left in the current frame.
    payload_left: u64,
}

impl FrameCursor {
    /// True between frames.
    fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.payload_left == 0
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.header.push(bytes[0]);
            bytes = &bytes[1..];
            if let Some((len, header_len)) = header_size(&self.header)
                && self.header.len() == header_len
            {
                self.header.clear();
                self.payload_left = len;
            }
        }
    }
}

/// The payload length and header length of a frame whose first header bytes are `header`, once
/// enough of them are known.
fn header_size(header: &[u8]) -> Option<(u64, usize)> {
    if header.len() < 2 {
        return None;
    }
    let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
    match header[1] & 0x7f {
        126 => {
            let bytes = header.get(2..4)?;
            Some((
                u64::from(u16::from_be_bytes([bytes[0], bytes[1]])),
                4 + mask,
            ))
        }
        127 => {
            let bytes: [u8; 8] = header.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 10 + mask))
        }
        len => Some((u64::from(len), 2 + mask)),
    }
}

/// A close frame from the server: status 1008 and a short reason.
fn close_frame() -> Vec<u8> {
    let reason = b"session ended or no longer allowed";
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&1008u16.to_be_bytes());
    frame.extend_from_slice(reason);
    frame
}

/// Relays a WebSocket both ways until either side closes or `guard` stops allowing it.
pub async fn relay<C, U>(client: C, upstream: U, guard: Guard)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    {
        let to_upstream = tokio::io::copy(&mut client_read, &mut upstream_write);
        tokio::pin!(to_upstream);

        let mut cursor = FrameCursor::default();
        let mut buf = vec![0u8; 16 * 1024];
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        recheck.tick().await;
        let mut closing_since: Option<tokio::time::Instant> = None;
        loop {
            if let Some(since) = closing_since {
                if cursor.at_boundary() {
                    let _ = client_write.write_all(&close_frame()).await;
                    break;
                }
                if since.elapsed() > BOUNDARY_WAIT {
                    break;
                }
            }
            tokio::select! {
                read = upstream_read.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        cursor.advance(&buf[..n]);
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                _ = &mut to_upstream => break,
                _ = recheck.tick(), if closing_since.is_none() => {
                    if !guard.still_allowed() {
                        tracing::info!(
                            target: "sekisho::access",
                            host = %guard.host,
                            path = %guard.path,
                            subject = %guard.session.subject,
                            "closing a WebSocket: its session ended or the policy no longer allows it"
                        );
                        closing_since = Some(tokio::time::Instant::now());
                    }
                }
            }
        }
    }
    let _ = client_write.shutdown().await;
    let _ = upstream_write.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_reads_for_every_length_form() {
        let mut cursor = FrameCursor::default();
        // A 5-byte unmasked text frame, split inside its header and payload.
        cursor.advance(&[0x81]);
        assert!(!cursor.at_boundary());
        cursor.advance(&[0x05, b'h', b'e']);
        cursor.advance(b"llo");
        assert!(cursor.at_boundary());
        // 16-bit length (300 bytes), then 64-bit length (70 000 bytes), masked.
        cursor.advance(&[0x82, 126, 0x01, 0x2c]);
        cursor.advance(&[0u8; 299]);
        assert!(!cursor.at_boundary());
        cursor.advance(&[0u8; 1]);
        assert!(cursor.at_boundary());
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&70_000u64.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        cursor.advance(&header);
        cursor.advance(&vec![0u8; 70_000]);
        assert!(cursor.at_boundary());
    }

    #[test]
    fn the_close_frame_carries_status_1008() {
        let frame = close_frame();
        assert_eq!(frame[0], 0x88);
        assert_eq!(usize::from(frame[1]), frame.len() - 2);
        assert_eq!(&frame[2..4], &1008u16.to_be_bytes());
    }
}
