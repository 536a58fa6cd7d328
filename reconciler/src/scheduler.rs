//! The scheduler: a pure function from a VM spec and the cluster's nodes (with their pool
//! instances and committed resources) to a placement, or the error that says why none fits.

use otherix_api::manifest::AllocationRatio;
use otherix_api::{ApiError, ErrorCode, NodeStatus, Placement, RejectedNode, VmSpec};

use crate::model::NodeRecord;

/// How much of a node the scheduler commits: vCPUs per host core and MiB of guest memory
/// per MiB of host memory (cluster settings `cpu_allocation_ratio`, default 4: vCPUs are
/// time-shared, so like KubeVirt and OpenStack otherix overcommits them, more cautiously;
/// `memory_allocation_ratio`, default 1: memory is not overcommitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratios {
    pub cpu: AllocationRatio,
    pub memory: AllocationRatio,
}

impl Default for Ratios {
    fn default() -> Self {
        Ratios {
            cpu: AllocationRatio::DEFAULT_CPU,
            memory: AllocationRatio::DEFAULT_MEMORY,
        }
    }
}

impl Ratios {
    /// What the scheduler may commit on a node of `capacity`.
    pub fn schedulable(self, capacity: Capacity) -> Capacity {
        Capacity {
            vcpus: self.cpu.apply(capacity.vcpus),
            memory_mb: self.memory.apply(capacity.memory_mb),
        }
    }
}

/// vCPUs (host cores, or committed guest vCPUs) and memory in MiB of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub vcpus: u64,
    pub memory_mb: u64,
}

/// Whether `allocated` (everything placed on a node, the VM being claimed included) fits
/// the node's `capacity` under the same rule [`schedule`] applies (the [`Ratios`]). The
/// store checks it in the transaction that claims a node, so concurrent creates cannot
/// overcommit it.
pub fn fits(capacity: Capacity, allocated: Capacity, ratios: Ratios) -> Result<(), String> {
    let schedulable = ratios.schedulable(capacity);
    let mut short = Vec::new();
    if allocated.vcpus > schedulable.vcpus {
        short.push(format!(
            "{} vCPUs committed, {} schedulable ({} cores x allocation ratio {})",
            allocated.vcpus, schedulable.vcpus, capacity.vcpus, ratios.cpu
        ));
    }
    if allocated.memory_mb > schedulable.memory_mb {
        short.push(format!(
            "{} MiB memory committed, {} MiB schedulable ({} MiB x allocation ratio {})",
            allocated.memory_mb, schedulable.memory_mb, capacity.memory_mb, ratios.memory
        ));
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(short.join(", "))
    }
}

/// Why one node cannot take the VM, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rejection {
    NotReady,
    PoolMissing,
    Arch,
    /// `spec.image_url` is a `file://` URL and the node's agent does not allow them.
    FileUrls,
    Capacity(String),
}

/// Start of the 400 message when only nodes without `--allow-file-urls` could take the VM.
pub const FILE_URLS_NOT_ALLOWED: &str =
    "spec.image_url: file:// URLs need an agent started with --allow-file-urls";

/// Picks the node and pool instance for a new VM.
///
/// The pool is `spec.pool` (name or uuid) or `default_pool`; `spec.node` (name or uuid)
/// pins placement to exactly that node. A node qualifies when it is ready, serves the
/// pool, runs the spec's guest arch, allows `file://` image URLs when the spec uses one,
/// and has the vCPUs and memory free; among those the one with the fewest VMs, then the
/// most free memory, then the first name wins.
///
/// When nothing fits, the error code follows the most useful reason: a pinned node without
/// the pool is 409 `pool_not_on_node`; a node that is short of resources is 409
/// `insufficient_capacity`; otherwise, when a node was turned down because its agent
/// refuses `file://` URLs, the request itself is the problem: 400 `validation_failed`.
pub fn schedule(
    spec: &VmSpec,
    nodes: &[NodeRecord],
    default_pool: Option<&str>,
    ratios: Ratios,
) -> Result<Placement, ApiError> {
    let pool_ref = match spec.pool.as_deref().or(default_pool) {
        Some(p) => p,
        None => {
            return Err(ApiError::new(
                ErrorCode::DefaultPoolNotSet,
                "spec.pool is not set and the cluster has no default pool",
            ))
        }
    };
    let pool_matches =
        |p: &crate::model::NodePool| p.pool == pool_ref || p.pool_id.to_string() == pool_ref;
    let candidates: Vec<&NodeRecord> = match spec.node.as_deref() {
        Some(pin) => {
            let pinned: Vec<&NodeRecord> = nodes
                .iter()
                .filter(|n| n.name == pin || n.id.to_string() == pin)
                .collect();
            if pinned.is_empty() {
                return Err(ApiError::not_found(format!(
                    "spec.node: node {pin} not found"
                )));
            }
            pinned
        }
        None => {
            if !nodes.iter().any(|n| n.pools.iter().any(pool_matches)) {
                return Err(ApiError::not_found(format!(
                    "spec.pool: pool {pool_ref} not found on any node"
                )));
            }
            nodes.iter().collect()
        }
    };

    let mut accepted = Vec::new();
    let mut rejected = Vec::new();
    for node in candidates {
        match check_node(spec, node, pool_matches, ratios) {
            Ok(()) => accepted.push(node),
            Err(r) => rejected.push((node, r)),
        }
    }
    accepted.sort_by(|a, b| {
        a.allocated_vms
            .cmp(&b.allocated_vms)
            .then(free_memory(b, ratios).cmp(&free_memory(a, ratios)))
            .then(a.name.cmp(&b.name))
    });
    let rejected_nodes: Vec<RejectedNode> = rejected
        .iter()
        .map(|(n, r)| RejectedNode {
            node: n.name.clone(),
            reason: reason_text(r, spec, pool_ref),
        })
        .collect();
    if let Some(node) = accepted.first() {
        let instance = node
            .pools
            .iter()
            .find(|p| pool_matches(p))
            .expect("accepted nodes serve the pool");
        return Ok(Placement {
            node: node.name.clone(),
            pool: instance.pool.clone(),
            pool_path: instance.path.clone(),
            rejected: rejected_nodes,
        });
    }
    let code = if spec.node.is_some() && rejected.iter().any(|(_, r)| *r == Rejection::PoolMissing)
    {
        ErrorCode::PoolNotOnNode
    } else if rejected
        .iter()
        .any(|(_, r)| matches!(r, Rejection::Capacity(_)))
    {
        ErrorCode::InsufficientCapacity
    } else if rejected.iter().any(|(_, r)| *r == Rejection::FileUrls) {
        ErrorCode::ValidationFailed
    } else {
        ErrorCode::NoNodeAvailable
    };
    let details: Vec<String> = rejected_nodes
        .iter()
        .map(|r| format!("{}: {}", r.node, r.reason))
        .collect();
    let message = if details.is_empty() {
        "no nodes are registered".to_owned()
    } else if code == ErrorCode::ValidationFailed {
        format!(
            "{FILE_URLS_NOT_ALLOWED}; no node can take the vm: {}",
            details.join("; ")
        )
    } else {
        format!("no node can take the vm: {}", details.join("; "))
    };
    Err(ApiError::new(code, message))
}

fn free_memory(n: &NodeRecord, ratios: Ratios) -> u64 {
    ratios
        .memory
        .apply(n.memory_mb)
        .saturating_sub(n.allocated_memory_mb)
}

fn check_node(
    spec: &VmSpec,
    node: &NodeRecord,
    pool_matches: impl Fn(&crate::model::NodePool) -> bool,
    ratios: Ratios,
) -> Result<(), Rejection> {
    if node.status != NodeStatus::Ready {
        return Err(Rejection::NotReady);
    }
    if !node.pools.iter().any(pool_matches) {
        return Err(Rejection::PoolMissing);
    }
    if !node.guest_arches.iter().any(|a| a == spec.arch.as_str()) {
        return Err(Rejection::Arch);
    }
    if spec.image_url.starts_with("file://") && !node.allow_file_urls {
        return Err(Rejection::FileUrls);
    }
    let schedulable_vcpus = ratios.cpu.apply(u64::from(node.vcpus));
    let free_vcpus = schedulable_vcpus.saturating_sub(u64::from(node.allocated_vcpus));
    let free_mem = free_memory(node, ratios);
    let mut short = Vec::new();
    if u64::from(spec.vcpus) > free_vcpus {
        short.push(format!(
            "needs {} vCPUs, {free_vcpus} free ({} cores x allocation ratio {})",
            spec.vcpus, node.vcpus, ratios.cpu
        ));
    }
    if u64::from(spec.memory_mb) > free_mem {
        short.push(format!(
            "needs {} MiB memory, {free_mem} MiB free",
            spec.memory_mb
        ));
    }
    if short.is_empty() {
        Ok(())
    } else {
        Err(Rejection::Capacity(short.join(", ")))
    }
}

fn reason_text(r: &Rejection, spec: &VmSpec, pool: &str) -> String {
    match r {
        Rejection::NotReady => "not ready".to_owned(),
        Rejection::PoolMissing => format!("pool {pool} is not on this node"),
        Rejection::Arch => format!("cannot run {} guests", spec.arch),
        Rejection::FileUrls => {
            "file:// image URLs are not allowed on this node (start its agent with --allow-file-urls)"
                .to_owned()
        }
        Rejection::Capacity(s) => format!("insufficient capacity: {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodePool;
    use otherix_api::Arch;
    use uuid::Uuid;

    #[test]
    fn fits_table() {
        let cap = |vcpus, memory_mb| Capacity { vcpus, memory_mb };
        // (capacity, allocated, fits)
        let cases = [
            (cap(4, 8192), cap(0, 0), true),
            (cap(4, 8192), cap(16, 8192), true), // exactly 4 cores x ratio 4, all memory
            (cap(4, 8192), cap(17, 1024), false), // one vCPU over the ratio
            (cap(4, 8192), cap(1, 8193), false), // memory is never overcommitted
            (cap(0, 0), cap(1, 0), false),
            (cap(u64::MAX, u64::MAX), cap(u64::MAX, u64::MAX), true),
        ];
        for (capacity, allocated, want) in cases {
            assert_eq!(
                fits(capacity, allocated, Ratios::default()).is_ok(),
                want,
                "{capacity:?} {allocated:?}"
            );
        }
        let why = fits(cap(1, 100), cap(5, 200), Ratios::default()).unwrap_err();
        assert!(why.contains("5 vCPUs committed, 4 schedulable"), "{why}");
        assert!(why.contains("200 MiB memory committed, 100 MiB"), "{why}");
        // The cluster's ratios: twice the vCPUs, half again the memory.
        let ratios = Ratios {
            cpu: AllocationRatio(8.0),
            memory: AllocationRatio(1.5),
        };
        assert!(fits(cap(1, 100), cap(8, 150), ratios).is_ok());
        let why = fits(cap(1, 100), cap(9, 151), ratios).unwrap_err();
        assert!(
            why.contains("9 vCPUs committed, 8 schedulable (1 cores x allocation ratio 8)"),
            "{why}"
        );
        assert!(
            why.contains("151 MiB memory committed, 150 MiB schedulable"),
            "{why}"
        );
    }

    fn node(name: &str) -> NodeRecord {
        NodeRecord {
            id: Uuid::new_v4(),
            name: name.to_owned(),
            status: NodeStatus::Ready,
            arch: "amd64".into(),
            guest_arches: vec!["amd64".into(), "arm64".into()],
            accel: "tcg".into(),
            vcpus: 8,
            memory_mb: 8192,
            last_heartbeat_ms: None,
            pools: vec![NodePool {
                pool_id: Uuid::new_v4(),
                pool: "default".into(),
                path: format!("/srv/{name}/default"),
            }],
            allocated_vms: 0,
            allocated_vcpus: 0,
            allocated_memory_mb: 0,
            allow_file_urls: false,
        }
    }

    fn spec() -> VmSpec {
        VmSpec::new("http://x/i.img", Arch::Amd64)
    }

    #[test]
    fn schedule_table() {
        type Setup = fn(&mut VmSpec, &mut Vec<NodeRecord>, &mut Option<&'static str>);
        // (name, setup, Ok(node) or Err(code, message fragment))
        type Expect = Result<&'static str, (ErrorCode, &'static str)>;
        let table: Vec<(&str, Setup, Expect)> = vec![
            ("one ready node", |_, _, _| {}, Ok("n1")),
            (
                "no default pool",
                |_, _, d| *d = None,
                Err((ErrorCode::DefaultPoolNotSet, "no default pool")),
            ),
            (
                "spec pool overrides default",
                |s, ns, _| {
                    s.pool = Some("fast".into());
                    ns[1].pools[0].pool = "fast".into();
                },
                Ok("n2"),
            ),
            (
                "unknown pool",
                |s, _, _| s.pool = Some("nope".into()),
                Err((ErrorCode::NotFound, "pool nope not found")),
            ),
            (
                "pin to node without the pool",
                |s, ns, _| {
                    s.node = Some("n2".into());
                    ns[1].pools.clear();
                },
                Err((
                    ErrorCode::PoolNotOnNode,
                    "n2: pool default is not on this node",
                )),
            ),
            (
                "pin to a node picks it even if busier",
                |s, ns, _| {
                    s.node = Some("n1".into());
                    ns[0].allocated_vms = 5;
                },
                Ok("n1"),
            ),
            (
                "pin to unknown node",
                |s, _, _| s.node = Some("zz".into()),
                Err((ErrorCode::NotFound, "node zz not found")),
            ),
            (
                "not ready nodes skipped",
                |_, ns, _| ns[0].status = NodeStatus::NotReady,
                Ok("n2"),
            ),
            (
                "all not ready",
                |_, ns, _| {
                    ns[0].status = NodeStatus::NotReady;
                    ns[1].status = NodeStatus::NotReady;
                },
                Err((ErrorCode::NoNodeAvailable, "n1: not ready")),
            ),
            (
                "arch filter",
                |s, ns, _| {
                    s.arch = Arch::Arm64;
                    ns[0].guest_arches = vec!["amd64".into()];
                },
                Ok("n2"),
            ),
            (
                "capacity: memory short everywhere",
                |s, _, _| s.memory_mb = 16384,
                Err((
                    ErrorCode::InsufficientCapacity,
                    "needs 16384 MiB memory, 8192 MiB free",
                )),
            ),
            (
                "capacity: vcpus committed",
                |s, ns, _| {
                    s.vcpus = 4;
                    ns[0].allocated_vcpus = 30;
                    ns[1].allocated_vcpus = 32;
                },
                Err((
                    ErrorCode::InsufficientCapacity,
                    "needs 4 vCPUs, 2 free (8 cores x allocation ratio 4)",
                )),
            ),
            (
                "capacity: vcpus overcommitted within the allocation ratio",
                |s, ns, _| {
                    s.vcpus = 4;
                    ns[0].allocated_vcpus = 20;
                    ns[1].allocated_vcpus = 32;
                },
                Ok("n1"),
            ),
            (
                "spread: fewest vms first",
                |_, ns, _| ns[0].allocated_vms = 1,
                Ok("n2"),
            ),
            (
                "spread: most free memory breaks ties",
                |_, ns, _| ns[0].allocated_memory_mb = 1024,
                Ok("n2"),
            ),
            (
                "file url: only the node that allows them",
                |s, ns, _| {
                    s.image_url = "file:///srv/images/i.qcow2".into();
                    ns[1].allow_file_urls = true;
                    ns[1].allocated_vms = 3;
                },
                Ok("n2"),
            ),
            (
                "file url: http url ignores the flag",
                |_, ns, _| ns[1].allow_file_urls = true,
                Ok("n1"),
            ),
            (
                "file url: no node allows them",
                |s, _, _| s.image_url = "file:///srv/images/i.qcow2".into(),
                Err((
                    ErrorCode::ValidationFailed,
                    "spec.image_url: file:// URLs need an agent started with --allow-file-urls; \
                     no node can take the vm: n1: file:// image URLs are not allowed on this node \
                     (start its agent with --allow-file-urls); n2: file:// image URLs",
                )),
            ),
            (
                "file url: other node not ready",
                |s, ns, _| {
                    s.image_url = "file:///srv/images/i.qcow2".into();
                    ns[1].status = NodeStatus::NotReady;
                },
                Err((ErrorCode::ValidationFailed, "n2: not ready")),
            ),
            (
                "file url: the allowing node is full",
                |s, ns, _| {
                    s.image_url = "file:///srv/images/i.qcow2".into();
                    ns[1].allow_file_urls = true;
                    ns[1].allocated_memory_mb = 8192;
                },
                Err((ErrorCode::InsufficientCapacity, "n2: insufficient capacity")),
            ),
            (
                "file url: pinned to a node that refuses them",
                |s, ns, _| {
                    s.image_url = "file:///srv/images/i.qcow2".into();
                    s.node = Some("n1".into());
                    ns[1].allow_file_urls = true;
                },
                Err((ErrorCode::ValidationFailed, FILE_URLS_NOT_ALLOWED)),
            ),
            (
                "pool by uuid",
                |s, ns, _| {
                    ns[0].pools.clear();
                    s.pool = Some(ns[1].pools[0].pool_id.to_string());
                },
                Ok("n2"),
            ),
        ];
        for (name, setup, want) in table {
            let mut s = spec();
            let mut nodes = vec![node("n1"), node("n2")];
            let mut default = Some("default");
            setup(&mut s, &mut nodes, &mut default);
            let got = schedule(&s, &nodes, default, Ratios::default());
            match (got, want) {
                (Ok(p), Ok(n)) => {
                    assert_eq!(p.node, n, "{name}");
                    assert_eq!(p.pool_path, format!("/srv/{n}/default"), "{name}");
                }
                (Err(e), Err((code, frag))) => {
                    assert_eq!(e.code, code, "{name}: {}", e.message);
                    assert!(e.message.contains(frag), "{name}: {}", e.message);
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn schedule_follows_the_cluster_allocation_ratios() {
        let mut full = node("n1");
        full.allocated_vcpus = full.vcpus * 4;
        let nodes = vec![full];
        let err = schedule(&spec(), &nodes, Some("default"), Ratios::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InsufficientCapacity, "{}", err.message);
        assert!(
            err.message.contains("allocation ratio 4"),
            "{}",
            err.message
        );
        let doubled = Ratios {
            cpu: AllocationRatio(8.0),
            ..Ratios::default()
        };
        let p = schedule(&spec(), &nodes, Some("default"), doubled).unwrap();
        assert_eq!(p.node, "n1");

        // Memory: all of it committed; a ratio of 1.5 leaves room, 1 does not.
        let mut mem = node("n1");
        mem.allocated_memory_mb = mem.memory_mb;
        let nodes = vec![mem];
        assert!(schedule(&spec(), &nodes, Some("default"), Ratios::default()).is_err());
        let more_memory = Ratios {
            memory: AllocationRatio(1.5),
            ..Ratios::default()
        };
        assert!(schedule(&spec(), &nodes, Some("default"), more_memory).is_ok());
    }

    #[test]
    fn schedule_rejected_nodes_recorded_with_reason() {
        let mut nodes = vec![node("n1"), node("n2")];
        nodes[0].status = NodeStatus::NotReady;
        let p = schedule(&spec(), &nodes, Some("default"), Ratios::default()).unwrap();
        assert_eq!(p.node, "n2");
        assert_eq!(
            p.rejected,
            vec![RejectedNode {
                node: "n1".into(),
                reason: "not ready".into()
            }]
        );
    }
}
