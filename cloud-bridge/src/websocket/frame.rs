//! WebSocket framing (RFC 6455 section 5), server side, as pure functions over bytes.
//!
//! The bridge encodes each frame it broadcasts once, header included, and writes the same bytes to
//! every viewer's socket: a server's frames are unmasked, so one encoding serves everybody. Client
//! frames are decoded incrementally from what the socket delivered, with every limit checked on
//! the header, before the payload is buffered: a client cannot make the bridge hold more than one
//! message of `max_message` bytes.

use bytes::{BufMut, Bytes, BytesMut};

/// Frame opcodes (section 5.2).
mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Longest payload of a control frame (close, ping, pong).
pub const MAX_CONTROL: usize = 125;

/// Close code "protocol error" (section 7.4.1): a frame no client may send.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code for a message that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Close code for a message over the limit (policy violation, as the page expects).
pub const POLICY: u16 = 1008;

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(short);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A complete text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    frame(opcode::TEXT, text.as_bytes())
}

/// A ping with an empty payload.
pub fn ping() -> Bytes {
    frame(opcode::PING, &[])
}

/// The pong answering a ping's payload.
pub fn pong(payload: &[u8]) -> Bytes {
    frame(opcode::PONG, &payload[..payload.len().min(MAX_CONTROL)])
}

/// A close frame with a code and a reason, the reason cut (on a character boundary) to fit.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(opcode::CLOSE, &payload)
}

/// A close frame with no code (the answer to a client's close that gave none).
pub fn close_empty() -> Bytes {
    frame(opcode::CLOSE, &[])
}

/// One message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// A text message, reassembled from its fragments, checked to be UTF-8.
    Text(String),
    /// A binary message (the bridge accepts none; it only needs to know one came).
    Binary,
    /// A ping, to be answered with its payload.
    Ping(Vec<u8>),
    /// A pong (the answer to the bridge's ping).
    Pong,
    /// The client's close, with its code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes are not an acceptable WebSocket stream; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A client must mask every frame (section 5.1).
    #[error("frame {index} is not masked: a client must mask every frame")]
    Unmasked {
        /// Which frame, counting from 0 on this connection.
        index: u64,
    },
    /// RSV bits set without a negotiated extension.
    #[error("frame {index} sets reserved bits (0x{bits:x}) without an extension")]
    Reserved {
        /// Which frame.
        index: u64,
        /// The RSV bits as they appear in the first byte.
        bits: u8,
    },
    /// An opcode RFC 6455 does not define.
    #[error("frame {index} has unknown opcode 0x{opcode:x}")]
    Opcode {
        /// Which frame.
        index: u64,
        /// The opcode.
        opcode: u8,
    },
    /// A control frame that is fragmented or over 125 bytes.
    #[error("control frame {index} is fragmented or over {MAX_CONTROL} bytes")]
    Control {
        /// Which frame.
        index: u64,
    },
    /// A continuation with no message started, or a new message inside a fragmented one.
    #[error("frame {index} breaks fragmentation: {what}")]
    Fragments {
        /// Which frame.
        index: u64,
        /// What was wrong.
        what: &'static str,
    },
    /// A message (or its fragments so far) over the limit.
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size, as announced.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message that is not UTF-8.
    #[error("text message is not UTF-8 (invalid byte at {at})")]
    Utf8 {
        /// Offset of the first invalid byte in the message.
        at: usize,
    },
    /// A close frame whose payload is one byte, or whose reason is not UTF-8.
    #[error("close frame {index} has a malformed payload")]
    ClosePayload {
        /// Which frame.
        index: u64,
    },
}

impl FrameError {
    /// The close code this error earns.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => POLICY,
            FrameError::Utf8 { .. } => INVALID_PAYLOAD,
            _ => PROTOCOL_ERROR,
        }
    }
}

/// Decodes a client's byte stream into messages. Holds at most one unfinished message; an idle
/// decoder holds no allocation.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    buf: Vec<u8>,
    pos: usize,
    /// A fragmented message being assembled: its opcode and bytes so far.
    partial: Option<(u8, Vec<u8>)>,
    frames: u64,
    failed: bool,
}

struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    size: usize,
}

impl Decoder {
    /// A decoder refusing messages over `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Decoder {
            max_message,
            buf: Vec::new(),
            pos: 0,
            partial: None,
            frames: 0,
            failed: false,
        }
    }

    /// The buffer to read the socket into (spare capacity is reserved; nothing is zeroed).
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.reserve(1024);
        &mut self.buf
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether the stream broke (an error was returned): nothing more will be decoded.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Forgets what is buffered (after a failure, what the client still sends is only read to be
    /// thrown away).
    pub fn discard(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// Appends bytes received some other way (those hyper read past the upgrade request).
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer().extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an error the
    /// stream is unusable and every later call returns `Ok(None)`.
    pub fn next_frame(&mut self) -> Result<Option<ClientFrame>, FrameError> {
        loop {
            if self.failed {
                return Ok(None);
            }
            let Some(header) = self.header().inspect_err(|_| self.failed = true)? else {
                self.release();
                return Ok(None);
            };
            if self.buf.len() - self.pos < header.size {
                return Ok(None);
            }
            let start = self.pos + header.size - header.len;
            let mut payload = self.buf[start..self.pos + header.size].to_vec();
            self.pos += header.size;
            self.frames += 1;
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= header.mask[i % 4];
            }
            let decoded = self.message(header.fin, header.opcode, payload);
            match decoded {
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
                Ok(Some(frame)) => {
                    self.release();
                    return Ok(Some(frame));
                }
                Ok(None) => continue,
            }
        }
    }

    /// Frees the buffer once everything in it is decoded, so an idle connection holds nothing.
    fn release(&mut self) {
        if self.pos == self.buf.len() {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    fn header(&self) -> Result<Option<Header>, FrameError> {
        let b = &self.buf[self.pos..];
        let index = self.frames;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let rsv = b[0] & 0x70;
        let opcode = b[0] & 0x0F;
        if rsv != 0 {
            return Err(FrameError::Reserved { index, bits: rsv });
        }
        if !matches!(
            opcode,
            opcode::CONTINUATION
                | opcode::TEXT
                | opcode::BINARY
                | opcode::CLOSE
                | opcode::PING
                | opcode::PONG
        ) {
            return Err(FrameError::Opcode { index, opcode });
        }
        if b[1] & 0x80 == 0 {
            return Err(FrameError::Unmasked { index });
        }
        let (len, at) = match b[1] & 0x7F {
            126 => match b.get(2..4) {
                Some(l) => (u64::from(u16::from_be_bytes([l[0], l[1]])), 4),
                None => return Ok(None),
            },
            127 => match b.get(2..10) {
                Some(l) => {
                    let mut n = [0; 8];
                    n.copy_from_slice(l);
                    (u64::from_be_bytes(n), 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let control = opcode >= opcode::CLOSE;
        if control && (!fin || len > MAX_CONTROL as u64) {
            return Err(FrameError::Control { index });
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len() as u64);
        if !control && so_far + len > self.max_message as u64 {
            return Err(FrameError::TooLarge {
                size: so_far + len,
                max: self.max_message,
            });
        }
        let Some(mask) = b.get(at..at + 4) else {
            return Ok(None);
        };
        // Bounded by max_message (or 125) just above, so it fits in usize.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            len,
            size: at + 4 + len,
        }))
    }

    fn message(
        &mut self,
        fin: bool,
        op: u8,
        payload: Vec<u8>,
    ) -> Result<Option<ClientFrame>, FrameError> {
        let index = self.frames - 1;
        match op {
            opcode::PING => Ok(Some(ClientFrame::Ping(payload))),
            opcode::PONG => Ok(Some(ClientFrame::Pong)),
            opcode::CLOSE => close_payload(&payload, index).map(Some),
            opcode::CONTINUATION => {
                let Some((first, mut so_far)) = self.partial.take() else {
                    return Err(FrameError::Fragments {
                        index,
                        what: "a continuation with no message started",
                    });
                };
                so_far.extend_from_slice(&payload);
                if fin {
                    finish(first, so_far).map(Some)
                } else {
                    self.partial = Some((first, so_far));
                    Ok(None)
                }
            }
            _ => {
                if self.partial.is_some() {
                    return Err(FrameError::Fragments {
                        index,
                        what: "a new message before the last one's final fragment",
                    });
                }
                if fin {
                    finish(op, payload).map(Some)
                } else {
                    self.partial = Some((op, payload));
                    Ok(None)
                }
            }
        }
    }
}

/// A whole text or binary message.
fn finish(op: u8, data: Vec<u8>) -> Result<ClientFrame, FrameError> {
    if op == opcode::BINARY {
        return Ok(ClientFrame::Binary);
    }
    String::from_utf8(data)
        .map(ClientFrame::Text)
        .map_err(|e| FrameError::Utf8 {
            at: e.utf8_error().valid_up_to(),
        })
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason.
fn close_payload(payload: &[u8], index: u64) -> Result<ClientFrame, FrameError> {
    match payload {
        [] => Ok(ClientFrame::Close(None)),
        [_] => Err(FrameError::ClosePayload { index }),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::ClosePayload { index });
            }
            Ok(ClientFrame::Close(Some(u16::from_be_bytes([*hi, *lo]))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame: masked with `mask`.
    fn client(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> Result<Vec<ClientFrame>, FrameError> {
        let mut d = Decoder::new(max);
        d.push(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    /// Reads a server frame back: (opcode, payload, bytes used).
    fn server(bytes: &[u8]) -> (u8, Vec<u8>, usize) {
        assert_eq!(bytes[0] & 0xF0, 0x80, "FIN, no RSV");
        assert_eq!(bytes[1] & 0x80, 0, "a server never masks");
        let (len, at) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 => {
                let mut n = [0; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            l => (usize::from(l), 2),
        };
        (bytes[0] & 0x0F, bytes[at..at + len].to_vec(), at + len)
    }

    #[test]
    fn server_frames_use_the_shortest_length_form() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let body = "x".repeat(len);
            let f = text(&body);
            assert_eq!(f.len(), len + header, "{len}");
            let (op, payload, used) = server(&f);
            assert_eq!((op, payload.len(), used), (1, len, f.len()));
        }
    }

    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary_to_fit_a_control_frame() {
        let f = close(1008, &"é".repeat(100));
        let (op, payload, _) = server(&f);
        assert_eq!(op, 8);
        assert!(payload.len() <= MAX_CONTROL);
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn masked_text_ping_pong_and_close_decode() {
        let mut bytes = client(0x81, b"{\"kind\":\"ping\"}", [1, 2, 3, 4]);
        bytes.extend(client(0x89, b"hi", [9, 9, 9, 9]));
        bytes.extend(client(0x8A, b"", [0; 4]));
        bytes.extend(client(0x88, &[0x03, 0xE8, b'o', b'k'], [5, 6, 7, 8]));
        assert_eq!(
            decode_all(&bytes, 4096),
            Ok(vec![
                ClientFrame::Text("{\"kind\":\"ping\"}".into()),
                ClientFrame::Ping(b"hi".to_vec()),
                ClientFrame::Pong,
                ClientFrame::Close(Some(1000)),
            ])
        );
    }

    #[test]
    fn fragments_are_reassembled_around_a_control_frame() {
        let mut bytes = client(0x01, b"hel", [1, 1, 1, 1]);
        bytes.extend(client(0x89, b"", [2; 4]));
        bytes.extend(client(0x00, b"lo ", [3; 4]));
        bytes.extend(client(0x80, "wörld".as_bytes(), [4; 4]));
        assert_eq!(
            decode_all(&bytes, 4096),
            Ok(vec![
                ClientFrame::Ping(Vec::new()),
                ClientFrame::Text("hello wörld".into())
            ])
        );
    }

    #[test]
    fn what_a_client_must_not_send_is_refused_with_its_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], PROTOCOL_ERROR),
            (client(0xC1, b"x", [1; 4]), PROTOCOL_ERROR),
            (client(0x83, b"x", [1; 4]), PROTOCOL_ERROR),
            (client(0x09, b"x", [1; 4]), PROTOCOL_ERROR),
            (client(0x80, b"x", [1; 4]), PROTOCOL_ERROR),
            (
                [client(0x01, b"a", [1; 4]), client(0x81, b"b", [1; 4])].concat(),
                PROTOCOL_ERROR,
            ),
            (client(0x88, &[3], [1; 4]), PROTOCOL_ERROR),
            (client(0x81, &[0xC3, 0x28], [1; 4]), INVALID_PAYLOAD),
            (client(0x81, &[b'a'; 5000], [1; 4]), POLICY),
        ];
        for (bytes, code) in cases {
            let err = decode_all(&bytes, 4096).expect_err("refused");
            assert_eq!(err.close_code(), code, "{err}");
        }
    }

    #[test]
    fn an_oversize_message_is_refused_on_its_header_before_its_payload_arrives() {
        let mut d = Decoder::new(4096);
        // Only the header of a 1 GB frame.
        d.push(&[0x81, 0x80 | 127, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        let err = d.next_frame().expect_err("too large");
        assert!(
            matches!(err, FrameError::TooLarge { max: 4096, .. }),
            "{err}"
        );
        // Fragments count together.
        let mut bytes = client(0x01, &[b'a'; 3000], [1; 4]);
        bytes.extend(client(0x80, &[b'a'; 3000], [1; 4]));
        assert!(matches!(
            decode_all(&bytes, 4096),
            Err(FrameError::TooLarge { size: 6000, .. })
        ));
    }

    #[test]
    fn an_idle_decoder_holds_no_buffer() {
        let mut d = Decoder::new(4096);
        d.push(&client(0x81, b"x", [1; 4]));
        assert!(d.next_frame().expect("frame").is_some());
        assert_eq!(d.buf.capacity(), 0);
    }

    proptest! {
        /// However the bytes are split into reads, the same messages come out.
        #[test]
        fn any_split_of_the_stream_decodes_the_same(
            texts in proptest::collection::vec("[a-zé{}\":]{0,300}", 1..6),
            cut in proptest::collection::vec(1usize..64, 1..50),
            mask in any::<[u8; 4]>(),
        ) {
            let bytes: Vec<u8> = texts.iter().flat_map(|t| client(0x81, t.as_bytes(), mask)).collect();
            let mut d = Decoder::new(4096);
            let mut got = Vec::new();
            let mut at = 0;
            let mut i = 0;
            while at < bytes.len() {
                let n = cut[i % cut.len()].min(bytes.len() - at);
                d.buffer().extend_from_slice(&bytes[at..at + n]);
                at += n;
                i += 1;
                while let Some(f) = d.next_frame().expect("valid") {
                    got.push(f);
                }
            }
            let want: Vec<ClientFrame> = texts.into_iter().map(ClientFrame::Text).collect();
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic and never hold more than one message's worth.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new(256);
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_frame() {}
            prop_assert!(d.buffered() <= bytes.len());
        }
    }
}
