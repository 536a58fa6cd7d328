//! End to end: `otherix vm console` on a pseudo-terminal, through real otherixd (TLS,
//! WebSocket), a real agent dialing its console stream back over mTLS gRPC, and QEMU's
//! serial socket on one busybox guest under TCG. A command typed into the guest's shell
//! runs and its output is on the terminal and in `vm logs`; Ctrl-] detaches; a second
//! writer is 409 unless --force (which ends the first with the reason); readers watch
//! alongside; a viewer token may only read; the session survives a guest reset and ends
//! with the reason when the VM stops.

use std::time::Duration;

use otherix_e2e::pty::PtyCli;
use otherix_e2e::{Cluster, ImageServer};

const WAIT: Duration = Duration::from_secs(120);

fn token(cluster: &Cluster, name: &str, role: &str) -> String {
    let out = cluster
        .cli(&[
            "token",
            "create",
            name,
            "--project",
            "default",
            "--role",
            role,
        ])
        .ok();
    out.stdout
        .split_whitespace()
        .find(|w| w.starts_with("otx_"))
        .unwrap_or_else(|| panic!("no secret in {out:#?}"))
        .to_owned()
}

#[test]
fn console_types_into_the_guest_detaches_and_the_bytes_are_in_vm_logs() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    cluster.create_booted("con-1", &server.url("busybox-amd64.qcow2"), &[]);
    let config = cluster.cli_config_path();
    let dir = cluster.dir.path().to_owned();

    // The agent's counters of the running VM reach /metrics (sent every 10 s).
    let bearer = format!("Bearer {}", cluster.admin_token().unwrap());
    let sample = |text: &str, metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{{vm=\"con-1\",project=\"default\",node=\"node-1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
    };
    let metrics = otherix_e2e::wait::until("the VM's counters on /metrics", WAIT, || {
        let (status, text) = otherix_e2e::cluster::http_request(
            &cluster.api_url,
            "GET",
            "/metrics",
            None,
            &[("Authorization", &bearer)],
        )
        .ok()?;
        assert_eq!(status, 200, "{text}");
        sample(&text, "otherix_vm_cpu_seconds_total").map(|_| text)
    });
    assert!(
        sample(&metrics, "otherix_vm_cpu_seconds_total").unwrap() > 0.0,
        "{metrics}"
    );
    assert!(
        sample(&metrics, "otherix_vm_memory_resident_bytes").unwrap() > 1e6,
        "{metrics}"
    );
    // The guest read its disk while booting.
    assert!(
        sample(&metrics, "otherix_vm_disk_read_bytes_total").unwrap() > 0.0,
        "{metrics}"
    );

    // Refusals before any session: no such VM, a viewer asking to write.
    cluster
        .cli(&["vm", "console", "nope"])
        .expect_error("not_found");
    let viewer = token(&cluster, "watcher", "viewer");
    cluster
        .cli_as(&viewer, &["vm", "console", "con-1"])
        .expect_error("forbidden");

    // A reader (a viewer may read) follows the console in the background.
    let reader = cluster.cli_background_env(
        "reader",
        &["vm", "console", "con-1", "--read-only"],
        &[("OTHERIX_TOKEN", &viewer)],
    );
    reader.wait_stderr("attached to vm con-1's serial console (read-only)", WAIT);

    let mut writer = PtyCli::spawn(&config, &["vm", "console", "con-1"], &dir.join("w1.err"));
    writer.wait_stderr("detach with Ctrl-]", WAIT);
    // One writer at a time.
    cluster
        .cli(&["vm", "console", "con-1"])
        .expect_error("conflict");

    writer.type_bytes(b"echo otx-$((6*7))\r");
    writer.wait_output("otx-42", WAIT);
    reader.wait_stdout("otx-42", 1, WAIT);
    writer.type_bytes(&[0x1d]);
    let status = writer.wait_exit(WAIT);
    assert!(status.success(), "{status:?}: {}", writer.stderr_text());
    assert!(writer
        .stderr_text()
        .contains("detached from vm con-1's console"));

    // The serial log recorded the same bytes.
    let logs = cluster.cli(&["vm", "logs", "con-1"]).ok();
    assert!(logs.stdout.contains("echo otx-$((6*7))"), "{}", logs.stdout);
    assert!(logs.stdout.contains("otx-42"), "{}", logs.stdout);

    // --force takes over from a writer, who is told why.
    let mut first = PtyCli::spawn(&config, &["vm", "console", "con-1"], &dir.join("w2.err"));
    first.wait_stderr("detach with Ctrl-]", WAIT);
    let mut second = PtyCli::spawn(
        &config,
        &["vm", "console", "con-1", "--force"],
        &dir.join("w3.err"),
    );
    second.wait_stderr("detach with Ctrl-]", WAIT);
    let status = first.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", first.stderr_text());
    assert!(
        first.stderr_text().contains("another writer took over"),
        "{}",
        first.stderr_text()
    );
    second.type_bytes(b"echo forced-$((40+2))\r");
    second.wait_output("forced-42", WAIT);

    // A guest reset keeps QEMU and its serial port: the session sees the guest boot again.
    cluster.cli(&["vm", "reset", "con-1"]).ok();
    second.wait_output("OTHERIX-TEST-GUEST-BOOTED", WAIT);
    second.wait_output("OTHERIX-TEST-GUEST-READY", WAIT);
    second.type_bytes(b"echo after-reset\r");
    second.wait_output("after-reset\r\n", WAIT);

    // `vm ssh` needs a route to port 22: this VM has neither a bridge nor a forward.
    let ssh = cluster.cli(&["vm", "ssh", "con-1"]);
    assert_eq!(ssh.code, 1, "{ssh:#?}");
    assert!(
        ssh.stderr.contains("vm con-1 has no SSH route") && ssh.stderr.contains("--port 2222:22"),
        "{ssh:#?}"
    );

    // Stopping the VM ends every session with the reason.
    cluster.cli(&["vm", "stop", "con-1", "--wait"]).ok();
    let status = second.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "{}", second.stderr_text());
    assert!(
        second.stderr_text().contains("serial port closed"),
        "{}",
        second.stderr_text()
    );
    reader.wait_stderr("serial port closed", WAIT);
    cluster
        .cli(&["vm", "console", "con-1"])
        .expect_error("conflict");
}
