//! `otherix node list|get|join-token|revoke`: the nodes agents registered, one-time join
//! tokens for new agents, and cutting a node off (the last two admin only).

use super::{CommandError, Ctx};
use crate::cli::{NodeCommand, TableFormat, TextFormat};
use crate::output;
use crate::wire::JoinTokenRequest;

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
        NodeCommand::JoinToken { node, ttl } => {
            let join = ctx
                .client
                .node_join_token(&node, &JoinTokenRequest { ttl_secs: ttl })?;
            // stdout is just the token, so `T=$(otherix node join-token n)` works.
            let _ = writeln!(
                ctx.err,
                "{}",
                output::join_token_note(&join.node, join.expires_at.as_deref())
            );
            format!("{}\n", join.token)
        }
        NodeCommand::Revoke { node } => {
            ctx.client.revoke_node(&node)?;
            format!("node {node} revoked\n")
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::wait::fake::FakeServer;

    fn run_cmd(server: &FakeServer, cmd: NodeCommand) -> (String, String) {
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        run(&mut ctx, cmd).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn join_token_prints_only_token_on_stdout_and_expiry_on_stderr() {
        let token = format!("otxj_{}_{}", "a".repeat(32), "b".repeat(64));
        let server = FakeServer::start(vec![(
            201,
            format!(r#"{{"node":"node-2","token":"{token}","expires_at":"2026-05-01T11:00:00Z"}}"#),
        )]);
        let (out, err) = run_cmd(
            &server,
            NodeCommand::JoinToken {
                node: "node-2".into(),
                ttl: Some(600),
            },
        );
        assert_eq!(out, format!("{token}\n"));
        assert_eq!(
            err,
            "join token for node node-2 expires at 2026-05-01T11:00:00Z (one use)\n"
        );
        assert_eq!(
            server.requests(),
            [r#"POST /v1/nodes/node-2/join-token {"ttl_secs":600}"#]
        );
    }

    #[test]
    fn join_token_without_ttl_sends_empty_body_and_revoke_posts() {
        let server = FakeServer::start(vec![
            (
                201,
                r#"{"node":"n","token":"otxj_x","expires_at":null}"#.into(),
            ),
            (200, "{}".into()),
        ]);
        let (out, err) = run_cmd(
            &server,
            NodeCommand::JoinToken {
                node: "n".into(),
                ttl: None,
            },
        );
        assert_eq!(out, "otxj_x\n");
        assert_eq!(err, "join token for node n created (one use)\n");
        let (out, _) = run_cmd(&server, NodeCommand::Revoke { node: "n".into() });
        assert_eq!(out, "node n revoked\n");
        assert_eq!(
            server.requests(),
            ["POST /v1/nodes/n/join-token {}", "POST /v1/nodes/n/revoke"]
        );
    }
}
