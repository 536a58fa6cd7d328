//! `otherix node list|get`: the nodes agents registered; `node join-token` and `node
//! revoke`: enrolling and cutting off agents (admin).

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
        NodeCommand::JoinToken { name, ttl, output } => {
            let token = ctx.client.create_join_token(&name, ttl.as_secs().max(1))?;
            match output {
                // The bare token, so `$(otherix node join-token NODE)` is usable.
                TextFormat::Text => format!("{}\n", token.value.token),
                TextFormat::Json => output::json::pretty(&token.raw),
            }
        }
        NodeCommand::Revoke { name, output } => {
            let node = ctx.client.revoke_node(&name)?;
            match output {
                TextFormat::Text => output::view::node(&node.value),
                TextFormat::Json => output::json::pretty(&node.raw),
            }
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}
