//! Who is calling and what they may see: API token secrets (generation and hashing), the
//! authenticated [`Caller`], and the pure authorization rules in [`policy`]. The HTTP
//! layer (`api::auth`) applies them; the services only ever see a resolved project.

pub mod policy;

use otherix_api::Role;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub use policy::{authorize, resolve_scope, route_access, Access, ProjectScope};

/// Prefix of every API token secret (so secret scanners and humans recognise one).
pub const TOKEN_PREFIX: &str = "otx_";

/// The authenticated identity of a request: a token's name, role and project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub project: String,
}

/// A new random token secret: `otx_` + 48 lowercase hex digits (192 bits).
pub fn new_token_secret() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// What the store keeps of a secret: its hex sha256. Secrets are 192 random bits, so a
/// plain hash (no salt, no KDF) cannot be brute-forced and lookups stay one indexed read.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret of an `Authorization` header value, if it is a well-formed bearer token.
pub fn bearer_secret(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let secret = rest.trim();
    let hex_part = secret.strip_prefix(TOKEN_PREFIX)?;
    (hex_part.len() == 48 && hex_part.bytes().all(|b| b.is_ascii_hexdigit())).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_token_secret_is_well_formed_and_unique() {
        let a = new_token_secret();
        let b = new_token_secret();
        assert_ne!(a, b);
        assert_eq!(bearer_secret(&format!("Bearer {a}")), Some(a.as_str()));
    }

    #[test]
    fn bearer_secret_accepts_only_bearer_otx_tokens() {
        let good = format!("otx_{}", "a1".repeat(24));
        let table = [
            (format!("Bearer {good}"), true),
            (format!("bearer   {good} "), true),
            (format!("Basic {good}"), false),
            ("Bearer otx_short".to_owned(), false),
            (format!("Bearer {}", "a1".repeat(26)), false),
            (format!("Bearer otx_{}", "zz".repeat(24)), false),
            (String::new(), false),
        ];
        for (header, ok) in table {
            assert_eq!(bearer_secret(&header).is_some(), ok, "{header:?}");
        }
    }

    #[test]
    fn hash_secret_is_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
