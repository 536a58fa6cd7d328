//! An agent handed a firmware outside its `--firmware-dir`s (a server that did not check,
//! or an old one) refuses the task with `firmware_refused`: nothing is attached, no UEFI
//! variable store is copied and QEMU never starts. Driven through the real executor and
//! the real driver (image cache, disks) on a file:// test guest.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{test_image, Node};
use otherix_agent::executor::Executor;
use otherix_agent::firmware::EFI_VARS;
use otherix_agent::outbox::Outbox;
use otherix_api::proto::{agent_message, FirmwareRef, TaskAssignment, TaskState, TaskUpdate};
use otherix_api::Arch;
use uuid::Uuid;

async fn terminal(
    rx: &mut tokio::sync::mpsc::Receiver<otherix_api::proto::AgentMessage>,
) -> TaskUpdate {
    let wait = async {
        loop {
            let msg = rx.recv().await.expect("outbox closed");
            if let Some(agent_message::Body::TaskUpdate(u)) = msg.body {
                if u.state != TaskState::Running as i32 {
                    return u;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("no terminal update within 60s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_outside_firmware_dirs_is_refused_by_the_agent() {
    let node = Node::new();
    let image = test_image("busybox-amd64.qcow2");
    // A file the agent can read, in a directory it does not serve, and a symlink inside a
    // served directory that escapes it.
    let served = node.dir.path().join("fw");
    std::fs::create_dir(&served).unwrap();
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", served.join("vars.fd")).unwrap();
    std::fs::write(node.dir.path().join("host-key"), b"secret").unwrap();
    std::os::unix::fs::symlink(node.dir.path().join("host-key"), served.join("code.fd")).unwrap();

    let registry = node.registry.clone();
    let driver = Arc::new(
        otherix_agent::local_driver::LocalDriver::new(
            registry.clone(),
            otherix_agent::host::Accel::Tcg,
            true,
        )
        .with_pools(vec![("default".into(), node.pool.clone())])
        .with_systemd_scope(false)
        .with_firmware_dirs(&[served.clone(), "/usr/share/OVMF".into()]),
    );
    let (outbox, mut rx) = Outbox::new();
    let executor = Executor::new(
        driver,
        registry,
        &node.dir.path().join("data"),
        outbox,
        vec![("default".into(), node.pool.clone())],
    );
    let (link, vars_copy) = (
        served.join("code.fd").display().to_string(),
        served.join("vars.fd").display().to_string(),
    );
    let cases = [
        (
            "/etc/shadow",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "outside the firmware directories",
        ),
        (
            "/usr/share/OVMF/../../../etc/shadow",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "`..`",
        ),
        (link.as_str(), vars_copy.as_str(), "host-key"),
    ];
    for (i, (code, vars, needle)) in cases.into_iter().enumerate() {
        let vm = node.target(&format!("fw-{i}"), &image, Arch::Amd64);
        executor.assign(TaskAssignment {
            task_id: Uuid::new_v4().to_string(),
            kind: "vm.create".into(),
            vm_id: vm.vm_id.to_string(),
            vm_name: vm.name.clone(),
            pool: "default".into(),
            pool_path: "/somewhere/the/server/chose".into(),
            spec_json: serde_json::to_string(vm.spec.as_ref().unwrap()).unwrap(),
            firmware: Some(FirmwareRef {
                name: "evil".into(),
                r#type: "uefi".into(),
                code: code.into(),
                vars_template: vars.into(),
            }),
            ..Default::default()
        });
        let done = terminal(&mut rx).await;
        assert_eq!(done.state, TaskState::Failed as i32, "{code}: {done:?}");
        assert_eq!(done.error_code, "firmware_refused", "{code}: {done:?}");
        assert!(
            done.error_message.contains(needle),
            "{needle:?} not in {:?}",
            done.error_message
        );
        let run = node.run_dir(&vm);
        assert!(!run.pidfile().exists(), "QEMU must not start");
        let vm_dir = node.pool.join(format!("vms/{}", vm.vm_id));
        assert!(!vm_dir.join(EFI_VARS).exists());
        // The disk was built in the agent's own pool, not the server's path.
        assert!(vm_dir.join("disk.qcow2").is_file());
    }
    assert!(!std::path::Path::new("/somewhere").exists());
}
