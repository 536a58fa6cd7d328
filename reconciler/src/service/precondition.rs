//! `If-Match` preconditions on writes of stored objects (VMs, pools, networks, firmware,
//! projects, tokens, the cluster settings): the header names the `resource_version` the
//! client last read; an object that moved on since is 409 `conflict` naming both versions
//! (Kubernetes' stale-`resourceVersion` answer). Pure.

use otherix_api::ApiError;

use crate::store::{StoreError, CAS_ATTEMPTS};

/// Parses an `If-Match` header value: a resource_version, bare (`7`) or as an entity tag
/// (`"7"`, `W/"7"`).
pub fn parse_if_match(raw: &str) -> Result<i64, ApiError> {
    let trimmed = raw.trim();
    let tag = trimmed.strip_prefix("W/").unwrap_or(trimmed);
    let inner = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    match inner.parse::<i64>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(ApiError::validation(format!(
            "If-Match: must be a resource_version (a positive integer), got {raw:?}"
        ))),
    }
}

/// Checks the client's `If-Match` (`expected`, if given) against the stored version of
/// the `kind` object `name`.
pub fn check_resource_version(
    kind: &str,
    name: &str,
    expected: Option<i64>,
    actual: i64,
) -> Result<(), ApiError> {
    match expected {
        Some(e) if e != actual => Err(stale(kind, name, e, Some(actual))),
        _ => Ok(()),
    }
}

/// The 409 of a stale write: `actual` is `None` when the object is gone.
pub fn stale(kind: &str, name: &str, expected: i64, actual: Option<i64>) -> ApiError {
    let actual = actual.map_or_else(|| format!("none (no such {kind})"), |a| a.to_string());
    ApiError::conflict(format!(
        "{kind} {name} was changed: expected resource_version {expected}, it is {actual}; \
         read it again and retry"
    ))
}

/// Whether a write that failed with `e` is tried again on a fresh read: only a lost
/// compare-and-swap race, only when the request named no `If-Match` (then the 409 is the
/// answer), and at most [`CAS_ATTEMPTS`] times.
pub fn retry_on_conflict(e: &StoreError, if_match: Option<i64>, attempt: &mut u32) -> bool {
    if e.is_conflict() && if_match.is_none() && *attempt < CAS_ATTEMPTS {
        *attempt += 1;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::ErrorCode;

    #[test]
    fn parse_if_match_table() {
        let cases: [(&str, Option<i64>); 10] = [
            ("7", Some(7)),
            (" 7 ", Some(7)),
            ("\"7\"", Some(7)),
            ("W/\"12\"", Some(12)),
            ("0", None),
            ("-3", None),
            ("*", None),
            ("", None),
            ("\"7", None),
            ("99999999999999999999", None),
        ];
        for (raw, want) in cases {
            let got = parse_if_match(raw);
            match want {
                Some(v) => assert_eq!(got.unwrap(), v, "{raw:?}"),
                None => assert_eq!(
                    got.unwrap_err().code,
                    ErrorCode::ValidationFailed,
                    "{raw:?}"
                ),
            }
        }
    }

    #[test]
    fn check_resource_version_table() {
        // (expected, actual, ok)
        let cases = [(None, 5, true), (Some(5), 5, true), (Some(4), 5, false)];
        for (expected, actual, ok) in cases {
            assert_eq!(
                check_resource_version("vm", "web-1", expected, actual).is_ok(),
                ok,
                "{expected:?} {actual}"
            );
        }
        let e = check_resource_version("vm", "web-1", Some(4), 5).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message
                .starts_with("vm web-1 was changed: expected resource_version 4, it is 5"),
            "{}",
            e.message
        );
        let e = check_resource_version("network", "lan", Some(1), 2).unwrap_err();
        assert!(
            e.message
                .starts_with("network lan was changed: expected resource_version 1, it is 2"),
            "{}",
            e.message
        );
    }

    #[test]
    fn stale_object_gone_says_so() {
        let e = stale("vm", "web-1", 3, None);
        assert!(
            e.message.contains("it is none (no such vm)"),
            "{}",
            e.message
        );
        let e = stale("pool", "fast", 3, None);
        assert!(
            e.message.contains("it is none (no such pool)"),
            "{}",
            e.message
        );
    }
}
