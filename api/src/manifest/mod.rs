//! Declarative manifests: the kinds ([`kinds`]), and parsing of multi-document YAML into
//! typed, validated objects with `file:line:column: field: rule` errors ([`parse`]).

pub mod kinds;
mod locate;
pub mod parse;

pub use kinds::*;
pub use parse::{parse_manifests, sort_for_apply, ManifestError, ParsedObject};
