//! Value codec: one format-version byte, then bincode 2 (standard config) of a serde struct.
//!
//! bincode is not self-describing: adding a field to a struct makes every value written before
//! undecodable. The leading byte says which layout a value was written with, so a later release
//! can keep an old layout's struct and convert it on read instead of failing on old databases.

use serde::{de::DeserializeOwned, Serialize};

use super::StoreError;

/// Most bytes a decode may claim (string and sequence lengths added up). A damaged value can
/// claim any length; bincode allocates what is claimed before reading it, so without a bound one
/// bad byte would ask for exabytes and abort the process (found by `fuzz/`'s `stored_value`).
/// The largest record written (the presence snapshot of a busy server) stays far below it.
const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// A value kept in one of the store's trees, with the layout version it is written at.
pub trait Record: Serialize + DeserializeOwned {
    /// What the value is, for error messages ("user", "message", …).
    const KIND: &'static str;
    /// The layout version written in front of new values.
    const VERSION: u8;
}

/// Encodes `value` as `[R::VERSION, bincode…]`.
pub fn encode<R: Record>(value: &R) -> Vec<u8> {
    let mut out = vec![R::VERSION];
    // Encoding our own plain structs into a Vec cannot fail: no maps with non-string keys,
    // no sequences of unknown length.
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .expect("bincode encoding of a store record into a Vec");
    out
}

/// Decodes a value written by [`encode`], naming the record kind and key on failure.
pub fn decode<R: Record>(bytes: &[u8], key: &[u8]) -> Result<R, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        kind: R::KIND,
        key: String::from_utf8_lossy(key).into_owned(),
        detail,
    };
    let (&version, payload) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty value".into()))?;
    if version != R::VERSION {
        return Err(corrupt(format!(
            "layout version {version}, this build reads version {}",
            R::VERSION
        )));
    }
    let (value, used) = bincode::serde::decode_from_slice::<R, _>(
        payload,
        bincode::config::standard().with_limit::<MAX_DECODED_BYTES>(),
    )
    .map_err(|e| corrupt(e.to_string()))?;
    if used != payload.len() {
        return Err(corrupt(format!("{} trailing bytes", payload.len() - used)));
    }
    Ok(value)
}

/// Decodes a value written either by [`encode`] at `R`'s layout or at an older layout `Old`,
/// converting the old one.
pub fn decode_upgrading<R: Record, Old: Record + Into<R>>(
    bytes: &[u8],
    key: &[u8],
) -> Result<R, StoreError> {
    match bytes.first() {
        Some(&version) if version == Old::VERSION => decode::<Old>(bytes, key).map(Into::into),
        _ => decode::<R>(bytes, key),
    }
}

/// The first two string fields of a value without decoding (or copying) the rest: for scans
/// that look at many messages' authors and texts. `None` if the value is damaged.
pub fn decode_head(bytes: &[u8]) -> Option<(&str, &str)> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        first: &'a str,
        second: &'a str,
    }
    let (head, _) = bincode::serde::borrow_decode_from_slice::<Head, _>(
        bytes.get(1..)?,
        bincode::config::standard().with_limit::<MAX_DECODED_BYTES>(),
    )
    .ok()?;
    Some((head.first, head.second))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Sample {
        name: String,
        n: u64,
        opt: Option<String>,
    }
    impl Record for Sample {
        const KIND: &'static str = "sample";
        const VERSION: u8 = 3;
    }

    #[test]
    fn round_trips_with_version_byte() {
        let v = Sample {
            name: "a".into(),
            n: 7,
            opt: None,
        };
        let bytes = encode(&v);
        assert_eq!(bytes[0], 3);
        assert_eq!(decode::<Sample>(&bytes, b"k").unwrap(), v);
    }

    #[test]
    fn rejects_other_versions_truncation_and_garbage() {
        let mut bytes = encode(&Sample {
            name: "abc".into(),
            n: 1,
            opt: Some("x".into()),
        });
        let mut wrong = bytes.clone();
        wrong[0] = 4;
        assert!(matches!(
            decode::<Sample>(&wrong, b"k"),
            Err(StoreError::Corrupt { .. })
        ));
        bytes.truncate(bytes.len() - 1);
        assert!(decode::<Sample>(&bytes, b"k").is_err());
        assert!(decode::<Sample>(&[], b"k").is_err());
        assert!(decode::<Sample>(&[3, 0xff, 0xff, 0xff], b"k").is_err());
    }

    #[test]
    fn a_claimed_length_beyond_the_bound_is_corrupt_not_an_allocation() {
        // Version byte, then a string length of 2^56 (bincode varint: 0xfd + u64 LE).
        let mut bytes = vec![3, 0xfd];
        bytes.extend_from_slice(&(1u64 << 56).to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&bytes, b"k"),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
