//! End to end: VM labels through the CLI on a real cluster (QEMU under TCG, a guest that
//! halts at once): `vm create --label`, `metadata.labels` in a manifest, `vm list -l`,
//! the `label:` rows of `vm get`, `vm get -o yaml | create -f -` unchanged, and
//! `vm delete -l` deleting exactly the matching VMs.

use otherix_e2e::{Cluster, ImageServer};

fn names(list_output: &str) -> Vec<String> {
    list_output
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn labels_select_vms_for_list_and_delete_and_round_trip_through_yaml() {
    let (_dir, server) = ImageServer::with_halt_disk();
    let url = server.url("halt.img");
    let cluster = Cluster::start();
    let create = |name: &str, labels: &[&str]| {
        let mut args = vec![
            "vm",
            "create",
            name,
            "--image-url",
            &url,
            "--arch",
            "amd64",
            "--vcpus",
            "1",
            "--memory-mb",
            "128",
            "--no-cloud-init",
            // Created (not still creating) before delete -l runs.
            "--wait",
        ];
        for l in labels {
            args.extend(["--label", l]);
        }
        cluster.cli(&args).ok();
    };
    create("web-1", &["app=web", "tier=front"]);
    create("web-2", &["app=web"]);
    let manifest = format!(
        "apiVersion: otherix.dev/v1\nkind: VM\nmetadata:\n  name: db-1\n  labels:\n    app: db\nspec:\n  image_url: {url}\n  arch: amd64\n  vcpus: 1\n  memory_mb: 128\n  no_cloud_init: true\n"
    );
    cluster
        .cli_with_stdin(&["create", "-f", "-"], Some(&manifest))
        .ok();
    cluster
        .cli(&[
            "vm",
            "create",
            "bad",
            "--image-url",
            &url,
            "--arch",
            "amd64",
            "--label",
            "app",
        ])
        .expect_error("validation_failed");

    let list = |selector: &str| names(&cluster.cli(&["vm", "list", "-l", selector]).ok().stdout);
    assert_eq!(list("app=web"), ["web-1", "web-2"]);
    assert_eq!(list("app=web,tier=front"), ["web-1"]);
    assert_eq!(list("app=db"), ["db-1"]);

    let get = cluster.cli(&["vm", "get", "web-1"]).ok().stdout;
    assert!(
        get.contains("label:") && get.contains("app=web") && get.contains("tier=front"),
        "{get}"
    );
    let yaml = cluster
        .cli(&["vm", "get", "db-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("  labels:\n    app: db\n"), "{yaml}");
    let again = cluster
        .cli_with_stdin(&["create", "-f", "-"], Some(&yaml))
        .ok();
    assert!(again.stdout.trim_end().ends_with("unchanged"), "{again:#?}");

    // Without a terminal, delete -l wants --force; with it, exactly the matches go.
    let refused = cluster.cli(&["vm", "delete", "-l", "app=web"]);
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(
        refused
            .stderr
            .contains("refusing to delete VM web-1, web-2"),
        "{refused:#?}"
    );
    let deleted = cluster
        .cli(&["vm", "delete", "-l", "app=web", "--force", "--wait"])
        .ok();
    assert_eq!(
        deleted.stdout.matches("vm deleted").count(),
        2,
        "{deleted:#?}"
    );
    assert_eq!(names(&cluster.cli(&["vm", "list"]).ok().stdout), ["db-1"]);
    let none = cluster
        .cli(&["vm", "delete", "-l", "app=web", "--force"])
        .ok();
    assert!(none.stderr.contains("no VMs match -l app=web"), "{none:#?}");
}
