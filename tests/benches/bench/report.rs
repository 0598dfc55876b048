//! What a bench run measured: printed as tables, written as JSON, and drawn as an SVG chart of
//! ns/packet per path beside the floor.
//!
//! The chart is a dozen `<rect>`/`<text>` elements written by hand: a plotting crate would
//! bring a font stack for less.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

/// The machine the numbers come from.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    /// `/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow` and friends: the
    /// mitigations that make kernel calls dear.
    pub mitigations: Vec<String>,
    pub memory_gib: f64,
}

impl Machine {
    pub fn probe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let mut mitigations = Vec::new();
        for v in ["spec_rstack_overflow", "retbleed", "spectre_v2"] {
            let s = read(&format!("/sys/devices/system/cpu/vulnerabilities/{v}"));
            if !s.trim().is_empty() {
                mitigations.push(format!("{v}: {}", s.trim()));
            }
        }
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
        Machine {
            cpu,
            cpus,
            kernel,
            mitigations,
            memory_gib,
        }
    }
}

/// Median, min and max of some samples.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread::default();
        }
        Spread {
            median: v[v.len() / 2],
            min: v[0],
            max: v[v.len() - 1],
            samples: v.len(),
        }
    }
}

/// One path measured with `BPF_PROG_TEST_RUN`.
#[derive(Clone, Debug, Serialize)]
pub struct PathRow {
    pub path: String,
    /// "repeat" (one buffer, many repeats per call) or "single" (one run per call on a fresh
    /// copy).
    pub method: &'static str,
    /// ns/packet over the rounds.
    pub ns: Spread,
    /// Median over the floor's median, same method, same run.
    pub x_floor: f64,
}

/// One end-to-end configuration on veth.
#[derive(Clone, Debug, Serialize)]
pub struct E2eRow {
    /// "floor (MAC swap)", "DR", "NAT", "TUN", "nftables DNAT".
    pub path: String,
    /// Distinct source tuples in the traffic.
    pub flows: u32,
    /// Packets per second delivered to the sink, millions, over the rounds.
    pub mpps: Spread,
    /// Median over the nftables median at the same flow count (0 when none was measured).
    pub x_nftables: f64,
    /// Anything that qualifies the number (drops, generator limits).
    pub note: String,
}

/// One scale figure (memory, lookup cost, control-plane latency).
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    pub what: String,
    pub value: f64,
    pub unit: String,
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub paths: Vec<PathRow>,
    pub end_to_end: Vec<E2eRow>,
    pub scale: Vec<ScaleRow>,
    pub seconds: f64,
}

impl Report {
    pub fn new() -> Report {
        Report {
            machine: Machine::probe(),
            command: "cargo xtask bench".into(),
            ..Report::default()
        }
    }

    /// Adds a scale row.
    pub fn scale(&mut self, what: &str, value: f64, unit: &str, note: &str) {
        println!(
            "  {what}: {value:.3} {unit}{}",
            if note.is_empty() {
                String::new()
            } else {
                format!(" ({note})")
            }
        );
        self.scale.push(ScaleRow {
            what: what.into(),
            value,
            unit: unit.into(),
            note: note.into(),
        });
    }

    /// Fills `x_nftables` of every end-to-end row from the nftables row at its flow count.
    pub fn relate_e2e(&mut self) {
        let base: Vec<(u32, f64)> = self
            .end_to_end
            .iter()
            .filter(|r| r.path.starts_with("nftables"))
            .map(|r| (r.flows, r.mpps.median))
            .collect();
        for r in &mut self.end_to_end {
            if let Some((_, b)) = base.iter().find(|(f, _)| *f == r.flows)
                && *b > 0.0
            {
                r.x_nftables = r.mpps.median / b;
            }
        }
    }

    pub fn print(&self) {
        let m = &self.machine;
        println!(
            "\nmachine: {} ({} CPUs, {:.1} GiB), kernel {}",
            m.cpu, m.cpus, m.memory_gib, m.kernel
        );
        for v in &m.mitigations {
            println!("  {v}");
        }
        for method in ["repeat", "single"] {
            let rows: Vec<&PathRow> = self.paths.iter().filter(|r| r.method == method).collect();
            if rows.is_empty() {
                continue;
            }
            println!(
                "\nper path, BPF_PROG_TEST_RUN, {}: ns/packet",
                if method == "repeat" {
                    "repeats of one buffer (program cost)"
                } else {
                    "one run per call on a fresh copy"
                }
            );
            println!(
                "{:<36} {:>8} {:>8} {:>8} {:>8}",
                "path", "median", "min", "max", "x floor"
            );
            for r in rows {
                println!(
                    "{:<36} {:>8.1} {:>8.1} {:>8.1} {:>7.2}x",
                    r.path, r.ns.median, r.ns.min, r.ns.max, r.x_floor
                );
            }
        }
        if !self.end_to_end.is_empty() {
            println!("\nend to end on veth, director on one core: Mpps delivered to the sink");
            println!(
                "{:<24} {:>8} {:>8} {:>8} {:>8} {:>10}  note",
                "path", "flows", "median", "min", "max", "x nft"
            );
            for r in &self.end_to_end {
                println!(
                    "{:<24} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>9.2}x  {}",
                    r.path, r.flows, r.mpps.median, r.mpps.min, r.mpps.max, r.x_nftables, r.note
                );
            }
        }
        if !self.scale.is_empty() {
            println!("\nscale");
            for r in &self.scale {
                println!(
                    "  {:<58} {:>12.3} {:<6} {}",
                    r.what, r.value, r.unit, r.note
                );
            }
        }
        println!("\n({:.0} s)", self.seconds);
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).expect("serialisable");
        std::fs::write(dir.join("results.json"), json + "\n")?;
        std::fs::write(dir.join("paths.svg"), self.svg())?;
        Ok(())
    }

    /// Horizontal bars of median ns/packet per path ("single" method: every path measured the
    /// same way), the floor first and its bar marked on every row.
    pub fn svg(&self) -> String {
        let rows: Vec<&PathRow> = self.paths.iter().filter(|r| r.method == "single").collect();
        let (w, label_w, bar_h, gap, top) = (760.0, 250.0, 22.0, 8.0, 54.0);
        let h = top + rows.len() as f64 * (bar_h + gap) + 40.0;
        let max = rows.iter().map(|r| r.ns.max).fold(1.0, f64::max);
        let scale = (w - label_w - 90.0) / max;
        let floor = rows.first().map_or(0.0, |r| r.ns.median);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="13">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="22" font-size="15" font-weight="bold">ns/packet per path, BPF_PROG_TEST_RUN, one run per call</text>"#
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="40" fill="#555">median of rounds, whiskers min–max · {} · {} CPUs · kernel {}</text>"##,
            xml(&self.machine.cpu),
            self.machine.cpus,
            xml(&self.machine.kernel)
        );
        for (i, r) in rows.iter().enumerate() {
            let y = top + i as f64 * (bar_h + gap);
            let colour = if i == 0 { "#888" } else { "#2a6ebb" };
            let bw = r.ns.median * scale;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                label_w - 8.0,
                y + bar_h * 0.7,
                xml(&r.path)
            );
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{y}" width="{bw:.1}" height="{bar_h}" fill="{colour}"/>"#
            );
            // min–max whisker
            let (x0, x1, ym) = (
                label_w + r.ns.min * scale,
                label_w + r.ns.max * scale,
                y + bar_h / 2.0,
            );
            let _ = writeln!(
                s,
                r#"<line x1="{x0:.1}" y1="{ym}" x2="{x1:.1}" y2="{ym}" stroke="black" stroke-width="1.5"/>"#
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}">{:.0} ns · {:.2}×</text>"#,
                label_w + r.ns.max.max(r.ns.median) * scale + 6.0,
                y + bar_h * 0.7,
                r.ns.median,
                r.x_floor
            );
        }
        // The floor, as a dashed line across all rows.
        let fx = label_w + floor * scale;
        let _ = writeln!(
            s,
            r##"<line x1="{fx:.1}" y1="{}" x2="{fx:.1}" y2="{}" stroke="#c00" stroke-dasharray="4,3"/>"##,
            top - 4.0,
            h - 30.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{fx:.1}" y="{}" fill="#c00" text-anchor="middle">floor</text>"##,
            h - 14.0
        );
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
