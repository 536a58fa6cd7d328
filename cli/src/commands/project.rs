//! `otherix project create|list|get|delete`: projects and their quotas (admin). VMs and
//! their tasks belong to a project; quotas are checked by the server.

use otherix_api::validate::validate_name;

use super::{CommandError, Ctx};
use crate::cli::{ProjectCommand, TableFormat, TextFormat};
use crate::output;
use crate::wire::{CreateProjectRequest, ProjectSpec};

pub fn run(ctx: &mut Ctx<'_>, cmd: ProjectCommand) -> Result<(), CommandError> {
    let text = match cmd {
        ProjectCommand::Create(a) => {
            validate_name("name", &a.name)?;
            let req = CreateProjectRequest {
                name: a.name,
                spec: ProjectSpec {
                    max_vms: a.max_vms,
                    max_vcpus: a.max_vcpus,
                    max_memory_mb: a.max_memory_mb,
                },
            };
            let project = ctx.client.create_project(&req)?.value;
            output::object_line("project", &project.name, "created") + "\n"
        }
        ProjectCommand::List { output } => {
            let page = ctx.client.list_projects()?;
            match output {
                TableFormat::Table => output::table::projects(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        ProjectCommand::Get { name, output } => {
            let project = ctx.client.get_project(&name)?;
            match output {
                TextFormat::Text => output::view::project(&project.value),
                TextFormat::Json => output::json::pretty(&project.raw),
            }
        }
        ProjectCommand::Delete { name } => {
            ctx.client.delete_project(&name)?;
            output::object_line("project", &name, "deleted") + "\n"
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ProjectCreateArgs;
    use crate::client::Client;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    fn run_cmd(server: &FakeServer, cmd: ProjectCommand) -> (Result<(), CommandError>, String) {
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

    fn dev() -> serde_json::Value {
        json!({"id": "6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11", "name": "dev", "annotations": {},
               "spec": {"max_vms": 10, "max_vcpus": 16, "max_memory_mb": 8192},
               "usage": {"vms": 2, "vcpus": 4, "memory_mb": 4096}})
    }

    #[test]
    fn create_sends_only_given_quotas() {
        let server = FakeServer::start(vec![(201, dev().to_string())]);
        let cmd = ProjectCommand::Create(ProjectCreateArgs {
            name: "dev".into(),
            max_vms: Some(10),
            max_vcpus: Some(16),
            max_memory_mb: None,
        });
        let (r, out) = run_cmd(&server, cmd);
        r.unwrap();
        assert_eq!(out, "project/dev created\n");
        assert_eq!(
            server.requests(),
            [r#"POST /v1/projects {"name":"dev","spec":{"max_vms":10,"max_vcpus":16}}"#]
        );
    }

    #[test]
    fn create_bad_name_is_refused_locally() {
        let server = FakeServer::start(vec![]);
        let cmd = ProjectCommand::Create(ProjectCreateArgs {
            name: "Bad Name".into(),
            max_vms: None,
            max_vcpus: None,
            max_memory_mb: None,
        });
        assert!(run_cmd(&server, cmd).0.is_err());
        assert!(server.requests().is_empty());
    }

    #[test]
    fn list_get_delete_print_usage_over_limit() {
        let default = json!({"id": "0b8e5a52-7a4e-4f0e-8d0c-2f6f3d9b1a20", "name": "default",
                             "annotations": {}, "spec": {}, "usage": {"vms": 1, "vcpus": 2, "memory_mb": 2048}});
        let server = FakeServer::start(vec![
            (
                200,
                json!({"items": [default, dev()], "next_cursor": null}).to_string(),
            ),
            (200, dev().to_string()),
            (204, String::new()),
        ]);
        let (r, out) = run_cmd(
            &server,
            ProjectCommand::List {
                output: TableFormat::Table,
            },
        );
        r.unwrap();
        assert_eq!(
            out,
            "NAME     VMS   VCPUS  MEMORY\n\
             default  1/-   2/-    2048/-\n\
             dev      2/10  4/16   4096/8192MiB\n"
        );
        let (r, out) = run_cmd(
            &server,
            ProjectCommand::Get {
                name: "dev".into(),
                output: TextFormat::Text,
            },
        );
        r.unwrap();
        assert_eq!(
            out,
            "name:      dev\n\
             id:        6f1c1a8e-3f3a-4b7e-9a55-0c4b4f0f9d11\n\
             vms:       2/10\n\
             vcpus:     4/16\n\
             memory_mb: 4096/8192\n"
        );
        let (r, out) = run_cmd(&server, ProjectCommand::Delete { name: "dev".into() });
        r.unwrap();
        assert_eq!(out, "project/dev deleted\n");
        assert_eq!(
            server.requests(),
            [
                "GET /v1/projects",
                "GET /v1/projects/dev",
                "DELETE /v1/projects/dev"
            ]
        );
    }
}
