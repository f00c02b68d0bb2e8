//! Complete WebSocket frames as the server writes them, built once and shared.
//!
//! Server-to-client frames are never masked (RFC 6455 §5.1), so one broadcast's wire bytes —
//! header and payload — are the same for every recipient. [`Encoded`] holds those bytes behind a
//! reference count: a broadcast to a thousand members serializes its JSON once, frames it once,
//! and every socket write borrows the same buffer. Nothing here allocates per recipient.

use bytes::Bytes;
use serde::Serialize;

/// Room in front of the payload for the longest header (2 + 8 length bytes).
const MAX_HEADER: usize = 10;

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// One complete, unmasked WebSocket frame (header + payload), cheap to clone.
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded {
    bytes: Bytes,
    /// Where the payload starts within `bytes`.
    header_len: u8,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Encoded")
            .field(&String::from_utf8_lossy(self.payload()))
            .finish()
    }
}

impl Encoded {
    /// A text frame carrying `value` as JSON. Serializes straight into the frame's buffer.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Encoded {
        let mut buf = vec![0u8; MAX_HEADER];
        // Our frames are strings, numbers and vectors of them: serializing cannot fail.
        serde_json::to_writer(&mut buf, value).expect("serializing a server frame");
        Encoded::framed(OP_TEXT, buf)
    }

    /// A text frame carrying `text`.
    pub fn text(text: &str) -> Encoded {
        let mut buf = Vec::with_capacity(MAX_HEADER + text.len());
        buf.resize(MAX_HEADER, 0);
        buf.extend_from_slice(text.as_bytes());
        Encoded::framed(OP_TEXT, buf)
    }

    /// An empty Ping.
    pub fn ping() -> Encoded {
        Encoded::framed(OP_PING, vec![0u8; MAX_HEADER])
    }

    /// A Close frame with `code` and `reason` (the reason is cut to fit a control frame).
    pub fn close(code: u16, reason: &str) -> Encoded {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = vec![0u8; MAX_HEADER];
        buf.extend_from_slice(&code.to_be_bytes());
        buf.extend_from_slice(&reason.as_bytes()[..end]);
        Encoded::framed(OP_CLOSE, buf)
    }

    /// Writes the header for the payload at `buf[MAX_HEADER..]` just before it.
    fn framed(opcode: u8, mut buf: Vec<u8>) -> Encoded {
        let len = buf.len() - MAX_HEADER;
        let start = if len < 126 {
            buf[MAX_HEADER - 1] = len as u8;
            MAX_HEADER - 2
        } else if let Ok(len) = u16::try_from(len) {
            buf[MAX_HEADER - 3] = 126;
            buf[MAX_HEADER - 2..MAX_HEADER].copy_from_slice(&len.to_be_bytes());
            MAX_HEADER - 4
        } else {
            buf[1] = 127;
            buf[2..MAX_HEADER].copy_from_slice(&(len as u64).to_be_bytes());
            0
        };
        buf[start] = FIN | opcode;
        let header_len = (MAX_HEADER - start) as u8;
        Encoded {
            bytes: Bytes::from(buf).slice(start..),
            header_len,
        }
    }

    /// The frame's bytes as they go on the wire.
    pub fn wire(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's bytes, shared (a reference count, no copy).
    pub fn wire_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The frame's payload (the JSON text for text frames).
    pub fn payload(&self) -> &[u8] {
        &self.bytes[usize::from(self.header_len)..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;

    fn parse(frame: &Encoded) -> (FrameHeader, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(frame.wire().to_vec());
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        let payload = frame.wire()[start..].to_vec();
        assert_eq!(
            payload.len() as u64,
            len,
            "the header states the payload length"
        );
        (header, payload)
    }

    #[test]
    fn text_frames_of_every_length_class_parse_back() {
        for len in [0usize, 1, 125, 126, 127, 65_535, 65_536, 200_000] {
            let text = "x".repeat(len);
            let frame = Encoded::text(&text);
            let (header, payload) = parse(&frame);
            assert!(header.is_final);
            assert_eq!(header.opcode, OpCode::Data(Data::Text));
            assert!(header.mask.is_none(), "server frames are unmasked");
            assert_eq!(payload, text.as_bytes());
            assert_eq!(frame.payload(), text.as_bytes());
        }
    }

    #[test]
    fn json_frames_carry_the_serialized_value() {
        let frame = Encoded::json(&serde_json::json!({"type": "pong", "t": 5}));
        let (_, payload) = parse(&frame);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["t"], 5);
    }

    #[test]
    fn control_frames() {
        let (header, payload) = parse(&Encoded::ping());
        assert_eq!(header.opcode, OpCode::Control(Control::Ping));
        assert!(payload.is_empty());
        let long = "é".repeat(100);
        let (header, payload) = parse(&Encoded::close(4008, &long));
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert!(
            payload.len() <= 125,
            "control frames carry at most 125 bytes"
        );
        assert_eq!(&payload[..2], &4008u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }
}
