//! Identity wire types: API token roles and records, the caller (`whoami`), and projects
//! with their quotas and usage.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The project every installation has; VMs land there unless told otherwise.
pub const DEFAULT_PROJECT: &str = "default";

/// What a token may do. Admins do everything in every project and write cluster-wide
/// entities; members manage VMs and tasks of their project; viewers only read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub project: String,
    pub role: Role,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    /// The token that created this one.
    pub created_by: String,
    /// Tokens are never rewritten; `If-Match` on `DELETE /v1/tokens/{name}` may name it.
    /// 0 in JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    #[serde(default = "default_project_name")]
    pub project: String,
    pub role: Role,
    /// Lifetime in seconds; absent = never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
}

/// Serde default of `project` fields: requests that name none, and objects written
/// before projects existed.
pub fn default_project_name() -> String {
    DEFAULT_PROJECT.to_owned()
}

/// The 201 answer of `POST /v1/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatedToken {
    pub token: Token,
    pub secret: String,
}

/// `GET /v1/whoami`: the caller as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
    pub project: String,
}

/// A project's limits; an absent limit is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_mb: Option<u64>,
}

/// What a project's live VMs hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUsage {
    pub vms: u64,
    pub vcpus: u64,
    pub memory_mb: u64,
}

/// A project: VMs and tasks belong to one; names are unique within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub spec: ProjectSpec,
    pub usage: ProjectUsage,
    /// Moves on every write of the project's spec or annotations: the optimistic concurrency token that
    /// `If-Match` on its `PUT` and `DELETE` names (Kubernetes' `resourceVersion`). 0 in
    /// JSON from servers that predate it.
    #[serde(default)]
    pub resource_version: i64,
}

/// Which quota a change would break, if any, named with the limit and the usage before
/// and after the change. Only growth is refused: a change that keeps a value at or below
/// where it was passes even over a limit lowered since. Pure, so the rule is table-tested
/// here and the store only supplies the numbers.
pub fn quota_violation(
    spec: &ProjectSpec,
    before: &ProjectUsage,
    after: &ProjectUsage,
) -> Option<String> {
    let checks = [
        ("max_vms", spec.max_vms, before.vms, after.vms),
        ("max_vcpus", spec.max_vcpus, before.vcpus, after.vcpus),
        (
            "max_memory_mb",
            spec.max_memory_mb,
            before.memory_mb,
            after.memory_mb,
        ),
    ];
    checks
        .into_iter()
        .find_map(|(limit_name, limit, was, value)| {
            let limit = limit?;
            (value > limit && value > was)
                .then(|| format!("{limit_name} is {limit}: {was} in use, {value} with this change"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_parse_round_trips_and_rejects_unknown() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn quota_violation_names_first_broken_limit() {
        let spec = ProjectSpec {
            max_vms: Some(3),
            max_vcpus: Some(4),
            max_memory_mb: None,
        };
        let usage = |vms, vcpus, memory_mb| ProjectUsage {
            vms,
            vcpus,
            memory_mb,
        };
        let table = [
            (usage(2, 2, 0), usage(3, 4, 999_999), None),
            (
                usage(3, 2, 0),
                usage(4, 4, 0),
                Some("max_vms is 3: 3 in use, 4 with this change"),
            ),
            (
                usage(1, 3, 0),
                usage(1, 5, 0),
                Some("max_vcpus is 4: 3 in use, 5 with this change"),
            ),
            // Already over a lowered limit, but not growing: allowed.
            (usage(1, 6, 0), usage(1, 6, 10), None),
        ];
        for (before, after, want) in table {
            assert_eq!(
                quota_violation(&spec, &before, &after).as_deref(),
                want,
                "{after:?}"
            );
        }
        assert_eq!(
            quota_violation(
                &ProjectSpec::default(),
                &usage(0, 0, 0),
                &usage(1000, 1000, 1000)
            ),
            None
        );
    }
}
