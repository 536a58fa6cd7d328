//! `otherix cluster get|set`: the cluster-wide settings object (`/v1/cluster`).

use otherix_api::manifest::{AllocationRatio, ClusterSettingsSpec};
use otherix_api::validate::validate_name;
use otherix_api::ApplyRequest;

use super::{CommandError, Ctx};
use crate::cli::{ClusterCommand, ClusterSetCommand, GetFormat};
use crate::client::ClientError;
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, cmd: ClusterCommand) -> Result<(), CommandError> {
    let text = match cmd {
        ClusterCommand::Get { output } => {
            let settings = ctx.client.get_cluster()?;
            match output {
                GetFormat::Text => output::view::cluster(&settings.value),
                GetFormat::Json => output::json::pretty(&settings.raw),
                GetFormat::Yaml => output::yaml::cluster_manifest(&settings.value)?,
            }
        }
        ClusterCommand::Set(ClusterSetCommand::DefaultPool { name }) => {
            validate_name("default-pool", &name)?;
            set(ctx, |spec| spec.default_pool = Some(name.clone()))?
        }
        ClusterCommand::Set(ClusterSetCommand::CpuAllocationRatio { ratio }) => set(ctx, |spec| {
            spec.cpu_allocation_ratio = Some(AllocationRatio(ratio))
        })?,
        ClusterCommand::Set(ClusterSetCommand::MemoryAllocationRatio { ratio }) => {
            set(ctx, |spec| {
                spec.memory_allocation_ratio = Some(AllocationRatio(ratio))
            })?
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

/// How often `cluster set` re-reads and writes again when another writer changed the
/// settings between its read and its write.
const SET_ATTEMPTS: u32 = 3;

/// Reads the settings, changes one field, and writes the whole spec (and annotations)
/// back, conditional on the version read (`If-Match`), so a concurrent change is never
/// overwritten: a 409 `conflict` reads again and re-applies the change. Prints
/// `cluster/cluster configured|unchanged`.
fn set(
    ctx: &mut Ctx<'_>,
    change: impl Fn(&mut ClusterSettingsSpec),
) -> Result<String, CommandError> {
    let mut attempt = 1;
    loop {
        let (mut spec, annotations, version) = match ctx.client.get_cluster() {
            Ok(current) => (
                current.value.spec,
                current.value.annotations,
                // 0: a server that predates resource_version.
                Some(current.value.resource_version).filter(|v| *v > 0),
            ),
            // Settings never written yet: start from the defaults.
            Err(ClientError::Api { status: 404, .. }) => Default::default(),
            Err(e) => return Err(e.into()),
        };
        change(&mut spec);
        match ctx.client.put_cluster(
            &ApplyRequest {
                spec,
                annotations,
                labels: Default::default(),
            },
            version,
        ) {
            Err(ClientError::Api {
                status: 409, code, ..
            }) if code == "conflict" && version.is_some() && attempt < SET_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
            Ok(resp) => {
                return Ok(
                    output::object_line("cluster", &resp.object.name, resp.outcome.as_str()) + "\n",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    fn run_cmd(server: &FakeServer, cmd: ClusterCommand) -> (Result<(), CommandError>, String) {
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let r = run(&mut ctx, cmd);
        (r, String::from_utf8(out).unwrap())
    }

    fn set_default(name: &str) -> ClusterCommand {
        ClusterCommand::Set(ClusterSetCommand::DefaultPool { name: name.into() })
    }

    #[test]
    fn set_default_pool_gets_then_puts_whole_spec_with_annotations() {
        let current = json!({"name": "cluster", "annotations": {"team": "infra"}, "spec": {"default_pool": "default"}});
        let applied = json!({"outcome": "configured", "object": {"name": "cluster", "annotations": {"team": "infra"}, "spec": {"default_pool": "fast"}}});
        let server =
            FakeServer::start(vec![(200, current.to_string()), (200, applied.to_string())]);
        let (r, out) = run_cmd(&server, set_default("fast"));
        r.unwrap();
        assert_eq!(out, "cluster/cluster configured\n");
        assert_eq!(
            server.requests(),
            [
                "GET /v1/cluster",
                r#"PUT /v1/cluster {"spec":{"default_pool":"fast"},"annotations":{"team":"infra"}}"#
            ]
        );
    }

    #[test]
    fn set_default_pool_is_conditional_on_the_version_read_and_a_conflict_reads_again() {
        let read = |v: i64, team: &str| {
            json!({"name": "cluster", "annotations": {"team": team}, "spec": {"default_pool": "default"}, "resource_version": v}).to_string()
        };
        let conflict = r#"{"error":{"code":"conflict","message":"cluster settings was changed: expected resource_version 4, it is 5; read it again and retry"}}"#;
        let applied = json!({"outcome": "configured", "object": {"name": "cluster", "annotations": {"team": "ops"}, "spec": {"default_pool": "fast"}, "resource_version": 6}});
        let server = FakeServer::start(vec![
            (200, read(4, "infra")),
            (409, conflict.into()),
            (200, read(5, "ops")),
            (200, applied.to_string()),
        ]);
        let (r, out) = run_cmd(&server, set_default("fast"));
        r.unwrap();
        assert_eq!(out, "cluster/cluster configured\n");
        // The second write carries the annotations another writer set in between.
        assert_eq!(
            server.requests(),
            [
                "GET /v1/cluster",
                r#"PUT /v1/cluster {"spec":{"default_pool":"fast"},"annotations":{"team":"infra"}}"#,
                "GET /v1/cluster",
                r#"PUT /v1/cluster {"spec":{"default_pool":"fast"},"annotations":{"team":"ops"}}"#
            ]
        );
        assert_eq!(
            server.if_matches(),
            [None, Some("4".to_owned()), None, Some("5".to_owned())]
        );
    }

    #[test]
    fn set_default_pool_conflicts_every_time_gives_up_with_the_conflict() {
        let read = json!({"name": "cluster", "spec": {}, "resource_version": 2}).to_string();
        let conflict = r#"{"error":{"code":"conflict","message":"cluster settings was changed"}}"#;
        let answers = [(200, read), (409, conflict.to_owned())];
        let server = FakeServer::start(answers.iter().cycle().take(6).cloned().collect());
        let (r, _) = run_cmd(&server, set_default("fast"));
        assert!(r.unwrap_err().to_string().starts_with("conflict: "));
        assert_eq!(server.requests().len(), 6, "{:?}", server.requests());
    }

    #[test]
    fn set_default_pool_without_settings_yet_puts_new_spec() {
        let nf = r#"{"error":{"code":"not_found","message":"no cluster settings"}}"#;
        let applied = json!({"outcome": "created", "object": {"name": "cluster", "spec": {"default_pool": "fast"}}});
        let server = FakeServer::start(vec![(404, nf.into()), (200, applied.to_string())]);
        let (r, out) = run_cmd(&server, set_default("fast"));
        r.unwrap();
        assert_eq!(out, "cluster/cluster created\n");
        assert_eq!(
            server.requests()[1],
            r#"PUT /v1/cluster {"spec":{"default_pool":"fast"}}"#
        );
    }

    #[test]
    fn set_default_pool_invalid_name_sends_nothing() {
        let server = FakeServer::start(vec![]);
        let (r, _) = run_cmd(&server, set_default("Not A Pool"));
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("validation_failed: default-pool: "), "{e}");
        assert!(server.requests().is_empty());
    }

    #[test]
    fn set_default_pool_server_error_on_put_surfaces() {
        let current = json!({"name": "cluster", "spec": {}});
        let server = FakeServer::start(vec![
            (200, current.to_string()),
            (
                400,
                r#"{"error":{"code":"validation_failed","message":"spec.default_pool: pool nope not found"}}"#.into(),
            ),
        ]);
        let (r, out) = run_cmd(&server, set_default("nope"));
        assert_eq!(
            r.unwrap_err().to_string(),
            "validation_failed: spec.default_pool: pool nope not found"
        );
        assert_eq!(out, "");
    }

    #[test]
    fn get_yaml_prints_manifest() {
        let current = json!({"name": "cluster", "spec": {"default_pool": "default"}});
        let server = FakeServer::start(vec![(200, current.to_string())]);
        let (r, out) = run_cmd(
            &server,
            ClusterCommand::Get {
                output: GetFormat::Yaml,
            },
        );
        r.unwrap();
        assert!(
            out.starts_with("apiVersion: otherix.dev/v1\nkind: ClusterSettings\n"),
            "{out}"
        );
        assert!(out.ends_with("spec:\n  default_pool: default\n"), "{out}");
    }
}
