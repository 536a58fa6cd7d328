//! The crate's one error type.

use otherix_api::ManifestError;

/// What an [`crate::ApplyTarget`] reports when the server (or service) refuses or cannot
/// be reached; its `Display` is what users see (`immutable_field: ...`).
pub type TargetError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Manifests that do not parse or validate; nothing was applied. Each entry prints as
    /// `file:line:column: field: rule`.
    #[error("{}", join_errors(.0))]
    Invalid(Vec<ManifestError>),
    /// A manifest file or directory could not be read.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A path given to `-f` declares no objects.
    #[error("no objects found in {path}")]
    NoObjects { path: String },
    /// A live object the server returned cannot be projected to a manifest.
    #[error("cannot project live {reference} as a manifest: {message}")]
    Project { reference: String, message: String },
    /// A typed manifest could not be rendered as YAML.
    #[error("cannot render YAML")]
    Yaml(#[from] serde_yaml::Error),
    /// The filesystem watcher failed.
    #[error("cannot watch the manifest directory")]
    Watch(#[from] notify::Error),
    /// The apply target (HTTP server or service) failed.
    #[error(transparent)]
    Target(TargetError),
}

fn join_errors(errors: &[ManifestError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// Wraps any target-side error.
    pub fn target(e: impl Into<TargetError>) -> Self {
        Error::Target(e.into())
    }
}
