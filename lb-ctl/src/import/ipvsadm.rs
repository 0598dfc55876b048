//! `lb-ctl import ipvsadm FILE`: an `ipvsadm-save` dump or `/etc/sysconfig/ipvsadm` (one
//! ipvsadm command per line) turned into `[[service]]` blocks.
//!
//! Each line goes through the parser `lb-ctl -R` uses ([`cli::parse_restore`]) and the
//! resulting edits through [`Model::apply`], so the file means exactly what restoring it
//! would, and a line `-R` refuses is refused here with the same message and its line number.
//! The table the whole file leaves behind is what is written.

use std::path::Path;

use super::{Diag, Outcome, Severity, Table, render};
use crate::{
    cli,
    model::{
        DestConfig, Forward, Model, Op, Protocol, SchedFlags, Scheduler, ServiceConfig, ServiceKey,
    },
};

/// Reads `path` and returns the TOML, or the errors with their line numbers.
pub fn import(path: &Path) -> Outcome {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => import_str(&text, &name),
        Err(e) => Outcome {
            toml: String::new(),
            diags: vec![Diag {
                file: name,
                line: 0,
                severity: Severity::Error,
                message: format!("cannot read the file: {e}"),
            }],
        },
    }
}

/// Imports `text`; `name` names it in the header and in errors.
pub fn import_str(text: &str, name: &str) -> Outcome {
    let mut diags = Vec::new();
    let mut model = Model::default();
    // Services in the order the file first adds them (the model keeps them sorted).
    let mut order: Vec<ServiceKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let error = |message: String| Diag {
            file: name.to_owned(),
            line: i + 1,
            severity: Severity::Error,
            message,
        };
        let ops = match cli::parse_restore(line) {
            Ok(ops) => ops,
            Err((_, e)) => {
                diags.push(error(e.message().to_owned()));
                continue;
            }
        };
        for op in &ops {
            if let Err(e) = model.apply(op) {
                diags.push(error(e.to_string()));
                continue;
            }
            match op {
                Op::AddService(c) if !order.contains(&c.key) => order.push(c.key),
                Op::DelService(k) => order.retain(|o| o != k),
                Op::Clear => order.clear(),
                _ => {}
            }
        }
    }
    if !diags.is_empty() {
        return Outcome {
            toml: String::new(),
            diags,
        };
    }
    let mut doc = Table::default();
    for key in &order {
        let entry = &model.services[key];
        let mut svc = service(&entry.config);
        for d in &entry.dests {
            svc.push("real_server", dest(d));
        }
        doc.push("service", svc);
    }
    Outcome {
        toml: render("ipvsadm", name, None, &doc, &diags),
        diags,
    }
}

fn service(c: &ServiceConfig) -> Table {
    let mut t = Table::default();
    t.set("address", c.key.addr.to_string());
    t.set("port", c.key.port as i64);
    t.set(
        "protocol",
        match c.key.proto {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        },
    );
    t.set("scheduler", c.scheduler.name());
    let flags = sched_flag_names(c.scheduler, c.sched_flags);
    if !flags.is_empty() {
        t.set("sched_flags", flags);
    }
    if let Some(p) = c.persistence {
        t.set("persistence_timeout", p.timeout as i64);
        if !p.netmask.is_host() {
            t.set("persistence_netmask", p.netmask.to_string());
        }
    }
    if c.ops {
        t.set("ops", true);
    }
    t
}

/// The config's `sched_flags` names for `-b` bits: the scheduler's own names where it has
/// them (sh, mh), else `flag-N`.
fn sched_flag_names(s: Scheduler, flags: SchedFlags) -> Vec<&'static str> {
    let named =
        |one: &'static str, two: &'static str| [(SchedFlags::FLAG1, one), (SchedFlags::FLAG2, two)];
    let pairs = match s {
        Scheduler::Sh => named("sh-fallback", "sh-port"),
        Scheduler::Mh => named("mh-fallback", "mh-port"),
        _ => named("flag-1", "flag-2"),
    };
    let mut out: Vec<&'static str> = pairs
        .into_iter()
        .filter(|(bit, _)| flags.0 & bit != 0)
        .map(|(_, n)| n)
        .collect();
    if flags.0 & SchedFlags::FLAG3 != 0 {
        out.push("flag-3");
    }
    out
}

fn dest(d: &DestConfig) -> Table {
    let mut t = Table::default();
    t.set("address", d.addr.to_string());
    t.set("port", d.port as i64);
    t.set("weight", d.weight as i64);
    t.set(
        "forward",
        match d.forward {
            Forward::Dr => "dr",
            Forward::Nat => "nat",
            Forward::Tun => "tun",
        },
    );
    if d.u_threshold != 0 {
        t.set("upper_threshold", d.u_threshold as i64);
    }
    if d.l_threshold != 0 {
        t.set("lower_threshold", d.l_threshold as i64);
    }
    t
}
