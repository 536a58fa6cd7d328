//! `otherix task get|list|cancel|wait`: inspect async tasks, cancel one, wait for one.

use super::{wait_and_report, CommandError, Ctx};
use crate::cli::{TableFormat, TaskCommand, TextFormat};
use crate::{output, wire};

pub fn run(ctx: &mut Ctx<'_>, cmd: TaskCommand) -> Result<(), CommandError> {
    match cmd {
        TaskCommand::Get { id, output } => {
            let task = ctx.client.get_task(id, None)?;
            let text = match output {
                TextFormat::Text => output::view::task(
                    &task.value,
                    wire::field(&task.raw, "project").as_deref(),
                    wire::field(&task.raw, "requested_by").as_deref(),
                ),
                TextFormat::Json => output::json::pretty(&task.raw),
            };
            ctx.out.write_all(text.as_bytes())?;
        }
        TaskCommand::List {
            vm,
            all_projects,
            output,
        } => {
            let page = ctx.client.list_tasks(vm.as_deref(), all_projects)?;
            let text = match output {
                TableFormat::Table if all_projects => output::table::tasks_in_projects(
                    &page.value.items,
                    &wire::item_projects(&page.raw),
                ),
                TableFormat::Table => output::table::tasks(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            };
            ctx.out.write_all(text.as_bytes())?;
        }
        TaskCommand::Cancel { id } => {
            let task = ctx.client.cancel_task(id)?.value;
            writeln!(ctx.out, "{}", output::accepted_line("cancel", &task))?;
        }
        TaskCommand::Wait { id, wait_timeout } => {
            let task = ctx.client.get_task(id, None)?.value;
            wait_and_report(ctx, task, None, wait_timeout)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::output::fixtures::{self as fx, TASK_ID};
    use crate::wait::fake::FakeServer;
    use otherix_api::TaskStatus;
    use uuid::Uuid;

    fn run_cmd(server: &FakeServer, cmd: TaskCommand) -> (Result<(), CommandError>, String) {
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

    #[test]
    fn cancel_posts_and_prints_task_line() {
        let body = serde_json::to_string(&fx::task(TaskStatus::Cancelled)).unwrap();
        let server = FakeServer::start(vec![(200, body)]);
        let id = Uuid::parse_str(TASK_ID).unwrap();
        let (r, out) = run_cmd(&server, TaskCommand::Cancel { id });
        r.unwrap();
        assert_eq!(out, format!("cancel task={TASK_ID} status=cancelled\n"));
        assert_eq!(
            server.requests(),
            [format!("POST /v1/tasks/{TASK_ID}/cancel")]
        );
    }

    #[test]
    fn cancel_finished_task_surfaces_conflict() {
        let server = FakeServer::start(vec![(
            409,
            r#"{"error":{"code":"conflict","message":"task is already success"}}"#.into(),
        )]);
        let id = Uuid::parse_str(TASK_ID).unwrap();
        let (r, out) = run_cmd(&server, TaskCommand::Cancel { id });
        assert_eq!(
            r.unwrap_err().to_string(),
            "conflict: task is already success"
        );
        assert_eq!(out, "");
    }
}
