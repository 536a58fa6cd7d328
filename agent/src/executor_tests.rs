//! Executor tests with a recording fake driver.

use std::sync::atomic::{AtomicUsize, Ordering};

use otherix_api::proto::agent_message::Body;
use otherix_api::proto::{AgentMessage, VmPower};
use otherix_api::{Arch, VmSpec};
use tokio::sync::mpsc::Receiver;

use super::*;
use crate::outbox::power_report;

/// Records every call; calls wait on `gate` (a test holds its write side to park them).
#[derive(Default)]
struct FakeDriver {
    calls: Mutex<Vec<String>>,
    gate: tokio::sync::RwLock<()>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stop_error: Mutex<Option<ApiError>>,
    /// The pool path of every VM target the executor handed to `remember`.
    pool_paths: Mutex<Vec<std::path::PathBuf>>,
}

impl FakeDriver {
    async fn call(&self, what: &str, vm: Uuid) {
        self.calls.lock().unwrap().push(what.to_string());
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let _open = self.gate.read().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = vm;
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn report_of(vm: Uuid, power: VmPower) -> VmReport {
        power_report(&vm.to_string(), power)
    }
}

impl VmDriver for FakeDriver {
    fn remember(&self, vm: &VmTarget) -> Result<(), ApiError> {
        self.pool_paths.lock().unwrap().push(vm.pool_path.clone());
        Ok(())
    }
    async fn prepare(&self, vm: &VmTarget, progress: &Progress) -> Result<(), ApiError> {
        progress.phase("downloading image");
        self.call("prepare", vm.vm_id).await;
        Ok(())
    }
    async fn start(&self, vm: &VmTarget, _: &Progress) -> Result<VmReport, ApiError> {
        self.call("start", vm.vm_id).await;
        Ok(Self::report_of(vm.vm_id, VmPower::Running))
    }
    async fn stop(&self, vm: &VmTarget, t: Duration, p: &Progress) -> Result<VmReport, ApiError> {
        p.phase("powerdown sent");
        self.call(&format!("stop {}ms", t.as_millis()), vm.vm_id)
            .await;
        match self.stop_error.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(Self::report_of(vm.vm_id, VmPower::Stopped)),
        }
    }
    async fn poweroff(&self, vm: &VmTarget, _: &Progress) -> Result<VmReport, ApiError> {
        self.call("poweroff", vm.vm_id).await;
        Ok(Self::report_of(vm.vm_id, VmPower::Stopped))
    }
    async fn delete(&self, vm: &VmTarget, _: &Progress) -> Result<VmReport, ApiError> {
        self.call("delete", vm.vm_id).await;
        Ok(Self::report_of(vm.vm_id, VmPower::Absent))
    }
    async fn report(&self, vm_id: Uuid) -> VmReport {
        Self::report_of(vm_id, VmPower::Running)
    }
    async fn report_all(&self) -> Vec<VmReport> {
        Vec::new()
    }
    async fn read_serial_log(
        &self,
        vm_id: Uuid,
        offset: u64,
        max_bytes: u64,
    ) -> Result<crate::serial_log::LogChunk, ApiError> {
        self.call(&format!("logs {offset} {max_bytes}"), vm_id)
            .await;
        Ok(crate::serial_log::LogChunk {
            data: b"BOOTED".to_vec(),
            next_offset: offset + 6,
            eof: true,
        })
    }
    async fn pool_images(
        &self,
        pool: &str,
        prune: bool,
    ) -> Result<Vec<otherix_api::proto::CachedImageInfo>, ApiError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("images {pool} prune={prune}"));
        if pool != "default" {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("pool {pool} is not on this node"),
            ));
        }
        Ok(vec![otherix_api::proto::CachedImageInfo {
            sha256: "ab".repeat(32),
            used_by: 1,
            ..Default::default()
        }])
    }
    async fn sync_op(&self, vm_id: Uuid, op: SyncOp) -> Result<VmReport, ApiError> {
        self.call(op.as_str(), vm_id).await;
        match op {
            SyncOp::Resume => Err(ApiError::conflict(
                "vm web-1 is running; resume needs paused",
            )),
            _ => Ok(Self::report_of(vm_id, VmPower::Paused)),
        }
    }
}

struct Harness {
    driver: Arc<FakeDriver>,
    executor: Executor<FakeDriver>,
    rx: Receiver<AgentMessage>,
    data_dir: tempfile::TempDir,
    vm_id: Uuid,
}

fn harness() -> Harness {
    let data_dir = tempfile::tempdir().unwrap();
    let driver = Arc::new(FakeDriver::default());
    let (outbox, rx) = Outbox::new();
    let registry = Arc::new(VmRegistry::new(data_dir.path()));
    let pools = vec![("default".to_string(), data_dir.path().join("pool"))];
    let executor = Executor::new(driver.clone(), registry, data_dir.path(), outbox, pools);
    Harness {
        driver,
        executor,
        rx,
        data_dir,
        vm_id: Uuid::new_v4(),
    }
}

fn task(h: &Harness, kind: &str, spec: &VmSpec) -> TaskAssignment {
    TaskAssignment {
        task_id: Uuid::new_v4().to_string(),
        kind: kind.into(),
        vm_id: h.vm_id.to_string(),
        vm_name: "web-1".into(),
        pool: "default".into(),
        pool_path: h.data_dir.path().join("pool").display().to_string(),
        spec_json: serde_json::to_string(spec).unwrap(),
        stop_timeout_ms: 0,
        ..Default::default()
    }
}

fn spec() -> VmSpec {
    VmSpec::new("http://127.0.0.1:1/img", Arch::Amd64)
}

/// The next terminal TaskUpdate, skipping RUNNING ones.
async fn next_terminal(rx: &mut Receiver<AgentMessage>) -> TaskUpdate {
    let wait = async {
        loop {
            if let Some(Body::TaskUpdate(u)) = rx.recv().await.unwrap().body {
                if u.state != TaskState::Running as i32 {
                    return u;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no terminal update within 10s")
}

async fn wait_for_calls(driver: &FakeDriver, n: usize) {
    for _ in 0..500 {
        if driver.calls().len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("driver saw {:?}, wanted {n} calls", driver.calls());
}

#[tokio::test]
async fn assign_redelivered_running_task_is_ignored() {
    let mut h = harness();
    let t = task(&h, "vm.start", &spec());
    let held = h.driver.gate.write().await;
    h.executor.assign(t.clone());
    wait_for_calls(&h.driver, 1).await;

    h.executor.assign(t.clone());
    drop(held);

    let done = next_terminal(&mut h.rx).await;
    assert_eq!(done.state, TaskState::Succeeded as i32);
    assert_eq!(done.task_id, t.task_id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.driver.calls(), vec!["start"]);
    assert!(h.rx.try_recv().is_err(), "second terminal update sent");
}

#[tokio::test]
async fn assign_finished_task_resends_result_without_rerunning() {
    let mut h = harness();
    let t = task(&h, "vm.start", &spec());
    h.executor.assign(t.clone());
    let first = next_terminal(&mut h.rx).await;

    h.executor.assign(t.clone());
    let again = next_terminal(&mut h.rx).await;
    assert_eq!(again, first);

    // A restarted agent (new executor, same data dir) still knows the result.
    let (outbox, mut rx2) = Outbox::new();
    let registry = Arc::new(VmRegistry::new(h.data_dir.path()));
    let pools = vec![("default".to_string(), h.data_dir.path().join("pool"))];
    let restarted = Executor::new(h.driver.clone(), registry, h.data_dir.path(), outbox, pools);
    restarted.assign(t);
    assert_eq!(next_terminal(&mut rx2).await, first);
    assert_eq!(h.driver.calls(), vec!["start"]);
    assert!(h
        .data_dir
        .path()
        .join(format!("tasks/{}.json", first.task_id))
        .is_file());
}

#[tokio::test]
async fn assign_two_tasks_on_one_vm_never_overlap() {
    let mut h = harness();
    h.executor.assign(task(&h, "vm.start", &spec()));
    h.executor.assign(task(&h, "vm.poweroff", &spec()));
    next_terminal(&mut h.rx).await;
    next_terminal(&mut h.rx).await;
    assert_eq!(h.driver.calls().len(), 2);
    assert_eq!(h.driver.max_in_flight.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cancel_running_task_reports_cancelled() {
    let mut h = harness();
    let t = task(&h, "vm.create", &spec());
    let _held = h.driver.gate.write().await;
    h.executor.assign(t.clone());
    wait_for_calls(&h.driver, 1).await;

    h.executor.cancel(&t.task_id);

    let done = next_terminal(&mut h.rx).await;
    assert_eq!(done.state, TaskState::Cancelled as i32);
    assert_eq!(done.error_code, "cancelled");
    assert_eq!(done.phase, "cancelled");
    assert_eq!(h.driver.calls(), vec!["prepare"]);
}

#[tokio::test]
async fn create_kinds_table_maps_to_driver_calls() {
    let mut stopped = spec();
    stopped.desired_phase = DesiredPhase::Stopped;
    stopped.stop_timeout_secs = Some(7);
    // (kind, spec, stop_timeout_ms, driver calls, terminal phase)
    type Row = (&'static str, VmSpec, u64, Vec<&'static str>, &'static str);
    let table: Vec<Row> = vec![
        ("vm.create", spec(), 0, vec!["prepare", "start"], "running"),
        ("vm.create", stopped.clone(), 0, vec!["prepare"], "running"),
        ("vm.start", spec(), 0, vec!["start"], "running"),
        ("vm.stop", spec(), 0, vec!["stop 60000ms"], "stopped"),
        (
            "vm.stop",
            stopped.clone(),
            0,
            vec!["stop 7000ms"],
            "stopped",
        ),
        ("vm.stop", spec(), 1500, vec!["stop 1500ms"], "stopped"),
        ("vm.poweroff", spec(), 0, vec!["poweroff"], "stopped"),
        (
            "vm.reboot",
            spec(),
            0,
            vec!["stop 60000ms", "start"],
            "running",
        ),
        ("vm.delete", spec(), 0, vec!["delete"], "deleted"),
    ];
    for (kind, spec, stop_ms, want, phase) in table {
        let mut h = harness();
        let mut t = task(&h, kind, &spec);
        t.stop_timeout_ms = stop_ms;
        h.executor.assign(t);
        let done = next_terminal(&mut h.rx).await;
        assert_eq!(done.state, TaskState::Succeeded as i32, "{kind}: {done:?}");
        assert!(
            done.vm.is_some(),
            "{kind}: terminal update carries the VM report"
        );
        assert_eq!(h.driver.calls(), want, "{kind} {stop_ms}");
        assert_eq!(done.phase, phase, "{kind} {stop_ms}: terminal phase");
    }
}

#[tokio::test]
async fn stop_failure_reports_failed_with_code_and_vm() {
    let mut h = harness();
    *h.driver.stop_error.lock().unwrap() = Some(ApiError::new(
        ErrorCode::StopTimeout,
        "guest did not power off within 1s",
    ));
    h.executor.assign(task(&h, "vm.stop", &spec()));
    let mut phases = Vec::new();
    let done = loop {
        if let Some(Body::TaskUpdate(u)) = h.rx.recv().await.unwrap().body {
            phases.push(u.phase.clone());
            if u.state != TaskState::Running as i32 {
                break u;
            }
        }
    };
    assert_eq!(done.state, TaskState::Failed as i32);
    assert_eq!(done.error_code, "stop_timeout");
    assert_eq!(done.error_message, "guest did not power off within 1s");
    assert_eq!(done.vm.unwrap().power, VmPower::Running as i32);
    assert_eq!(phases, vec!["powerdown sent", "timed out"]);

    // A reboot whose graceful stop times out ends the same way.
    h.executor.assign(task(&h, "vm.reboot", &spec()));
    let done = next_terminal(&mut h.rx).await;
    assert_eq!(done.error_code, "stop_timeout");
    assert_eq!(done.phase, "timed out");
}

#[test]
fn terminal_phase_names_how_the_task_ended() {
    let report = |p| power_report("vm", p);
    let running = report(VmPower::Running);
    let failed = |code| Outcome::Failed(ApiError::new(code, "x"));
    let table: Vec<(Outcome, Option<&VmReport>, &str, &str)> = vec![
        (
            Outcome::Succeeded(running.clone()),
            Some(&running),
            "waiting for qmp",
            "running",
        ),
        (Outcome::Succeeded(running.clone()), None, "", "done"),
        (
            failed(ErrorCode::StopTimeout),
            Some(&running),
            "waiting for guest",
            "timed out",
        ),
        (
            failed(ErrorCode::ImageDownloadFailed),
            None,
            "downloading image",
            "downloading image",
        ),
        (failed(ErrorCode::QemuFailed), None, "", "failed"),
        (Outcome::Cancelled, None, "downloading image", "cancelled"),
    ];
    for (outcome, vm, last, want) in table {
        assert_eq!(terminal_phase(&outcome, vm, last), want, "{last:?}");
    }
}

#[tokio::test]
async fn assign_bad_input_fails_with_validation_failed() {
    type Mutate = fn(&mut TaskAssignment);
    let table: &[(Mutate, &str)] = &[
        (|t| t.kind = "vm.explode".into(), "unknown task kind"),
        (
            |t| t.vm_id = "web-1".into(),
            "vm_id: \"web-1\" is not a uuid",
        ),
        (
            |t| t.spec_json = "{\"nope\":1}".into(),
            "spec_json: not a valid VM spec",
        ),
        (|t| t.task_id = "x".into(), "task_id: \"x\" is not a uuid"),
    ];
    for (mutate, want) in table {
        let mut h = harness();
        let mut t = task(&h, "vm.start", &spec());
        mutate(&mut t);
        h.executor.assign(t);
        let done = next_terminal(&mut h.rx).await;
        assert_eq!(done.error_code, "validation_failed");
        assert!(done.error_message.contains(want), "{}", done.error_message);
        assert!(h.driver.calls().is_empty());
    }
}

#[tokio::test]
async fn sync_ops_reply_ok_or_error_code() {
    let h = harness();
    let request = |op: &str| SyncRequest {
        request_id: "r1".into(),
        op: op.into(),
        vm_id: h.vm_id.to_string(),
        ..Default::default()
    };
    let ok = h.executor.sync(request("pause")).await;
    assert!(ok.ok);
    assert_eq!(ok.request_id, "r1");
    assert_eq!(ok.vm.unwrap().power, VmPower::Paused as i32);

    let conflict = h.executor.sync(request("resume")).await;
    assert!(!conflict.ok);
    assert_eq!(conflict.error_code, "conflict");
    assert!(conflict.vm.is_some());

    let bad = h.executor.sync(request("explode")).await;
    assert_eq!(bad.error_code, "validation_failed");
}

#[tokio::test]
async fn sync_logs_and_images_route_to_driver() {
    let h = harness();
    let logs = h
        .executor
        .sync(SyncRequest {
            request_id: "r2".into(),
            op: "logs".into(),
            vm_id: h.vm_id.to_string(),
            offset: 10,
            max_bytes: 100,
            ..Default::default()
        })
        .await;
    assert!(logs.ok, "{logs:?}");
    assert_eq!(logs.request_id, "r2");
    assert_eq!(
        (logs.data.as_slice(), logs.next_offset, logs.eof),
        (&b"BOOTED"[..], 16, true)
    );

    let images = |op: &str, pool: &str| SyncRequest {
        request_id: "r3".into(),
        op: op.into(),
        pool: pool.into(),
        ..Default::default()
    };
    let listed = h.executor.sync(images("images", "default")).await;
    assert!(listed.ok);
    assert_eq!(listed.images.len(), 1);
    let pruned = h.executor.sync(images("prune-images", "default")).await;
    assert!(pruned.ok);
    let missing = h.executor.sync(images("images", "nope")).await;
    assert!(!missing.ok);
    assert_eq!(missing.error_code, "not_found");
    let bad_vm = h
        .executor
        .sync(SyncRequest {
            op: "logs".into(),
            vm_id: "x".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad_vm.error_code, "validation_failed");
    assert_eq!(
        h.driver.calls(),
        vec![
            "logs 10 100",
            "images default prune=false",
            "images default prune=true",
            "images nope prune=false"
        ]
    );
}

#[tokio::test]
async fn task_pool_path_from_server_is_ignored_and_unserved_pool_fails() {
    let mut h = harness();
    let mut t = task(&h, "vm.start", &spec());
    t.pool_path = "/etc".into();
    h.executor.assign(t);
    let done = next_terminal(&mut h.rx).await;
    assert_eq!(done.state, TaskState::Succeeded as i32, "{done:?}");
    assert_eq!(
        *h.driver.pool_paths.lock().unwrap(),
        vec![h.data_dir.path().join("pool")]
    );

    let mut t = task(&h, "vm.start", &spec());
    t.pool = "fast".into();
    h.executor.assign(t);
    let failed = next_terminal(&mut h.rx).await;
    assert_eq!(failed.state, TaskState::Failed as i32);
    assert_eq!(failed.error_code, "validation_failed");
    assert!(
        failed
            .error_message
            .contains("does not serve pool \"fast\" (its --pool flags serve: default)"),
        "{}",
        failed.error_message
    );
    assert_eq!(h.driver.pool_paths.lock().unwrap().len(), 1);
}
