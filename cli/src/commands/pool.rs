//! `otherix pool create|list|get|delete|images|prune-images`: storage pools, the nodes
//! serving them, and each node's cache of base images.

use otherix_api::manifest::PoolSpec;
use otherix_api::validate::validate_name;
use otherix_api::CreateObjectRequest;

use super::{CommandError, Ctx};
use crate::cli::{PoolCommand, TableFormat, TextFormat};
use crate::output;

pub fn run(ctx: &mut Ctx<'_>, cmd: PoolCommand) -> Result<(), CommandError> {
    let text = match cmd {
        PoolCommand::Create { name, description } => {
            validate_name("name", &name)?;
            let req = CreateObjectRequest {
                name,
                spec: PoolSpec { description },
                annotations: Default::default(),
            };
            let pool = ctx.client.create_pool(&req)?.value;
            output::object_line("pool", &pool.name, "created") + "\n"
        }
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
        PoolCommand::Delete { name } => {
            ctx.client.delete_pool(&name)?;
            output::object_line("pool", &name, "deleted") + "\n"
        }
        PoolCommand::Images { pool, output } => {
            let images = ctx.client.pool_images(&pool)?;
            match output {
                TableFormat::Table => output::table::images(&images.value.0),
                TableFormat::Json => output::json::pretty(&images.raw),
            }
        }
        PoolCommand::PruneImages { pool, output } => {
            let removed = ctx.client.prune_pool_images(&pool)?;
            match output {
                TextFormat::Text => output::pruned_text(&pool, &removed.value.0),
                TextFormat::Json => output::json::pretty(&removed.raw),
            }
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
    use serde_json::json;
    use uuid::Uuid;

    fn run_cmd(server: &FakeServer, cmd: PoolCommand) -> (Result<(), CommandError>, String) {
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
    fn create_posts_name_and_description_and_prints_created() {
        let body = json!({"id": Uuid::nil(), "name": "fast", "spec": {"description": "NVMe"}, "instances": []});
        let server = FakeServer::start(vec![(201, body.to_string())]);
        let (r, out) = run_cmd(
            &server,
            PoolCommand::Create {
                name: "fast".into(),
                description: Some("NVMe".into()),
            },
        );
        r.unwrap();
        assert_eq!(out, "pool/fast created\n");
        assert_eq!(
            server.requests(),
            [r#"POST /v1/pools {"name":"fast","spec":{"description":"NVMe"}}"#]
        );
    }

    #[test]
    fn create_invalid_name_fails_before_sending() {
        let server = FakeServer::start(vec![]);
        let (r, _) = run_cmd(
            &server,
            PoolCommand::Create {
                name: "Fast_1".into(),
                description: None,
            },
        );
        let e = r.unwrap_err().to_string();
        assert!(e.starts_with("validation_failed: name: "), "{e}");
        assert!(server.requests().is_empty());
    }

    #[test]
    fn delete_in_use_surfaces_conflict() {
        let server = FakeServer::start(vec![(
            409,
            r#"{"error":{"code":"conflict","message":"pool fast is used by vm web-1"}}"#.into(),
        )]);
        let (r, out) = run_cmd(
            &server,
            PoolCommand::Delete {
                name: "fast".into(),
            },
        );
        assert_eq!(
            r.unwrap_err().to_string(),
            "conflict: pool fast is used by vm web-1"
        );
        assert_eq!(out, "");
        assert_eq!(server.requests(), ["DELETE /v1/pools/fast"]);
    }

    #[test]
    fn delete_with_empty_answer_prints_deleted() {
        let server = FakeServer::start(vec![(204, String::new())]);
        let (r, out) = run_cmd(
            &server,
            PoolCommand::Delete {
                name: "fast".into(),
            },
        );
        r.unwrap();
        assert_eq!(out, "pool/fast deleted\n");
    }

    #[test]
    fn images_and_prune_hit_pool_routes() {
        let img = json!({"node": "node-1", "sha256": "d".repeat(64), "url": "http://x/a.img", "size": 2048, "used_by": 0});
        let server = FakeServer::start(vec![
            (200, json!({"items": [img]}).to_string()),
            (200, json!({"items": [img]}).to_string()),
        ]);
        let (r, out) = run_cmd(
            &server,
            PoolCommand::Images {
                pool: "default".into(),
                output: TableFormat::Table,
            },
        );
        r.unwrap();
        assert_eq!(
            out,
            "NODE    SHA256        SIZE    LAST-USED  USED-BY  URL\n\
             node-1  dddddddddddd  2.0KiB  -          0        http://x/a.img\n"
        );
        let (r, out) = run_cmd(
            &server,
            PoolCommand::PruneImages {
                pool: "default".into(),
                output: TextFormat::Text,
            },
        );
        r.unwrap();
        assert_eq!(
            out,
            "removed node-1 dddddddddddd 2.0KiB http://x/a.img\n\
             pruned 1 image (2.0KiB) from pool default\n"
        );
        assert_eq!(
            server.requests(),
            [
                "GET /v1/pools/default/images",
                "POST /v1/pools/default/prune-images"
            ]
        );
    }
}
