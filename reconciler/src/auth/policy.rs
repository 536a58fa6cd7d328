//! The authorization rules, pure: which access class each route needs, which roles hold
//! each class, and which project a request is about. Table-tested; the HTTP layer only
//! feeds them the matched route, the caller and the query.

use otherix_api::{ApiError, Role};

use super::Caller;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any valid token (`whoami`, reading projects: the service filters what is shown).
    AnyCaller,
    /// Reading VMs, tasks and logs of a project: viewer, member, admin.
    ProjectRead,
    /// Changing VMs and tasks of a project: member, admin.
    ProjectWrite,
    /// Reading cluster-wide entities (nodes, pools, networks, firmware, settings) and
    /// `/metrics`: all roles.
    ClusterRead,
    /// Writing cluster-wide entities, tokens, projects, node enrollment: admin only.
    Admin,
}

/// The access a route needs, from its method and axum route pattern (`/v1/vms/{name}`).
/// `None` for a route this table does not know: the caller refuses it (a new route must
/// be classified here before anyone can use it).
pub fn route_access(method: &str, pattern: &str) -> Option<Access> {
    let read = matches!(method, "GET" | "HEAD");
    let project_scoped = pattern == "/v1/vms"
        || pattern.starts_with("/v1/vms/")
        || pattern == "/v1/apply"
        || pattern == "/v1/tasks"
        || pattern.starts_with("/v1/tasks/");
    let cluster_wide = [
        "/v1/nodes",
        "/v1/pools",
        "/v1/networks",
        "/v1/firmware",
        "/v1/cluster",
    ]
    .iter()
    .any(|p| pattern == *p || pattern.starts_with(&format!("{p}/")));
    let projects = pattern == "/v1/projects" || pattern.starts_with("/v1/projects/");
    let tokens = pattern == "/v1/tokens" || pattern.starts_with("/v1/tokens/");
    Some(match () {
        _ if pattern == "/v1/whoami" => Access::AnyCaller,
        // The API's description: any caller, like whoami.
        _ if pattern == "/v1/openapi.json" => Access::AnyCaller,
        // The change stream: the handler scopes VM, task and project events to the
        // caller's project(s); cluster-wide kinds are readable by every role anyway.
        _ if pattern == "/v1/events" && read => Access::ProjectRead,
        _ if pattern == "/v1/events" => Access::Admin,
        // Cluster-wide counts (no names): every role, like reading nodes.
        _ if pattern == "/metrics" && read => Access::ClusterRead,
        _ if pattern == "/metrics" => Access::Admin,
        _ if project_scoped && read => Access::ProjectRead,
        _ if project_scoped => Access::ProjectWrite,
        _ if cluster_wide && read => Access::ClusterRead,
        _ if cluster_wide => Access::Admin,
        _ if projects && read => Access::AnyCaller,
        _ if projects || tokens => Access::Admin,
        _ => return None,
    })
}

/// Whether `role` may use a route needing `access`; the 403 names what is missing.
pub fn authorize(
    caller: &Caller,
    access: Access,
    method: &str,
    path: &str,
) -> Result<(), ApiError> {
    let allowed = match (caller.role, access) {
        (Role::Admin, _) => true,
        (_, Access::AnyCaller | Access::ProjectRead | Access::ClusterRead) => true,
        (Role::Member, Access::ProjectWrite) => true,
        (Role::Viewer, Access::ProjectWrite) | (_, Access::Admin) => false,
    };
    if allowed {
        return Ok(());
    }
    let needs = match access {
        Access::ProjectWrite => "a member or admin token",
        _ => "an admin token",
    };
    Err(ApiError::forbidden(format!(
        "token {} ({}) may not {method} {path}; that needs {needs}",
        caller.name, caller.role
    )))
}

/// The project(s) a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectScope {
    One(String),
    All,
}

impl ProjectScope {
    /// The one project of a single-object request.
    pub fn one(&self) -> Result<&str, ApiError> {
        match self {
            ProjectScope::One(p) => Ok(p),
            ProjectScope::All => Err(ApiError::validation(
                "all_projects: only list requests can span projects",
            )),
        }
    }

    /// The project filter of a list (`None` = every project).
    pub fn filter(&self) -> Option<&str> {
        match self {
            ProjectScope::One(p) => Some(p),
            ProjectScope::All => None,
        }
    }
}

/// Resolves `?project=` / `?all_projects=true` for a caller: admins may name any project
/// or all; everyone else sees only their token's project, and another project's name is
/// answered as if it did not exist (404, never 403: existence is not disclosed).
pub fn resolve_scope(
    caller: &Caller,
    requested: Option<&str>,
    all_projects: bool,
) -> Result<ProjectScope, ApiError> {
    if all_projects {
        if requested.is_some() {
            return Err(ApiError::validation(
                "project and all_projects: give one or the other",
            ));
        }
        return match caller.role {
            Role::Admin => Ok(ProjectScope::All),
            _ => Err(ApiError::forbidden(format!(
                "token {} ({}) may not list all projects; that needs an admin token",
                caller.name, caller.role
            ))),
        };
    }
    match requested {
        None => Ok(ProjectScope::One(caller.project.clone())),
        Some(p) if caller.role == Role::Admin || p == caller.project => {
            Ok(ProjectScope::One(p.to_owned()))
        }
        Some(p) => Err(ApiError::not_found(format!("project {p} not found"))),
    }
}

/// Whether a caller may see an object of `project` (e.g. a task fetched by id).
pub fn may_see(caller: &Caller, project: &str) -> bool {
    caller.role == Role::Admin || caller.project == project
}

#[cfg(test)]
mod tests {
    use super::*;
    use otherix_api::ErrorCode;

    fn caller(role: Role) -> Caller {
        Caller {
            name: "t".into(),
            role,
            project: "a".into(),
        }
    }

    #[test]
    fn route_access_classifies_routes() {
        let table = [
            ("GET", "/v1/whoami", Some(Access::AnyCaller)),
            ("GET", "/v1/openapi.json", Some(Access::AnyCaller)),
            ("GET", "/v1/vms", Some(Access::ProjectRead)),
            ("POST", "/v1/vms", Some(Access::ProjectWrite)),
            ("PUT", "/v1/vms/{name}", Some(Access::ProjectWrite)),
            ("POST", "/v1/apply", Some(Access::ProjectWrite)),
            ("GET", "/v1/vms/{name}/logs", Some(Access::ProjectRead)),
            ("POST", "/v1/tasks/{id}/cancel", Some(Access::ProjectWrite)),
            ("GET", "/v1/tasks/{id}", Some(Access::ProjectRead)),
            ("GET", "/v1/nodes/{name}", Some(Access::ClusterRead)),
            ("POST", "/v1/nodes/{name}/join-token", Some(Access::Admin)),
            ("POST", "/v1/pools/{name}/prune-images", Some(Access::Admin)),
            ("PUT", "/v1/cluster", Some(Access::Admin)),
            ("GET", "/v1/projects/{name}", Some(Access::AnyCaller)),
            ("DELETE", "/v1/projects/{name}", Some(Access::Admin)),
            ("GET", "/v1/tokens", Some(Access::Admin)),
            ("GET", "/metrics", Some(Access::ClusterRead)),
            ("GET", "/v1/events", Some(Access::ProjectRead)),
            ("POST", "/v1/events", Some(Access::Admin)),
            ("POST", "/metrics", Some(Access::Admin)),
            ("GET", "/v1/vmsx", None),
            ("GET", "/v2/anything", None),
        ];
        for (method, pattern, want) in table {
            assert_eq!(route_access(method, pattern), want, "{method} {pattern}");
        }
    }

    #[test]
    fn authorize_roles_against_access() {
        use Access::*;
        let table = [
            (Role::Viewer, ProjectRead, true),
            (Role::Viewer, ClusterRead, true),
            (Role::Viewer, ProjectWrite, false),
            (Role::Viewer, Admin, false),
            (Role::Member, ProjectWrite, true),
            (Role::Member, Admin, false),
            (Role::Admin, Admin, true),
            (Role::Admin, ProjectWrite, true),
        ];
        for (role, access, ok) in table {
            let got = authorize(&caller(role), access, "POST", "/v1/x");
            assert_eq!(got.is_ok(), ok, "{role:?} {access:?}");
            if let Err(e) = got {
                assert_eq!(e.code, ErrorCode::Forbidden);
                assert!(e.message.contains("POST /v1/x"), "{}", e.message);
            }
        }
    }

    #[test]
    fn resolve_scope_hides_other_projects() {
        type Case<'a> = (Role, Option<&'a str>, bool, Result<ProjectScope, ErrorCode>);
        let table: [Case; 8] = [
            (Role::Member, None, false, Ok(ProjectScope::One("a".into()))),
            (
                Role::Member,
                Some("a"),
                false,
                Ok(ProjectScope::One("a".into())),
            ),
            (Role::Member, Some("b"), false, Err(ErrorCode::NotFound)),
            (Role::Viewer, Some("b"), false, Err(ErrorCode::NotFound)),
            (Role::Member, None, true, Err(ErrorCode::Forbidden)),
            (Role::Admin, None, true, Ok(ProjectScope::All)),
            (
                Role::Admin,
                Some("b"),
                false,
                Ok(ProjectScope::One("b".into())),
            ),
            (
                Role::Admin,
                Some("b"),
                true,
                Err(ErrorCode::ValidationFailed),
            ),
        ];
        for (role, requested, all, want) in table {
            let got = resolve_scope(&caller(role), requested, all).map_err(|e| e.code);
            assert_eq!(got, want, "{role:?} {requested:?} {all}");
        }
    }

    #[test]
    fn may_see_own_project_or_admin() {
        assert!(may_see(&caller(Role::Viewer), "a"));
        assert!(!may_see(&caller(Role::Member), "b"));
        assert!(may_see(&caller(Role::Admin), "b"));
    }
}
