//! The objects a VM spec points at: pools, networks, firmware and the cluster settings.
//! `POST` creates, `PUT` is a server-side upsert answering created/configured/unchanged,
//! `DELETE` refuses while a live VM uses the object. Writes are compare-and-swap on the
//! object's `resource_version`: `If-Match` (if given) must name the stored version (else
//! 409 `conflict`); without it a write that loses a race is retried on a fresh read.

use otherix_api::manifest::{ClusterSettingsSpec, FirmwareSpec, NetworkSpec, PoolSpec};
use otherix_api::validate::{validate_cluster_settings_spec, validate_name, validate_network_spec};
use otherix_api::{
    ApiError, ApplyOutcome, ApplyRequest, ApplyResponse, ClusterSettings, CreateObjectRequest,
    Firmware, ListResponse, Network, Pool,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::precondition::{check_resource_version, retry_on_conflict, stale};
use super::vm_refs::{validate_firmware_paths, validate_firmware_spec};
use super::{check_limit, ServiceError};
use crate::store::{
    ClusterSettingsRow, ObjectTable, RefCandidates, Store, StoredObject, VmRefs, CAS_ATTEMPTS,
};

/// `limit` and `cursor` of the entity list routes.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A page of name-ordered objects; the cursor is the hex of the last name.
fn page<T>(
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
    q: &ListQuery,
) -> Result<ListResponse<T>, ApiError> {
    let limit = check_limit(q.limit)? as usize;
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(
            hex::decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::validation("cursor: not a cursor returned by this server")
                })?,
        ),
    };
    let mut rest: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_deref().is_none_or(|a| name(i) > a))
        .collect();
    let next_cursor = if rest.len() > limit {
        rest.truncate(limit);
        rest.last().map(|i| hex::encode(name(i)))
    } else {
        None
    };
    Ok(ListResponse {
        items: rest,
        next_cursor,
    })
}

/// The VMs among `vms` that `uses` says refer to an object, as "a, b, c".
fn users(vms: &[VmRefs], uses: impl Fn(&VmRefs) -> bool) -> Option<String> {
    let names: Vec<&str> = vms
        .iter()
        .filter(|v| uses(v))
        .map(|v| v.name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn is_ref(reference: Option<&str>, obj_name: &str, obj_id: Uuid) -> bool {
    reference.is_some_and(|r| r == obj_name || r.eq_ignore_ascii_case(&obj_id.to_string()))
}

pub struct EntityService {
    store: Store,
}

impl EntityService {
    pub fn new(store: Store) -> Self {
        EntityService { store }
    }

    // ---- pools ----

    pub async fn pools(&self, q: &ListQuery) -> Result<ListResponse<Pool>, ServiceError> {
        Ok(page(self.store.list_pools().await?, |p| &p.name, q)?)
    }

    /// A pool by name or uuid.
    pub async fn pool(&self, name_or_id: &str) -> Result<Pool, ServiceError> {
        self.store
            .list_pools()
            .await?
            .into_iter()
            .find(|p| p.name == name_or_id || p.id.to_string() == name_or_id)
            .ok_or_else(|| ApiError::not_found(format!("pool {name_or_id} not found")).into())
    }

    pub async fn create_pool(
        &self,
        req: CreateObjectRequest<PoolSpec>,
    ) -> Result<Pool, ServiceError> {
        let name = req.name.clone();
        self.create(ObjectTable::Pools, req, |_| Ok(())).await?;
        self.pool(&name).await
    }

    pub async fn apply_pool(
        &self,
        name: &str,
        req: ApplyRequest<PoolSpec>,
        if_match: Option<i64>,
    ) -> Result<ApplyResponse<Pool>, ServiceError> {
        let outcome = self
            .apply(ObjectTable::Pools, name, req, |_| Ok(()), false, if_match)
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.pool(name).await?,
            task: None,
        })
    }

    /// Deletes a pool no live VM uses (and its instances; an agent that still serves it
    /// creates it again when it registers). The cluster default pool cannot be deleted.
    pub async fn delete_pool(
        &self,
        name_or_id: &str,
        if_match: Option<i64>,
    ) -> Result<(), ServiceError> {
        let mut attempt = 1;
        loop {
            let pool = self.pool(name_or_id).await?;
            check_resource_version("pool", &pool.name, if_match, pool.resource_version)?;
            let vms = self
                .store
                .live_vm_refs(RefCandidates::Pool(&pool.name))
                .await?;
            let default_pool = self.store.default_pool().await?;
            if let Some(names) = users(&vms, |v| {
                v.pool.as_deref() == Some(pool.name.as_str())
                    || (v.pool.is_none() && is_ref(v.spec.pool.as_deref(), &pool.name, pool.id))
                    || (v.pool.is_none()
                        && v.spec.pool.is_none()
                        && is_ref(default_pool.as_deref(), &pool.name, pool.id))
            }) {
                return Err(ApiError::conflict(format!(
                    "pool {} is in use by vms: {names}",
                    pool.name
                ))
                .into());
            }
            if is_ref(default_pool.as_deref(), &pool.name, pool.id) {
                return Err(ApiError::conflict(format!(
                    "pool {} is the cluster default pool; set another default-pool first",
                    pool.name
                ))
                .into());
            }
            let deleted = self
                .store
                .delete_object(
                    ObjectTable::Pools,
                    pool.id,
                    &pool.name,
                    pool.resource_version,
                )
                .await;
            match deleted {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                r => r?,
            }
            tracing::info!(pool = %pool.name, "pool deleted");
            return Ok(());
        }
    }

    // ---- networks ----

    pub async fn networks(&self, q: &ListQuery) -> Result<ListResponse<Network>, ServiceError> {
        let items = self
            .store
            .list_objects::<NetworkSpec>(ObjectTable::Networks)
            .await?
            .into_iter()
            .map(network_api)
            .collect();
        Ok(page(items, |n: &Network| &n.name, q)?)
    }

    pub async fn network(&self, name_or_id: &str) -> Result<Network, ServiceError> {
        self.store
            .object::<NetworkSpec>(ObjectTable::Networks, name_or_id)
            .await?
            .map(network_api)
            .ok_or_else(|| ApiError::not_found(format!("network {name_or_id} not found")).into())
    }

    pub async fn create_network(
        &self,
        req: CreateObjectRequest<NetworkSpec>,
    ) -> Result<Network, ServiceError> {
        let name = req.name.clone();
        self.create(ObjectTable::Networks, req, |spec| {
            validate_network_spec("spec", spec)
        })
        .await?;
        self.network(&name).await
    }

    pub async fn apply_network(
        &self,
        name: &str,
        req: ApplyRequest<NetworkSpec>,
        if_match: Option<i64>,
    ) -> Result<ApplyResponse<Network>, ServiceError> {
        let outcome = self
            .apply(
                ObjectTable::Networks,
                name,
                req,
                |spec| validate_network_spec("spec", spec),
                false,
                if_match,
            )
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.network(name).await?,
            task: None,
        })
    }

    pub async fn delete_network(
        &self,
        name_or_id: &str,
        if_match: Option<i64>,
    ) -> Result<(), ServiceError> {
        self.delete(
            ObjectTable::Networks,
            name_or_id,
            if_match,
            |net: &StoredObject<NetworkSpec>, vms| {
                users(vms, |v| {
                    is_ref(v.spec.network.as_deref(), &net.name, net.id)
                })
            },
        )
        .await
    }

    // ---- firmware ----

    pub async fn firmware_list(
        &self,
        q: &ListQuery,
    ) -> Result<ListResponse<Firmware>, ServiceError> {
        let items = self
            .store
            .list_objects::<FirmwareSpec>(ObjectTable::Firmware)
            .await?
            .into_iter()
            .map(firmware_api)
            .collect();
        Ok(page(items, |f: &Firmware| &f.name, q)?)
    }

    pub async fn firmware(&self, name_or_id: &str) -> Result<Firmware, ServiceError> {
        self.store
            .object::<FirmwareSpec>(ObjectTable::Firmware, name_or_id)
            .await?
            .map(firmware_api)
            .ok_or_else(|| ApiError::not_found(format!("firmware {name_or_id} not found")).into())
    }

    pub async fn create_firmware(
        &self,
        req: CreateObjectRequest<FirmwareSpec>,
    ) -> Result<Firmware, ServiceError> {
        let name = req.name.clone();
        let allowed = self.store.allowed_firmware_dirs().await?;
        self.create(ObjectTable::Firmware, req, |spec| {
            validate_firmware_spec(spec)?;
            validate_firmware_paths(spec, &allowed)
        })
        .await?;
        self.firmware(&name).await
    }

    /// Upserts a firmware; a built-in answers `unchanged` when the request matches it and
    /// 409 otherwise.
    pub async fn apply_firmware(
        &self,
        name: &str,
        req: ApplyRequest<FirmwareSpec>,
        if_match: Option<i64>,
    ) -> Result<ApplyResponse<Firmware>, ServiceError> {
        let allowed = self.store.allowed_firmware_dirs().await?;
        let outcome = self
            .apply(
                ObjectTable::Firmware,
                name,
                req,
                |spec| {
                    validate_firmware_spec(spec)?;
                    validate_firmware_paths(spec, &allowed)
                },
                true,
                if_match,
            )
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.firmware(name).await?,
            task: None,
        })
    }

    pub async fn delete_firmware(
        &self,
        name_or_id: &str,
        if_match: Option<i64>,
    ) -> Result<(), ServiceError> {
        let fw = self.firmware(name_or_id).await?;
        if fw.builtin {
            return Err(ApiError::conflict(format!(
                "firmware {} is built in and cannot be deleted",
                fw.name
            ))
            .into());
        }
        self.delete(
            ObjectTable::Firmware,
            name_or_id,
            if_match,
            |fw: &StoredObject<FirmwareSpec>, vms| {
                users(vms, |v| {
                    v.spec.firmware.as_deref() == Some(fw.name.as_str())
                        || is_ref(v.spec.firmware_id.as_deref(), "", fw.id)
                })
            },
        )
        .await
    }

    // ---- cluster settings ----

    pub async fn cluster(&self) -> Result<ClusterSettings, ServiceError> {
        Ok(self.store.cluster_settings().await?.to_api())
    }

    /// Replaces the cluster settings; `default_pool` must name an existing pool.
    pub async fn apply_cluster(
        &self,
        req: ApplyRequest<ClusterSettingsSpec>,
        if_match: Option<i64>,
    ) -> Result<ApplyResponse<ClusterSettings>, ServiceError> {
        req.refuse_labels("cluster settings")?;
        let mut attempt = 1;
        loop {
            let current = self.store.cluster_settings().await?;
            check_resource_version("cluster", "settings", if_match, current.resource_version)?;
            validate_cluster_settings_spec("spec", &req.spec)?;
            if current.default_pool == req.spec.default_pool
                && current.cpu_allocation_ratio == req.spec.cpu_allocation_ratio
                && current.memory_allocation_ratio == req.spec.memory_allocation_ratio
                && current.annotations == req.annotations
            {
                return Ok(ApplyResponse {
                    outcome: ApplyOutcome::Unchanged,
                    object: current.to_api(),
                    task: None,
                });
            }
            if let Some(p) = &req.spec.default_pool {
                let pools = self.store.list_pools().await?;
                if !pools.iter().any(|x| is_ref(Some(p), &x.name, x.id)) {
                    return Err(ApiError::validation(format!(
                        "spec.default_pool: no pool named {p}"
                    ))
                    .into());
                }
            }
            let row = ClusterSettingsRow {
                default_pool: req.spec.default_pool.clone(),
                cpu_allocation_ratio: req.spec.cpu_allocation_ratio,
                memory_allocation_ratio: req.spec.memory_allocation_ratio,
                annotations: req.annotations.clone(),
                resource_version: current.resource_version,
            };
            match self.store.write_cluster_settings(&row).await {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                r => r?,
            };
            tracing::info!(
                default_pool = ?req.spec.default_pool,
                cpu_allocation_ratio = ?req.spec.cpu_allocation_ratio,
                memory_allocation_ratio = ?req.spec.memory_allocation_ratio,
                "cluster settings configured"
            );
            return Ok(ApplyResponse {
                outcome: ApplyOutcome::Configured,
                object: self.cluster().await?,
                task: None,
            });
        }
    }

    // ---- shared ----

    /// Inserts a new object; a taken name is 409.
    async fn create<S: Serialize>(
        &self,
        table: ObjectTable,
        req: CreateObjectRequest<S>,
        validate: impl Fn(&S) -> Result<(), ApiError>,
    ) -> Result<(), ServiceError> {
        validate_name("name", &req.name)?;
        validate(&req.spec)?;
        let name = req.name.clone();
        if !self.insert(table, req).await? {
            let kind = table.kind();
            return Err(ApiError::conflict(format!("{kind} {name} already exists")).into());
        }
        Ok(())
    }

    /// Inserts the object at version 1; false when the name is taken.
    async fn insert<S: Serialize>(
        &self,
        table: ObjectTable,
        req: CreateObjectRequest<S>,
    ) -> Result<bool, ServiceError> {
        let obj = StoredObject {
            id: Uuid::new_v4(),
            name: req.name,
            annotations: req.annotations,
            spec: req.spec,
            builtin: false,
            resource_version: 1,
        };
        let inserted = self.store.insert_object(table, &obj).await?;
        if inserted {
            tracing::info!(kind = table.kind(), name = %obj.name, "created");
        }
        Ok(inserted)
    }

    /// The upsert behind every entity `PUT`: compare-and-swap on the version read (and
    /// checked against `if_match`), retried on a fresh read when it loses a race and the
    /// request named no version.
    async fn apply<S: Serialize + DeserializeOwned + PartialEq + Clone>(
        &self,
        table: ObjectTable,
        name: &str,
        req: ApplyRequest<S>,
        validate: impl Fn(&S) -> Result<(), ApiError>,
        protect_builtin: bool,
        if_match: Option<i64>,
    ) -> Result<ApplyOutcome, ServiceError> {
        validate_name("name", name)?;
        let kind = table.kind();
        req.refuse_labels(kind)?;
        let mut attempt = 1;
        loop {
            let existing: Option<StoredObject<S>> = self
                .store
                .object(table, name)
                .await?
                .filter(|o| o.name == name);
            let Some(mut obj) = existing else {
                if let Some(expected) = if_match {
                    return Err(stale(kind, name, expected, None).into());
                }
                validate(&req.spec)?;
                let create = CreateObjectRequest {
                    name: name.to_owned(),
                    spec: req.spec.clone(),
                    annotations: req.annotations.clone(),
                };
                if self.insert(table, create).await? {
                    return Ok(ApplyOutcome::Created);
                }
                // A concurrent apply created it first: apply onto that one.
                if attempt < CAS_ATTEMPTS {
                    attempt += 1;
                    continue;
                }
                return Err(ApiError::conflict(format!("{kind} {name} already exists")).into());
            };
            check_resource_version(kind, name, if_match, obj.resource_version)?;
            if obj.spec == req.spec && obj.annotations == req.annotations {
                return Ok(ApplyOutcome::Unchanged);
            }
            if protect_builtin && obj.builtin {
                return Err(ApiError::conflict(format!(
                    "{kind} {name} is built in and cannot be changed"
                ))
                .into());
            }
            validate(&req.spec)?;
            obj.spec = req.spec.clone();
            obj.annotations = req.annotations.clone();
            match self.store.update_object(table, &obj).await {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                r => r?,
            };
            tracing::info!(kind, name, "configured");
            return Ok(ApplyOutcome::Configured);
        }
    }

    /// Deletes an object no live VM uses (`in_use` names the VMs that do), compare-and-swap
    /// on the version read (and checked against `if_match`).
    async fn delete<S: DeserializeOwned>(
        &self,
        table: ObjectTable,
        name_or_id: &str,
        if_match: Option<i64>,
        in_use: impl Fn(&StoredObject<S>, &[VmRefs]) -> Option<String>,
    ) -> Result<(), ServiceError> {
        let kind = table.kind();
        let mut attempt = 1;
        loop {
            let obj: StoredObject<S> = self
                .store
                .object(table, name_or_id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("{kind} {name_or_id} not found")))?;
            check_resource_version(kind, &obj.name, if_match, obj.resource_version)?;
            let candidates = match table {
                ObjectTable::Firmware => RefCandidates::Firmware,
                ObjectTable::Networks => RefCandidates::Network,
                ObjectTable::Pools => RefCandidates::Pool(&obj.name),
            };
            let vms = self.store.live_vm_refs(candidates).await?;
            if let Some(names) = in_use(&obj, &vms) {
                return Err(ApiError::conflict(format!(
                    "{kind} {} is in use by vms: {names}",
                    obj.name
                ))
                .into());
            }
            let deleted = self
                .store
                .delete_object(table, obj.id, &obj.name, obj.resource_version)
                .await;
            match deleted {
                Err(e) if retry_on_conflict(&e, if_match, &mut attempt) => continue,
                r => r?,
            }
            tracing::info!(kind, name = %obj.name, "deleted");
            return Ok(());
        }
    }
}

fn network_api(o: StoredObject<NetworkSpec>) -> Network {
    Network {
        id: o.id,
        name: o.name,
        annotations: o.annotations,
        spec: o.spec,
        resource_version: o.resource_version,
    }
}

fn firmware_api(o: StoredObject<FirmwareSpec>) -> Firmware {
    Firmware {
        id: o.id,
        name: o.name,
        annotations: o.annotations,
        spec: o.spec,
        builtin: o.builtin,
        resource_version: o.resource_version,
    }
}
