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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::client::Client;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    fn run_cmd(server: &FakeServer, cmd: NodeCommand) -> (Result<(), CommandError>, String) {
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
    fn node_join_token_prints_the_bare_token_and_sends_the_ttl() {
        let token = format!("otxj_{}_{}", "a".repeat(32), "b".repeat(64));
        let answer =
            json!({"node": "node-2", "token": token, "expires_at": "2026-01-01T00:00:00.000Z"});
        let server = FakeServer::start(vec![(201, answer.to_string())]);
        let (r, out) = run_cmd(
            &server,
            NodeCommand::JoinToken {
                name: "node-2".into(),
                ttl: Duration::from_secs(1800),
                output: TextFormat::Text,
            },
        );
        r.unwrap();
        assert_eq!(out, format!("{token}\n"));
        assert_eq!(
            server.requests(),
            [r#"POST /v1/nodes/node-2/join-token {"ttl_secs":1800}"#]
        );
    }

    #[test]
    fn node_revoke_unknown_node_surfaces_not_found() {
        let nf = r#"{"error":{"code":"not_found","message":"node nope not found"}}"#;
        let server = FakeServer::start(vec![(404, nf.into())]);
        let (r, _) = run_cmd(
            &server,
            NodeCommand::Revoke {
                name: "nope".into(),
                output: TextFormat::Text,
            },
        );
        assert_eq!(r.unwrap_err().to_string(), "not_found: node nope not found");
        assert_eq!(server.requests(), ["POST /v1/nodes/nope/revoke"]);
    }
}
