//! Declarative manifests end to end: every example applied and round-tripped, watch mode
//! (edit → configured, invalid edit → nothing changes, removed file with --prune →
//! deleted, never others), immutable fields, `otherixd --manifests-dir`, and the
//! reconciler restarting a VM whose QEMU was killed while a clean guest poweroff stays
//! stopped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use otherix_e2e::netns::NetNs;
use otherix_e2e::wait::{file_contains, pid_alive, until};
use otherix_e2e::{Cluster, ClusterOptions, ImageServer};

const BOOT: Duration = Duration::from_secs(180);
const SHORT: Duration = Duration::from_secs(30);

/// Copies examples/manifests into `dir`, pointing image URLs at `server`.
fn copy_examples(server: &ImageServer, dir: &Path) -> Vec<String> {
    let src = otherix_e2e::paths::workspace_root().join("examples/manifests");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(src).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path())
            .unwrap()
            .replace("http://127.0.0.1:7090/", &server.url(""));
        std::fs::write(dir.join(&name), text).unwrap();
        names.push(name);
    }
    names
}

fn vm_manifest(name: &str, url: &str, extra: &str) -> String {
    format!(
        "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: {name}\nspec:\n  image_url: {url}\n  arch: amd64\n  vcpus: 1\n{extra}"
    )
}

#[test]
fn every_example_applies_and_round_trips_unchanged() {
    // The bridge example needs br-lan: the cluster runs in a namespace that has it.
    let ns = NetNs::with_bridge("br-lan", "192.0.2.1/24");
    ns.enter_current_thread();
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    copy_examples(&server, dir.path());
    let path = dir.path().to_str().unwrap();

    let out = cluster.cli(&["create", "-f", path, "--wait"]).ok();
    for line in [
        "pool/fast created",
        "network/lan created",
        "vm/web-1 created task=",
        "vm/arm-1 created task=",
        "vm/db-1 created task=",
        "vm/app-1 created task=",
        "vm/app-2 created task=",
        "vm/web-1 running task=",
        "vm/app-2 stopped task=",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} not in:\n{}",
            out.stdout
        );
    }
    // Dependencies first: pools and networks before the VMs that use them.
    let first_vm = out.stdout.find("vm/").unwrap();
    assert!(out.stdout.find("network/lan").unwrap() < first_vm);
    assert!(out.stdout.find("pool/fast").unwrap() < first_vm);
    for vm in ["web-1", "arm-1", "db-1", "app-1"] {
        assert_eq!(cluster.vm(vm)["status"]["phase"], "running", "{vm}");
    }
    assert_eq!(cluster.vm("app-2")["status"]["phase"], "stopped");
    assert_eq!(cluster.vm("db-1")["spec"]["network"], "lan");

    // Re-applying the same files changes nothing and emits no task.
    let out = cluster.cli(&["create", "-f", path]).ok();
    for line in out.stdout.lines() {
        assert!(line.ends_with(" unchanged"), "{line:?} in:\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("task="), "{}", out.stdout);
    let out = cluster.cli(&["diff", "-f", path]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    // `vm get -o yaml | create -f -` is unchanged for every VM.
    for vm in ["web-1", "arm-1", "db-1", "app-1", "app-2"] {
        let yaml = cluster.cli(&["vm", "get", vm, "-o", "yaml"]).ok().stdout;
        let out = cluster
            .cli_with_stdin(&["create", "-f", "-"], Some(&yaml))
            .ok();
        assert_eq!(out.stdout.trim(), format!("vm/{vm} unchanged"), "{yaml}");
    }
    // The bridged VM is on the namespace's bridge with its network-config address.
    file_contains(
        &cluster.serial_log("db-1"),
        "OTHERIX-NIC-ADDR eth0 192.0.2.10/24",
        BOOT,
    );
    assert_eq!(server.requests("busybox-amd64.qcow2"), 1);

    // delete -f removes what a file declares, and nothing else.
    let web = dir.path().join("vm-amd64.yaml");
    let out = cluster
        .cli(&["delete", "-f", web.to_str().unwrap(), "--wait"])
        .ok();
    assert!(
        out.stdout.starts_with("vm/web-1 deleted task="),
        "{}",
        out.stdout
    );
    assert_eq!(cluster.get("/v1/vms/web-1").0, 404);
    assert_eq!(cluster.get("/v1/vms/app-1").0, 200);
}

#[test]
fn imperative_vm_with_every_flag_round_trips_unchanged() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("ud");
    std::fs::write(&ud, "#cloud-config\nhostname: full\n").unwrap();
    let nc = dir.path().join("nc");
    std::fs::write(&nc, "version: 2\nethernets: {}\n").unwrap();
    let key_file = dir.path().join("id_ed25519.pub");
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e2etestkey alice@laptop";
    std::fs::write(&key_file, format!("# mine\n{key}\n")).unwrap();
    let sha = std::fs::read_to_string(images.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .find(|l| l.ends_with("busybox-amd64.qcow2"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    cluster
        .cli(&[
            "vm",
            "create",
            "full",
            "--image-url",
            &server.url("busybox-amd64.qcow2"),
            "--arch",
            "amd64",
            "--image-sha256",
            &sha,
            "--firmware",
            "seabios",
            "--format",
            "qcow2",
            "--disk-gib",
            "1",
            "--pool",
            "default",
            "--node",
            "node-1",
            "--vcpus",
            "1",
            "--memory-mb",
            "200",
            "--user-data",
            ud.to_str().unwrap(),
            "--network-config",
            nc.to_str().unwrap(),
            "--stop-timeout",
            "30s",
            "--port",
            "18222:22",
            "--restart-policy",
            "never",
            "--ssh-key",
            key_file.to_str().unwrap(),
            "--wait",
        ])
        .ok();
    let yaml = cluster
        .cli(&["vm", "get", "full", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains(key), "{yaml}");
    // The key reached the guest's cloud-init seed (meta-data public-keys), read back with
    // mtools from the FAT image the agent wrote.
    let vm = cluster.vm("full");
    let seed = cluster
        .pool_path("node-1", "default")
        .join("vms")
        .join(vm["id"].as_str().unwrap())
        .join("seed.img");
    let meta = std::process::Command::new("mtype")
        .arg("-i")
        .arg(&seed)
        .arg("::meta-data")
        .output()
        .unwrap();
    let meta = String::from_utf8_lossy(&meta.stdout);
    assert!(
        meta.contains(&format!("public-keys:\n  - \"{key}\"")),
        "{meta}"
    );
    let out = cluster
        .cli_with_stdin(&["create", "-f", "-"], Some(&yaml))
        .ok();
    assert_eq!(out.stdout.trim(), "vm/full unchanged", "{yaml}");
    assert_eq!(cluster.vm("full")["generation"], 1);
}

#[test]
fn watch_mode_applies_edits_rejects_invalid_files_and_prunes_its_own_objects() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yaml");
    std::fs::write(&web, vm_manifest("w1", &url, "  memory_mb: 256\n")).unwrap();
    // An object this directory never applied: prune must leave it alone.
    let other = cluster.post_vm(
        "other",
        serde_json::json!({"image_url": url, "arch": "amd64", "vcpus": 1, "memory_mb": 128,
                           "desired_phase": "stopped"}),
    );
    cluster.wait_task(&other, BOOT);

    let path = dir.path().to_str().unwrap().to_owned();
    let watch = cluster.cli_background("watch", &["create", "-f", &path, "--watch", "--prune"]);
    watch.wait_stdout("vm/w1 created", 1, SHORT);
    until("w1 running", BOOT, || {
        (cluster.vm("w1")["status"]["phase"] == "running").then_some(())
    });

    // Edit a mutable field: configured, with the diff; takes effect at the next boot.
    std::fs::write(&web, vm_manifest("w1", &url, "  memory_mb: 320\n")).unwrap();
    watch.wait_stdout("vm/w1 configured", 1, SHORT);
    let text = watch.stdout_text();
    assert!(text.contains("memory_mb: 320"), "no diff printed:\n{text}");
    let vm = cluster.vm("w1");
    assert_eq!(vm["spec"]["memory_mb"], 320);
    assert_eq!(vm["generation"], 2);
    assert_eq!(vm["status"]["restart_pending"], true, "{vm}");
    // ... and takes effect at the next boot (once the guest listens for the power button).
    file_contains(&cluster.serial_log("w1"), "OTHERIX-TEST-GUEST-READY", BOOT);
    cluster.cli(&["vm", "reboot", "w1", "--wait"]).ok();
    let vm = cluster.vm("w1");
    assert!(
        vm["status"]["restart_pending"].is_null() || vm["status"]["restart_pending"] == false,
        "{vm}"
    );
    let pid = vm["status"]["pid"].as_u64().unwrap();
    let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .replace('\0', " ");
    assert!(
        cmd.contains(" -m 320"),
        "new memory not applied at boot: {cmd}"
    );

    // An invalid edit prints its error with file:line and changes nothing.
    std::fs::write(
        &web,
        vm_manifest("w1", &url, "  memory_mb: 320\n").replace("vcpus: 1", "vcpus: 0"),
    )
    .unwrap();
    watch.wait_stderr("web.yaml:8:3: spec.vcpus: must be 1..128", SHORT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        cluster.vm("w1")["generation"],
        2,
        "invalid file changed the VM"
    );

    // Fix it and add a second file; then remove that file: pruned.
    std::fs::write(&web, vm_manifest("w1", &url, "  memory_mb: 320\n")).unwrap();
    let w2 = dir.path().join("w2.yaml");
    std::fs::write(
        &w2,
        vm_manifest("w2", &url, "  memory_mb: 128\n  desired_phase: stopped\n"),
    )
    .unwrap();
    watch.wait_stdout("vm/w2 created", 1, SHORT);
    until("w2 created and stopped", BOOT, || {
        (cluster.vm("w2")["status"]["phase"] == "stopped").then_some(())
    });
    std::fs::remove_file(&w2).unwrap();
    until("w2 pruned", BOOT, || {
        (cluster.get("/v1/vms/w2").0 == 404).then_some(())
    });
    assert_eq!(
        cluster.get("/v1/vms/other").0,
        200,
        "prune deleted an object it did not apply"
    );
    assert_eq!(cluster.get("/v1/vms/w1").0, 200);
}

#[test]
fn immutable_fields_refused_and_server_manifests_dir_applies() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let url = server.url("busybox-amd64.qcow2");
    let dir = tempfile::tempdir().unwrap();
    let m1 = dir.path().join("m1.yaml");
    std::fs::write(&m1, vm_manifest("m1", &url, "  desired_phase: stopped\n")).unwrap();
    let cluster = Cluster::start_with(ClusterOptions {
        server_args: vec![
            "--manifests-dir".into(),
            dir.path().to_str().unwrap().into(),
        ],
        ..ClusterOptions::default()
    });
    // The server applies its manifests dir at start-up and on change.
    until("m1 applied by otherixd", BOOT, || {
        let (status, vm) = cluster.get("/v1/vms/m1");
        (status == 200 && vm["status"]["phase"] == "stopped").then_some(())
    });
    std::fs::write(
        &m1,
        vm_manifest("m1", &url, "  desired_phase: stopped\n  memory_mb: 300\n"),
    )
    .unwrap();
    until("m1 reconfigured by otherixd", SHORT, || {
        (cluster.vm("m1")["spec"]["memory_mb"] == 300).then_some(())
    });

    // An immutable change is refused, listing old and new values; nothing changes.
    let other = tempfile::tempdir().unwrap();
    let changed = other.path().join("m1.yaml");
    std::fs::write(
        &changed,
        vm_manifest("m1", &url, "  desired_phase: stopped\n  memory_mb: 300\n")
            .replace("arch: amd64", "arch: arm64"),
    )
    .unwrap();
    let out = cluster.cli(&["create", "-f", changed.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: immutable_field: ")
            && out.stderr.contains("spec.arch: amd64 -> arm64"),
        "{}",
        out.stderr
    );
    assert_eq!(cluster.vm("m1")["spec"]["arch"], "amd64");
}

/// Sends one QMP command on a VM's QMP socket, as a guest-side ACPI event would arrive.
fn qmp(socket: &Path, command: &str) {
    let stream = UnixStream::connect(socket).expect("connect qmp");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // greeting
    let mut w = stream;
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
    writeln!(w, r#"{{"execute":"{command}"}}"#).unwrap();
    line.clear();
    reader.read_line(&mut line).unwrap();
}

#[test]
fn killed_qemu_is_restarted_and_clean_guest_poweroff_stays_stopped() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let pid1 = cluster.create_booted("r1", &server.url("busybox-amd64.qcow2"), &[]);
    let serial = cluster.serial_log("r1");

    // Drift: QEMU killed behind our back → on-failure restarts it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pid2 = until("r1 restarted with a new QEMU", BOOT, || {
        let vm = cluster.vm("r1");
        let pid = vm["status"]["pid"].as_u64()? as u32;
        (vm["status"]["phase"] == "running" && pid != pid1 && pid_alive(pid)).then_some(pid)
    });
    until("second boot", BOOT, || {
        let log = std::fs::read_to_string(&serial).ok()?;
        (log.matches("OTHERIX-TEST-GUEST-READY").count() >= 2).then_some(())
    });

    // The guest powers itself off (ACPI power button): it stays stopped under on-failure.
    let qmp_socket = serial.parent().unwrap().join("qmp.sock");
    qmp(&qmp_socket, "system_powerdown");
    until("r1 stopped by its guest", BOOT, || {
        let vm = cluster.vm("r1");
        (vm["status"]["phase"] == "stopped").then_some(())
    });
    assert!(!pid_alive(pid2));
    std::thread::sleep(Duration::from_secs(8));
    let vm = cluster.vm("r1");
    assert_eq!(
        vm["status"]["phase"], "stopped",
        "a clean poweroff was restarted: {vm}"
    );
    assert_eq!(vm["spec"]["desired_phase"], "stopped", "{vm}");
}
