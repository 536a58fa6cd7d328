//! `/metrics`: the Prometheus registry (prometheus-client), the gauges read from the store
//! and this replica at scrape time, and the HTTP request histogram fed by [`http`].

pub mod http;
pub mod vm_stats;

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::gateway::Sessions;
use crate::leader::Leadership;
use crate::store::{GroupCount, Store, StoreError};

/// The content type of what [`Metrics::scrape`] returns (prometheus-client writes the
/// OpenMetrics text format, which Prometheus scrapes natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    phase: String,
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    kind: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    status: String,
}

/// Labels of the request histogram: the route template (never the raw URI), the method
/// and the status code, so the label set stays bounded.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub code: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn request_histogram() -> Histogram {
    // 1 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The registry, built once per daemon and shared through `AppState`.
pub struct Metrics {
    registry: Registry,
    vms: Family<VmLabels, Gauge>,
    tasks: Family<TaskLabels, Gauge>,
    nodes: Family<NodeLabels, Gauge>,
    sessions: Gauge,
    leader: Gauge,
    requests: HistogramFamily<RequestLabels>,
    create_to_running: Histogram,
    queue: crate::reconcile::QueueMetrics,
    vm_stats: Arc<vm_stats::VmStatsCollector>,
    store: Store,
    attached: Arc<Sessions>,
    leadership: OnceLock<Leadership>,
    /// One scrape at a time: a scrape clears and refills the store-backed families.
    scrape: tokio::sync::Mutex<()>,
}

impl Metrics {
    pub fn new(store: Store, attached: Arc<Sessions>) -> Metrics {
        let mut registry = Registry::with_prefix("otherix");
        let vms = Family::<VmLabels, Gauge>::default();
        registry.register(
            "vms",
            "Live VMs by phase (as GET /v1/vms shows it) and node (empty while unplaced)",
            vms.clone(),
        );
        let tasks = Family::<TaskLabels, Gauge>::default();
        registry.register(
            "tasks",
            "Tasks kept in the store by kind and status",
            tasks.clone(),
        );
        let nodes = Family::<NodeLabels, Gauge>::default();
        registry.register("nodes", "Registered nodes by status", nodes.clone());
        let sessions = Gauge::default();
        registry.register(
            "agent_sessions",
            "Agent sessions attached to this replica",
            sessions.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "Whether this replica holds the leader lease (1) or not (0)",
            leader.clone(),
        );
        let requests: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(request_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP API request duration by route template, method and status code",
            requests.clone(),
        );
        // 1 s .. ~68 min (image downloads can be slow).
        let create_to_running = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        registry.register(
            "vm_create_to_running_seconds",
            "Time from a vm.create task's creation to its VM running (observed by the replica the agent reported to)",
            create_to_running.clone(),
        );
        let queue = crate::reconcile::QueueMetrics {
            depth: Gauge::default(),
            // 1 ms .. ~16 s.
            run_seconds: Some(Histogram::new(exponential_buckets(0.001, 2.0, 15))),
        };
        registry.register(
            "reconcile_queue_depth",
            "VMs waiting in the leader's reconcile queue (0 on a replica that does not lead)",
            queue.depth.clone(),
        );
        if let Some(h) = &queue.run_seconds {
            registry.register(
                "reconcile_duration_seconds",
                "Duration of one reconcile run of a VM (plan, writes, task dispatch) on the leader",
                h.clone(),
            );
        }
        let vm_stats = Arc::new(vm_stats::VmStatsCollector::default());
        registry.register_collector(Box::new(vm_stats.clone()));
        Metrics {
            registry,
            create_to_running,
            queue,
            vm_stats,
            vms,
            tasks,
            nodes,
            sessions,
            leader,
            requests,
            store,
            attached,
            leadership: OnceLock::new(),
            scrape: tokio::sync::Mutex::new(()),
        }
    }

    /// Hands over the leadership watch once the election runs (before that, and in a
    /// replica that never runs one, `otherix_leader` is 0).
    pub fn set_leadership(&self, leadership: Leadership) {
        let _ = self.leadership.set(leadership);
    }

    /// The reconcile queue's gauges, for the reconciler to report into.
    pub fn reconcile_queue(&self) -> crate::reconcile::QueueMetrics {
        self.queue.clone()
    }

    /// The create-to-running histogram, for the gateway to observe into.
    pub fn create_to_running(&self) -> Histogram {
        self.create_to_running.clone()
    }

    /// Records one HTTP API request.
    pub fn observe_request(&self, labels: &RequestLabels, seconds: f64) {
        self.requests.get_or_create(labels).observe(seconds);
    }

    /// Reads the store and this replica's state into the gauges and encodes the registry.
    pub async fn scrape(&self) -> Result<String, StoreError> {
        let _one = self.scrape.lock().await;
        let vms = self.store.count_vms_by_phase_and_node().await?;
        let tasks = self.store.count_tasks_by_kind_and_status().await?;
        let nodes = self.store.count_nodes_by_status().await?;
        refill(&self.vms, vms, |[phase, node]| VmLabels { phase, node });
        refill(&self.tasks, tasks, |[kind, status]| TaskLabels {
            kind,
            status,
        });
        refill(&self.nodes, nodes, |[status, _]| NodeLabels { status });
        self.sessions
            .set(self.attached.attached_nodes().len() as i64);
        let reported = self.attached.stats();
        let ids: Vec<uuid::Uuid> = reported
            .iter()
            .filter_map(|(_, s)| uuid::Uuid::parse_str(&s.vm_id).ok())
            .collect();
        let identities = self.store.vm_identities(&ids).await?;
        self.vm_stats.set(vm_stats::rows(reported, &identities));
        let leads = self.leadership.get().is_some_and(|l| l.borrow().is_some());
        self.leader.set(i64::from(leads));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        Ok(out)
    }
}

/// Replaces every series of `family` with `groups` (groups that vanished disappear).
fn refill<L>(family: &Family<L, Gauge>, groups: Vec<GroupCount>, labels: impl Fn([String; 2]) -> L)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug,
{
    family.clear();
    for g in groups {
        family.get_or_create(&labels(g.labels)).set(g.count);
    }
}
