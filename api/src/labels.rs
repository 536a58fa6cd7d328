//! Labels (`metadata.labels`) and label selectors (`-l key=value`, `?label=key=value`):
//! Kubernetes' syntax rules, as pure functions that name the field and the rule broken.
//!
//! Key: an optional prefix (a DNS subdomain: at most 253 lowercase letters, digits, '-'
//! and '.', each dot-separated part starting and ending alphanumeric) and '/', then a
//! name of 1..63 characters from `[A-Za-z0-9_.-]` starting and ending alphanumeric.
//! Value: empty, or 1..63 characters under the same rule as a key's name.
//! A selector is `key=value`; several selectors must all match (AND).

use std::collections::BTreeMap;

use crate::error::ApiError;

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

/// `key=value`: one equality requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector {
    pub key: String,
    pub value: String,
}

impl LabelSelector {
    /// Parses `key=value` (the value may be empty), checking both parts like labels.
    pub fn parse(field: &str, text: &str) -> Result<Self, ApiError> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(ApiError::validation(format!(
                "{field}: {text:?} is not a label selector: use key=value"
            )));
        };
        validate_key(field, key)?;
        validate_value(field, key, value)?;
        Ok(Self {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// True when `labels` has this key with exactly this value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

/// A selector list `key=value[,key=value...]` (as `-l` and `?label=` take it); empty text
/// is not a selector.
pub fn parse_selectors(field: &str, text: &str) -> Result<Vec<LabelSelector>, ApiError> {
    text.split(',')
        .map(|s| LabelSelector::parse(field, s))
        .collect()
}

/// True when every selector matches (AND; no selectors match everything).
pub fn matches_all(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> bool {
    selectors.iter().all(|s| s.matches(labels))
}

/// Checks every key and value of `labels`; `field` is e.g. `metadata.labels`.
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    for (key, value) in labels {
        validate_key(field, key)?;
        validate_value(field, key, value)?;
    }
    Ok(())
}

fn validate_key(field: &str, key: &str) -> Result<(), ApiError> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns_subdomain(prefix) {
            return Err(ApiError::validation(format!(
                "{field}: key {key:?}: the prefix before '/' must be a DNS subdomain: at most {MAX_PREFIX} lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit"
            )));
        }
    }
    if !is_label_name(name) {
        return Err(ApiError::validation(format!(
            "{field}: key {key:?}: the name must be 1..{MAX_NAME} letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn validate_value(field: &str, key: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(ApiError::validation(format!(
            "{field}: value {value:?} of {key:?} must be empty or 1..{MAX_NAME} letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        )))
    }
}

/// `[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?`, 1..63 long.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=MAX_NAME).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated lowercase labels, each starting and ending
/// alphanumeric, 1..253 long in all.
fn is_dns_subdomain(s: &str) -> bool {
    (1..=MAX_PREFIX).contains(&s.len())
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_selectors_table() {
        let keys = |text: &str| {
            parse_selectors("-l", text).map(|v| {
                v.into_iter()
                    .map(|s| format!("{}={}", s.key, s.value))
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(keys("app=web").unwrap(), ["app=web"]);
        assert_eq!(keys("app=web,tier=").unwrap(), ["app=web", "tier="]);
        assert!(keys("").unwrap_err().message.starts_with("-l: "));
        assert!(keys("app=web,").is_err());
        assert!(keys("app").is_err());
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_rules() {
        let long = "a".repeat(64);
        let max = "a".repeat(63);
        let long_prefix = format!("{}/x", "a".repeat(254));
        // (key, value, the rule named in the error, or None when valid)
        let table: &[(&str, &str, Option<&str>)] = &[
            ("app", "web", None),
            ("app", "", None),
            ("App_1.x-y", "V1.2_b-c", None),
            ("example.com/tier", "front", None),
            ("a.b-c.d/x", "1", None),
            (&max, &max, None),
            ("", "v", Some("the name must be")),
            ("-app", "v", Some("the name must be")),
            ("app-", "v", Some("the name must be")),
            ("a b", "v", Some("the name must be")),
            (&long, "v", Some("the name must be")),
            ("example.com/", "v", Some("the name must be")),
            ("Example.com/x", "v", Some("prefix before '/'")),
            ("/x", "v", Some("prefix before '/'")),
            ("a..b/x", "v", Some("prefix before '/'")),
            ("-a.com/x", "v", Some("prefix before '/'")),
            ("a/b/c", "v", Some("prefix before '/'")),
            (&long_prefix, "v", Some("prefix before '/'")),
            ("app", "-web", Some("value \"-web\"")),
            ("app", "web.", Some("must be empty or")),
            ("app", "a/b", Some("must be empty or")),
            ("app", &long, Some("must be empty or")),
        ];
        for (key, value, want) in table {
            let got = validate_labels("metadata.labels", &labels(&[(key, value)]));
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => {
                    assert!(e.message.starts_with("metadata.labels: "), "{e:?}");
                    assert!(e.message.contains(w), "{key:?}={value:?}: {}", e.message);
                }
                (got, _) => panic!("{key:?}={value:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn selector_parsing() {
        let table: &[(&str, Option<(&str, &str)>)] = &[
            ("app=web", Some(("app", "web"))),
            ("app=", Some(("app", ""))),
            (
                "example.com/tier=front",
                Some(("example.com/tier", "front")),
            ),
            ("app", None),
            ("=web", None),
            ("app=a=b", None),
            ("bad key=x", None),
        ];
        for (text, want) in table {
            let got = LabelSelector::parse("label", text);
            match (got, want) {
                (Ok(s), Some((k, v))) => assert_eq!((s.key.as_str(), s.value.as_str()), (*k, *v)),
                (Err(e), None) => assert!(e.message.starts_with("label: "), "{e:?}"),
                (got, _) => panic!("{text:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn selectors_and_together() {
        let vm = labels(&[("app", "web"), ("tier", "front")]);
        let sel = |texts: &[&str]| -> Vec<LabelSelector> {
            texts
                .iter()
                .map(|t| LabelSelector::parse("label", t).unwrap())
                .collect()
        };
        let table: &[(&[&str], bool)] = &[
            (&[], true),
            (&["app=web"], true),
            (&["app=web", "tier=front"], true),
            (&["app=web", "tier=back"], false),
            (&["app=db"], false),
            (&["env="], false),
            (&["APP=web"], false),
        ];
        for (texts, want) in table {
            assert_eq!(matches_all(&sel(texts), &vm), *want, "{texts:?}");
        }
    }
}
