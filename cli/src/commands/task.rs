//! `otherix task get|list|wait`: inspect async tasks and wait for one.

use super::{wait_and_report, CommandError, Ctx};
use crate::cli::{TableFormat, TaskCommand, TextFormat};
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, cmd: TaskCommand) -> Result<(), CommandError> {
    match cmd {
        TaskCommand::Get { id, output } => {
            let task = ctx.client.get_task(id, None)?;
            let text = match output {
                TextFormat::Text => output::view::task(&task.value),
                TextFormat::Json => output::json::pretty(&task.raw),
            };
            ctx.out.write_all(text.as_bytes())?;
        }
        TaskCommand::List { vm, output } => {
            let page = ctx.client.list_tasks(vm.as_deref())?;
            let text = match output {
                TableFormat::Table => output::table::tasks(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            };
            ctx.out.write_all(text.as_bytes())?;
        }
        TaskCommand::Wait { id, wait_timeout } => {
            let task = ctx.client.get_task(id, None)?.value;
            wait_and_report(ctx, task, None, wait_timeout)?;
        }
    }
    Ok(())
}
