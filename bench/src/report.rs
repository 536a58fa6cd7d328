//! The figures table: one [`Row`] per measured figure (value, baseline, target, pass or
//! miss), the statistics the rows are made of ([`Stats`]), printed as a Markdown table.

use std::time::Duration;

/// One line of the results table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub figure: String,
    pub what: String,
    pub value: String,
    pub baseline: String,
    pub target: String,
    /// `None`: informational, no target.
    pub pass: Option<bool>,
}

impl Row {
    pub fn new(figure: &str, what: &str, value: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            what: what.into(),
            value: value.into(),
            baseline: String::new(),
            target: String::new(),
            pass: None,
        }
    }
    pub fn baseline(mut self, baseline: impl Into<String>) -> Row {
        self.baseline = baseline.into();
        self
    }
    pub fn target(mut self, target: &str, pass: bool) -> Row {
        self.target = target.into();
        self.pass = Some(pass);
        self
    }
}

/// The table as Markdown, one row per figure.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| # | measure | otherix | baseline | target | result |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for r in rows {
        let result = match r.pass {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.figure, r.what, r.value, r.baseline, r.target, result
        ));
    }
    out
}

/// Order statistics of a sample of durations.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    sorted: Vec<Duration>,
}

impl Stats {
    pub fn new(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats { sorted: samples }
    }
    pub fn count(&self) -> usize {
        self.sorted.len()
    }
    /// Nearest-rank percentile (`p` in 0..=100); zero for an empty sample.
    pub fn pct(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }
    pub fn median(&self) -> Duration {
        self.pct(50.0)
    }
    pub fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
}

/// `12.3 ms` under a second, else `1.23 s`.
pub fn fmt_dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// `count / elapsed`, per second.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_table() {
        let s = Stats::new((1..=100).rev().map(ms).collect());
        let cases = [(50.0, 50), (95.0, 95), (99.0, 99), (100.0, 100), (0.0, 1)];
        for (p, want) in cases {
            assert_eq!(s.pct(p), ms(want), "p{p}");
        }
        let seven = Stats::new([7, 1, 3, 5, 2, 6, 4].into_iter().map(ms).collect());
        assert_eq!(seven.median(), ms(4));
        assert_eq!(seven.max(), ms(7));
        assert_eq!(Stats::new(vec![]).pct(99.0), Duration::ZERO);
    }

    #[test]
    fn formats() {
        let cases = [(ms(3), "3.00 ms"), (ms(91), "91 ms"), (ms(1500), "1.50 s")];
        for (d, want) in cases {
            assert_eq!(fmt_dur(d), want);
        }
        assert_eq!(rate(500, ms(1000)), 500.0);
        let rows = vec![
            Row::new("1", "create --wait", "91 ms")
                .baseline("71 ms")
                .target("<= 1.15x", false),
            Row::new("7", "RSS", "38 MiB"),
        ];
        let md = markdown(&rows);
        assert!(md.contains("| 1 | create --wait | 91 ms | 71 ms | <= 1.15x | MISS |"));
        assert!(md.contains("| 7 | RSS | 38 MiB |  |  |  |"));
    }
}
