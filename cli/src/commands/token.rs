//! `otherix token create|list|revoke`: API tokens (admin). A new token's secret is
//! printed once; the server keeps only its hash.

use super::{CommandError, Ctx};
use crate::cli::{TableFormat, TokenCommand};
use crate::output;
use crate::wire::CreateTokenRequest;

/// Runs a token command; `project` is the resolved `--project` (the new token's project).
pub fn run(
    ctx: &mut Ctx<'_>,
    cmd: TokenCommand,
    project: Option<&str>,
) -> Result<(), CommandError> {
    let text = match cmd {
        TokenCommand::Create(a) => {
            let project = project.ok_or_else(|| {
                CommandError::Usage(format!(
                    "token create needs the token's project: pass --project P (e.g. otherix token create {} --project default --role {})",
                    a.name,
                    a.role.as_str()
                ))
            })?;
            let req = CreateTokenRequest {
                name: a.name,
                project: project.to_owned(),
                role: a.role.as_str().to_owned(),
                expires_secs: a.expires,
            };
            let created = ctx.client.create_token(&req)?;
            format!(
                "{}\n",
                output::token_created_line(&created.token.name, &created.secret)
            )
        }
        TokenCommand::List { output } => {
            let page = ctx.client.list_tokens()?;
            match output {
                TableFormat::Table => output::table::tokens(&page.value.items),
                TableFormat::Json => output::json::pretty(&page.raw),
            }
        }
        TokenCommand::Revoke { name } => {
            ctx.client.revoke_token(&name)?;
            format!("token {name} revoked\n")
        }
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{RoleArg, TokenCreateArgs};
    use crate::client::Client;
    use crate::wait::fake::FakeServer;
    use serde_json::json;

    fn run_cmd(
        server: &FakeServer,
        cmd: TokenCommand,
        project: Option<&str>,
    ) -> (Result<(), CommandError>, String) {
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let r = run(&mut ctx, cmd, project);
        (r, String::from_utf8(out).unwrap())
    }

    fn create(expires: Option<u64>) -> TokenCommand {
        TokenCommand::Create(TokenCreateArgs {
            name: "ci".into(),
            role: RoleArg::Member,
            expires,
        })
    }

    #[test]
    fn create_posts_project_role_expiry_and_prints_secret_once() {
        let body = json!({
            "token": {"name": "ci", "project": "dev", "role": "member",
                      "created_at": "2026-05-01T10:00:00Z", "expires_at": "2026-05-31T10:00:00Z",
                      "created_by": "admin"},
            "secret": "otx_0123"
        });
        let server = FakeServer::start(vec![(201, body.to_string())]);
        let (r, out) = run_cmd(&server, create(Some(2_592_000)), Some("dev"));
        r.unwrap();
        assert_eq!(out, "token ci created; secret (shown once): otx_0123\n");
        assert_eq!(
            server.requests(),
            [
                r#"POST /v1/tokens {"name":"ci","project":"dev","role":"member","expires_secs":2592000}"#
            ]
        );
    }

    #[test]
    fn create_without_project_is_usage_error_and_sends_nothing() {
        let server = FakeServer::start(vec![]);
        let (r, out) = run_cmd(&server, create(None), None);
        let err = r.unwrap_err();
        assert!(matches!(err, CommandError::Usage(_)), "{err:?}");
        assert!(err.to_string().contains("--project"), "{err}");
        assert_eq!(out, "");
        assert!(server.requests().is_empty());
    }

    #[test]
    fn list_prints_table_and_revoke_prints_line() {
        let page = json!({"items": [
            {"name": "admin", "project": "default", "role": "admin",
             "created_at": "2026-05-01T10:00:00Z", "expires_at": null, "created_by": "otherixd"},
            {"name": "ci", "project": "dev", "role": "viewer",
             "created_at": "2026-05-01T10:00:00Z", "expires_at": "2026-05-31T10:00:00Z", "created_by": "admin"}
        ], "next_cursor": null});
        let server = FakeServer::start(vec![(200, page.to_string()), (204, String::new())]);
        let (r, out) = run_cmd(
            &server,
            TokenCommand::List {
                output: TableFormat::Table,
            },
            None,
        );
        r.unwrap();
        assert_eq!(
            out,
            "NAME   PROJECT  ROLE    EXPIRES               CREATED-BY\n\
             admin  default  admin   -                     otherixd\n\
             ci     dev      viewer  2026-05-31T10:00:00Z  admin\n"
        );
        let (r, out) = run_cmd(&server, TokenCommand::Revoke { name: "ci".into() }, None);
        r.unwrap();
        assert_eq!(out, "token ci revoked\n");
        assert_eq!(
            server.requests(),
            ["GET /v1/tokens", "DELETE /v1/tokens/ci"]
        );
    }
}
