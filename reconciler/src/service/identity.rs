//! Identity services: authenticating bearer tokens, creating, listing and revoking them,
//! the first admin token, and projects (create, read with usage, apply, delete).

use std::collections::BTreeMap;

use otherix_api::validate::validate_name;
use otherix_api::{
    ApiError, ApplyOutcome, CreateTokenRequest, CreatedToken, ErrorCode, ListResponse, Project,
    ProjectSpec, Role, Token, WhoAmI, DEFAULT_PROJECT,
};
use uuid::Uuid;

use super::precondition::{check_resource_version, retry_on_conflict, stale};
use super::ServiceError;
use crate::auth::{bearer_secret, hash_secret, new_token_secret, Caller};
use crate::model::rfc3339;
use crate::store::{ProjectRow, Store, StoreError, TokenRow, CAS_ATTEMPTS};

/// Name of the token otherixd creates on first start.
pub const BOOTSTRAP_TOKEN_NAME: &str = "admin";
/// Longest token lifetime accepted (10 years).
pub const MAX_TOKEN_SECS: u64 = 10 * 365 * 24 * 3600;

pub struct IdentityService {
    store: Store,
}

impl IdentityService {
    pub fn new(store: Store) -> Self {
        IdentityService { store }
    }

    /// The caller of a request from its `Authorization` header: 401 when it is missing,
    /// malformed, unknown (never created, or revoked) or expired. Read from the database
    /// on every request, so a revocation holds from the next request on.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Caller, ServiceError> {
        let header = header.ok_or_else(|| {
            ApiError::unauthenticated("this route needs an 'Authorization: Bearer otx_...' header")
        })?;
        let secret = bearer_secret(header).ok_or_else(|| {
            ApiError::unauthenticated("the Authorization header is not 'Bearer otx_<48 hex>'")
        })?;
        let token = self
            .store
            .token_by_hash(&hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::unauthenticated("unknown or revoked token"))?;
        if token
            .expires_at_ms
            .is_some_and(|at| at <= self.store.now_ms())
        {
            return Err(
                ApiError::unauthenticated(format!("token {} has expired", token.name)).into(),
            );
        }
        Ok(Caller {
            name: token.name,
            role: token.role,
            project: token.project,
        })
    }

    /// Creates the first admin token when no token exists at all; its secret, once.
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, ServiceError> {
        if self.store.count_tokens().await? > 0 {
            return Ok(None);
        }
        let secret = new_token_secret();
        let row = TokenRow {
            name: BOOTSTRAP_TOKEN_NAME.to_owned(),
            secret_sha256: hash_secret(&secret),
            project: DEFAULT_PROJECT.to_owned(),
            role: Role::Admin,
            created_at_ms: self.store.now_ms(),
            expires_at_ms: None,
            created_by: "otherixd".to_owned(),
            resource_version: 1,
        };
        match self.store.insert_token(&row).await {
            Ok(()) => Ok(Some(secret)),
            // Another replica bootstrapped at the same moment.
            Err(StoreError::NameTaken(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn whoami(&self, caller: &Caller) -> WhoAmI {
        WhoAmI {
            name: caller.name.clone(),
            role: caller.role,
            project: caller.project.clone(),
        }
    }

    pub async fn create_token(
        &self,
        caller: &Caller,
        req: CreateTokenRequest,
    ) -> Result<CreatedToken, ServiceError> {
        validate_name("name", &req.name)?;
        validate_name("project", &req.project)?;
        if self.store.project(&req.project).await?.is_none() {
            return Err(ApiError::validation(format!(
                "project: project {} does not exist",
                req.project
            ))
            .into());
        }
        let now = self.store.now_ms();
        let expires_at_ms = match req.expires_secs {
            None => None,
            Some(s) if (1..=MAX_TOKEN_SECS).contains(&s) => Some(now + (s as i64) * 1000),
            Some(s) => {
                return Err(ApiError::validation(format!(
                    "expires_secs: must be 1..{MAX_TOKEN_SECS} (got {s})"
                ))
                .into())
            }
        };
        let secret = new_token_secret();
        let row = TokenRow {
            name: req.name.clone(),
            secret_sha256: hash_secret(&secret),
            project: req.project,
            role: req.role,
            created_at_ms: now,
            expires_at_ms,
            created_by: caller.name.clone(),
            resource_version: 1,
        };
        match self.store.insert_token(&row).await {
            Ok(()) => {}
            Err(StoreError::NameTaken(name)) => {
                return Err(ApiError::conflict(format!("token {name} already exists")).into())
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(token = %row.name, role = %row.role, project = %row.project, by = %caller.name, "token created");
        Ok(CreatedToken {
            token: token_to_api(&row),
            secret,
        })
    }

    pub async fn list_tokens(&self) -> Result<ListResponse<Token>, ServiceError> {
        let items = self
            .store
            .list_tokens()
            .await?
            .iter()
            .map(token_to_api)
            .collect();
        Ok(ListResponse {
            items,
            next_cursor: None,
        })
    }

    /// Revokes a token; with `if_match` only at that version (tokens are never rewritten,
    /// so that is the version it was listed with).
    pub async fn revoke_token(
        &self,
        caller: &Caller,
        name: &str,
        if_match: Option<i64>,
    ) -> Result<(), ServiceError> {
        validate_name("name", name)?;
        if !self.store.delete_token(name, if_match).await? {
            return Err(ApiError::not_found(format!("token {name} not found")).into());
        }
        tracing::info!(token = %name, by = %caller.name, "token revoked");
        Ok(())
    }

    // ---- projects ----

    pub async fn create_project(
        &self,
        name: &str,
        spec: ProjectSpec,
        annotations: BTreeMap<String, String>,
    ) -> Result<Project, ServiceError> {
        validate_name("name", name)?;
        let row = ProjectRow {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            spec,
            annotations,
            resource_version: 1,
        };
        match self.store.insert_project(&row).await {
            Ok(()) => {}
            Err(StoreError::NameTaken(n)) => {
                return Err(ApiError::conflict(format!("project {n} already exists")).into())
            }
            Err(e) => return Err(e.into()),
        }
        self.project_view(row).await
    }

    /// `PUT /v1/projects/{name}`: creates or rewrites (compare-and-swap on the version
    /// read, checked against `if_match`; retried on a fresh read without it); the outcome
    /// tells which.
    pub async fn apply_project(
        &self,
        name: &str,
        spec: ProjectSpec,
        annotations: BTreeMap<String, String>,
        if_match: Option<i64>,
    ) -> Result<(Project, ApplyOutcome), ServiceError> {
        validate_name("name", name)?;
        let mut attempt = 1;
        loop {
            let Some(mut row) = self.store.project(name).await? else {
                if let Some(expected) = if_match {
                    return Err(stale("project", name, expected, None).into());
                }
                match self.create_project(name, spec, annotations.clone()).await {
                    Ok(p) => return Ok((p, ApplyOutcome::Created)),
                    // A concurrent apply created it first: apply onto that one.
                    Err(ServiceError::Api(e))
                        if e.code == ErrorCode::Conflict && attempt < CAS_ATTEMPTS =>
                    {
                        attempt += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            check_resource_version("project", name, if_match, row.resource_version)?;
            if row.spec == spec && row.annotations == annotations {
                return Ok((self.project_view(row).await?, ApplyOutcome::Unchanged));
            }
            row.spec = spec;
            row.annotations = annotations.clone();
            match self.store.update_project(&row).await {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                Err(e) => return Err(e.into()),
                Ok(version) => row.resource_version = version,
            }
            return Ok((self.project_view(row).await?, ApplyOutcome::Configured));
        }
    }

    /// A project the caller may see (another project is 404 to non-admins).
    pub async fn project(&self, caller: &Caller, name: &str) -> Result<Project, ServiceError> {
        let not_found = || ApiError::not_found(format!("project {name} not found"));
        if !crate::auth::policy::may_see(caller, name) {
            return Err(not_found().into());
        }
        let row = self.store.project(name).await?.ok_or_else(not_found)?;
        self.project_view(row).await
    }

    /// Every project for admins; a member or viewer sees only their own.
    pub async fn list_projects(
        &self,
        caller: &Caller,
    ) -> Result<ListResponse<Project>, ServiceError> {
        let mut items = Vec::new();
        for row in self.store.list_projects().await? {
            if crate::auth::policy::may_see(caller, &row.name) {
                items.push(self.project_view(row).await?);
            }
        }
        Ok(ListResponse {
            items,
            next_cursor: None,
        })
    }

    /// Deletes a project without live VMs (compare-and-swap on the version read, checked
    /// against `if_match`).
    pub async fn delete_project(
        &self,
        name: &str,
        if_match: Option<i64>,
    ) -> Result<(), ServiceError> {
        validate_name("name", name)?;
        if name == DEFAULT_PROJECT {
            return Err(ApiError::conflict("project default cannot be deleted").into());
        }
        let mut attempt = 1;
        loop {
            let row = self
                .store
                .project(name)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("project {name} not found")))?;
            check_resource_version("project", name, if_match, row.resource_version)?;
            return match self.store.delete_project(name, row.resource_version).await {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                Err(e) => Err(e.into()),
                Ok(None) => Ok(()),
                Ok(Some(n)) => Err(ApiError::conflict(format!(
                    "project {name} still has {n} vm(s); delete them first"
                ))
                .into()),
            };
        }
    }

    async fn project_view(&self, row: ProjectRow) -> Result<Project, ServiceError> {
        let usage = self.store.project_usage(&row.name).await?;
        Ok(Project {
            id: row.id,
            name: row.name,
            annotations: row.annotations,
            spec: row.spec,
            usage,
            resource_version: row.resource_version,
        })
    }
}

fn token_to_api(t: &TokenRow) -> Token {
    Token {
        name: t.name.clone(),
        project: t.project.clone(),
        role: t.role,
        created_at: rfc3339(t.created_at_ms),
        expires_at: t.expires_at_ms.map(rfc3339),
        created_by: t.created_by.clone(),
        resource_version: t.resource_version,
    }
}
