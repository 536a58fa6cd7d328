//! The opaque pagination cursor: hex of the JSON `{"t": created_at_ms, "id": uuid}` key
//! of the last item of a page. Pure encode/decode; a bad cursor is 400 validation_failed.

use otherix_api::ApiError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CursorKey {
    t: i64,
    id: Uuid,
}

/// Encodes a (created_at_ms, id) keyset position.
pub fn encode_cursor((t, id): (i64, Uuid)) -> String {
    hex::encode(serde_json::to_vec(&CursorKey { t, id }).expect("cursor serializes"))
}

/// Decodes a cursor produced by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<(i64, Uuid), ApiError> {
    let invalid = || ApiError::validation("cursor: not a cursor returned by this server");
    let bytes = hex::decode(cursor).map_err(|_| invalid())?;
    let key: CursorKey = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    Ok((key.t, key.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::ErrorCode;

    #[test]
    fn cursor_round_trip_returns_same_key() {
        let key = (1_700_000_000_123, Uuid::new_v4());
        assert_eq!(decode_cursor(&encode_cursor(key)).unwrap(), key);
    }

    #[test]
    fn cursor_garbage_is_validation_failed() {
        let table = [
            "",
            "zz",
            "not-hex",
            &hex::encode("{}"),
            &hex::encode(r#"{"t":1}"#),
            &hex::encode(r#"{"t":"x","id":"00000000-0000-0000-0000-000000000000"}"#),
            &hex::encode(r#"{"t":1,"id":"nope"}"#),
        ];
        for input in table {
            let err = decode_cursor(input).expect_err(input);
            assert_eq!(err.code, ErrorCode::ValidationFailed, "{input}");
            assert!(err.message.starts_with("cursor:"), "{}", err.message);
        }
    }

    #[test]
    fn cursor_encoding_is_opaque_hex() {
        let c = encode_cursor((5, Uuid::nil()));
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
