//! keepalived's VRRP blocks → `[[vrrp_script]]`, `[[vrrp_instance]]`, `[[vrrp_sync_group]]`
//! (the schema is in `crate::vrrp::config`; its keys are keepalived's keywords, so most lines
//! carry over as they are). Each block is checked against config.rs as soon as it is
//! converted, together with the blocks accepted before it, so that a value lb refuses is an
//! error at the keepalived line that gave it rather than at a line of TOML the user never
//! wrote.

use super::{Converter, INSTANCE_UNSUPPORTED, Node, Table, VIP_OPTIONS};

/// The VRRP tables accepted so far, in the order they will be written.
#[derive(Default)]
struct Accepted {
    scripts: Vec<Table>,
    instances: Vec<Table>,
    groups: Vec<Table>,
}

impl Accepted {
    fn doc(&self) -> Table {
        let mut doc = Table::default();
        for (name, list) in [
            ("vrrp_script", &self.scripts),
            ("vrrp_instance", &self.instances),
            ("vrrp_sync_group", &self.groups),
        ] {
            for t in list {
                doc.push(name, t.clone());
            }
        }
        doc
    }
}

impl Converter {
    /// Converts the VRRP blocks read by `top`: scripts first, since instances name them, then
    /// instances, then the groups that name instances (config.rs checks the references in
    /// that order too).
    pub(super) fn vrrp_all(&mut self) {
        let nodes = std::mem::take(&mut self.vrrp.nodes);
        let mut ok = Accepted::default();
        for kind in ["vrrp_script", "vrrp_instance", "vrrp_sync_group"] {
            for n in nodes.iter().filter(|n| n.name == kind) {
                let Some(name) = self.block_name(n) else {
                    continue;
                };
                let Some(b) = self.block(n) else { continue };
                let mut t = Table::default();
                t.set("name", name);
                let converted = match kind {
                    "vrrp_script" => self.vrrp_script(n, b, &mut t),
                    "vrrp_instance" => self.vrrp_instance(n, b, &mut t),
                    _ => self.vrrp_sync_group(n, b, &mut t),
                };
                if !converted {
                    continue;
                }
                let list = match kind {
                    "vrrp_script" => &mut ok.scripts,
                    "vrrp_instance" => &mut ok.instances,
                    _ => &mut ok.groups,
                };
                list.push(t);
                if let Err(e) = check(&ok.doc()) {
                    let list = match kind {
                        "vrrp_script" => &mut ok.scripts,
                        "vrrp_instance" => &mut ok.instances,
                        _ => &mut ok.groups,
                    };
                    list.pop();
                    self.error(n, format!("lb refuses this: {e}"));
                }
            }
        }
        let Accepted {
            scripts,
            instances,
            groups,
        } = ok;
        for t in scripts {
            self.doc.push("vrrp_script", t);
        }
        for t in instances {
            self.doc.push("vrrp_instance", t);
        }
        for t in groups {
            self.doc.push("vrrp_sync_group", t);
        }
    }

    /// `vrrp_instance NAME {`: the one word after the keyword.
    fn block_name(&mut self, n: &Node) -> Option<String> {
        match n.args.as_slice() {
            [name] => Some(name.clone()),
            _ => {
                self.error(
                    n,
                    format!("{}: expected {} NAME {{ … }}", Self::shown(n), n.name),
                );
                None
            }
        }
    }

    fn vrrp_script(&mut self, n: &Node, b: &[Node], t: &mut Table) -> bool {
        for c in b {
            match c.name.as_str() {
                "script" => {
                    if let Some(v) = self.command(c) {
                        t.set("script", v);
                    }
                }
                "interval" | "timeout" => {
                    if let Some(v) = self.integer(c, 1, 3600) {
                        t.set(&c.name, v);
                    }
                }
                "fall" | "rise" => {
                    if let Some(v) = self.integer(c, 1, 3600) {
                        t.set(&c.name, v);
                    }
                }
                "weight" => {
                    self.no_block(c);
                    match c.args.as_slice() {
                        [w, rest @ ..] => {
                            if let Some(v) = self.number(c, w, -253, 253) {
                                t.set("weight", v);
                            }
                            if !rest.is_empty() {
                                self.warn(
                                    c,
                                    format!(
                                        "weight {w} {}: \"reverse\" is not supported by lb, \
                                         the weight applies as written",
                                        rest.join(" ")
                                    ),
                                );
                            }
                        }
                        [] => self.error(c, "weight needs a value".into()),
                    }
                }
                "user" | "init_fail" => self.unsupported(c, "vrrp_script"),
                _ => self.unknown(c, "vrrp_script"),
            }
        }
        if !t.has("script") {
            self.error(n, "vrrp_script needs a script".into());
            return false;
        }
        true
    }

    fn vrrp_instance(&mut self, _n: &Node, b: &[Node], t: &mut Table) -> bool {
        let mut fine = true;
        for c in b {
            match c.name.as_str() {
                "state" => {
                    if let Some(v) = self.one(c) {
                        if v == "MASTER" || v == "BACKUP" {
                            t.set("state", v);
                        } else {
                            self.error(c, format!("state \"{v}\": expected MASTER or BACKUP"));
                            fine = false;
                        }
                    }
                }
                "interface" => {
                    if let Some(v) = self.one(c) {
                        t.set("interface", v);
                    }
                }
                "virtual_router_id" => {
                    if let Some(v) = self.integer(c, 1, 255) {
                        t.set("virtual_router_id", v);
                    }
                }
                "priority" => {
                    if let Some(v) = self.integer(c, 1, 255) {
                        t.set("priority", v);
                    }
                }
                "advert_int" => {
                    if let Some(v) = self.seconds(c) {
                        t.set("advert_int", v);
                    }
                }
                "version" => {
                    if let Some(v) = self.integer(c, 2, 3) {
                        t.set("version", v);
                    }
                }
                "nopreempt" => {
                    self.no_block(c);
                    t.set("nopreempt", true);
                }
                "preempt_delay" => {
                    if let Some(v) = self.integer(c, 0, 1000) {
                        t.set("preempt_delay", v);
                    }
                }
                "garp_master_delay" => {
                    if let Some(v) = self.integer(c, 0, 1000) {
                        t.set("garp_master_delay", v);
                    }
                }
                "garp_master_repeat" => {
                    if let Some(v) = self.integer(c, 1, 255) {
                        t.set("garp_master_repeat", v);
                    }
                }
                "authentication" => fine &= self.authentication(c, t),
                "virtual_ipaddress" => {
                    let Some(lines) = self.block(c) else {
                        fine = false;
                        continue;
                    };
                    let mut vips: Vec<String> = Vec::new();
                    for l in lines {
                        match self.vip_line(l) {
                            Some(v) => vips.push(v),
                            None => fine = false,
                        }
                    }
                    t.set("virtual_ipaddress", vips);
                }
                // keepalived reads both into the same field: the adverts' source address.
                "unicast_src_ip" | "mcast_src_ip" => {
                    if let Some(v) = self.one(c)
                        && self.ipv4(c, v).is_some()
                    {
                        t.set("unicast_src_ip", v);
                    }
                }
                "unicast_peer" => {
                    let Some(lines) = self.block(c) else {
                        fine = false;
                        continue;
                    };
                    let mut peers: Vec<String> = Vec::new();
                    for l in lines {
                        if self.ipv4(l, &l.name).is_none() {
                            fine = false;
                            continue;
                        }
                        self.extra_words(l, "unicast_peer");
                        peers.push(l.name.clone());
                    }
                    t.set("unicast_peer", peers);
                }
                "track_interface" | "track_script" => {
                    let Some(lines) = self.block(c) else {
                        fine = false;
                        continue;
                    };
                    let names: Vec<String> = lines
                        .iter()
                        .map(|l| {
                            self.extra_words(l, &c.name);
                            l.name.clone()
                        })
                        .collect();
                    t.set(&c.name, names);
                }
                "notify_master" | "notify_backup" | "notify_fault" | "notify" => {
                    if let Some(v) = self.command(c) {
                        t.set(&c.name, v);
                    }
                }
                name if INSTANCE_UNSUPPORTED.contains(&name) => {
                    self.unsupported(c, "vrrp_instance")
                }
                _ => self.unknown(c, "vrrp_instance"),
            }
        }
        // keepalived: "nopreempt will not work with initial state MASTER - clearing" (and the
        // same for preempt_delay). Seed 003's master has both state MASTER and nopreempt;
        // config.rs would clear it too, but saying so here puts it at the line and makes the
        // TOML say what the director does.
        if t.get("state").and_then(|v| v.as_str()) == Some("MASTER") {
            for c in b.iter().filter(|c| {
                c.name == "nopreempt" || (c.name == "preempt_delay" && t.has("preempt_delay"))
            }) {
                self.warn(
                    c,
                    format!(
                        "{}: keepalived ignores it with state MASTER, and so does lb; left out",
                        Self::shown(c)
                    ),
                );
            }
            t.keys
                .retain(|(k, _)| k != "nopreempt" && k != "preempt_delay");
        }
        // global_defs' defaults, where the instance gives none (keepalived's order too).
        let defaults = self.vrrp.defaults.clone();
        for key in ["version", "garp_master_delay", "garp_master_repeat"] {
            if !t.has(key)
                && let Some(v) = defaults.get(key)
            {
                t.set(key, v.clone());
            }
        }
        fine
    }

    /// `authentication { auth_type PASS auth_pass SECRET }` → an inline table.
    fn authentication(&mut self, n: &Node, t: &mut Table) -> bool {
        let Some(b) = self.block(n) else { return false };
        let mut auth = toml::Table::new();
        for c in b {
            match c.name.as_str() {
                "auth_type" => {
                    if let Some(v) = self.one(c) {
                        if v == "AH" {
                            // Dropping it would leave the instance without authentication,
                            // and its peers would refuse every advert.
                            self.error(
                                c,
                                "auth_type AH (IPsec) is not supported by lb; use PASS".into(),
                            );
                            return false;
                        }
                        auth.insert("auth_type".into(), v.into());
                    }
                }
                "auth_pass" => {
                    if let Some(v) = self.one(c) {
                        auth.insert("auth_pass".into(), v.into());
                    }
                }
                _ => self.unknown(c, "authentication"),
            }
        }
        t.set("authentication", toml::Value::Table(auth));
        true
    }

    /// One `virtual_ipaddress` line: `ADDR[/P] [dev X] [label L]` kept; the options lb does
    /// not apply (brd, scope, …) dropped with a warning.
    fn vip_line(&mut self, l: &Node) -> Option<String> {
        self.no_block(l);
        let mut kept = vec![l.name.clone()];
        let mut dropped: Vec<String> = Vec::new();
        let mut words = l.args.iter();
        while let Some(w) = words.next() {
            if w == "dev" || w == "label" {
                kept.push(w.clone());
                if let Some(v) = words.next() {
                    kept.push(v.clone());
                }
            } else if let Some((_, values)) = VIP_OPTIONS.iter().find(|(k, _)| k == w) {
                dropped.push(w.clone());
                for _ in 0..*values {
                    if let Some(v) = words.next() {
                        dropped.push(v.clone());
                    }
                }
            } else {
                self.error(
                    l,
                    format!("virtual_ipaddress {}: unknown word \"{w}\"", Self::shown(l)),
                );
                return None;
            }
        }
        let line = kept.join(" ");
        if let Some(addr) = l.name.split('/').next()
            && addr.contains(':')
        {
            self.error(
                l,
                format!("virtual_ipaddress {addr}: IPv6 addresses are not supported by lb"),
            );
            return None;
        }
        if let Err(e) = crate::vrrp::config::parse_vip(&line) {
            self.error(l, format!("virtual_ipaddress {}: {e}", Self::shown(l)));
            return None;
        }
        if !dropped.is_empty() {
            self.warn(
                l,
                format!(
                    "virtual_ipaddress {}: \"{}\" not supported by lb, left out (the address is \
                     added as \"{line}\")",
                    l.name,
                    dropped.join(" ")
                ),
            );
        }
        Some(line)
    }

    fn vrrp_sync_group(&mut self, n: &Node, b: &[Node], t: &mut Table) -> bool {
        let mut fine = true;
        for c in b {
            match c.name.as_str() {
                "group" => {
                    let Some(lines) = self.block(c) else {
                        fine = false;
                        continue;
                    };
                    // keepalived takes the names one a line or several on a line.
                    let names: Vec<String> = lines
                        .iter()
                        .flat_map(|l| std::iter::once(l.name.clone()).chain(l.args.iter().cloned()))
                        .collect();
                    t.set("group", names);
                }
                "notify_master" | "notify_backup" | "notify_fault" | "notify" => {
                    if let Some(v) = self.command(c) {
                        t.set(&c.name, v);
                    }
                }
                "smtp_alert"
                | "global_tracking"
                | "sync_group_tracking_weight"
                | "track_interface"
                | "track_script"
                | "track_file"
                | "track_process"
                | "track_bfd"
                | "notify_stop" => self.unsupported(c, "vrrp_sync_group"),
                _ => self.unknown(c, "vrrp_sync_group"),
            }
        }
        if !t.has("group") {
            self.error(n, "vrrp_sync_group needs a group { … } of instances".into());
            return false;
        }
        fine
    }

    /// Words after a name in a list block (`track_interface { eth1 weight -10 }`): lb takes
    /// the name only.
    fn extra_words(&mut self, l: &Node, context: &str) {
        if !l.args.is_empty() {
            self.warn(
                l,
                format!(
                    "{context} {}: \"{}\" not supported by lb, left out",
                    l.name,
                    l.args.join(" ")
                ),
            );
        }
    }
}

/// Whether config.rs accepts these VRRP tables; its message without the TOML's position.
fn check(doc: &Table) -> Result<(), String> {
    let mut text = String::new();
    doc.write(&mut text, "", 0);
    crate::config::parse(&text, "import")
        .map(|_| ())
        .map_err(|e| e.message().to_owned())
}
