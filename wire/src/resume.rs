//! What a resumable stream keeps to be resumed: the last bytes it sent, and how many it has
//! sent in all.
//!
//! A tunnel stream through another replica can outlive the connection it came by: both of its
//! ends (`sekisho tunnel`, and the replica holding the agent's stream) keep the last bytes they
//! sent and count the bytes they have passed on. When the connection between them is lost, the
//! client comes back by another one, each end says how much it has received, and each sends
//! again from there, as long as it still keeps those bytes.

use std::collections::VecDeque;

/// The last bytes one end of a stream sent, up to a bound, and how many it sent in all.
#[derive(Debug)]
pub struct Sent {
    kept: VecDeque<u8>,
    bound: usize,
    total: u64,
}

impl Sent {
    /// Keeps at most `bound` bytes (memory is taken as bytes are sent, not up front).
    pub fn new(bound: usize) -> Self {
        Self {
            kept: VecDeque::new(),
            bound,
            total: 0,
        }
    }

    /// Records `data` as sent; the oldest bytes beyond the bound are forgotten.
    pub fn record(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let data = &data[data.len().saturating_sub(self.bound)..];
        let over = (self.kept.len() + data.len()).saturating_sub(self.bound);
        self.kept.drain(..over);
        self.kept.extend(data);
    }

    /// How many bytes were sent in all.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The bytes sent after the first `received`, for the end that has received that many;
    /// `None` when some of them are no longer kept, or `received` is more than was sent.
    pub fn since(&self, received: u64) -> Option<Vec<u8>> {
        let missing = usize::try_from(self.total.checked_sub(received)?).ok()?;
        let start = self.kept.len().checked_sub(missing)?;
        Some(self.kept.range(start..).copied().collect())
    }
}

/// A byte count from a [`crate::RESUME_HEADER`]: decimal digits only.
pub fn parse_count(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_other_end_has_not_received_is_sent_again_while_it_is_kept() {
        let mut sent = Sent::new(8);
        sent.record(b"hello ");
        sent.record(b"world");
        assert_eq!(sent.total(), 11);
        assert_eq!(sent.since(11).as_deref(), Some(&b""[..]));
        assert_eq!(sent.since(6).as_deref(), Some(&b"world"[..]));
        assert_eq!(sent.since(3).as_deref(), Some(&b"lo world"[..]));
        // Bytes 0..3 were forgotten to stay within the bound.
        assert_eq!(sent.since(2), None);
        // More than was ever sent: the other end is not this stream's.
        assert_eq!(sent.since(12), None);
    }

    #[test]
    fn a_write_larger_than_the_bound_keeps_its_last_bytes() {
        let mut sent = Sent::new(4);
        sent.record(b"ab");
        sent.record(b"0123456789");
        assert_eq!(sent.total(), 12);
        assert_eq!(sent.since(8).as_deref(), Some(&b"6789"[..]));
        assert_eq!(sent.since(7), None);
    }

    #[test]
    fn counts_are_decimal_digits_and_nothing_else() {
        assert_eq!(parse_count("0"), Some(0));
        assert_eq!(parse_count("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+1", "-1", " 1", "1e3", "0x10", "18446744073709551616"] {
            assert_eq!(parse_count(bad), None, "{bad:?}");
        }
    }
}
