//! `otherix pool list|get`: storage pools and the nodes serving them (read-only).

use super::{CommandError, Ctx};
use crate::cli::{PoolCommand, TableFormat, TextFormat};
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, cmd: PoolCommand) -> Result<(), CommandError> {
    let text = match cmd {
        PoolCommand::List { output } => {
            let page = ctx.client.list_pools()?;
            match output {
                TableFormat::Table => output::table::pools(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        PoolCommand::Get { name, output } => {
            let pool = ctx.client.get_pool(&name)?;
            match output {
                TextFormat::Text => output::view::pool(&pool.value),
                TextFormat::Json => output::json::pretty(&pool.raw),
            }
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}
