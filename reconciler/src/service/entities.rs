//! The objects a VM spec points at: pools, networks, firmware and the cluster settings.
//! `POST` creates, `PUT` is a server-side upsert answering created/configured/unchanged,
//! `DELETE` refuses while a live VM uses the object. [`resolve_vm_refs`] checks a VM
//! spec's `network` and `firmware`/`firmware_id` and resolves them for dispatch.

use otherix_api::firmware_path::check_firmware_path;
use otherix_api::manifest::{
    ClusterSettingsSpec, FirmwareSpec, FirmwareType, NetworkSpec, NetworkType, PoolSpec,
};
use otherix_api::validate::{validate_name, validate_network_spec};
use otherix_api::{
    ApiError, ApplyOutcome, ApplyRequest, ApplyResponse, Arch, ClusterSettings,
    CreateObjectRequest, Firmware, ListResponse, Network, Pool, VmSpec,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use super::{check_limit, ServiceError};
use crate::model::{ResolvedFirmware, VmRecord};
use crate::store::{ObjectTable, Store, StoredObject, VmRefs, SETTING_DEFAULT_POOL};

/// The name of the one cluster settings object.
pub const CLUSTER_NAME: &str = "cluster";

/// `limit` and `cursor` of the entity list routes.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// What a VM spec's `network` and `firmware`/`firmware_id` resolved to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmAttachments {
    pub bridge: Option<String>,
    pub firmware: Option<ResolvedFirmware>,
}

impl VmAttachments {
    /// Stores the resolution on a VM about to be created (both fields are immutable).
    pub fn apply_to(self, vm: &mut VmRecord) {
        vm.bridge = self.bridge;
        vm.firmware = self.firmware;
    }
}

/// Checks that `spec.network` names an existing bridge network and that `spec.firmware`
/// (name) or `spec.firmware_id` (uuid) names an existing firmware for the VM's arch.
/// 400 `validation_failed` naming the field otherwise. Call before creating a VM.
pub async fn resolve_vm_refs(store: &Store, spec: &VmSpec) -> Result<VmAttachments, ServiceError> {
    let mut out = VmAttachments::default();
    if let Some(net_ref) = &spec.network {
        let net: StoredObject<NetworkSpec> = store
            .object(ObjectTable::Networks, net_ref)
            .await?
            .ok_or_else(|| {
                ApiError::validation(format!("spec.network: no network named {net_ref}"))
            })?;
        if net.spec.network_type != NetworkType::Bridge {
            return Err(ApiError::validation(format!(
                "spec.network: network {} is type {}; only bridge networks can be attached",
                net.name,
                network_type_str(net.spec.network_type)
            ))
            .into());
        }
        out.bridge = Some(net.spec.bridge.clone().ok_or_else(|| {
            ApiError::validation(format!(
                "spec.network: network {} has no bridge interface",
                net.name
            ))
        })?);
    }
    let firmware = match (&spec.firmware, &spec.firmware_id) {
        (Some(name), _) => Some(("spec.firmware", name, "named")),
        (None, Some(id)) => Some(("spec.firmware_id", id, "with id")),
        (None, None) => None,
    };
    if let Some((field, wanted, how)) = firmware {
        let fw = store
            .list_objects::<FirmwareSpec>(ObjectTable::Firmware)
            .await?
            .into_iter()
            .find(|f| {
                if field == "spec.firmware" {
                    f.name == *wanted
                } else {
                    f.id.to_string() == wanted.to_lowercase()
                }
            })
            .ok_or_else(|| ApiError::validation(format!("{field}: no firmware {how} {wanted}")))?;
        if fw.spec.arch != spec.arch {
            return Err(ApiError::validation(format!(
                "{field}: firmware {} is for {}, the VM is {}",
                fw.name, fw.spec.arch, spec.arch
            ))
            .into());
        }
        out.firmware = Some(ResolvedFirmware {
            name: fw.name,
            firmware_type: firmware_type_str(fw.spec.firmware_type).to_owned(),
            code: fw.spec.code,
            vars_template: fw.spec.vars_template,
        });
    }
    Ok(out)
}

fn network_type_str(t: NetworkType) -> &'static str {
    match t {
        NetworkType::Bridge => "bridge",
        NetworkType::Nat => "nat",
        NetworkType::Isolated => "isolated",
    }
}

fn firmware_type_str(t: FirmwareType) -> &'static str {
    match t {
        FirmwareType::Bios => "bios",
        FirmwareType::Uefi => "uefi",
    }
}

/// A firmware spec the server accepts: UEFI names its code and vars template, BIOS
/// (SeaBIOS) is amd64 only.
pub fn validate_firmware_spec(spec: &FirmwareSpec) -> Result<(), ApiError> {
    match spec.firmware_type {
        FirmwareType::Uefi => {
            for (field, value) in [("code", &spec.code), ("vars_template", &spec.vars_template)] {
                match value {
                    None => {
                        return Err(ApiError::validation(format!(
                            "spec.{field}: required for type uefi"
                        )))
                    }
                    Some(p) if !p.starts_with('/') => {
                        return Err(ApiError::validation(format!(
                            "spec.{field}: must be an absolute path on the nodes (got {p:?})"
                        )))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        FirmwareType::Bios if spec.arch != Arch::Amd64 => Err(ApiError::validation(format!(
            "spec.type: bios firmware boots amd64 guests only (spec.arch is {})",
            spec.arch
        ))),
        FirmwareType::Bios => Ok(()),
    }
}

/// A UEFI firmware's files must lie inside `allowed` (the nodes' firmware dirs): a
/// Firmware entity must not make a host file (a key, another VM's disk) a guest's flash.
pub fn validate_firmware_paths(spec: &FirmwareSpec, allowed: &[String]) -> Result<(), ApiError> {
    for (field, value) in [("code", &spec.code), ("vars_template", &spec.vars_template)] {
        if let Some(path) = value {
            check_firmware_path(path, allowed)
                .map_err(|e| ApiError::validation(format!("spec.{field}: {e}")))?;
        }
    }
    Ok(())
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
        self.create(ObjectTable::Pools, "pool", req, |_| Ok(()))
            .await?;
        self.pool(&name).await
    }

    pub async fn apply_pool(
        &self,
        name: &str,
        req: ApplyRequest<PoolSpec>,
    ) -> Result<ApplyResponse<Pool>, ServiceError> {
        let outcome = self
            .apply(ObjectTable::Pools, "pool", name, req, |_| Ok(()), false)
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.pool(name).await?,
            task: None,
        })
    }

    /// Deletes a pool no live VM uses (and its instances; an agent that still serves it
    /// creates it again when it registers). The cluster default pool cannot be deleted.
    pub async fn delete_pool(&self, name_or_id: &str) -> Result<(), ServiceError> {
        let pool = self.pool(name_or_id).await?;
        let vms = self.store.live_vm_refs().await?;
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
        self.store
            .delete_object(ObjectTable::Pools, pool.id)
            .await?;
        tracing::info!(pool = %pool.name, "pool deleted");
        Ok(())
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
        self.create(ObjectTable::Networks, "network", req, |spec| {
            validate_network_spec("spec", spec)
        })
        .await?;
        self.network(&name).await
    }

    pub async fn apply_network(
        &self,
        name: &str,
        req: ApplyRequest<NetworkSpec>,
    ) -> Result<ApplyResponse<Network>, ServiceError> {
        let outcome = self
            .apply(
                ObjectTable::Networks,
                "network",
                name,
                req,
                |spec| validate_network_spec("spec", spec),
                false,
            )
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.network(name).await?,
            task: None,
        })
    }

    pub async fn delete_network(&self, name_or_id: &str) -> Result<(), ServiceError> {
        let net = self.network(name_or_id).await?;
        let vms = self.store.live_vm_refs().await?;
        if let Some(names) = users(&vms, |v| {
            is_ref(v.spec.network.as_deref(), &net.name, net.id)
        }) {
            return Err(ApiError::conflict(format!(
                "network {} is in use by vms: {names}",
                net.name
            ))
            .into());
        }
        self.store
            .delete_object(ObjectTable::Networks, net.id)
            .await?;
        tracing::info!(network = %net.name, "network deleted");
        Ok(())
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
        self.create(ObjectTable::Firmware, "firmware", req, |spec| {
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
    ) -> Result<ApplyResponse<Firmware>, ServiceError> {
        let allowed = self.store.allowed_firmware_dirs().await?;
        let outcome = self
            .apply(
                ObjectTable::Firmware,
                "firmware",
                name,
                req,
                |spec| {
                    validate_firmware_spec(spec)?;
                    validate_firmware_paths(spec, &allowed)
                },
                true,
            )
            .await?;
        Ok(ApplyResponse {
            outcome,
            object: self.firmware(name).await?,
            task: None,
        })
    }

    pub async fn delete_firmware(&self, name_or_id: &str) -> Result<(), ServiceError> {
        let fw = self.firmware(name_or_id).await?;
        if fw.builtin {
            return Err(ApiError::conflict(format!(
                "firmware {} is built in and cannot be deleted",
                fw.name
            ))
            .into());
        }
        let vms = self.store.live_vm_refs().await?;
        if let Some(names) = users(&vms, |v| {
            v.spec.firmware.as_deref() == Some(fw.name.as_str())
                || is_ref(v.spec.firmware_id.as_deref(), "", fw.id)
        }) {
            return Err(ApiError::conflict(format!(
                "firmware {} is in use by vms: {names}",
                fw.name
            ))
            .into());
        }
        self.store
            .delete_object(ObjectTable::Firmware, fw.id)
            .await?;
        tracing::info!(firmware = %fw.name, "firmware deleted");
        Ok(())
    }

    // ---- cluster settings ----

    pub async fn cluster(&self) -> Result<ClusterSettings, ServiceError> {
        Ok(ClusterSettings {
            name: CLUSTER_NAME.to_owned(),
            annotations: self.store.cluster_annotations().await?,
            spec: ClusterSettingsSpec {
                default_pool: self.store.default_pool().await?,
            },
        })
    }

    /// Replaces the cluster settings; `default_pool` must name an existing pool.
    pub async fn apply_cluster(
        &self,
        req: ApplyRequest<ClusterSettingsSpec>,
    ) -> Result<ApplyResponse<ClusterSettings>, ServiceError> {
        let current = self.cluster().await?;
        if current.spec == req.spec && current.annotations == req.annotations {
            return Ok(ApplyResponse {
                outcome: ApplyOutcome::Unchanged,
                object: current,
                task: None,
            });
        }
        if let Some(p) = &req.spec.default_pool {
            let pools = self.store.list_pools().await?;
            if !pools.iter().any(|x| is_ref(Some(p), &x.name, x.id)) {
                return Err(
                    ApiError::validation(format!("spec.default_pool: no pool named {p}")).into(),
                );
            }
        }
        self.store
            .set_setting(SETTING_DEFAULT_POOL, req.spec.default_pool.as_deref())
            .await?;
        self.store.set_cluster_annotations(&req.annotations).await?;
        tracing::info!(default_pool = ?req.spec.default_pool, "cluster settings configured");
        Ok(ApplyResponse {
            outcome: ApplyOutcome::Configured,
            object: self.cluster().await?,
            task: None,
        })
    }

    // ---- shared ----

    async fn create<S: Serialize + DeserializeOwned>(
        &self,
        table: ObjectTable,
        kind: &str,
        req: CreateObjectRequest<S>,
        validate: impl Fn(&S) -> Result<(), ApiError>,
    ) -> Result<(), ServiceError> {
        validate_name("name", &req.name)?;
        validate(&req.spec)?;
        let obj = StoredObject {
            id: Uuid::new_v4(),
            name: req.name,
            annotations: req.annotations,
            spec: req.spec,
            builtin: false,
        };
        if !self.store.insert_object(table, &obj).await? {
            return Err(ApiError::conflict(format!("{kind} {} already exists", obj.name)).into());
        }
        tracing::info!(kind, name = %obj.name, "created");
        Ok(())
    }

    async fn apply<S: Serialize + DeserializeOwned + PartialEq>(
        &self,
        table: ObjectTable,
        kind: &str,
        name: &str,
        req: ApplyRequest<S>,
        validate: impl Fn(&S) -> Result<(), ApiError>,
        protect_builtin: bool,
    ) -> Result<ApplyOutcome, ServiceError> {
        validate_name("name", name)?;
        let existing: Option<StoredObject<S>> = self
            .store
            .list_objects(table)
            .await?
            .into_iter()
            .find(|o| o.name == name);
        match existing {
            Some(o) if o.spec == req.spec && o.annotations == req.annotations => {
                Ok(ApplyOutcome::Unchanged)
            }
            Some(o) if protect_builtin && o.builtin => Err(ApiError::conflict(format!(
                "{kind} {name} is built in and cannot be changed"
            ))
            .into()),
            Some(o) => {
                validate(&req.spec)?;
                self.store
                    .update_object(table, o.id, &req.spec, &req.annotations)
                    .await?;
                tracing::info!(kind, name, "configured");
                Ok(ApplyOutcome::Configured)
            }
            None => {
                let create = CreateObjectRequest {
                    name: name.to_owned(),
                    spec: req.spec,
                    annotations: req.annotations,
                };
                self.create(table, kind, create, validate).await?;
                Ok(ApplyOutcome::Created)
            }
        }
    }
}

fn network_api(o: StoredObject<NetworkSpec>) -> Network {
    Network {
        id: o.id,
        name: o.name,
        annotations: o.annotations,
        spec: o.spec,
    }
}

fn firmware_api(o: StoredObject<FirmwareSpec>) -> Firmware {
    Firmware {
        id: o.id,
        name: o.name,
        annotations: o.annotations,
        spec: o.spec,
        builtin: o.builtin,
    }
}
