//! Per-VM counters from the agents (`NodeStats`) as Prometheus series: a collector that
//! writes the snapshot [`Metrics::scrape`](super::Metrics::scrape) prepared (the counters of
//! the nodes attached to this replica, labelled with the VM's name, project and node; a
//! counter for a VM not placed on the reporting node is dropped).

use std::collections::HashMap;
use std::sync::Mutex;

use otherix_api::proto::VmStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use uuid::Uuid;

use crate::store::VmIdentity;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmStatLabels {
    pub vm: String,
    pub project: String,
    pub node: String,
}

/// The series of one scrape.
#[derive(Debug, Default)]
pub struct VmStatsCollector {
    rows: Mutex<Vec<(VmStatLabels, VmStats)>>,
}

/// The rows to export: each reported VM that the store places on the node reporting it,
/// labelled; sorted by project and name.
pub fn rows(
    reported: Vec<(String, VmStats)>,
    identities: &HashMap<Uuid, VmIdentity>,
) -> Vec<(VmStatLabels, VmStats)> {
    let mut rows: Vec<(VmStatLabels, VmStats)> = reported
        .into_iter()
        .filter_map(|(node, stats)| {
            let id = Uuid::parse_str(&stats.vm_id).ok()?;
            let who = identities.get(&id)?;
            (who.node.as_deref() == Some(node.as_str())).then(|| {
                let labels = VmStatLabels {
                    vm: who.name.clone(),
                    project: who.project.clone(),
                    node,
                };
                (labels, stats)
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.0.project, &a.0.vm).cmp(&(&b.0.project, &b.0.vm)));
    rows
}

impl VmStatsCollector {
    pub fn set(&self, rows: Vec<(VmStatLabels, VmStats)>) {
        *self.rows.lock().expect("vm stats poisoned") = rows;
    }
}

type Pick = fn(&VmStats) -> Option<f64>;

const COUNTERS: [(&str, &str, Pick); 5] = [
    (
        "vm_cpu_seconds",
        "CPU time of the VM's QEMU process (user + system)",
        |s| Some(s.cpu_seconds),
    ),
    (
        "vm_disk_read_bytes",
        "Bytes the guest read from its block devices (QMP query-blockstats)",
        |s| s.disk_read_bytes.map(|b| b as f64),
    ),
    (
        "vm_disk_write_bytes",
        "Bytes the guest wrote to its block devices (QMP query-blockstats)",
        |s| s.disk_write_bytes.map(|b| b as f64),
    ),
    (
        "vm_network_receive_bytes",
        "Bytes the guest received on its tap NIC (bridge networks only)",
        |s| s.net_rx_bytes.map(|b| b as f64),
    ),
    (
        "vm_network_transmit_bytes",
        "Bytes the guest sent on its tap NIC (bridge networks only)",
        |s| s.net_tx_bytes.map(|b| b as f64),
    ),
];

impl Collector for VmStatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows = self.rows.lock().expect("vm stats poisoned");
        for (name, help, pick) in COUNTERS {
            let series: Vec<(&VmStatLabels, f64)> = rows
                .iter()
                .filter_map(|(l, s)| pick(s).map(|v| (l, v)))
                .collect();
            if series.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                ConstCounter::new(0.0).metric_type(),
            )?;
            for (labels, value) in series {
                ConstCounter::new(value).encode(family.encode_family(labels)?)?;
            }
        }
        if !rows.is_empty() {
            let mut family = encoder.encode_descriptor(
                "vm_memory_resident_bytes",
                "Resident memory of the VM's QEMU process",
                None,
                ConstGauge::new(0i64).metric_type(),
            )?;
            for (labels, stats) in rows.iter() {
                ConstGauge::new(stats.memory_bytes as i64).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_only_vms_placed_on_the_reporting_node() {
        let (a, b, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let who = |name: &str, node: &str| VmIdentity {
            name: name.into(),
            project: "default".into(),
            node: Some(node.into()),
        };
        let identities = HashMap::from([(a, who("web-1", "node-1")), (b, who("web-2", "node-2"))]);
        let stat = |id: Uuid| VmStats {
            vm_id: id.to_string(),
            cpu_seconds: 1.5,
            ..Default::default()
        };
        let reported = vec![
            ("node-1".to_owned(), stat(a)),
            // node-1 claims node-2's VM, and a VM the store does not know.
            ("node-1".to_owned(), stat(b)),
            ("node-1".to_owned(), stat(gone)),
            ("node-2".to_owned(), stat(b)),
            (
                "node-1".to_owned(),
                VmStats {
                    vm_id: "not-a-uuid".into(),
                    ..Default::default()
                },
            ),
        ];
        let got: Vec<(String, String)> = rows(reported, &identities)
            .into_iter()
            .map(|(l, _)| (l.vm, l.node))
            .collect();
        assert_eq!(
            got,
            [
                ("web-1".to_owned(), "node-1".to_owned()),
                ("web-2".to_owned(), "node-2".to_owned())
            ]
        );
    }
}
