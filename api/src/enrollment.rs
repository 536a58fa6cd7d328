//! Node enrollment on the wire: the join token `otxj_<32 hex secret>_<64 hex CA
//! fingerprint>` (format and parse, pure), certificate fingerprints, and the bodies of
//! `POST /v1/nodes/{name}/join-token`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What every join token starts with.
pub const JOIN_TOKEN_PREFIX: &str = "otxj_";
/// Hex characters of the random part of a join token.
pub const JOIN_SECRET_HEX_LEN: usize = 32;
/// Hex characters of a certificate fingerprint (SHA-256 of the DER bytes).
pub const FINGERPRINT_HEX_LEN: usize = 64;
/// Default and maximum lifetime of a join token.
pub const JOIN_TOKEN_DEFAULT_TTL_SECS: u64 = 3600;
pub const JOIN_TOKEN_MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// The fingerprint of a certificate: SHA-256 over its DER bytes as 64 lowercase hex
/// characters, how otherix prints, pins and stores certificates (server, CLI and agent
/// all use this one function).
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(der))
}

/// A parsed join token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 32 lowercase hex characters; the server stores only its SHA-256.
    pub secret: String,
    /// The cluster CA's fingerprint the agent pins when it first connects.
    pub ca_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenError {
    #[error("not a join token: expected otxj_<32 hex>_<64 hex>, got {0}")]
    Malformed(String),
}

/// True for `len` lowercase hex characters.
fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for a fingerprint as otherix prints it: 64 lowercase hex characters.
pub fn is_fingerprint(s: &str) -> bool {
    is_lower_hex(s, FINGERPRINT_HEX_LEN)
}

impl JoinToken {
    /// Parses `otxj_<secret>_<fingerprint>`; surrounding whitespace is ignored. The error
    /// never echoes a token that might be real, only its shape.
    pub fn parse(s: &str) -> Result<JoinToken, JoinTokenError> {
        let s = s.trim();
        let shape = || {
            JoinTokenError::Malformed(format!(
                "{} characters{}",
                s.len(),
                if s.starts_with(JOIN_TOKEN_PREFIX) {
                    " starting with otxj_"
                } else {
                    ""
                }
            ))
        };
        let rest = s.strip_prefix(JOIN_TOKEN_PREFIX).ok_or_else(shape)?;
        let (secret, fingerprint) = rest.split_once('_').ok_or_else(shape)?;
        if !is_lower_hex(secret, JOIN_SECRET_HEX_LEN) || !is_fingerprint(fingerprint) {
            return Err(shape());
        }
        Ok(JoinToken {
            secret: secret.to_owned(),
            ca_fingerprint: fingerprint.to_owned(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{JOIN_TOKEN_PREFIX}{}_{}",
            self.secret, self.ca_fingerprint
        )
    }
}

/// `POST /v1/nodes/{name}/join-token` body (may be empty or `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinTokenRequest {
    /// Lifetime in seconds: 1 to 7 days' worth, default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /v1/nodes/{name}/join-token` answer (201). The token is shown only here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct JoinTokenResponse {
    pub node: String,
    pub token: String,
    /// RFC 3339 UTC.
    pub expires_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "3f9a000000000000000000000000000000000000000000000000000000000001";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn join_token_round_trips_through_display_and_parse() {
        let t = JoinToken {
            secret: SECRET.into(),
            ca_fingerprint: FP.into(),
        };
        let text = t.to_string();
        assert_eq!(text, format!("otxj_{SECRET}_{FP}"));
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), t);
    }

    #[test]
    fn join_token_malformed_inputs_are_refused() {
        let upper = format!("otxj_{}_{FP}", SECRET.to_uppercase());
        let short = format!("otxj_{}_{FP}", &SECRET[1..]);
        let cases = [
            "",
            "otxj_",
            "otx_abc",
            &format!("otxj_{SECRET}"),
            &format!("otxj_{SECRET}_{}", &FP[1..]),
            &format!("otxj_{SECRET}_{FP}0"),
            &upper,
            &short,
            &format!("otxk_{SECRET}_{FP}"),
            &format!("otxj_{SECRET}_{FP}_x"),
        ];
        for c in cases {
            assert!(JoinToken::parse(c).is_err(), "{c:?} parsed");
        }
    }

    #[test]
    fn join_token_error_does_not_echo_the_input() {
        let secretish = format!("otxj_{SECRET}_nothex");
        let err = JoinToken::parse(&secretish).unwrap_err().to_string();
        assert!(!err.contains(SECRET), "{err}");
    }

    #[test]
    fn is_fingerprint_needs_64_lowercase_hex() {
        assert!(is_fingerprint(FP));
        assert!(!is_fingerprint(&FP.to_uppercase()));
        assert!(!is_fingerprint(&FP[1..]));
        assert!(!is_fingerprint(&format!("{}:", &FP[1..])));
    }
}
