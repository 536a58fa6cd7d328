//! End to end: `otherix events -o json` follows a VM created, stopped and deleted through
//! the CLI with real otherixd, otherix-agent and QEMU (one busybox guest under TCG). The
//! watcher is killed midway and resumed with `--since` the last cursor it printed; the
//! union of both runs is exactly the VM's changes, in order, each once.

use std::time::Duration;

use otherix_e2e::{Cluster, ImageServer};
use serde_json::Value;

const STREAM_WAIT: Duration = Duration::from_secs(120);

/// The complete JSON lines a watcher printed (a line cut by the kill is dropped).
fn printed(text: &str) -> Vec<Value> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

fn cursor(e: &Value) -> i64 {
    e["cursor"].as_str().unwrap().parse().unwrap()
}

fn start_cursor(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("events after cursor "))
        .and_then(|l| l.strip_suffix(':'))
        .unwrap_or_else(|| panic!("no start cursor on stderr: {stderr:?}"))
        .to_owned()
}

#[test]
fn events_killed_midway_and_resumed_with_since_union_is_every_change_once() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let mut cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");

    let watch = cluster.cli_background("vm-list-watch", &["vm", "list", "--watch"]);
    watch.wait_stdout("NAME", 1, STREAM_WAIT);
    let first = cluster.cli_background("events-1", &["events", "-o", "json", "--vm", "web-1"]);
    first.wait_stderr("events after cursor", STREAM_WAIT);
    let start = start_cursor(&first.stderr_text());
    cluster.create_running("web-1", &url, &[]);
    first.wait_stdout("\"phase\":\"running\"", 1, STREAM_WAIT);
    let part_one = printed(&first.stdout_text());
    drop(first); // killed midway

    cluster.cli(&["vm", "stop", "web-1", "--wait"]).ok();
    cluster
        .cli(&["vm", "delete", "web-1", "--wait", "--force"])
        .ok();

    let last = cursor(part_one.last().unwrap()).to_string();
    let second = cluster.cli_background(
        "events-2",
        &["events", "-o", "json", "--vm", "web-1", "--since", &last],
    );
    second.wait_stdout("\"type\":\"deleted\"", 1, STREAM_WAIT);
    let part_two = printed(&second.stdout_text());
    assert_eq!(start_cursor(&second.stderr_text()), last);
    drop(second);

    let union: Vec<Value> = part_one.iter().chain(&part_two).cloned().collect();
    let lines: Vec<String> = union
        .iter()
        .map(|e| {
            let o = &e["object"];
            format!(
                "{} {} {} {}",
                e["cursor"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["kind"].as_str().unwrap(),
                o["status"]["phase"]
                    .as_str()
                    .or(o["status"].as_str())
                    .unwrap_or("-")
            )
        })
        .collect();
    // In order, nothing twice.
    let cursors: Vec<i64> = union.iter().map(cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{lines:#?}");
    // Only web-1 and its tasks.
    for e in &union {
        let about = e["object"]["name"]
            .as_str()
            .or(e["object"]["vm_name"].as_str());
        assert_eq!(about, Some("web-1"), "{e}");
    }

    // Every write of the VM row is there exactly once: resource_version 1, 2, 3, ...
    let vm: Vec<&Value> = union.iter().filter(|e| e["kind"] == "vm").collect();
    let versions: Vec<i64> = vm
        .iter()
        .map(|e| e["object"]["resource_version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        versions,
        (1..=vm.len() as i64).collect::<Vec<_>>(),
        "{lines:#?}"
    );
    assert_eq!(vm[0]["type"], "added");
    assert_eq!(vm.last().unwrap()["type"], "deleted");
    let mut phases: Vec<&str> = vm
        .iter()
        .map(|e| e["object"]["status"]["phase"].as_str().unwrap())
        .collect();
    phases.dedup();
    let at = |p: &str| {
        phases
            .iter()
            .position(|x| *x == p)
            .unwrap_or_else(|| panic!("{p} missing: {phases:?}"))
    };
    assert!(
        at("running") < at("stopping") && at("stopping") < at("stopped"),
        "{phases:?}"
    );
    assert!(
        at("stopped") < at("deleting") && at("deleting") < at("deleted"),
        "{phases:?}"
    );
    // Each task: added pending once, ends success.
    for kind in ["vm.create", "vm.stop", "vm.delete"] {
        let task: Vec<&Value> = union
            .iter()
            .filter(|e| e["kind"] == "task" && e["object"]["kind"] == kind)
            .collect();
        assert_eq!(
            task.iter().filter(|e| e["type"] == "added").count(),
            1,
            "{kind}: {lines:#?}"
        );
        assert_eq!(task[0]["type"], "added", "{kind}");
        assert_eq!(
            task.last().unwrap()["object"]["status"],
            "success",
            "{kind}"
        );
    }

    // A third reader from the first one's start sees exactly the same events.
    let replay = cluster.cli_background(
        "events-3",
        &["events", "-o", "json", "--vm", "web-1", "--since", &start],
    );
    replay.wait_stdout("\"type\":\"deleted\"", 1, STREAM_WAIT);
    assert_eq!(printed(&replay.stdout_text()), union);

    // vm list --watch: the (empty) list, then a line per change of the VM.
    watch.wait_stdout("deleted   vm/web-1  deleted", 1, STREAM_WAIT);
    let watched = watch.stdout_text();
    let mut watched_lines = watched.lines();
    assert!(
        watched_lines.next().unwrap().starts_with("NAME"),
        "{watched}"
    );
    let changes: Vec<&str> = watched_lines.collect();
    assert_eq!(changes.len(), vm.len(), "{watched}");
    assert!(changes[0].contains("added     vm/web-1"), "{watched}");

    // otherixd restarts (SIGKILL): the watcher re-opens the stream after the last cursor
    // it saw by itself; a change before and one after the restart are each printed once.
    let survivor = cluster.cli_background("events-5", &["events", "-o", "json", "--kind", "pool"]);
    survivor.wait_stderr("events after cursor", STREAM_WAIT);
    cluster.cli(&["pool", "create", "before"]).ok();
    survivor.wait_stdout("\"name\":\"before\"", 1, STREAM_WAIT);
    cluster.kill_server();
    cluster.start_server();
    cluster.cli(&["pool", "create", "after"]).ok();
    survivor.wait_stdout("\"name\":\"after\"", 1, STREAM_WAIT);
    survivor.wait_stderr("stream ended; resumed after cursor", STREAM_WAIT);
    let pools: Vec<String> = printed(&survivor.stdout_text())
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["object"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(pools, ["added before", "added after"]);

    // The default output: one line per event.
    let text = cluster.cli_background(
        "events-4",
        &["events", "--vm", "web-1", "--kind", "vm", "--since", &start],
    );
    text.wait_stdout("deleted   vm/web-1  deleted", 1, STREAM_WAIT);
    let first_line = text.stdout_text().lines().next().unwrap().to_owned();
    assert!(
        first_line.contains("added     vm/web-1  creating node=node-1"),
        "{first_line}"
    );
}
