//! Figures 3, 4 and the otherixd half of 7, on a cluster of simulated nodes
//! (`otherix-simnode`): `create -f` of 1,000 manifests and its re-apply; list, page, get
//! and create latencies at 1,000 VMs (baseline) and at the full count; otherixd RSS and
//! idle CPU with no VMs (baseline) and with all of them running.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use otherix_e2e::Cluster;

use crate::env::Perf;
use crate::env::{
    api_timed, bare_cluster, cli_timed, cpu_percent, find_pid, manifest_dir, names, phase_counts,
    rss_mib, timed, wait_for, SimNodes,
};
use crate::report::{fmt_dur, rate, Row, Stats};
use crate::Opts;

/// Image URL of simulated VMs (never fetched).
const SIM_URL: &str = "http://127.0.0.1:9/sim.qcow2";

pub fn run(opts: &Opts, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let cluster = bare_cluster();
    let server = find_pid("otherixd", &cluster.dir.path().display().to_string())
        .ok_or_else(|| anyhow::anyhow!("otherixd pid not found"))?;
    eprintln!("[scale] starting {} simulated nodes", opts.nodes);
    let (d, sim) = timed(|| SimNodes::start(&cluster, opts.nodes));
    let sim = sim?;
    eprintln!("[scale] {} nodes ready in {}", opts.nodes, fmt_dur(d));
    let idle = Duration::from_secs(opts.idle_secs);
    let idle0 = (
        rss_mib(server),
        cpu_percent(server, idle.min(Duration::from_secs(10))),
    );

    let first = opts.vms.min(1000);
    let batch = names("s", 0..first);
    if opts.wants(3) {
        let dir = manifest_dir(cluster.dir.path(), "fig3", &batch, SIM_URL);
        let path = dir.display().to_string();
        eprintln!("[3] create -f of {first} manifests");
        let perf = Perf::start(opts.perf.as_deref(), server, "fig3-apply");
        let (d, out) = cli_timed(&cluster, &["create", "-f", &path]);
        Perf::stop(perf);
        let out = out.ok();
        let created = out.stdout.matches(" created").count();
        let r = rate(created, d);
        rows.push(
            Row::new(
                "3",
                &format!("`create -f` {first} manifests, accepted/s"),
                format!("{r:.0}/s ({created} in {})", fmt_dur(d)),
            )
            .target(">= 500/s", r >= 500.0),
        );
        let perf = Perf::start(opts.perf.as_deref(), server, "fig3-reapply");
        let (d, out) = cli_timed(&cluster, &["create", "-f", &path]);
        Perf::stop(perf);
        let out = out.ok();
        let unchanged = out.stdout.matches(" unchanged").count();
        let r2 = rate(unchanged, d);
        rows.push(
            Row::new(
                "3",
                &format!("re-apply {first}, all unchanged, /s"),
                format!("{r2:.0}/s ({unchanged} in {})", fmt_dur(d)),
            )
            .target(">= 2000/s", r2 >= 2000.0),
        );
    } else {
        populate(&cluster, &batch, opts.threads);
    }
    let want_scale = opts.wants(4) || opts.wants(7);
    if !want_scale {
        return Ok(());
    }
    wait_running(&cluster, first);
    let base = Fig4::measure(&cluster, "b", None);
    let rest = names("s", first..opts.vms);
    eprintln!(
        "[scale] populating {} more VMs (POST /v1/apply of 1000, {} at a time)",
        rest.len(),
        opts.threads
    );
    let (d, ()) = timed(|| populate(&cluster, &rest, opts.threads));
    if !rest.is_empty() {
        rows.push(Row::new(
            "4",
            &format!(
                "(setup) {} more VMs stored by POST /v1/apply of 1000, {} at a time",
                rest.len(),
                opts.threads
            ),
            format!("{:.0}/s ({})", rate(rest.len(), d), fmt_dur(d)),
        ));
    }
    let (d, all) = timed(|| wait_running(&cluster, opts.vms));
    rows.push(Row::new(
        "4",
        &format!(
            "(setup) all {} VMs running on {} simulated nodes",
            opts.vms, opts.nodes
        ),
        format!("{} after the last apply ({all})", fmt_dur(d)),
    ));
    let n = opts.vms;
    if opts.wants(4) {
        let at = Fig4::measure(&cluster, "c", opts.perf.as_deref().map(|d| (d, server)));
        let b = &base;
        rows.push(
            Row::new(
                "4",
                &format!("`vm list` page of 100, p50 / p99 ({n} VMs)"),
                format!(
                    "{} / {}",
                    fmt_dur(at.page.median()),
                    fmt_dur(at.page.pct(99.0))
                ),
            )
            .baseline(format!(
                "{} / {} at {first}",
                fmt_dur(b.page.median()),
                fmt_dur(b.page.pct(99.0))
            ))
            .target("p99 <= 5 ms", at.page.pct(99.0) <= Duration::from_millis(5)),
        );
        rows.push(
            Row::new(
                "4",
                &format!("page through all {} (limit 100)", at.paged_count),
                fmt_dur(at.page_all),
            )
            .baseline(format!("{} for {}", fmt_dur(b.page_all), b.paged_count))
            .target("<= 0.5 s", at.page_all <= Duration::from_millis(500)),
        );
        rows.push(
            Row::new(
                "4",
                "`vm get`, p50 / p99",
                format!(
                    "{} / {}",
                    fmt_dur(at.get.median()),
                    fmt_dur(at.get.pct(99.0))
                ),
            )
            .baseline(format!(
                "{} / {} at {first}",
                fmt_dur(b.get.median()),
                fmt_dur(b.get.pct(99.0))
            )),
        );
        rows.push(
            Row::new(
                "4",
                "one create accepted (POST /v1/vms), p50 / max of 10",
                format!(
                    "{} / {}",
                    fmt_dur(at.create.median()),
                    fmt_dur(at.create.max())
                ),
            )
            .baseline(format!(
                "{} / {} at {first}",
                fmt_dur(b.create.median()),
                fmt_dur(b.create.max())
            ))
            .target("<= 20 ms", at.create.median() <= Duration::from_millis(20)),
        );
        rows.push(
            Row::new(
                "4",
                "`otherix vm list` (CLI, first page)",
                fmt_dur(at.cli_list),
            )
            .baseline(format!("{} at {first}", fmt_dur(b.cli_list))),
        );
    }
    if opts.wants(7) {
        // Let the creates of the measurement settle, then sit idle.
        std::thread::sleep(Duration::from_secs(5));
        let rss = rss_mib(server);
        eprintln!("[7] otherixd idle CPU over {} s", idle.as_secs());
        let perf = Perf::start(opts.perf.as_deref(), server, "fig7-idle");
        let cpu = cpu_percent(server, idle);
        Perf::stop(perf);
        rows.push(
            Row::new(
                "7",
                &format!("otherixd RSS, {n} VMs on {} nodes", opts.nodes),
                format!("{rss:.0} MiB"),
            )
            .baseline(format!("{:.0} MiB with 0 VMs", idle0.0))
            .target("<= 100 MiB", rss <= 100.0),
        );
        rows.push(Row::new(
            "7",
            &format!(
                "(info) otherix-simnode RSS, {} nodes x {} VMs",
                opts.nodes,
                n / opts.nodes.max(1)
            ),
            format!("{:.0} MiB", rss_mib(sim.pid())),
        ));
        rows.push(
            Row::new(
                "7",
                &format!("otherixd CPU idle, {n} VMs ({} s)", idle.as_secs()),
                format!("{cpu:.1} % of a core"),
            )
            .baseline(format!("{:.1} % with 0 VMs", idle0.1))
            .target("< 2 %", cpu < 2.0),
        );
    }
    Ok(())
}

/// Waits (up to a generous bound) until `count` VMs are running; the phase counts seen.
fn wait_running(cluster: &Cluster, count: usize) -> String {
    let mut last = String::new();
    let ok = wait_for(
        Duration::from_secs(600 + count as u64 / 10),
        Duration::from_secs(2),
        || {
            let counts = phase_counts(cluster);
            last = format!("{counts:?}");
            counts.get("running").copied().unwrap_or(0) >= count
        },
    );
    if !ok {
        eprintln!("[scale] not all {count} VMs running: {last}");
    }
    last
}

/// Stores `names` with `POST /v1/apply` (what `create -f DIR` sends), 1,000 VMs per
/// request, `threads` requests at a time.
fn populate(cluster: &Cluster, names: &[String], threads: usize) {
    let chunks: Vec<&[String]> = names.chunks(1000).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { return };
                let vms: Vec<serde_json::Value> = chunk
                    .iter()
                    .map(|name| {
                        serde_json::json!({"name": name, "spec": {"image_url": SIM_URL,
                            "arch": "amd64", "vcpus": 1, "memory_mb": 128}})
                    })
                    .collect();
                let body = serde_json::json!({ "vms": vms }).to_string();
                let (_, status, text) = api_timed(cluster, "POST", "/v1/apply", Some(&body));
                assert_eq!(status, 200, "POST /v1/apply: {status} {text}");
            });
        }
    });
}

/// The latencies of figure 4 at one fleet size.
struct Fig4 {
    page: Stats,
    page_all: Duration,
    paged_count: usize,
    get: Stats,
    create: Stats,
    cli_list: Duration,
}

impl Fig4 {
    fn measure(cluster: &Cluster, tag: &str, perf: Option<(&std::path::Path, u32)>) -> Fig4 {
        let profile = |name: &str| perf.and_then(|(dir, pid)| Perf::start(Some(dir), pid, name));
        let mut page = Vec::new();
        for _ in 0..200 {
            let (d, status, _) = api_timed(cluster, "GET", "/v1/vms?limit=100", None);
            assert_eq!(status, 200);
            page.push(d);
        }
        let p = profile("fig4-page-all");
        let t = Instant::now();
        let mut cursor: Option<String> = None;
        let mut paged_count = 0;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/vms?limit=100&cursor={c}"),
                None => "/v1/vms?limit=100".to_owned(),
            };
            let (_, status, text) = api_timed(cluster, "GET", &path, None);
            assert_eq!(status, 200, "{text}");
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            paged_count += body["items"].as_array().map_or(0, Vec::len);
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        let page_all = t.elapsed();
        Perf::stop(p);
        let mut get = Vec::new();
        for i in 0..200usize {
            let name = format!("s-{:05}", (i * 37) % paged_count.max(1));
            let (d, _, _) = api_timed(cluster, "GET", &format!("/v1/vms/{name}"), None);
            get.push(d);
        }
        let mut create = Vec::new();
        let p = profile("fig4-create");
        for i in 0..10 {
            let body = serde_json::json!({"name": format!("{tag}-{i:05}"), "spec": {"image_url": SIM_URL, "arch": "amd64", "vcpus": 1, "memory_mb": 128}}).to_string();
            let (d, status, text) = api_timed(cluster, "POST", "/v1/vms", Some(&body));
            assert_eq!(status, 202, "POST /v1/vms: {text}");
            create.push(d);
            std::thread::sleep(Duration::from_millis(200));
        }
        Perf::stop(p);
        let (cli_list, out) = cli_timed(cluster, &["vm", "list"]);
        out.ok();
        Fig4 {
            page: Stats::new(page),
            page_all,
            paged_count,
            get: Stats::new(get),
            create: Stats::new(create),
            cli_list,
        }
    }
}
