//! Capture stamps in the uploaded H.264: an SEI NAL unit carrying the frame's capture time, built,
//! put into an access unit before its first slice, and found again. Pure bytes, no GStreamer.
//!
//! The viewer page shows the picture seconds after the product events reach it; the stamp tells
//! it the capture time of the frame on screen, so it can hold each card until its frame shows.
//!
//! The NAL unit (before emulation prevention):
//!
//! ```text
//! 06                      nal_unit_type 6 (SEI), nal_ref_idc 0
//! 05                      payloadType 5: user_data_unregistered
//! 19                      payloadSize 25
//! 73 70 6f 74 74 65 72 20 63 61 70 74 75 72 65 21    UUID: ASCII "spotter capture!"
//! 01                      version
//! xx xx xx xx xx xx xx xx capture time: UTC milliseconds since the Unix epoch, big-endian u64
//! 80                      rbsp_trailing_bits
//! ```
//!
//! Everything after the header byte then gets emulation-prevention bytes (a `03` after any `00 00`
//! that is followed by `00`..`03`): today's times start `00 00 01`, so every real stamp needs
//! one.

/// Spotter's UUID for `user_data_unregistered`: ASCII "spotter capture!"
/// (`73706f74-7465-7220-6361-707475726521`).
pub const SPOTTER_UUID: [u8; 16] = *b"spotter capture!";

/// The stamp's format version, the first byte after the UUID.
pub const STAMP_VERSION: u8 = 1;

/// SEI `payloadType` of `user_data_unregistered`.
const USER_DATA_UNREGISTERED: u32 = 5;

/// `nal_unit_type` of an SEI NAL unit.
const NAL_SEI: u8 = 6;

/// Bytes of the stamp's payload: UUID, version, u64.
const PAYLOAD_LEN: usize = 16 + 1 + 8;

/// How NAL units are framed in an access unit, as the parser's output caps say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Annex B start codes (`stream-format=byte-stream`: MPEG-TS, HLS, SRT).
    ByteStream,
    /// Big-endian length prefixes (`stream-format=avc`: FLV, RTMP), `length_size` bytes each.
    Avc {
        /// 1, 2 or 4 (from the caps' `codec_data`).
        length_size: usize,
    },
}

/// Why a stamp could not be put into, or read from, an access unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeiError {
    /// The access unit has no slice (types 1 or 5) to put the stamp before.
    #[error("the access unit has no slice NAL unit to stamp")]
    NoSlice,
    /// An AVC length prefix runs past the end of the access unit.
    #[error("NAL unit length {length} at byte {offset} runs past the access unit's {size} bytes")]
    Truncated {
        /// Where the length prefix starts.
        offset: usize,
        /// The length it gives.
        length: usize,
        /// The access unit's size.
        size: usize,
    },
    /// The `codec_data` (avcC) is too short or not version 1.
    #[error("codec_data is not an AVCDecoderConfigurationRecord (version 1, at least 5 bytes)")]
    CodecData,
    /// A length size other than 1, 2 or 4.
    #[error("NAL length size {0} is not 1, 2 or 4")]
    LengthSize(usize),
}

impl Framing {
    /// The AVC framing that an `avcC` record (the caps' `codec_data`) announces: its fifth byte's
    /// low two bits are the length size minus one.
    pub fn from_avcc(codec_data: &[u8]) -> Result<Framing, SeiError> {
        match codec_data {
            [1, _, _, _, b, ..] => {
                let length_size = usize::from(b & 0x03) + 1;
                if length_size == 3 {
                    return Err(SeiError::LengthSize(3));
                }
                Ok(Framing::Avc { length_size })
            }
            _ => Err(SeiError::CodecData),
        }
    }
}

/// The stamp's SEI NAL unit (header byte and escaped RBSP) for a frame captured at
/// `captured_at_ms`, without start code or length prefix.
pub fn stamp_nal(captured_at_ms: u64) -> Vec<u8> {
    let mut rbsp = Vec::with_capacity(3 + PAYLOAD_LEN);
    rbsp.push(USER_DATA_UNREGISTERED as u8);
    rbsp.push(PAYLOAD_LEN as u8);
    rbsp.extend_from_slice(&SPOTTER_UUID);
    rbsp.push(STAMP_VERSION);
    rbsp.extend_from_slice(&captured_at_ms.to_be_bytes());
    rbsp.push(0x80);
    let mut nal = Vec::with_capacity(rbsp.len() + 4);
    nal.push(NAL_SEI);
    escape_into(&rbsp, &mut nal);
    nal
}

/// Appends `rbsp` to `out` with emulation-prevention bytes: no `00 00 0x` (x <= 3) may appear
/// inside a NAL unit, so a `03` goes between the zeros and that byte.
fn escape_into(rbsp: &[u8], out: &mut Vec<u8>) {
    let mut zeros = 0;
    for &b in rbsp {
        if zeros >= 2 && b <= 3 {
            out.push(3);
            zeros = 0;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
}

/// `nal` without its emulation-prevention bytes (each `03` after `00 00`).
fn unescape(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        out.push(b);
        zeros = if b == 0 { zeros + 1 } else { 0 };
    }
    out
}

/// One NAL unit in an access unit: where its framing (start code or length prefix) starts and
/// where its bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    framing_at: usize,
    start: usize,
    end: usize,
}

/// The NAL units of a byte-stream access unit. A unit ends where the next start code begins;
/// zeros before a start code (a 4-byte start code's `zero_byte`, trailing zeros) are not part of
/// the unit, and a 4-byte start code's framing starts at its zero byte.
fn byte_stream_units(au: &[u8]) -> Vec<Unit> {
    // positions of `00 00 01`
    let mut codes = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            codes.push(i);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units = Vec::with_capacity(codes.len());
    for (k, &code) in codes.iter().enumerate() {
        let start = code + 3;
        let mut end = codes.get(k + 1).copied().unwrap_or(au.len());
        while end > start && au[end - 1] == 0 {
            end -= 1;
        }
        let framing_at = if code > 0 && au[code - 1] == 0 {
            code - 1
        } else {
            code
        };
        units.push(Unit {
            framing_at,
            start,
            end,
        });
    }
    units
}

/// The NAL units of an AVC (length-prefixed) access unit.
fn avc_units(au: &[u8], length_size: usize) -> Result<Vec<Unit>, SeiError> {
    if !matches!(length_size, 1 | 2 | 4) {
        return Err(SeiError::LengthSize(length_size));
    }
    let mut units = Vec::new();
    let mut at = 0;
    while at < au.len() {
        let prefix = au.get(at..at + length_size).ok_or(SeiError::Truncated {
            offset: at,
            length: 0,
            size: au.len(),
        })?;
        let length = prefix
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let start = at + length_size;
        let end = start + length;
        if end > au.len() {
            return Err(SeiError::Truncated {
                offset: at,
                length,
                size: au.len(),
            });
        }
        units.push(Unit {
            framing_at: at,
            start,
            end,
        });
        at = end;
    }
    Ok(units)
}

fn units(au: &[u8], framing: Framing) -> Result<Vec<Unit>, SeiError> {
    match framing {
        Framing::ByteStream => Ok(byte_stream_units(au)),
        Framing::Avc { length_size } => avc_units(au, length_size),
    }
}

/// Whether a NAL unit is a slice of a picture (non-IDR or IDR).
fn is_slice(nal: &[u8]) -> bool {
    matches!(nal.first().map(|h| h & 0x1f), Some(1 | 5))
}

/// `au` with `nal` (from [`stamp_nal`]) framed as `framing` says and put just before the first
/// slice: after any access unit delimiter, parameter sets and other SEI (a buffering period SEI
/// must stay the first one), before the picture.
pub fn insert(au: &[u8], framing: Framing, nal: &[u8]) -> Result<Vec<u8>, SeiError> {
    let at = units(au, framing)?
        .into_iter()
        .find(|u| is_slice(&au[u.start..u.end]))
        .ok_or(SeiError::NoSlice)?
        .framing_at;
    let mut out = Vec::with_capacity(au.len() + nal.len() + 4);
    out.extend_from_slice(&au[..at]);
    match framing {
        Framing::ByteStream => out.extend_from_slice(&[0, 0, 0, 1]),
        Framing::Avc { length_size } => {
            let len = nal.len() as u64;
            if length_size < 8 && len >> (8 * length_size) != 0 {
                return Err(SeiError::LengthSize(length_size));
            }
            out.extend_from_slice(&len.to_be_bytes()[8 - length_size..]);
        }
    }
    out.extend_from_slice(nal);
    out.extend_from_slice(&au[at..]);
    Ok(out)
}

/// The capture times (UTC ms) of every Spotter stamp in `au`, in order: one for a stamped frame.
/// Other SEI messages, other UUIDs and stamp versions this code does not know are passed over.
pub fn find_stamps(au: &[u8], framing: Framing) -> Result<Vec<u64>, SeiError> {
    let mut found = Vec::new();
    for u in units(au, framing)? {
        let nal = &au[u.start..u.end];
        if nal.first().map(|h| h & 0x1f) == Some(NAL_SEI) {
            sei_stamps(&unescape(&nal[1..]), &mut found);
        }
    }
    Ok(found)
}

/// Reads one `ff`-extended SEI number (payloadType or payloadSize) at `*at`.
fn sei_number(rbsp: &[u8], at: &mut usize) -> Option<u32> {
    let mut value = 0u32;
    loop {
        let b = *rbsp.get(*at)?;
        *at += 1;
        value = value.checked_add(u32::from(b))?;
        if b != 0xff {
            return Some(value);
        }
    }
}

/// Pushes the capture time of every Spotter message in an SEI RBSP onto `found`.
fn sei_stamps(rbsp: &[u8], found: &mut Vec<u64>) {
    let mut at = 0;
    // a message starts wherever more than the trailing bits' byte is left
    while at + 1 < rbsp.len() {
        let (Some(kind), Some(size)) = (sei_number(rbsp, &mut at), sei_number(rbsp, &mut at))
        else {
            return;
        };
        let Some(payload) = rbsp.get(at..at + size as usize) else {
            return;
        };
        at += size as usize;
        if kind != USER_DATA_UNREGISTERED || payload.len() < PAYLOAD_LEN {
            continue;
        }
        if payload[..16] == SPOTTER_UUID && payload[16] == STAMP_VERSION {
            let mut ms = [0u8; 8];
            ms.copy_from_slice(&payload[17..25]);
            found.push(u64::from_be_bytes(ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A non-IDR slice header's first bytes, as x264 writes them.
    const SLICE: [u8; 6] = [0x41, 0x9a, 0x21, 0x6c, 0x41, 0x00];
    const IDR: [u8; 5] = [0x65, 0x88, 0x84, 0x00, 0x33];
    const SPS: [u8; 4] = [0x67, 0x4d, 0x40, 0x1f];
    const PPS: [u8; 3] = [0x68, 0xee, 0x3c];
    const AUD: [u8; 2] = [0x09, 0xf0];

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| [&[0, 0, 0, 1][..], n].concat())
            .collect()
    }

    fn avc(nals: &[&[u8]], length_size: usize) -> Vec<u8> {
        nals.iter()
            .flat_map(|n| {
                let len = (n.len() as u64).to_be_bytes();
                [&len[8 - length_size..], n].concat()
            })
            .collect()
    }

    #[test]
    fn the_stamp_is_the_specified_bytes_with_emulation_prevention() {
        // 2026-12-07T21:50:08Z: 00 00 01 a2 52 7c 4e 80
        let ms = 1_796_680_208_000u64;
        assert_eq!(ms.to_be_bytes()[..3], [0, 0, 1]);
        let nal = stamp_nal(ms);
        let mut want = vec![0x06, 0x05, 0x19];
        want.extend_from_slice(b"spotter capture!");
        want.extend_from_slice(&[0x01, 0x00, 0x00, 0x03, 0x01]);
        want.extend_from_slice(&ms.to_be_bytes()[3..]);
        want.push(0x80);
        assert_eq!(nal, want);
        assert_eq!(
            SPOTTER_UUID,
            [
                0x73, 0x70, 0x6f, 0x74, 0x74, 0x65, 0x72, 0x20, 0x63, 0x61, 0x70, 0x74, 0x75, 0x72,
                0x65, 0x21
            ]
        );
    }

    #[test]
    fn byte_stream_stamp_goes_after_parameter_sets_and_before_the_first_slice() {
        let au = annex_b(&[&AUD, &SPS, &PPS, &IDR, &IDR]);
        let nal = stamp_nal(42);
        let out = insert(&au, Framing::ByteStream, &nal).expect("stamped");
        assert_eq!(out, annex_b(&[&AUD, &SPS, &PPS, &nal, &IDR, &IDR]));
        assert_eq!(find_stamps(&out, Framing::ByteStream), Ok(vec![42]));
        assert_eq!(find_stamps(&au, Framing::ByteStream), Ok(vec![]));
    }

    #[test]
    fn byte_stream_with_three_byte_start_codes_and_trailing_zeros() {
        let mut au = vec![0, 0, 1];
        au.extend_from_slice(&PPS);
        au.extend_from_slice(&[0, 0, 0, 0, 1]);
        au.extend_from_slice(&SLICE);
        let nal = stamp_nal(7);
        let out = insert(&au, Framing::ByteStream, &nal).expect("stamped");
        let mut want = vec![0, 0, 1];
        want.extend_from_slice(&PPS);
        want.push(0); // the PPS's trailing zero stays behind it
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&nal);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&SLICE);
        assert_eq!(out, want);
        assert_eq!(find_stamps(&out, Framing::ByteStream), Ok(vec![7]));
    }

    #[test]
    fn avc_stamp_is_length_prefixed_before_the_first_slice() {
        for length_size in [1, 2, 4] {
            let framing = Framing::Avc { length_size };
            let au = avc(&[&SPS, &PPS, &SLICE], length_size);
            let nal = stamp_nal(u64::MAX);
            let out = insert(&au, framing, &nal).expect("stamped");
            assert_eq!(out, avc(&[&SPS, &PPS, &nal, &SLICE], length_size));
            assert_eq!(find_stamps(&out, framing), Ok(vec![u64::MAX]));
        }
    }

    #[test]
    fn an_access_unit_without_a_slice_is_refused() {
        let au = annex_b(&[&SPS, &PPS]);
        assert_eq!(
            insert(&au, Framing::ByteStream, &stamp_nal(1)),
            Err(SeiError::NoSlice)
        );
    }

    #[test]
    fn a_truncated_avc_access_unit_is_refused_with_where() {
        let mut au = avc(&[&SLICE], 4);
        au.truncate(au.len() - 1);
        assert_eq!(
            find_stamps(&au, Framing::Avc { length_size: 4 }),
            Err(SeiError::Truncated {
                offset: 0,
                length: 6,
                size: 9
            })
        );
    }

    #[test]
    fn length_size_comes_from_the_avcc_record() {
        let avcc = [1, 0x4d, 0x40, 0x1f, 0xff, 0xe1, 0, 4];
        assert_eq!(
            Framing::from_avcc(&avcc),
            Ok(Framing::Avc { length_size: 4 })
        );
        assert_eq!(
            Framing::from_avcc(&[1, 0x4d, 0x40, 0x1f, 0xfd]),
            Ok(Framing::Avc { length_size: 2 })
        );
        assert_eq!(Framing::from_avcc(&[1, 2]), Err(SeiError::CodecData));
        assert_eq!(
            Framing::from_avcc(&[0, 0x4d, 0x40, 0x1f, 0xff]),
            Err(SeiError::CodecData)
        );
    }

    #[test]
    fn other_sei_messages_and_uuids_are_passed_over() {
        // one SEI NAL: a recovery point (type 6, 1 byte), a foreign user_data_unregistered, and
        // ours, then a stamp of an unknown version in its own NAL
        let mut rbsp = vec![6, 1, 0x84];
        rbsp.extend_from_slice(&[5, 17]);
        rbsp.extend_from_slice(&[0xaa; 16]);
        rbsp.push(0x42);
        rbsp.extend_from_slice(&[5, 25]);
        rbsp.extend_from_slice(&SPOTTER_UUID);
        rbsp.push(1);
        rbsp.extend_from_slice(&99u64.to_be_bytes());
        rbsp.push(0x80);
        let mut sei = vec![NAL_SEI];
        escape_into(&rbsp, &mut sei);
        let mut v2 = stamp_nal(5);
        v2[3 + 16] = 2;
        let au = annex_b(&[&sei, &v2, &SLICE]);
        assert_eq!(find_stamps(&au, Framing::ByteStream), Ok(vec![99]));
    }

    fn nal_body() -> impl Strategy<Value = Vec<u8>> {
        // zeros are frequent, so runs that need escaping are too
        proptest::collection::vec(prop_oneof![Just(0u8), Just(3u8), any::<u8>()], 1..40)
    }

    /// A NAL unit of type `kind` with an escaped body (no start code can appear inside it).
    fn escaped(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut nal = vec![kind];
        escape_into(body, &mut nal);
        // a NAL unit's last byte is never zero (rbsp_stop_one_bit)
        nal.push(0x80);
        nal
    }

    proptest! {
        #[test]
        fn escaping_round_trips_and_leaves_no_start_code(body in nal_body()) {
            let mut out = Vec::new();
            escape_into(&body, &mut out);
            prop_assert_eq!(unescape(&out), body);
            prop_assert!(!out.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 3
                && w != [0, 0, 3]));
        }

        #[test]
        fn any_time_round_trips_in_both_framings(
            ms in prop_oneof![any::<u64>(), 0u64..0x0100_0000, Just(0u64), Just(0x0300_0000_0000_0003)],
            before in proptest::collection::vec(prop_oneof![Just(6u8), Just(7u8), Just(8u8), Just(9u8)], 0..4),
            slices in 1usize..4,
            bodies in proptest::collection::vec(nal_body(), 8),
            length_size in prop_oneof![Just(2usize), Just(4usize)],
        ) {
            let nal = stamp_nal(ms);
            prop_assert!(!nal.windows(3).any(|w| w[0] == 0 && w[1] == 0 && w[2] <= 2));
            let mut nals: Vec<Vec<u8>> = before.iter().zip(&bodies).map(|(k, b)| escaped(*k, b)).collect();
            for s in 0..slices {
                nals.push(escaped(if s == 0 { 5 } else { 1 }, &bodies[4 + s]));
            }
            let refs: Vec<&[u8]> = nals.iter().map(Vec::as_slice).collect();
            let first_slice = before.len();

            let au = annex_b(&refs);
            let out = insert(&au, Framing::ByteStream, &nal).expect("byte-stream stamped");
            prop_assert_eq!(find_stamps(&out, Framing::ByteStream), Ok(vec![ms]));
            let mut want = refs.clone();
            want.insert(first_slice, &nal);
            prop_assert_eq!(out, annex_b(&want));

            let framing = Framing::Avc { length_size };
            let au = avc(&refs, length_size);
            let out = insert(&au, framing, &nal).expect("avc stamped");
            prop_assert_eq!(find_stamps(&out, framing), Ok(vec![ms]));
            prop_assert_eq!(out, avc(&want, length_size));
        }
    }
}
