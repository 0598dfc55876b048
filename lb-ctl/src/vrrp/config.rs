//! The VRRP part of the TOML file: `[[vrrp_instance]]`, `[[vrrp_script]]`,
//! `[[vrrp_sync_group]]`, and the address syntax shared with `[director] vips`. Keys are
//! keepalived's keywords, so `lb-ctl import keepalived` maps a `vrrp_instance { … }` block key
//! for key:
//!
//! ```toml
//! [[vrrp_script]]
//! name = "chk_nginx"
//! script = "pidof nginx"      # run with `sh -c`; exit 0 = good
//! interval = 2                # seconds between runs (default 1)
//! timeout = 2                 # seconds before a run counts as failed (default: interval)
//! weight = -20                # -253..253; 0 (default): failure puts the instance in FAULT
//! fall = 2                    # failures in a row to count as failed (default 1)
//! rise = 2                    # successes in a row to count as good again (default 1)
//!
//! [[vrrp_instance]]
//! name = "VI_1"
//! state = "MASTER"            # MASTER | BACKUP (the initial state; default BACKUP)
//! interface = "eth0"          # where adverts go and VIPs are added
//! virtual_router_id = 51      # 1..255
//! priority = 100              # 1..255; 255 = address owner (master at once)
//! advert_int = 1              # seconds; v2: whole seconds 1..255, v3: 0.01..40.95
//! version = 2                 # 2 (default, as keepalived) | 3
//! nopreempt = false
//! preempt_delay = 0           # seconds, 0..1000
//! authentication = { auth_type = "PASS", auth_pass = "1111" }   # v2 only
//! virtual_ipaddress = ["192.0.2.100/32 dev eth0 label eth0:0", "192.0.2.101"]
//! unicast_src_ip = "192.0.2.2"          # with unicast_peer: adverts by unicast
//! unicast_peer = ["192.0.2.3"]
//! track_interface = ["eth1"]            # down → FAULT (the instance's interface always is)
//! track_script = ["chk_nginx"]
//! notify_master = "/etc/lb/master.sh"
//! notify_backup = "/etc/lb/backup.sh"
//! notify_fault = "/etc/lb/fault.sh"
//! notify = "/etc/lb/notify.sh"          # + INSTANCE name state priority
//! garp_master_delay = 5                 # seconds until the second round of gratuitous ARPs
//! garp_master_repeat = 5                # gratuitous ARPs per VIP per round
//!
//! [[vrrp_sync_group]]
//! name = "VG_1"
//! group = ["VI_1", "VI_2"]              # move together: one's MASTER/BACKUP/FAULT is all's
//!                                       # (script weights are ignored in a group, as in
//!                                       # keepalived; a failing weight-0 script faults all)
//! notify_master = "…"                   # also notify_backup, notify_fault, notify (+ GROUP …)
//! ```

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::packet::Auth;
use crate::config::{Problem, ipv4, ranged, valid_ifname};

/// An address the director owns: keepalived's `virtual_ipaddress` line
/// `ADDR[/PREFIX] [dev IFACE] [label LABEL]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    /// `None`: the instance's interface (or, in `[director] vips`, the first interface).
    pub dev: Option<String>,
    pub label: Option<String>,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)?;
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(l) = &self.label {
            write!(f, " label {l}")?;
        }
        Ok(())
    }
}

/// Parses one address line; the error is the message alone (the caller adds the place).
pub fn parse_vip(line: &str) -> Result<Vip, String> {
    let mut words = line.split_whitespace();
    let first = words.next().ok_or("empty address")?;
    let (a, prefix) = match first.split_once('/') {
        Some((a, p)) => (
            a,
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("invalid prefix length {p:?}"))?,
        ),
        None => (first, 32),
    };
    let addr = a
        .parse::<Ipv4Addr>()
        .map_err(|_| format!("invalid IPv4 address {a:?}"))?;
    let mut vip = Vip {
        addr,
        prefix,
        dev: None,
        label: None,
    };
    while let Some(w) = words.next() {
        let value = words.next().ok_or_else(|| format!("{w:?} needs a value"))?;
        match w {
            "dev" => {
                if !valid_ifname(value) {
                    return Err(format!("invalid interface name {value:?}"));
                }
                vip.dev = Some(value.to_string());
            }
            "label" => {
                // The kernel's rule: at most 15 bytes.
                if value.is_empty() || value.len() > 15 {
                    return Err(format!("invalid label {value:?} (1..15 characters)"));
                }
                vip.label = Some(value.to_string());
            }
            other => {
                return Err(format!(
                    "unsupported keyword {other:?} in an address (supported: dev, label)"
                ));
            }
        }
    }
    if let (Some(l), Some(d)) = (&vip.label, &vip.dev)
        && !l.starts_with(d.as_str())
    {
        return Err(format!(
            "label {l:?} must start with the interface name {d:?} (the kernel's rule)"
        ));
    }
    Ok(vip)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VrrpConfig {
    pub instances: Vec<Instance>,
    pub scripts: Vec<Script>,
    pub sync_groups: Vec<SyncGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    /// Called with `INSTANCE|GROUP name state priority` appended.
    pub any: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub initial_master: bool,
    pub interface: String,
    pub vrid: u8,
    pub priority: u8,
    pub adver_int_cs: u16,
    pub version: u8,
    pub nopreempt: bool,
    pub preempt_delay: Duration,
    pub auth: Auth,
    /// Every VIP with its `dev` filled in.
    pub vips: Vec<Vip>,
    pub unicast_src_ip: Option<Ipv4Addr>,
    pub unicast_peer: Vec<Ipv4Addr>,
    pub track_interface: Vec<String>,
    pub track_script: Vec<String>,
    pub notify: Notify,
    pub garp_master_delay: Duration,
    pub garp_master_repeat: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub name: String,
    pub script: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub weight: i32,
    pub fall: u32,
    pub rise: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroup {
    pub name: String,
    pub group: Vec<String>,
    pub notify: Notify,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawAuth {
    auth_type: Spanned<String>,
    auth_pass: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawInstance {
    name: Spanned<String>,
    state: Option<Spanned<String>>,
    interface: Spanned<String>,
    virtual_router_id: Spanned<i64>,
    priority: Option<Spanned<i64>>,
    advert_int: Option<Spanned<f64>>,
    version: Option<Spanned<i64>>,
    #[serde(default)]
    nopreempt: bool,
    preempt_delay: Option<Spanned<i64>>,
    authentication: Option<Spanned<RawAuth>>,
    virtual_ipaddress: Spanned<Vec<Spanned<String>>>,
    unicast_src_ip: Option<Spanned<String>>,
    #[serde(default)]
    unicast_peer: Vec<Spanned<String>>,
    #[serde(default)]
    track_interface: Vec<Spanned<String>>,
    #[serde(default)]
    track_script: Vec<Spanned<String>>,
    notify_master: Option<String>,
    notify_backup: Option<String>,
    notify_fault: Option<String>,
    notify: Option<String>,
    garp_master_delay: Option<Spanned<i64>>,
    garp_master_repeat: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawScript {
    name: Spanned<String>,
    script: Spanned<String>,
    interval: Option<Spanned<i64>>,
    timeout: Option<Spanned<i64>>,
    weight: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    rise: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(crate) struct RawSyncGroup {
    name: Spanned<String>,
    group: Vec<Spanned<String>>,
    notify_master: Option<String>,
    notify_backup: Option<String>,
    notify_fault: Option<String>,
    notify: Option<String>,
}

fn ifname(v: &Spanned<String>) -> Result<String, Problem> {
    if valid_ifname(v.get_ref()) {
        Ok(v.get_ref().clone())
    } else {
        Err(Problem::at(
            v,
            format!("invalid interface name {:?}", v.get_ref()),
        ))
    }
}

fn name(v: &Spanned<String>, what: &str) -> Result<String, Problem> {
    let n = v.get_ref();
    if n.is_empty() || n.chars().any(char::is_whitespace) {
        return Err(Problem::at(v, format!("invalid {what} name {n:?}")));
    }
    Ok(n.clone())
}

/// Checks the three VRRP tables; `[director] vips` are checked with the director.
pub(crate) fn build(
    instances: &[Spanned<RawInstance>],
    scripts: &[Spanned<RawScript>],
    groups: &[Spanned<RawSyncGroup>],
) -> Result<VrrpConfig, Problem> {
    let mut out = VrrpConfig::default();
    for s in scripts {
        let r = s.get_ref();
        let n = name(&r.name, "vrrp_script")?;
        if out.scripts.iter().any(|x| x.name == n) {
            return Err(Problem::at(&r.name, format!("duplicate vrrp_script {n:?}")));
        }
        let secs = |v: &Option<Spanned<i64>>, key: &str, default: u32| match v {
            Some(v) => ranged(v, key, 1u32, 3600),
            None => Ok(default),
        };
        let interval = secs(&r.interval, "interval", 1)?;
        let timeout = secs(&r.timeout, "timeout", interval)?;
        if r.script.get_ref().trim().is_empty() {
            return Err(Problem::at(&r.script, "empty script".into()));
        }
        out.scripts.push(Script {
            name: n,
            script: r.script.get_ref().clone(),
            interval: Duration::from_secs(interval.into()),
            timeout: Duration::from_secs(timeout.into()),
            weight: match &r.weight {
                Some(w) => ranged(w, "weight", -253i32, 253)?,
                None => 0,
            },
            fall: secs(&r.fall, "fall", 1)?,
            rise: secs(&r.rise, "rise", 1)?,
        });
    }
    // Where each (interface, vrid) was first used.
    let mut vrids: HashMap<(String, u8), String> = HashMap::new();
    for s in instances {
        let r = s.get_ref();
        let n = name(&r.name, "vrrp_instance")?;
        if out.instances.iter().any(|x| x.name == n) {
            return Err(Problem::at(
                &r.name,
                format!("duplicate vrrp_instance {n:?}"),
            ));
        }
        let initial_master = match &r.state {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "MASTER" => true,
                "BACKUP" => false,
                other => {
                    return Err(Problem::at(
                        v,
                        format!("unknown state {other:?} (expected one of: MASTER, BACKUP)"),
                    ));
                }
            },
        };
        let interface = ifname(&r.interface)?;
        let vrid = ranged(&r.virtual_router_id, "virtual_router_id", 1u8, 255)?;
        if let Some(other) = vrids.insert((interface.clone(), vrid), n.clone()) {
            return Err(Problem::at(
                &r.virtual_router_id,
                format!(
                    "virtual_router_id {vrid} on {interface} is already used by vrrp_instance \
                     {other:?}"
                ),
            ));
        }
        let priority = match &r.priority {
            Some(p) => ranged(p, "priority", 1u8, 255)?,
            None => 100,
        };
        let version = match &r.version {
            Some(v) => match v.get_ref() {
                2 => 2,
                3 => 3,
                other => {
                    return Err(Problem::at(
                        v,
                        format!("unknown VRRP version {other} (expected 2 or 3)"),
                    ));
                }
            },
            None => 2,
        };
        let adver_int_cs = match &r.advert_int {
            None => 100,
            Some(v) => {
                let secs = *v.get_ref();
                let cs = (secs * 100.0).round();
                if version == 2 && (secs.fract() != 0.0 || !(1.0..=255.0).contains(&secs)) {
                    return Err(Problem::at(
                        v,
                        format!("advert_int {secs} must be whole seconds 1..255 with VRRPv2"),
                    ));
                }
                if !(1.0..=4095.0).contains(&cs) || (cs / 100.0 - secs).abs() > 1e-9 {
                    return Err(Problem::at(
                        v,
                        format!("advert_int {secs} out of range 0.01..40.95 (in 0.01 s steps)"),
                    ));
                }
                cs as u16
            }
        };
        let preempt_delay = match &r.preempt_delay {
            Some(v) => Duration::from_secs(ranged(v, "preempt_delay", 0u64, 1000)?),
            None => Duration::ZERO,
        };
        let auth = match &r.authentication {
            None => Auth::None,
            Some(a) if version == 3 => {
                return Err(Problem::at(
                    a,
                    "authentication is VRRPv2 only (RFC 5798 removed it)".into(),
                ));
            }
            Some(a) => {
                let a = a.get_ref();
                match a.auth_type.get_ref().as_str() {
                    "PASS" => {}
                    "AH" => {
                        return Err(Problem::at(
                            &a.auth_type,
                            "auth_type AH is not supported (use PASS)".into(),
                        ));
                    }
                    other => {
                        return Err(Problem::at(
                            &a.auth_type,
                            format!("unknown auth_type {other:?} (expected PASS)"),
                        ));
                    }
                }
                match &a.auth_pass {
                    Some(p) if !p.get_ref().is_empty() => Auth::pass(p.get_ref()),
                    Some(p) => return Err(Problem::at(p, "empty auth_pass".into())),
                    None => {
                        return Err(Problem::at(
                            &a.auth_type,
                            "auth_type PASS needs auth_pass".into(),
                        ));
                    }
                }
            }
        };
        if r.virtual_ipaddress.get_ref().is_empty() {
            return Err(Problem::at(
                &r.virtual_ipaddress,
                "virtual_ipaddress needs at least one address".into(),
            ));
        }
        let mut vips: Vec<Vip> = Vec::new();
        for v in r.virtual_ipaddress.get_ref() {
            let mut vip = parse_vip(v.get_ref()).map_err(|m| Problem::at(v, m))?;
            if vips.iter().any(|x| x.addr == vip.addr) {
                return Err(Problem::at(v, format!("duplicate address {}", vip.addr)));
            }
            vip.dev.get_or_insert_with(|| interface.clone());
            vips.push(vip);
        }
        let unicast_src_ip = r.unicast_src_ip.as_ref().map(ipv4).transpose()?;
        let mut unicast_peer = Vec::new();
        for p in &r.unicast_peer {
            unicast_peer.push(ipv4(p)?);
        }
        let mut track_interface = Vec::new();
        for t in &r.track_interface {
            track_interface.push(ifname(t)?);
        }
        let mut track_script = Vec::new();
        for t in &r.track_script {
            if !out.scripts.iter().any(|s| &s.name == t.get_ref()) {
                return Err(Problem::at(
                    t,
                    format!("no vrrp_script named {:?}", t.get_ref()),
                ));
            }
            track_script.push(t.get_ref().clone());
        }
        // keepalived: "nopreempt will not work with initial state MASTER - clearing" (and the
        // same for preempt_delay). Seed 003's master block has both; it is accepted as there.
        let mut nopreempt = r.nopreempt;
        let mut preempt_delay = preempt_delay;
        if initial_master && (nopreempt || preempt_delay > Duration::ZERO) {
            log::warn!(
                "vrrp_instance {n}: nopreempt and preempt_delay do not work with state MASTER \
                 (cleared, as keepalived does)"
            );
            nopreempt = false;
            preempt_delay = Duration::ZERO;
        }
        out.instances.push(Instance {
            name: n,
            initial_master,
            interface,
            vrid,
            priority,
            adver_int_cs,
            version,
            nopreempt,
            preempt_delay,
            auth,
            vips,
            unicast_src_ip,
            unicast_peer,
            track_interface,
            track_script,
            notify: Notify {
                master: r.notify_master.clone(),
                backup: r.notify_backup.clone(),
                fault: r.notify_fault.clone(),
                any: r.notify.clone(),
            },
            garp_master_delay: match &r.garp_master_delay {
                Some(v) => Duration::from_secs(ranged(v, "garp_master_delay", 0u64, 1000)?),
                None => Duration::from_secs(5),
            },
            garp_master_repeat: match &r.garp_master_repeat {
                Some(v) => ranged(v, "garp_master_repeat", 1u32, 255)?,
                None => 5,
            },
        });
    }
    for g in groups {
        let r = g.get_ref();
        let n = name(&r.name, "vrrp_sync_group")?;
        if out.sync_groups.iter().any(|x| x.name == n) {
            return Err(Problem::at(
                &r.name,
                format!("duplicate vrrp_sync_group {n:?}"),
            ));
        }
        let mut members: Vec<String> = Vec::new();
        for m in &r.group {
            if !out.instances.iter().any(|i| &i.name == m.get_ref()) {
                return Err(Problem::at(
                    m,
                    format!("no vrrp_instance named {:?}", m.get_ref()),
                ));
            }
            if members.contains(m.get_ref())
                || out
                    .sync_groups
                    .iter()
                    .any(|x| x.group.contains(m.get_ref()))
            {
                return Err(Problem::at(
                    m,
                    format!("vrrp_instance {:?} is already in a sync group", m.get_ref()),
                ));
            }
            members.push(m.get_ref().clone());
        }
        out.sync_groups.push(SyncGroup {
            name: n,
            group: members,
            notify: Notify {
                master: r.notify_master.clone(),
                backup: r.notify_backup.clone(),
                fault: r.notify_fault.clone(),
                any: r.notify.clone(),
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    use super::*;

    /// Seed 003's master block, in TOML, addresses moved to 198.51.100.0/24.
    const SEED: &str = r#"
[[vrrp_instance]]
name = "VI_1"
state = "MASTER"
interface = "eth0"
virtual_router_id = 51
priority = 100
advert_int = 1
nopreempt = true
authentication = { auth_type = "PASS", auth_pass = "1111" }
virtual_ipaddress = ["198.51.100.100/32 dev eth0 label eth0:0", "198.51.100.101"]
"#;

    fn err(text: &str) -> String {
        match parse(text, "t.toml") {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn seed_block() {
        let c = parse(SEED, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let i = &c.vrrp.instances[0];
        assert_eq!(i.name, "VI_1");
        // As keepalived: nopreempt is cleared for state MASTER.
        assert!(i.initial_master && !i.nopreempt);
        let backup = parse(&SEED.replace("MASTER", "BACKUP"), "t.toml").unwrap();
        assert!(backup.vrrp.instances[0].nopreempt);
        assert_eq!(
            (i.vrid, i.priority, i.adver_int_cs, i.version),
            (51, 100, 100, 2)
        );
        assert_eq!(i.auth, Auth::pass("1111"));
        assert_eq!(
            i.vips,
            [
                Vip {
                    addr: Ipv4Addr::new(198, 51, 100, 100),
                    prefix: 32,
                    dev: Some("eth0".into()),
                    label: Some("eth0:0".into())
                },
                Vip {
                    addr: Ipv4Addr::new(198, 51, 100, 101),
                    prefix: 32,
                    dev: Some("eth0".into()),
                    label: None
                }
            ]
        );
        assert_eq!(i.garp_master_delay, Duration::from_secs(5));
        assert_eq!(i.garp_master_repeat, 5);
    }

    #[test]
    fn scripts_groups_and_v3() {
        let text = format!(
            "{SEED}\n[[vrrp_script]]\nname = \"chk\"\nscript = \"true\"\nweight = -20\nfall = 2\n\
             [[vrrp_instance]]\nname = \"VI_2\"\ninterface = \"eth1\"\nvirtual_router_id = 51\n\
             version = 3\nadvert_int = 0.5\nvirtual_ipaddress = [\"203.0.113.1/24\"]\n\
             track_script = [\"chk\"]\nunicast_src_ip = \"203.0.113.2\"\nunicast_peer = [\"203.0.113.3\"]\n\
             [[vrrp_sync_group]]\nname = \"VG\"\ngroup = [\"VI_1\", \"VI_2\"]\n"
        );
        let c = parse(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"));
        let v = &c.vrrp;
        assert_eq!(v.scripts[0].weight, -20);
        assert_eq!(v.scripts[0].fall, 2);
        assert_eq!(v.scripts[0].timeout, Duration::from_secs(1));
        assert_eq!(v.instances[1].adver_int_cs, 50);
        assert_eq!(v.instances[1].vips[0].prefix, 24);
        assert_eq!(v.instances[1].vips[0].dev.as_deref(), Some("eth1"));
        assert_eq!(v.sync_groups[0].group, ["VI_1", "VI_2"]);
    }

    #[test]
    fn errors_name_the_place() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "priority = 100",
                "priority = 256",
                "t.toml:7:12: priority 256 out of range 1..255",
            ),
            (
                "state = \"MASTER\"",
                "state = \"master\"",
                "t.toml:4:9: unknown state \"master\" (expected one of: MASTER, BACKUP)",
            ),
            (
                "advert_int = 1",
                "advert_int = 1.5",
                "t.toml:8:14: advert_int 1.5 must be whole seconds 1..255 with VRRPv2",
            ),
            (
                "\"PASS\"",
                "\"AH\"",
                "t.toml:10:32: auth_type AH is not supported (use PASS)",
            ),
            (
                "198.51.100.101",
                "198.51.100.300",
                "t.toml:11:65: invalid IPv4 address \"198.51.100.300\"",
            ),
            (
                "label eth0:0",
                "label x",
                "t.toml:11:22: label \"x\" must start with the interface name \"eth0\" (the kernel's rule)",
            ),
            (
                "/32 dev",
                "/33 dev",
                "t.toml:11:22: invalid prefix length \"33\"",
            ),
            (
                "nopreempt = true",
                "nopreempt = true\nmystery = 1",
                "t.toml:10:1: unknown key \"mystery\"",
            ),
            (
                "virtual_router_id = 51",
                "virtual_router_id = 0",
                "t.toml:6:21: virtual_router_id 0 out of range 1..255",
            ),
        ];
        for (from, to, want) in cases {
            let got = err(&SEED.replacen(from, to, 1));
            assert!(
                got.starts_with(want),
                "{from} -> {to}:\n got {got}\nwant {want}"
            );
        }
        let two = format!("{SEED}{}", SEED.replace("VI_1", "VI_2"));
        assert_eq!(
            err(&two),
            "t.toml:17:21: virtual_router_id 51 on eth0 is already used by vrrp_instance \"VI_1\""
        );
        let v3 = SEED.replace("advert_int = 1", "advert_int = 1\nversion = 3");
        assert!(
            err(&v3).contains("authentication is VRRPv2 only"),
            "{}",
            err(&v3)
        );
        let missing = format!("{SEED}track_script = [\"nope\"]\n");
        assert!(
            err(&missing).ends_with("no vrrp_script named \"nope\""),
            "{}",
            err(&missing)
        );
        let group = format!("{SEED}[[vrrp_sync_group]]\nname = \"G\"\ngroup = [\"VI_9\"]\n");
        assert_eq!(err(&group), "t.toml:14:10: no vrrp_instance named \"VI_9\"");
    }

    /// Seed 003's two directors, as `examples/ha-master.toml` and `ha-backup.toml`.
    #[test]
    fn ha_examples() {
        for (name, text, state, prio, nopreempt) in [
            (
                "ha-master.toml",
                include_str!("../../../examples/ha-master.toml"),
                true,
                200,
                false,
            ),
            (
                "ha-backup.toml",
                include_str!("../../../examples/ha-backup.toml"),
                false,
                100,
                true,
            ),
        ] {
            let c = parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            let i = &c.vrrp.instances[0];
            assert_eq!(
                (i.initial_master, i.priority, i.nopreempt),
                (state, prio, nopreempt),
                "{name}"
            );
            assert_eq!((i.vrid, i.auth), (62, Auth::pass("1111")), "{name}");
            assert_eq!(i.vips[0].addr, Ipv4Addr::new(198, 51, 100, 135), "{name}");
            assert_eq!(c.model.services.len(), 1, "{name}");
        }
    }

    #[test]
    fn vip_lines() {
        assert_eq!(
            parse_vip("192.0.2.100/32 dev eth0").unwrap(),
            Vip {
                addr: Ipv4Addr::new(192, 0, 2, 100),
                prefix: 32,
                dev: Some("eth0".into()),
                label: None
            }
        );
        assert!(parse_vip("").is_err());
        assert!(
            parse_vip("192.0.2.1 dev")
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse_vip("192.0.2.1 brd 1.2.3.4")
                .unwrap_err()
                .contains("unsupported")
        );
        assert_eq!(
            parse_vip("192.0.2.1/24").unwrap().to_string(),
            "192.0.2.1/24"
        );
    }
}
