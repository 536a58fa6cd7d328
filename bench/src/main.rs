//! otherix-bench: starts its own clusters (real `otherixd` on a temp SQLite dir with TLS,
//! a real `otherix-agent --accel tcg` for the QEMU figures, `otherix-simnode` for the scale
//! figures), drives them through the real `otherix` CLI and HTTP API, and prints issue 11's
//! figures next to baselines measured in the same run, as a Markdown table. A tool, not a
//! test: nothing here asserts timings. Run it through `scripts/bench.sh`.

mod env;
mod qemu;
mod report;
mod scale;

use clap::Parser;

/// Control-plane and overhead benchmark (figures 1-7 of issue 11).
#[derive(Debug, Parser)]
#[command(name = "otherix-bench")]
pub struct Opts {
    /// Figures to run (1..7), or `all` (the default).
    figures: Vec<String>,
    /// VMs stored for figures 4 and 7.
    #[arg(long, default_value_t = 10_000)]
    pub vms: usize,
    /// Simulated nodes for figures 3, 4 and 7.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Concurrent `POST /v1/apply` requests (1,000 VMs each) when storing the VMs of
    /// figure 4.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds otherixd's idle CPU is sampled over (figure 7).
    #[arg(long, default_value_t = 30)]
    pub idle_secs: u64,
    /// Runs of figure 1 (median taken).
    #[arg(long, default_value_t = 11)]
    pub runs: usize,
    /// VMs per batch in figure 2.
    #[arg(long, default_value_t = 100)]
    pub storm: usize,
    /// Image size of figure 5, MiB.
    #[arg(long, default_value_t = 1024)]
    pub image_mib: u64,
    /// Running VMs for the agent RSS of figure 7.
    #[arg(long, default_value_t = 20)]
    pub agent_vms: usize,
    /// Record otherixd with `perf record` during the apply of figure 3, the creates and
    /// the paging of figure 4 and the idle window of figure 7; flat profiles go to DIR.
    #[arg(long, value_name = "DIR")]
    pub perf: Option<std::path::PathBuf>,
}

impl Opts {
    /// Whether figure `n` was asked for.
    pub fn wants(&self, n: u8) -> bool {
        self.figures.is_empty()
            || self
                .figures
                .iter()
                .any(|f| f == "all" || f.parse::<u8>().ok() == Some(n))
    }
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::parse();
    for f in &opts.figures {
        if f != "all" && !matches!(f.parse::<u8>(), Ok(1..=7)) {
            anyhow::bail!("unknown figure {f:?}: expected 1..7 or all");
        }
    }
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let run = |rows: &mut Vec<report::Row>| -> anyhow::Result<()> {
        if [1, 2, 5, 6].iter().any(|&f| opts.wants(f)) || opts.wants(7) {
            qemu::run(&opts, rows)?;
        }
        if [3, 4, 7].iter().any(|&f| opts.wants(f)) {
            scale::run(&opts, rows)?;
        }
        Ok(())
    };
    let result = run(&mut rows);
    rows.sort_by(|a, b| a.figure.cmp(&b.figure));
    println!(
        "\notherix-bench ({} s, {} cores, {})",
        started.elapsed().as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!("{}", report::markdown(&rows));
    result
}
