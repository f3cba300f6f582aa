//! The opaque keyset cursor of event listings.
//!
//! Listings are ordered by (event time, seq) descending; a cursor is the position of the last
//! event of a page. It is opaque to clients (base64url of a versioned binary record) so that
//! the ordering can change without breaking the API contract, and it stays valid under
//! concurrent inserts because it names a position, not an offset.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const VERSION: u8 = 1;

/// A position in the (time, seq) order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time_us: i64,
    pub seq: u64,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let mut buf = [0u8; 17];
        buf[0] = VERSION;
        buf[1..9].copy_from_slice(&self.time_us.to_be_bytes());
        buf[9..17].copy_from_slice(&self.seq.to_be_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        if bytes.len() != 17 || bytes[0] != VERSION {
            return None;
        }
        Some(Cursor {
            time_us: i64::from_be_bytes(bytes[1..9].try_into().ok()?),
            seq: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        let c = Cursor {
            time_us: -5,
            seq: 42,
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode(""), None);
    }
}
