//! `otherix node list|get`: the nodes agents registered (read-only).

use super::{CommandError, Ctx};
use crate::cli::{NodeCommand, TableFormat, TextFormat};
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, cmd: NodeCommand) -> Result<(), CommandError> {
    let text = match cmd {
        NodeCommand::List { output } => {
            let page = ctx.client.list_nodes()?;
            match output {
                TableFormat::Table => output::table::nodes(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        NodeCommand::Get { name, output } => {
            let node = ctx.client.get_node(&name)?;
            match output {
                TextFormat::Text => output::view::node(&node.value),
                TextFormat::Json => output::json::pretty(&node.raw),
            }
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}
