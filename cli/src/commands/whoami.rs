//! `otherix whoami`: the identity the server sees for this CLI's token.

use super::{CommandError, Ctx};
use crate::cli::TextFormat;
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, format: TextFormat) -> Result<(), CommandError> {
    let me = ctx.client.whoami()?;
    let text = match format {
        TextFormat::Text => output::view::whoami(&me.value, ctx.client.server()),
        TextFormat::Json => output::json::pretty(&me.raw),
    };
    ctx.out.write_all(text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Client, ClientOptions};
    use crate::wait::fake::FakeServer;

    #[test]
    fn whoami_sends_bearer_token_and_prints_identity() {
        let server = FakeServer::start(vec![(
            200,
            r#"{"name":"alice","role":"member","project":"dev"}"#.into(),
        )]);
        let client = Client::connect(ClientOptions {
            token: Some("otx_abc".into()),
            ..ClientOptions::plain(&server.url)
        })
        .unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        run(&mut ctx, TextFormat::Text).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "name:    alice\nrole:    member\nproject: dev\nserver:  {}\n",
                server.url
            )
        );
        assert_eq!(server.requests(), ["GET /v1/whoami"]);
        assert_eq!(server.auths(), [Some("Bearer otx_abc".to_owned())]);
    }

    #[test]
    fn whoami_unauthenticated_surfaces_code() {
        let server = FakeServer::start(vec![(
            401,
            r#"{"error":{"code":"unauthenticated","message":"missing bearer token"}}"#.into(),
        )]);
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let e = run(&mut ctx, TextFormat::Text).unwrap_err();
        assert_eq!(e.to_string(), "unauthenticated: missing bearer token");
        assert_eq!(server.auths(), [None]);
    }
}
