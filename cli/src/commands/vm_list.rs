//! `otherix vm list`: one page of `GET /v1/vms` as a table, JSON or YAML, with a stderr
//! hint when there are more pages. `--watch` opens the event stream first, prints the
//! list, then a line per VM change (a change the list already shows may be printed too,
//! never one missed).

use super::{CommandError, Ctx};
use otherix_api::EventKind;

use crate::cli::{ListFormat, TextFormat, VmListArgs};
use crate::client::VmListQuery;
use crate::event_stream::{self, EventsQuery};
use crate::{output, wire};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub query: VmListQuery,
    pub show_ids: bool,
    pub format: ListFormat,
    pub watch: bool,
}

impl From<VmListArgs> for Options {
    fn from(a: VmListArgs) -> Self {
        Options {
            query: VmListQuery {
                limit: a.limit,
                cursor: a.cursor,
                pool: a.pool,
                node: a.node,
                status: a.status,
                label: a.selector,
                all_projects: a.all_projects,
            },
            show_ids: a.show_ids,
            format: a.output,
            watch: a.watch,
        }
    }
}

pub fn run(ctx: &mut Ctx<'_>, opts: Options) -> Result<(), CommandError> {
    let events = EventsQuery {
        kinds: vec![EventKind::Vm],
        all_projects: opts.query.all_projects,
        ..Default::default()
    };
    let stream = if opts.watch {
        Some(event_stream::open(ctx.client, &events)?)
    } else {
        None
    };
    let page = ctx.client.list_vms(&opts.query)?;
    let text = match opts.format {
        ListFormat::Table if opts.query.all_projects => output::table::vms_in_projects(
            &page.value.items,
            &wire::item_projects(&page.raw),
            opts.show_ids,
        ),
        ListFormat::Table => output::table::vms(&page.value.items, opts.show_ids),
        ListFormat::Wide => output::table::vms_wide(
            &page.value.items,
            opts.show_ids,
            opts.query
                .all_projects
                .then(|| wire::item_projects(&page.raw))
                .as_deref(),
        ),
        ListFormat::Json => output::json::pretty(&page.raw),
        ListFormat::Yaml => output::yaml::to_string(&page.value)?,
    };
    ctx.out.write_all(text.as_bytes())?;
    ctx.out.flush()?;
    if let Some(cursor) = &page.value.next_cursor {
        let _ = writeln!(ctx.err, "{}", output::more_results_line(cursor));
    }
    if let Some(stream) = stream {
        let format = match opts.format {
            ListFormat::Json => TextFormat::Json,
            ListFormat::Table | ListFormat::Wide | ListFormat::Yaml => TextFormat::Text,
        };
        super::events::follow(ctx, stream, &events, format)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;
    use crate::output::fixtures as fx;
    use crate::wait::fake::FakeServer;
    use otherix_api::{ListResponse, VmPhase};

    #[test]
    fn all_projects_asks_for_them_and_adds_project_column() {
        let mut item = serde_json::to_value(fx::vm()).unwrap();
        item["project"] = "dev".into();
        let page = serde_json::json!({"items": [item], "next_cursor": null});
        let server = FakeServer::start(vec![(200, page.to_string())]);
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let opts = Options {
            query: VmListQuery {
                all_projects: true,
                ..Default::default()
            },
            show_ids: false,
            format: ListFormat::Table,
            watch: false,
        };
        run(&mut ctx, opts).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("PROJECT  NAME"), "{out}");
        assert!(out.contains("\ndev      web-1"), "{out}");
        assert_eq!(server.requests(), ["GET /v1/vms?all_projects=true"]);
    }

    #[test]
    fn run_with_next_cursor_prints_table_and_stderr_hint() {
        let page = ListResponse {
            items: vec![fx::vm()],
            next_cursor: Some("c2".into()),
        };
        let server = FakeServer::start(vec![(200, serde_json::to_string(&page).unwrap())]);
        let client = Client::new(&server.url).unwrap();
        let (mut out, mut err) = (vec![], vec![]);
        let mut ctx = Ctx {
            client: &client,
            out: &mut out,
            err: &mut err,
        };
        let opts = Options {
            query: VmListQuery {
                limit: Some(1),
                status: Some(VmPhase::Running),
                pool: Some("default".into()),
                ..Default::default()
            },
            show_ids: false,
            format: ListFormat::Table,
            watch: false,
        };
        run(&mut ctx, opts).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            output::table::vms(&page.items, false)
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "more results: --cursor c2\n"
        );
        assert_eq!(
            server.requests(),
            vec!["GET /v1/vms?limit=1&pool=default&status=running"]
        );
    }
}
