//! Table tests of how guest agent news folds into a VM (`apply_guest` via both entry
//! points).

use super::tests::vm;
use super::*;

/// A report without a serial log path (unlike `tests::report`), so only guest news can
/// make it a change.
fn report(power: VmPower, pid: u32) -> VmReport {
    VmReport {
        vm_id: String::new(),
        power: power as i32,
        pid,
        ..Default::default()
    }
}

#[test]
fn guest_agent_folding_table() {
    use otherix_api::proto::GuestInfo;
    let info = |connected: bool, addresses: &[&str]| GuestInfo {
        connected,
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        os_name: if connected {
            "Busybox".into()
        } else {
            String::new()
        },
        os_version: String::new(),
    };
    let state = |connected: bool, addresses: &[&str], answered: bool| GuestState {
        answered,
        ..GuestState::from(&info(connected, addresses))
    };
    let with_guest = |power: VmPower, guest: Option<GuestInfo>| VmReport {
        guest,
        ..report(power, if power == VmPower::Stopped { 0 } else { 42 })
    };
    let up = Some(state(true, &["10.0.2.15/24"], true));
    // (name, phase before, guest before, report, phase after, guest after, changed)
    type Row = (
        &'static str,
        VmPhase,
        Option<GuestState>,
        VmReport,
        VmPhase,
        Option<GuestState>,
        bool,
    );
    let table: Vec<Row> = vec![
        (
            "watcher news on a running VM sets it",
            VmPhase::Running,
            None,
            with_guest(VmPower::Unspecified, Some(info(true, &["10.0.2.15/24"]))),
            VmPhase::Running,
            up.clone(),
            true,
        ),
        (
            "a report without guest keeps it",
            VmPhase::Running,
            up.clone(),
            with_guest(VmPower::Running, None),
            VmPhase::Running,
            up.clone(),
            false,
        ),
        (
            "the same news again changes nothing",
            VmPhase::Running,
            up.clone(),
            with_guest(VmPower::Unspecified, Some(info(true, &["10.0.2.15/24"]))),
            VmPhase::Running,
            up.clone(),
            false,
        ),
        (
            "agent gone quiet: not connected, still ready (answered this boot)",
            VmPhase::Running,
            up.clone(),
            with_guest(VmPower::Unspecified, Some(info(false, &[]))),
            VmPhase::Running,
            Some(state(false, &[], true)),
            true,
        ),
        (
            "not answered yet: not connected, not ready",
            VmPhase::Running,
            None,
            with_guest(VmPower::Unspecified, Some(info(false, &[]))),
            VmPhase::Running,
            Some(state(false, &[], false)),
            true,
        ),
        (
            "stopped clears it",
            VmPhase::Running,
            up.clone(),
            with_guest(VmPower::Stopped, None),
            VmPhase::Stopped,
            None,
            true,
        ),
        (
            "late news about a stopped VM is dropped",
            VmPhase::Stopped,
            None,
            with_guest(VmPower::Unspecified, Some(info(true, &["10.0.2.15/24"]))),
            VmPhase::Stopped,
            None,
            false,
        ),
        (
            "absent clears it",
            VmPhase::Running,
            up.clone(),
            with_guest(VmPower::Absent, None),
            VmPhase::Failed,
            None,
            true,
        ),
    ];
    for (name, phase, guest, report, phase_after, guest_after, changed) in table {
        let mut v = vm(phase);
        v.spec.desired_phase = DesiredPhase::Stopped;
        v.guest = guest;
        v.pid = (phase == VmPhase::Running).then_some(42);
        let got = apply_vm_report(&mut v, &report, 1000, &Backoff::default());
        assert_eq!(v.phase, phase_after, "{name}");
        assert_eq!(v.guest, guest_after, "{name}");
        assert_eq!(got, changed, "{name}");
    }

    // A task's report carries the watcher's last info; a new boot starts without.
    let mut v = vm(VmPhase::Running);
    v.guest = up.clone();
    apply_task_outcome(
        &mut v,
        TaskKind::VmStart,
        &TaskOutcome::Succeeded,
        Some(&with_guest(VmPower::Running, None)),
        1000,
        &Backoff::default(),
    );
    assert_eq!(v.guest, None, "start: a new boot");
    let mut v = vm(VmPhase::Running);
    apply_task_outcome(
        &mut v,
        TaskKind::VmStop,
        &TaskOutcome::Failed(ErrorBody {
            code: ErrorCode::StopTimeout,
            message: "still running".into(),
        }),
        Some(&with_guest(
            VmPower::Running,
            Some(info(true, &["10.0.2.15/24"])),
        )),
        1000,
        &Backoff::default(),
    );
    assert_eq!(
        v.guest, up,
        "failed stop: still running, guest info from its report"
    );
}
