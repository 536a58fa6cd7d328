//! `create -f`, `diff -f` and `delete -f` against a tiny fake HTTP server: exact output
//! lines, request lines and exit codes (through `main`'s `report`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use otherix_api::TaskStatus;
use serde_json::json;

use super::super::{delete_files, diff, CommandError, Ctx};
use super::{print_event, run, Options};
use crate::client::Client;
use crate::output::fixtures::{self as fx, TASK_ID};
use crate::wait::fake::FakeServer;

const POOL_VM: &str = "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: web-1
spec:
  image_url: http://i/x.qcow2
  arch: amd64
  pool: fast
---
apiVersion: otherix.dev/v1
kind: Pool
metadata:
  name: fast
spec: {}
";

const VM_BODY: &str = r#"{"spec":{"arch":"amd64","image_url":"http://i/x.qcow2","memory_mb":2048,"pool":"fast","vcpus":2}}"#;

struct Run {
    result: Result<(), CommandError>,
    out: String,
    err: String,
}

impl Run {
    fn exit(&self) -> ExitCode {
        match &self.result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::report(e),
        }
    }
}

enum Verb<'a> {
    Create(Option<Duration>),
    Diff,
    Delete(Option<Duration>),
    Stdin(&'a str),
}

fn run_verb(server: &FakeServer, verb: Verb<'_>, path: &Path) -> Run {
    let client = Client::new(&server.url).unwrap();
    let (mut out, mut err) = (vec![], vec![]);
    let mut ctx = Ctx {
        client: &client,
        out: &mut out,
        err: &mut err,
    };
    let opts = |wait| Options {
        path: path.to_path_buf(),
        wait,
        watch: false,
        prune: false,
    };
    let result = match verb {
        Verb::Create(wait) => run(&mut ctx, opts(wait), &mut "".as_bytes()),
        Verb::Stdin(text) => run(&mut ctx, opts(None), &mut text.as_bytes()),
        Verb::Diff => diff::run(&mut ctx, path, &mut "".as_bytes()),
        Verb::Delete(wait) => delete_files::run(
            &mut ctx,
            delete_files::Options {
                path: path.to_path_buf(),
                wait,
            },
            &mut "".as_bytes(),
        ),
    };
    Run {
        result,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn applied(outcome: &str, task: Option<TaskStatus>) -> (u16, String) {
    let mut body = json!({"outcome": outcome, "object": {}});
    if let Some(status) = task {
        body["task"] = serde_json::to_value(fx::task(status)).unwrap();
    }
    (200, body.to_string())
}

fn api_error(status: u16, code: &str, message: &str) -> (u16, String) {
    (
        status,
        json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

#[test]
fn create_f_file_applies_dependencies_first_and_prints_lines() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![
        applied("created", None),
        applied("created", Some(TaskStatus::Pending)),
    ]);
    let r = run_verb(&server, Verb::Create(None), &file);
    assert_eq!(
        r.out,
        format!("pool/fast created\nvm/web-1 created task={TASK_ID}\n")
    );
    assert_eq!(r.exit(), ExitCode::SUCCESS);
    assert_eq!(
        server.requests(),
        [
            r#"PUT /v1/pools/fast {"spec":{}}"#.to_owned(),
            format!("PUT /v1/vms/web-1 {VM_BODY}"),
        ]
    );
}

#[test]
fn create_f_reapply_unchanged_emits_no_task() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![applied("unchanged", None)]);
    let r = run_verb(&server, Verb::Create(None), &file);
    assert_eq!(r.out, "pool/fast unchanged\nvm/web-1 unchanged\n");
    assert_eq!(r.exit(), ExitCode::SUCCESS);
}

#[test]
fn create_f_directory_stamps_source_annotation() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "pool.yaml",
        &POOL_VM[POOL_VM
            .find("apiVersion: otherix.dev/v1\nkind: Pool")
            .unwrap()..],
    );
    let server = FakeServer::start(vec![applied("created", None)]);
    let r = run_verb(&server, Verb::Create(None), dir.path());
    assert_eq!(r.out, "pool/fast created\n");
    let source = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        server.requests(),
        [format!(
            r#"PUT /v1/pools/fast {{"annotations":{{"otherix.dev/source":"{}"}},"spec":{{}}}}"#,
            source.display()
        )]
    );
}

#[test]
fn create_f_invalid_documents_send_nothing_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "a.yaml",
        &POOL_VM.replace("pool: fast", "vcpus: 0"),
    );
    write_file(
        dir.path(),
        "b.yaml",
        "apiVersion: otherix.dev/v1\nkind: Pool\nmetadata:\n  name: Bad_Name\nspec: {}\n",
    );
    let server = FakeServer::start(vec![applied("created", None)]);
    let r = run_verb(&server, Verb::Create(None), dir.path());
    let d = dir.path().display();
    match &r.result {
        Err(CommandError::Manifests(otherix_manifests::Error::Invalid(errs))) => {
            let lines: Vec<String> = errs.iter().map(ToString::to_string).collect();
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(
                lines[0].starts_with(&format!("{d}/a.yaml:8:3: spec.vcpus: must be 1..128")),
                "{lines:?}"
            );
            assert!(
                lines[1].starts_with(&format!("{d}/b.yaml:4:3: metadata.name:")),
                "{lines:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(r.out, "");
    assert_eq!(r.exit(), ExitCode::from(1));
    assert!(server.requests().is_empty());
}

#[test]
fn create_f_stdin_reads_documents() {
    let server = FakeServer::start(vec![applied("configured", None)]);
    let r = run_verb(&server, Verb::Stdin(POOL_VM), Path::new("-"));
    assert_eq!(r.out, "pool/fast configured\nvm/web-1 configured\n");
}

#[test]
fn create_f_server_error_stops_after_applied_objects_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![
        applied("unchanged", None),
        api_error(
            409,
            "immutable_field",
            "immutable fields changed: spec.arch: arm64 -> amd64",
        ),
    ]);
    let r = run_verb(&server, Verb::Create(None), &file);
    assert_eq!(r.out, "pool/fast unchanged\n");
    let err = r.result.as_ref().unwrap_err();
    assert!(matches!(err, CommandError::Client(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "immutable_field: immutable fields changed: spec.arch: arm64 -> amd64"
    );
    assert_eq!(r.exit(), ExitCode::from(1));
}

const PROJECT_VM: &str = "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: ci-1
  project: team-a
spec:
  image_url: http://i/x.qcow2
  arch: amd64
---
apiVersion: otherix.dev/v1
kind: Project
metadata:
  name: team-a
spec:
  max_vms: 2
";

#[test]
fn create_f_wait_project_first_and_vm_polled_in_its_project() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "team.yaml", PROJECT_VM);
    let server = FakeServer::start(vec![
        applied("created", None),
        applied("created", Some(TaskStatus::Pending)),
        (
            200,
            serde_json::to_string(&fx::task(TaskStatus::Success)).unwrap(),
        ),
        (200, serde_json::to_string(&fx::vm()).unwrap()),
    ]);
    let r = run_verb(&server, Verb::Create(Some(Duration::from_secs(10))), &file);
    r.result.as_ref().unwrap();
    assert_eq!(
        r.out,
        format!(
            "project/team-a created\nvm/team-a/ci-1 created task={TASK_ID}\nvm/team-a/ci-1 running task={TASK_ID}\n"
        )
    );
    assert_eq!(
        server.requests(),
        [
            r#"PUT /v1/projects/team-a {"spec":{"max_vms":2}}"#.to_owned(),
            r#"PUT /v1/vms/ci-1?project=team-a {"spec":{"arch":"amd64","image_url":"http://i/x.qcow2","memory_mb":2048,"vcpus":2}}"#.to_owned(),
            format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=pending&project=team-a"),
            "GET /v1/vms/ci-1?project=team-a".to_owned(),
        ]
    );
}

#[test]
fn create_f_wait_waits_for_each_task_and_prints_phase() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![
        applied("created", None),
        applied("created", Some(TaskStatus::Pending)),
        (
            200,
            serde_json::to_string(&fx::task(TaskStatus::Success)).unwrap(),
        ),
        (200, serde_json::to_string(&fx::vm()).unwrap()),
    ]);
    let r = run_verb(&server, Verb::Create(Some(Duration::from_secs(10))), &file);
    r.result.as_ref().unwrap();
    assert_eq!(
        r.out,
        format!(
            "pool/fast created\nvm/web-1 created task={TASK_ID}\nvm/web-1 running task={TASK_ID}\n"
        )
    );
    assert_eq!(r.err, ".\n");
    assert_eq!(
        &server.requests()[2..],
        [
            format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=pending"),
            "GET /v1/vms/web-1".to_owned(),
        ]
    );
}

#[test]
fn create_f_wait_failed_task_fails_like_vm_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![
        applied("created", None),
        applied("created", Some(TaskStatus::Pending)),
        (
            200,
            serde_json::to_string(&fx::task(TaskStatus::Failed)).unwrap(),
        ),
    ]);
    let r = run_verb(&server, Verb::Create(Some(Duration::from_secs(10))), &file);
    let err = r.result.as_ref().unwrap_err();
    assert_eq!(err.to_string(), format!("task {TASK_ID} failed"));
    assert_eq!(r.exit(), ExitCode::from(1));
}

fn live_pool() -> (u16, String) {
    (
        200,
        json!({"id": fx::VM_ID, "name": "fast", "annotations": {}, "spec": {}, "instances": []})
            .to_string(),
    )
}

fn live_vm(vcpus: u32) -> (u16, String) {
    let mut vm = serde_json::to_value(fx::vm()).unwrap();
    vm["spec"] = json!({"image_url": "http://i/x.qcow2", "arch": "amd64", "pool": "fast", "vcpus": vcpus, "memory_mb": 2048});
    (200, vm.to_string())
}

#[test]
fn diff_f_same_prints_nothing_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![live_pool(), live_vm(2)]);
    let r = run_verb(&server, Verb::Diff, &file);
    assert_eq!(r.out, "");
    assert_eq!(r.exit(), ExitCode::SUCCESS);
    assert_eq!(
        server.requests(),
        ["GET /v1/pools/fast", "GET /v1/vms/web-1"]
    );
}

#[test]
fn diff_f_different_prints_unified_diff_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![live_pool(), live_vm(4)]);
    let r = run_verb(&server, Verb::Diff, &file);
    assert_eq!(
        r.out,
        "\
--- live/vm/web-1
+++ file/vm/web-1
@@ -6,5 +6,5 @@
   image_url: http://i/x.qcow2
   arch: amd64
   pool: fast
-  vcpus: 4
+  vcpus: 2
   memory_mb: 2048
"
    );
    assert!(matches!(r.result, Err(CommandError::Differences)));
    assert_eq!(r.exit(), ExitCode::from(1));
}

#[test]
fn diff_f_missing_object_diffs_against_empty_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![
        live_pool(),
        api_error(404, "not_found", "vm web-1 not found"),
    ]);
    let r = run_verb(&server, Verb::Diff, &file);
    assert!(
        r.out.starts_with(
            "--- live/vm/web-1\n+++ file/vm/web-1\n@@ -0,0 +1,10 @@\n+apiVersion: otherix.dev/v1\n"
        ),
        "{}",
        r.out
    );
    assert_eq!(r.exit(), ExitCode::from(1));
}

#[test]
fn diff_f_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "web.yaml", POOL_VM);
    let server = FakeServer::start(vec![api_error(500, "internal", "boom")]);
    let r = run_verb(&server, Verb::Diff, &file);
    assert_eq!(r.exit(), ExitCode::from(2));
    let bad = write_file(dir.path(), "bad.yaml", "kind: [");
    let r = run_verb(&server, Verb::Diff, &bad);
    assert!(
        matches!(&r.result, Err(CommandError::Diff(inner)) if matches!(**inner, CommandError::Manifests(_)))
    );
    assert_eq!(r.exit(), ExitCode::from(2));
}

#[test]
fn delete_f_deletes_vms_first_waits_before_pool_and_reports_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{POOL_VM}---\napiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: web-2\nspec:\n  image_url: http://i/x.qcow2\n  arch: amd64\n");
    let file = write_file(dir.path(), "web.yaml", &text);
    let accepted = json!({"task": fx::task(TaskStatus::Pending)});
    let server = FakeServer::start(vec![
        (202, accepted.to_string()),
        api_error(404, "not_found", "vm web-2 not found"),
        (
            200,
            serde_json::to_string(&fx::task(TaskStatus::Success)).unwrap(),
        ),
        (200, "{}".into()),
    ]);
    let r = run_verb(&server, Verb::Delete(None), &file);
    r.result.as_ref().unwrap();
    assert_eq!(
        r.out,
        format!("vm/web-1 deleted task={TASK_ID}\nvm/web-2 not found\npool/fast deleted\n")
    );
    assert_eq!(
        server.requests(),
        [
            "DELETE /v1/vms/web-1".to_owned(),
            "DELETE /v1/vms/web-2".to_owned(),
            format!("GET /v1/tasks/{TASK_ID}?wait_secs=1&status=pending"),
            "DELETE /v1/pools/fast".to_owned(),
        ]
    );
}

#[test]
fn print_event_routes_results_to_out_and_errors_to_err() {
    use otherix_api::manifest::Kind;
    use otherix_api::ApplyOutcome;
    use otherix_manifests::{ApplyLine, WatchEvent};
    let (mut out, mut err) = (vec![], vec![]);
    let line = ApplyLine {
        kind: Kind::Vm,
        project: None,
        name: "web-1".into(),
        outcome: ApplyOutcome::Configured,
        task_id: None,
    };
    print_event(&mut out, &mut err, WatchEvent::Applied(line)).unwrap();
    print_event(
        &mut out,
        &mut err,
        WatchEvent::Diff {
            reference: "vm/web-1".into(),
            diff: "--- live/vm/web-1\n".into(),
        },
    )
    .unwrap();
    let invalid = otherix_manifests::load_stdin("kind: [").unwrap_err();
    let otherix_manifests::Error::Invalid(errors) = invalid else {
        panic!()
    };
    print_event(&mut out, &mut err, WatchEvent::Invalid(errors)).unwrap();
    print_event(&mut out, &mut err, WatchEvent::Synced { objects: 1 }).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "vm/web-1 configured\n--- live/vm/web-1\n"
    );
    let err = String::from_utf8(err).unwrap();
    assert!(err.starts_with("error: <stdin>:"), "{err}");
}
