//! WebSocket frames as far as the relay needs them (RFC 6455 §5.2): where each frame of a byte
//! stream begins and ends, whether a close frame went by, and the close frame the proxy sends
//! itself. A codec: it never touches a socket, and payloads pass through unread.

/// The longest frame header: 2 bytes, a 64-bit length and a masking key.
const MAX_HEADER: usize = 14;

/// The opcode of a close frame.
const OPCODE_CLOSE: u8 = 0x8;

/// A control frame's payload is at most 125 bytes: the status and at most 123 of reason.
const MAX_CLOSE_REASON: usize = 123;

/// Tracks where the frames of one direction of a WebSocket begin and end.
#[derive(Debug, Default)]
pub(super) struct FrameCursor {
    /// Header bytes of the frame being read.
    header: [u8; MAX_HEADER],
    header_len: usize,
    /// Payload bytes left in the current frame.
    payload_left: u64,
    /// The opcode of the current frame, once its header is complete.
    opcode: u8,
    /// A whole close frame went by.
    close_seen: bool,
}

impl FrameCursor {
    /// True between frames.
    pub(super) fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// True once a whole close frame went by.
    pub(super) fn close_seen(&self) -> bool {
        self.close_seen
    }

    /// Follows `bytes`, the next bytes of the stream.
    pub(super) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = self.step(bytes);
            bytes = &bytes[used..];
        }
    }

    /// Follows `bytes` up to the end of the current frame, and says how many of them belong to
    /// it: `0` between frames, `bytes.len()` when the frame goes on past them.
    pub(super) fn advance_to_boundary(&mut self, bytes: &[u8]) -> usize {
        if self.at_boundary() {
            return 0;
        }
        self.step(bytes)
    }

    /// Follows `bytes` up to the end of the current frame (or of the next one, between frames)
    /// and returns how many it used.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let mut used = 0;
        if self.payload_left == 0 {
            // In a header, perhaps at its first byte.
            loop {
                let Some(&byte) = bytes.get(used) else {
                    return used;
                };
                self.header[self.header_len] = byte;
                self.header_len += 1;
                used += 1;
                if let Some((len, header_len)) = header_size(&self.header[..self.header_len])
                    && self.header_len == header_len
                {
                    self.opcode = self.header[0] & 0x0f;
                    self.header_len = 0;
                    self.payload_left = len;
                    break;
                }
            }
        }
        let take =
            (bytes.len() - used).min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
        self.payload_left -= take as u64;
        used += take;
        if self.payload_left == 0 && self.opcode == OPCODE_CLOSE {
            self.close_seen = true;
        }
        used
    }
}

/// The payload length and header length of a frame whose first header bytes are `header`, once
/// enough of them are known.
fn header_size(header: &[u8]) -> Option<(u64, usize)> {
    let second = *header.get(1)?;
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    match second & 0x7f {
        126 => {
            let bytes: [u8; 2] = header.get(2..4)?.try_into().ok()?;
            Some((u64::from(u16::from_be_bytes(bytes)), 4 + mask))
        }
        127 => {
            let bytes: [u8; 8] = header.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 10 + mask))
        }
        len => Some((u64::from(len), 2 + mask)),
    }
}

/// A close frame with `status` and `reason` (cut to the 123 bytes a control frame has room
/// for). Frames from a client must be masked (RFC 6455 §5.3): give `mask`, a fresh random key,
/// for the frame the proxy sends the upstream as the client; `None` for the one it sends the
/// client as the server.
pub(super) fn close_frame(status: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let len = 2 + reason.len();
    let mut frame = Vec::with_capacity(2 + 4 + len);
    // FIN and the close opcode; the length fits the 7-bit form.
    frame.push(0x80 | OPCODE_CLOSE);
    let masked = if mask.is_some() { 0x80 } else { 0 };
    frame.push(masked | len as u8);
    let start = frame.len() + mask.map_or(0, |key| key.len());
    if let Some(key) = mask {
        frame.extend_from_slice(&key);
    }
    frame.extend_from_slice(&status.to_be_bytes());
    frame.extend_from_slice(reason);
    if let Some(key) = mask {
        for (i, byte) in frame[start..].iter_mut().enumerate() {
            *byte ^= key[i % 4];
        }
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's header for `len` payload bytes in the shortest length form, masked with
    /// `[1, 2, 3, 4]` when `masked`.
    fn header(opcode: u8, len: u64, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![0x80 | opcode];
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&[1, 2, 3, 4]);
        }
        out
    }

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
        assert!(!cursor.close_seen());
    }

    #[test]
    fn a_header_fed_one_byte_at_a_time_is_only_complete_at_its_last_byte() {
        for (len, masked) in [
            (0, false),
            (7, true),
            (300, true),
            (70_000, false),
            (1 << 40, true),
        ] {
            let header = header(0x2, len, masked);
            let mut cursor = FrameCursor::default();
            for (i, byte) in header.iter().enumerate() {
                cursor.advance(&[*byte]);
                let last = i + 1 == header.len();
                assert_eq!(cursor.at_boundary(), last && len == 0, "{len}, byte {i}");
            }
            assert_eq!(cursor.payload_left, len);
        }
    }

    #[test]
    fn advancing_to_the_boundary_takes_exactly_the_rest_of_the_current_frame() {
        let mut cursor = FrameCursor::default();
        let mut first = header(0x2, 300, true);
        first.extend_from_slice(&[7u8; 100]);
        cursor.advance(&first);
        // The rest of this frame, then a whole next frame in the same read.
        let mut read = vec![7u8; 200];
        read.extend_from_slice(&header(0x1, 3, true));
        read.extend_from_slice(b"abc");
        assert_eq!(cursor.advance_to_boundary(&read), 200);
        assert!(cursor.at_boundary());
        assert_eq!(cursor.advance_to_boundary(&read[200..]), 0);

        // A header split across reads: the rest of it, the payload, and not the next frame.
        let mut cursor = FrameCursor::default();
        let long = header(0x2, 70_000, true);
        cursor.advance(&long[..3]);
        let mut read = long[3..].to_vec();
        read.extend_from_slice(&vec![0u8; 70_000]);
        read.extend_from_slice(&header(0x1, 0, true));
        assert_eq!(cursor.advance_to_boundary(&read), long.len() - 3 + 70_000);
        assert!(cursor.at_boundary());
    }

    #[test]
    fn a_close_frame_is_seen_once_its_payload_has_gone_by() {
        let mut cursor = FrameCursor::default();
        let mut ping = header(0x9, 0, false);
        ping.extend_from_slice(&header(OPCODE_CLOSE, 2, true));
        cursor.advance(&ping);
        assert!(
            !cursor.close_seen(),
            "a close frame without its payload yet"
        );
        cursor.advance(&[0x03]);
        assert!(!cursor.close_seen());
        cursor.advance(&[0xe8]);
        assert!(cursor.close_seen());
        assert!(cursor.at_boundary());

        let mut bare = FrameCursor::default();
        bare.advance(&header(OPCODE_CLOSE, 0, false));
        assert!(bare.close_seen(), "a close frame without a status");
    }

    /// Status, reason and whether it was masked, of a close frame that fits one 7-bit length.
    fn decode_close(frame: &[u8]) -> (u16, String, bool) {
        assert_eq!(frame[0], 0x88, "FIN and the close opcode");
        let masked = frame[1] & 0x80 != 0;
        let len = usize::from(frame[1] & 0x7f);
        assert!(len <= 125, "a control frame's payload fits 125 bytes");
        let (key, payload) = if masked {
            (Some(&frame[2..6]), &frame[6..])
        } else {
            (None, &frame[2..])
        };
        assert_eq!(payload.len(), len);
        let payload: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, byte)| key.map_or(*byte, |key| byte ^ key[i % 4]))
            .collect();
        let status = u16::from_be_bytes([payload[0], payload[1]]);
        (
            status,
            String::from_utf8(payload[2..].to_vec()).unwrap(),
            masked,
        )
    }

    #[test]
    fn the_close_frame_to_the_client_carries_the_status_and_reason_unmasked() {
        let frame = close_frame(1008, "session ended", None);
        assert_eq!(
            decode_close(&frame),
            (1008, "session ended".to_owned(), false)
        );
        let mut cursor = FrameCursor::default();
        cursor.advance(&frame);
        assert!(cursor.close_seen() && cursor.at_boundary());
    }

    #[test]
    fn the_close_frame_to_the_upstream_is_masked_with_the_given_key() {
        let key = [0xa5, 0x00, 0xff, 0x3c];
        let frame = close_frame(1008, "session ended", Some(key));
        assert_eq!(&frame[2..6], &key);
        assert_ne!(
            &frame[6..8],
            &1008u16.to_be_bytes(),
            "the status is not sent in the clear"
        );
        assert_eq!(
            decode_close(&frame),
            (1008, "session ended".to_owned(), true)
        );
        let mut cursor = FrameCursor::default();
        cursor.advance(&frame);
        assert!(cursor.close_seen() && cursor.at_boundary());
    }

    #[test]
    fn a_long_reason_is_cut_to_fit_a_control_frame_at_a_character_boundary() {
        let reason = "é".repeat(100);
        let frame = close_frame(1008, &reason, Some([9, 8, 7, 6]));
        let (status, cut, _) = decode_close(&frame);
        assert_eq!(status, 1008);
        assert_eq!(cut.len(), 122, "61 two-byte characters fit in 123 bytes");
        assert!(reason.starts_with(&cut));
    }
}
