//! Per-node allocation bookkeeping, the pure part: what one VM row holds on its node
//! ([`Footprint`]) and how a write of that row moves the node's counters ([`deltas`]). The
//! store applies the deltas in the transaction that writes the row, so `nodes.allocated_*`
//! always equal the sum over the live placed VMs and no request re-adds them up.

use otherix_api::VmPhase;

/// What a VM row holds on a node: its vCPUs and memory, while it is placed, live (not
/// deleted) and not `failed` (a VM whose create failed holds nothing until it is created
/// again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    pub node: String,
    pub vcpus: i64,
    pub memory_mb: i64,
}

impl Footprint {
    /// The footprint of a row with these columns, `None` when it holds nothing.
    pub fn of(
        node: Option<&str>,
        deleted: bool,
        phase: VmPhase,
        vcpus: i64,
        memory_mb: i64,
    ) -> Option<Footprint> {
        let node = node?;
        if deleted || phase == VmPhase::Failed {
            return None;
        }
        Some(Footprint {
            node: node.to_owned(),
            vcpus,
            memory_mb,
        })
    }
}

/// A change of one node's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDelta {
    pub node: String,
    pub vms: i64,
    pub vcpus: i64,
    pub memory_mb: i64,
}

/// The counter changes of a row going from `old` to `new` (`None`: holds nothing, or no
/// row): nothing when the footprint is unchanged, one delta when it changes in place, two
/// when the VM moves between nodes.
pub fn deltas(old: Option<&Footprint>, new: Option<&Footprint>) -> Vec<NodeDelta> {
    if old == new {
        return Vec::new();
    }
    let minus = old.map(|f| NodeDelta {
        node: f.node.clone(),
        vms: -1,
        vcpus: -f.vcpus,
        memory_mb: -f.memory_mb,
    });
    let plus = new.map(|f| NodeDelta {
        node: f.node.clone(),
        vms: 1,
        vcpus: f.vcpus,
        memory_mb: f.memory_mb,
    });
    match (minus, plus) {
        (Some(m), Some(p)) if m.node == p.node => vec![NodeDelta {
            node: p.node,
            vms: 0,
            vcpus: m.vcpus + p.vcpus,
            memory_mb: m.memory_mb + p.memory_mb,
        }],
        (m, p) => m.into_iter().chain(p).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(node: &str, vcpus: i64, memory_mb: i64) -> Option<Footprint> {
        Some(Footprint {
            node: node.to_owned(),
            vcpus,
            memory_mb,
        })
    }

    fn d(node: &str, vms: i64, vcpus: i64, memory_mb: i64) -> NodeDelta {
        NodeDelta {
            node: node.to_owned(),
            vms,
            vcpus,
            memory_mb,
        }
    }

    #[test]
    fn footprint_only_for_placed_live_not_failed_rows() {
        use VmPhase::*;
        let cases: &[(Option<&str>, bool, VmPhase, Option<Footprint>)] = &[
            (Some("n1"), false, Running, fp("n1", 2, 512)),
            (Some("n1"), false, Pending, fp("n1", 2, 512)),
            (Some("n1"), false, Stopped, fp("n1", 2, 512)),
            (Some("n1"), false, Deleting, fp("n1", 2, 512)),
            (Some("n1"), false, Failed, None),
            (Some("n1"), true, Running, None),
            (Some("n1"), true, Deleted, None),
            (None, false, Pending, None),
        ];
        for (node, deleted, phase, want) in cases {
            let got = Footprint::of(*node, *deleted, *phase, 2, 512);
            assert_eq!(&got, want, "{node:?} deleted={deleted} {phase:?}");
        }
    }

    type DeltaCase = (
        &'static str,
        Option<Footprint>,
        Option<Footprint>,
        Vec<NodeDelta>,
    );

    #[test]
    fn deltas_table() {
        let cases: Vec<DeltaCase> = vec![
            ("insert unplaced", None, None, vec![]),
            (
                "insert placed",
                None,
                fp("n1", 2, 512),
                vec![d("n1", 1, 2, 512)],
            ),
            ("unchanged", fp("n1", 2, 512), fp("n1", 2, 512), vec![]),
            (
                "delete or fail",
                fp("n1", 2, 512),
                None,
                vec![d("n1", -1, -2, -512)],
            ),
            (
                "resize in place",
                fp("n1", 2, 512),
                fp("n1", 4, 256),
                vec![d("n1", 0, 2, -256)],
            ),
            (
                "move between nodes",
                fp("n1", 2, 512),
                fp("n2", 2, 512),
                vec![d("n1", -1, -2, -512), d("n2", 1, 2, 512)],
            ),
        ];
        for (name, old, new, want) in cases {
            assert_eq!(deltas(old.as_ref(), new.as_ref()), want, "{name}");
        }
    }

    #[test]
    fn deltas_of_any_sequence_sum_to_the_last_footprint() {
        // Walk one VM through placements; the running sum of deltas per node must equal
        // what its current footprint holds there.
        let steps = [
            None,
            fp("n1", 1, 128),
            fp("n1", 2, 256),
            None,
            fp("n2", 2, 256),
            fp("n1", 4, 64),
            None,
        ];
        let mut totals: std::collections::BTreeMap<String, (i64, i64, i64)> = Default::default();
        let mut prev: Option<Footprint> = None;
        for step in steps {
            for dl in deltas(prev.as_ref(), step.as_ref()) {
                let t = totals.entry(dl.node).or_default();
                t.0 += dl.vms;
                t.1 += dl.vcpus;
                t.2 += dl.memory_mb;
            }
            for (node, t) in &totals {
                let want = match &step {
                    Some(f) if &f.node == node => (1, f.vcpus, f.memory_mb),
                    _ => (0, 0, 0),
                };
                assert_eq!(*t, want, "{node} after {step:?}");
            }
            prev = step;
        }
    }
}
