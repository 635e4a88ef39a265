//! The byte encoding of store records, shared by every store that keeps bytes.
//!
//! [`PendingFlow::encode`] and [`CodeRecord::encode`] write it, [`PendingFlow::decode`] and
//! [`CodeRecord::decode`] read it back; a store is free to keep records some other way.
//! Decoding refuses anything but an exact encoding (a truncated or longer value, an unknown
//! version, method or state, a string that is not UTF-8) with [`StoreError::Backend`].
//!
//! # Layout (format version 1)
//!
//! ```text
//! pending flow:  version  challenge  client_id  redirect_uri  state
//! code record:   version  challenge  client_id  code-state  failures
//!
//! version     1 byte: FORMAT_VERSION (1)
//! challenge   b'N'                           no challenge (an exempt client's flow)
//!             b'S', 32 bytes                 S256: the SHA-256 digest
//!             b'P', 1 byte n, n bytes        plain: the value (43 to 128 bytes)
//! client_id, redirect_uri, state
//!             0                              absent (client_id is never absent)
//!             1, 4 bytes n (big-endian), n bytes of UTF-8
//! code-state  b'L' Live, b'R' Redeemed, b'B' Burned (CodeState::to_byte)
//! failures    4 bytes, big-endian u32
//! ```
//!
//! A code record's last [`CODE_TAIL_LEN`] bytes are its state and failure count, so a store
//! can change both in place without decoding the rest: `MemoryStore` does so under a shard
//! lock, `RedisStore` with `SETRANGE` in Lua scripts. Nothing else in a record ever changes.

use super::{CodeBinding, CodeRecord, CodeState, PendingFlow, StoreError};
use crate::pkce::CodeChallenge;

/// The first byte of every encoded record.
pub const FORMAT_VERSION: u8 = 1;

/// The bytes at the end of an encoded [`CodeRecord`] that hold its state (one byte,
/// [`CodeState::to_byte`]) and failure count (a big-endian `u32`).
pub const CODE_TAIL_LEN: usize = 5;

/// [`PendingFlow::encode`] of a flow with these parts, without making the flow first.
pub(crate) fn encode_flow(
    challenge: Option<&CodeChallenge>,
    client_id: &str,
    redirect_uri: Option<&str>,
    state: Option<&str>,
) -> Vec<u8> {
    let strings = [Some(client_id), redirect_uri, state];
    let len = 1 + challenge_len(challenge) + strings.iter().map(|s| str_len(*s)).sum::<usize>();
    // Exactly the length: the memory store keeps this allocation as it is.
    let mut out = Vec::with_capacity(len);
    out.push(FORMAT_VERSION);
    write_challenge(&mut out, challenge);
    strings.iter().for_each(|s| write_str(&mut out, *s));
    debug_assert_eq!(out.len(), len);
    out
}

/// [`CodeRecord::encode`] of a record with these parts, without making the record first.
pub(crate) fn encode_code(
    challenge: Option<&CodeChallenge>,
    client_id: &str,
    state: CodeState,
    failures: u32,
) -> Vec<u8> {
    let len = 1 + challenge_len(challenge) + str_len(Some(client_id)) + CODE_TAIL_LEN;
    let mut out = Vec::with_capacity(len);
    out.push(FORMAT_VERSION);
    write_challenge(&mut out, challenge);
    write_str(&mut out, Some(client_id));
    out.push(state.to_byte());
    out.extend_from_slice(&failures.to_be_bytes());
    debug_assert_eq!(out.len(), len);
    out
}

pub(crate) fn decode_flow(bytes: &[u8]) -> Result<PendingFlow, StoreError> {
    let mut r = Reader::new(bytes)?;
    let challenge = r.challenge()?;
    let client_id = r.str()?.ok_or_else(corrupt)?;
    let redirect_uri = r.str()?;
    let state = r.str()?;
    r.end()?;
    Ok(PendingFlow {
        challenge,
        client_id,
        redirect_uri,
        state,
    })
}

pub(crate) fn decode_code(bytes: &[u8]) -> Result<CodeRecord, StoreError> {
    let mut r = Reader::new(bytes)?;
    let challenge = r.challenge()?;
    let client_id = r.str()?.ok_or_else(corrupt)?;
    let state = CodeState::from_byte(r.byte()?).ok_or_else(corrupt)?;
    let failures = u32::from_be_bytes(r.array()?);
    r.end()?;
    Ok(CodeRecord {
        binding: CodeBinding {
            challenge,
            client_id,
        },
        state,
        failures,
    })
}

/// An encoded code record's state byte and failure count, to change in place; `None` if the
/// value is too short to be a code record.
#[inline]
pub(crate) fn code_tail_mut(record: &mut [u8]) -> Option<(&mut u8, &mut [u8; 4])> {
    let (state, failures) = record
        .last_chunk_mut::<CODE_TAIL_LEN>()?
        .split_first_mut()?;
    Some((state, failures.try_into().ok()?))
}

pub(crate) fn corrupt() -> StoreError {
    StoreError::backend("corrupt record")
}

fn challenge_len(challenge: Option<&CodeChallenge>) -> usize {
    challenge.map_or(1, CodeChallenge::written_len)
}

fn str_len(value: Option<&str>) -> usize {
    value.map_or(1, |v| 5 + v.len())
}

fn write_challenge(out: &mut Vec<u8>, challenge: Option<&CodeChallenge>) {
    match challenge {
        Some(challenge) => challenge.write_to(out),
        None => out.push(b'N'),
    }
}

fn write_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        // Values longer than u32::MAX cannot reach a store: bodies are bounded far below.
        Some(value) => {
            out.push(1);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, StoreError> {
        match bytes.split_first() {
            Some((&FORMAT_VERSION, rest)) => Ok(Self(rest)),
            _ => Err(corrupt()),
        }
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (&b, rest) = self.0.split_first().ok_or_else(corrupt)?;
        self.0 = rest;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        self.take(N)?.try_into().map_err(|_| corrupt())
    }

    fn challenge(&mut self) -> Result<Option<CodeChallenge>, StoreError> {
        if self.0.first() == Some(&b'N') {
            self.0 = self.0.get(1..).unwrap_or_default();
            return Ok(None);
        }
        let (challenge, used) = CodeChallenge::read_from(self.0).ok_or_else(corrupt)?;
        self.take(used)?;
        Ok(Some(challenge))
    }

    fn str(&mut self) -> Result<Option<Box<str>>, StoreError> {
        if self.byte()? == 0 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        let value = std::str::from_utf8(bytes).map_err(|_| corrupt())?;
        Ok(Some(value.into()))
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(corrupt())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkce::ChallengeMethod;
    use sha2::Digest as _;

    fn s256() -> CodeChallenge {
        CodeChallenge::parse(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            ChallengeMethod::S256,
        )
        .unwrap()
    }

    #[test]
    fn flows_round_trip() {
        let flows = [
            PendingFlow::new(
                Some(s256()),
                "app",
                Some("https://app.example/cb"),
                Some("xyz é"),
            ),
            PendingFlow::new(None, "svc", None, None),
            PendingFlow::new(
                Some(CodeChallenge::parse(&"p".repeat(60), ChallengeMethod::Plain).unwrap()),
                "",
                None,
                Some(""),
            ),
        ];
        for flow in flows {
            let bytes = flow.encode();
            assert_eq!(PendingFlow::decode(&bytes).unwrap(), flow);
            // Every truncation is refused, never misread.
            for cut in 0..bytes.len() {
                assert!(PendingFlow::decode(&bytes[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(PendingFlow::decode(&longer).is_err());
        }
    }

    #[test]
    fn code_records_round_trip() {
        for (state, failures) in [
            (CodeState::Live, 0),
            (CodeState::Live, 4),
            (CodeState::Redeemed, 2),
            (CodeState::Burned, 5),
        ] {
            for challenge in [Some(s256()), None] {
                let record = CodeRecord::new(CodeBinding::new(challenge, "app"), state)
                    .with_failures(failures);
                let bytes = record.encode();
                assert_eq!(CodeRecord::decode(&bytes).unwrap(), record);
                for cut in 0..bytes.len() {
                    assert!(CodeRecord::decode(&bytes[..cut]).is_err());
                }
            }
        }
    }

    /// The layout as documented above, byte for byte: other stores (and Redis's scripts)
    /// rely on it.
    #[test]
    fn the_layout_is_the_documented_one() {
        let flow = PendingFlow::new(None, "ab", Some("c"), None);
        assert_eq!(
            flow.encode(),
            [
                &[1, b'N', 1, 0, 0, 0, 2][..],
                b"ab",
                &[1, 0, 0, 0, 1],
                b"c",
                &[0]
            ]
            .concat()
        );
        let plain = CodeChallenge::parse(&"p".repeat(43), ChallengeMethod::Plain).unwrap();
        let flow = PendingFlow::new(Some(plain), "", None, Some("s"));
        let expected = [
            &[1, b'P', 43][..],
            "p".repeat(43).as_bytes(),
            &[1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
            b"s",
        ]
        .concat();
        assert_eq!(flow.encode(), expected);

        let record = CodeRecord::new(CodeBinding::new(Some(s256()), "app"), CodeState::Redeemed)
            .with_failures(0x0102_0304);
        let bytes = record.encode();
        let mut expected = vec![1, b'S'];
        expected.extend_from_slice(&sha2::Sha256::digest(
            b"dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ));
        expected.extend_from_slice(&[1, 0, 0, 0, 3]);
        expected.extend_from_slice(b"app");
        expected.extend_from_slice(&[b'R', 1, 2, 3, 4]);
        assert_eq!(bytes, expected);
        assert_eq!(
            bytes[bytes.len() - CODE_TAIL_LEN],
            CodeState::Redeemed.to_byte()
        );
        for (state, byte) in [
            (CodeState::Live, b'L'),
            (CodeState::Redeemed, b'R'),
            (CodeState::Burned, b'B'),
        ] {
            assert_eq!(state.to_byte(), byte);
            assert_eq!(CodeState::from_byte(byte), Some(state));
        }
        assert_eq!(CodeState::from_byte(b'X'), None);
    }

    #[test]
    fn the_tail_of_a_code_record_changes_in_place() {
        let record = CodeRecord::new(CodeBinding::new(None, "app"), CodeState::Live);
        let mut bytes = record.encode();
        let (state, failures) = code_tail_mut(&mut bytes).unwrap();
        *state = CodeState::Burned.to_byte();
        *failures = 7u32.to_be_bytes();
        let changed = CodeRecord::decode(&bytes).unwrap();
        assert_eq!(
            (changed.state(), changed.failures()),
            (CodeState::Burned, 7)
        );
        assert_eq!(changed.binding(), record.binding());
        assert!(code_tail_mut(&mut [1, 2, 3, 4]).is_none());
    }

    #[test]
    fn other_versions_and_bytes_are_refused() {
        let mut bytes = PendingFlow::new(None, "app", None, None).encode();
        bytes[0] = 2;
        assert!(PendingFlow::decode(&bytes).is_err());
        let mut bytes = CodeRecord::new(CodeBinding::new(None, "app"), CodeState::Live).encode();
        let at = bytes.len() - CODE_TAIL_LEN;
        bytes[at] = b'X';
        assert!(CodeRecord::decode(&bytes).is_err());
        // A client_id that is not UTF-8.
        let bytes = [1, b'N', 1, 0, 0, 0, 1, 0xff, 0, 0];
        assert!(PendingFlow::decode(&bytes).is_err());
        // An absent client_id.
        assert!(PendingFlow::decode(&[1, b'N', 0, 0, 0]).is_err());
    }
}
