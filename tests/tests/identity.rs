//! Identity end to end over TLS, driven through the real CLI: projects keep VMs, tasks and
//! logs apart (two VMs named `web` booted in two projects), quotas refuse the VM that would
//! pass a limit and leave nothing behind, revoked tokens stop at once, viewers cannot
//! write, and a pinned server certificate that changes is a hard error naming both
//! fingerprints.

use std::time::Duration;

use otherix_e2e::cluster::{CliOutput, ClusterOptions};
use otherix_e2e::wait::until;
use otherix_e2e::{Cluster, ImageServer};
use serde_json::Value;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The secret `token create` prints once.
fn secret(out: &CliOutput) -> String {
    let at = out
        .stdout
        .find("otx_")
        .unwrap_or_else(|| panic!("no secret in {out:#?}"));
    out.stdout[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn new_token(cluster: &Cluster, name: &str, project: &str, role: &str) -> String {
    let out = cluster
        .cli(&[
            "token",
            "create",
            name,
            "--project",
            project,
            "--role",
            role,
        ])
        .ok();
    assert!(
        out.stdout.starts_with(&format!("token {name} created")),
        "{out:#?}"
    );
    secret(&out)
}

fn projects_of(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["project"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn same_vm_name_in_two_projects_members_see_only_their_own_admin_sees_both() {
    let images = otherix_e2e::paths::test_images();
    let server = ImageServer::start(&images);
    let cluster = Cluster::start();
    let url = server.url("busybox-amd64.qcow2");
    let dir = tempfile::tempdir().unwrap();

    let mut tokens = Vec::new();
    for team in ["team-a", "team-b"] {
        let out = cluster.cli(&["project", "create", team]).ok();
        assert_eq!(out.stdout.trim(), format!("project/{team} created"));
        let token = new_token(&cluster, &format!("dev-{team}"), team, "member");
        // The guest prints its NoCloud seed on the console: a marker per project.
        let user_data = dir.path().join(format!("{team}.yaml"));
        std::fs::write(&user_data, format!("#cloud-config\n# marker-of-{team}\n")).unwrap();
        cluster
            .cli_as(
                &token,
                &[
                    "vm",
                    "create",
                    "web",
                    "--image-url",
                    &url,
                    "--arch",
                    "amd64",
                    "--vcpus",
                    "1",
                    "--memory-mb",
                    "256",
                    "--user-data",
                    user_data.to_str().unwrap(),
                    "--wait",
                ],
            )
            .ok();
        tokens.push((team, token));
    }

    for (team, token) in &tokens {
        let other = if *team == "team-a" {
            "team-b"
        } else {
            "team-a"
        };
        let list = cluster
            .cli_as(token, &["vm", "list", "-o", "json"])
            .ok()
            .json();
        assert_eq!(projects_of(&list), [*team], "vm list as {team}");
        let tasks = cluster
            .cli_as(token, &["task", "list", "-o", "json"])
            .ok()
            .json();
        let seen = projects_of(&tasks);
        assert!(
            !seen.is_empty() && seen.iter().all(|p| p == team),
            "task list as {team}: {seen:?}"
        );
        let vm = cluster
            .cli_as(token, &["vm", "get", "web", "-o", "json"])
            .ok()
            .json();
        assert_eq!(vm["project"], *team);
        // The console log of *its* web: the marker of its own project, not the other's.
        let log = until(&format!("{team}'s marker in vm logs"), BOOT_TIMEOUT, || {
            let out = cluster.cli_as(token, &["vm", "logs", "web"]);
            (out.code == 0 && out.stdout.contains(&format!("marker-of-{team}")))
                .then_some(out.stdout)
        });
        assert!(
            !log.contains(&format!("marker-of-{other}")),
            "{team} sees {other}'s log"
        );
        // Another project is invisible, and spanning projects is for admins.
        cluster
            .cli_as(token, &["vm", "get", "web", "--project", other])
            .expect_error("not_found");
        cluster
            .cli_as(token, &["vm", "list", "--all-projects"])
            .expect_error("forbidden");
    }

    let out = cluster.cli(&["vm", "list", "--all-projects"]).ok();
    let mut rows = out.stdout.lines();
    let header: Vec<&str> = rows.next().unwrap().split_whitespace().collect();
    assert_eq!(header[..2], ["PROJECT", "NAME"], "{}", out.stdout);
    let mut both: Vec<(String, String)> = rows
        .map(|r| {
            let cols: Vec<&str> = r.split_whitespace().collect();
            (cols[0].to_owned(), cols[1].to_owned())
        })
        .collect();
    both.sort();
    assert_eq!(
        both,
        [
            ("team-a".to_owned(), "web".to_owned()),
            ("team-b".to_owned(), "web".to_owned())
        ]
    );
    // Each task records who asked.
    let tasks = cluster
        .cli(&["task", "list", "--all-projects", "-o", "json"])
        .ok()
        .json();
    let mut by: Vec<String> = tasks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["requested_by"].as_str().unwrap_or("-").to_owned())
        .collect();
    by.sort();
    assert_eq!(by, ["dev-team-a", "dev-team-b"]);
    // A project with VMs cannot be deleted.
    cluster
        .cli(&["project", "delete", "team-a"])
        .expect_error("conflict");
}

#[test]
fn quota_viewer_and_revoked_token_over_the_cli() {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![otherix_e2e::cluster::NodeOptions::new(
            "node-1",
            &["default"],
        )],
        ..Default::default()
    });
    // Nothing serves this URL: the VMs never boot, which is all this test needs.
    let url = "http://127.0.0.1:9/none.qcow2";
    cluster
        .cli(&["project", "create", "small", "--max-vcpus", "2"])
        .ok();
    let dev = new_token(&cluster, "dev", "small", "member");
    let create = |token: &str, name: &str, vcpus: &str| {
        cluster.cli_as(
            token,
            &[
                "vm",
                "create",
                name,
                "--image-url",
                url,
                "--arch",
                "amd64",
                "--vcpus",
                vcpus,
                "--memory-mb",
                "128",
            ],
        )
    };
    create(&dev, "q1", "2").ok();
    let refused = create(&dev, "q2", "1").expect_error("quota_exceeded");
    assert!(
        refused
            .stderr
            .contains("max_vcpus is 2: 2 in use, 3 with this change"),
        "{refused:#?}"
    );
    cluster
        .cli_as(&dev, &["vm", "get", "q2"])
        .expect_error("not_found");
    let tasks = cluster
        .cli_as(&dev, &["task", "list", "--vm", "q2", "-o", "json"])
        .ok()
        .json();
    assert_eq!(
        tasks["items"],
        Value::Array(vec![]),
        "no task for the refused vm"
    );
    let out = cluster.cli(&["project", "get", "small"]).ok();
    assert!(
        out.stdout.contains("2/2"),
        "usage/limit shown: {}",
        out.stdout
    );

    let viewer = new_token(&cluster, "watcher", "small", "viewer");
    cluster.cli_as(&viewer, &["vm", "list"]).ok();
    create(&viewer, "q3", "1").expect_error("forbidden");
    cluster
        .cli_as(&viewer, &["vm", "stop", "q1"])
        .expect_error("forbidden");

    cluster.cli_as(&dev, &["vm", "list"]).ok();
    let out = cluster.cli(&["token", "revoke", "dev"]).ok();
    assert_eq!(out.stdout.trim(), "token dev revoked");
    cluster
        .cli_as(&dev, &["vm", "list"])
        .expect_error("unauthenticated");
    // No token at all is refused too, and the server never says why a token is unknown
    // beyond that.
    let out = cluster.cli_env(
        &["vm", "list"],
        None,
        &[
            ("OTHERIX_CONFIG", "/nonexistent/otherix.yaml"),
            ("OTHERIX_SERVER", &cluster.api_url),
            ("OTHERIX_CA_CERT", cluster.ca_cert_path().to_str().unwrap()),
        ],
    );
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(out.stderr.contains("unauthenticated"), "{out:#?}");
}

#[test]
fn remote_add_pins_the_ca_and_a_changed_certificate_fails_naming_both() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: vec![],
        ..Default::default()
    });
    let config = cluster.dir.path().join("user-config.yaml");
    let env_config = config.to_str().unwrap().to_owned();
    let token_file = cluster.server_data_dir().join("admin.token");
    let add = |extra: &[&str], config: &str| {
        let mut args = vec![
            "remote",
            "add",
            "office",
            cluster.api_url.as_str(),
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        cluster.cli_env(&args, None, &[("OTHERIX_CONFIG", config)])
    };

    // Without a terminal and without --accept-certificate nothing is trusted or saved.
    let other_config = cluster.dir.path().join("refused-config.yaml");
    let refused = add(&[], other_config.to_str().unwrap());
    assert_ne!(refused.code, 0, "{refused:#?}");
    assert!(
        refused.stderr.contains("--accept-certificate"),
        "{refused:#?}"
    );
    assert!(!other_config.exists());

    let old = cluster.ca_fingerprint();
    let out = add(&["--accept-certificate"], &env_config).ok();
    assert!(
        out.stdout
            .contains(&format!("Certificate fingerprint: {old}")),
        "{out:#?}"
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(&old), "the fingerprint is pinned: {text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds a token");
    cluster
        .cli_env(&["vm", "list"], None, &[("OTHERIX_CONFIG", &env_config)])
        .ok();

    // The server is re-installed with a new CA (the CA lives in the database, so a new
    // install is a new data dir): the pinned remote refuses it.
    cluster.kill_server();
    std::fs::remove_dir_all(cluster.server_data_dir()).unwrap();
    cluster.start_server();
    let new = cluster.ca_fingerprint();
    assert_ne!(old, new);
    let out = cluster.cli_env(&["vm", "list"], None, &[("OTHERIX_CONFIG", &env_config)]);
    assert_eq!(out.code, 1, "{out:#?}");
    assert!(
        out.stderr.starts_with("error: certificate_changed: "),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(&old) && out.stderr.contains(&new),
        "names both fingerprints: {}",
        out.stderr
    );
}
