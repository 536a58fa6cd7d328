//! `If-Match` preconditions on VM writes: the header names the `resource_version` the
//! client last read; a VM that moved on since is 409 `conflict` naming both versions
//! (Kubernetes' stale-`resourceVersion` answer). Pure.

use otherix_api::ApiError;

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

/// Checks the client's `If-Match` (`expected`, if given) against the stored version.
pub fn check_resource_version(
    vm: &str,
    expected: Option<i64>,
    actual: i64,
) -> Result<(), ApiError> {
    match expected {
        Some(e) if e != actual => Err(stale(vm, e, Some(actual))),
        _ => Ok(()),
    }
}

/// The 409 of a stale write: `actual` is `None` when the VM is gone.
pub fn stale(vm: &str, expected: i64, actual: Option<i64>) -> ApiError {
    let actual = actual.map_or_else(|| "none (no such vm)".to_owned(), |a| a.to_string());
    ApiError::conflict(format!(
        "vm {vm} was changed: expected resource_version {expected}, it is {actual}; \
         read it again and retry"
    ))
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
                check_resource_version("web-1", expected, actual).is_ok(),
                ok,
                "{expected:?} {actual}"
            );
        }
        let e = check_resource_version("web-1", Some(4), 5).unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(
            e.message.contains("expected resource_version 4, it is 5"),
            "{}",
            e.message
        );
    }

    #[test]
    fn stale_vm_gone_says_so() {
        let e = stale("web-1", 3, None);
        assert!(
            e.message.contains("it is none (no such vm)"),
            "{}",
            e.message
        );
    }
}
