//! `lb-ctl realserver`: what the LVS tutorials' real-server script does, as one idempotent
//! command. The VIPs go on `lo`, ARP for them is silenced (`arp_ignore=1`,
//! `arp_announce=2` on `all` and `lo`), and for TUN the IPIP decapsulation XDP program goes on
//! the receiving interface. Every change is recorded in a state file, so `--down` undoes
//! exactly what was changed and nothing that was already there.
//!
//! IPv6 VIPs go on `lo` as /128 with `nodad` (no duplicate address detection: it would send
//! neighbour solicitations for the VIP from this host and hold the address tentative). The
//! NDP counterpart of `arp_ignore`/`arp_announce` needs no setting: Linux answers a neighbour
//! solicitation only for an address of the interface it arrives on (`ndisc_recv_ns` looks
//! the target up strictly on that device), and solicits with a source address of the
//! outgoing interface (`ndisc_solicit`), so a VIP on `lo` is never answered for nor announced
//! on the segment and the director stays the only host answering for it. (Proxy NDP entries
//! would change that; the command refuses to go on when one covers a VIP.) The namespace
//! test `ipv6::the_real_servers_never_answer_neighbour_solicitations_for_the_vip` checks
//! this on a live segment. For TUN, the decapsulation program accepts IPv6-in-IPv6 (next
//! header 41) for the IPv6 VIPs.

use std::{
    collections::BTreeMap,
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap as BpfHashMap,
    programs::{Xdp, XdpMode, links::FdLink, links::PinnedLink},
};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use serde::{Deserialize, Serialize};

use crate::{dataplane::ensure_bpffs, neigh::Netlink};

/// The decapsulation object, built by build.rs.
pub static DECAP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

pub const DEFAULT_STATE: &str = "/run/lb/realserver.json";
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lb-realserver";

/// The sysctls LVS-DR/TUN real servers set: answer ARP only for addresses of the receiving
/// interface, and never announce the VIP as an ARP source.
const ARP_SYSCTLS: [(&str, &str, &str); 4] = [
    ("all", "arp_ignore", "1"),
    ("all", "arp_announce", "2"),
    ("lo", "arp_ignore", "1"),
    ("lo", "arp_announce", "2"),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dr,
    Tun,
}

/// What this command changed (and so what `--down` undoes).
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// VIPs it put on `lo` (either family; files of earlier versions hold IPv4 ones only).
    vips_added: Vec<IpAddr>,
    /// sysctl path → the value it replaced.
    sysctls: BTreeMap<String, String>,
    /// TUN: the interface the decapsulation program is attached to.
    decap_iface: Option<String>,
    /// TUN: the VIPs the decapsulation program knows.
    decap_vips: Vec<IpAddr>,
}

pub struct Options {
    pub vips: Vec<IpAddr>,
    pub mode: Mode,
    pub interface: Option<String>,
    pub state: PathBuf,
    pub pin_dir: PathBuf,
}

fn sysctl_path(scope: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{scope}/{key}")
}

fn load_state(path: &Path) -> anyhow::Result<State> {
    match fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).with_context(|| format!("reading {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(path: &Path, s: &State) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_string_pretty(s)?)
        .with_context(|| format!("writing {}", path.display()))
}

async fn lo_addresses(nl: &Netlink, lo: u32) -> anyhow::Result<Vec<(IpAddr, AddressMessage)>> {
    let mut out = Vec::new();
    let mut s = nl
        .handle()
        .address()
        .get()
        .set_link_index_filter(lo)
        .execute();
    while let Some(m) = s.try_next().await? {
        for a in &m.attributes {
            if let AddressAttribute::Address(v) = a {
                out.push((*v, m.clone()));
            }
        }
    }
    Ok(out)
}

/// Configures this host as a real server; prints each change.
pub async fn up(o: &Options) -> anyhow::Result<()> {
    if o.vips.is_empty() {
        bail!("give at least one --vip");
    }
    let mut st = load_state(&o.state)?;
    let nl = Netlink::new()?;
    let lo = nl.link_by_name("lo").await?.index;
    for vip in o.vips.iter().filter(|v| v.is_ipv6()) {
        check_no_proxy_ndp(vip)?;
    }
    let present: Vec<IpAddr> = lo_addresses(&nl, lo)
        .await?
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    for vip in &o.vips {
        if present.contains(vip) {
            println!("ok: {vip} already on lo");
            continue;
        }
        let len = host_len(vip);
        let mut req = nl.handle().address().add(lo, *vip, len);
        if vip.is_ipv6() {
            // No DAD: it would solicit for the VIP from here and keep it tentative.
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .with_context(|| format!("adding {vip}/{len} to lo"))?;
        st.vips_added.push(*vip);
        println!(
            "added: {vip}/{len} on lo{}",
            if vip.is_ipv6() { " (nodad)" } else { "" }
        );
        save_state(&o.state, &st)?;
    }
    if o.vips.iter().any(|v| v.is_ipv6()) {
        println!(
            "ok: IPv6 VIPs on lo are neither answered for nor announced in neighbour \
             solicitations on other interfaces (Linux's NDP is per interface): nothing to set"
        );
    }
    // The ARP sysctls only concern IPv4 VIPs.
    let arp = if o.vips.iter().any(|v| v.is_ipv4()) {
        &ARP_SYSCTLS[..]
    } else {
        &[]
    };
    for &(scope, key, want) in arp {
        let path = sysctl_path(scope, key);
        let old = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let old = old.trim().to_string();
        if old == want {
            println!("ok: net.ipv4.conf.{scope}.{key} = {want}");
            continue;
        }
        fs::write(&path, want).with_context(|| format!("writing {path}"))?;
        st.sysctls.entry(path).or_insert(old.clone());
        println!("set: net.ipv4.conf.{scope}.{key} = {want} (was {old})");
        save_state(&o.state, &st)?;
    }
    if o.mode == Mode::Tun {
        let iface = match &o.interface {
            Some(i) => i.clone(),
            None => default_route_iface(&nl, o.vips.iter().all(|v| v.is_ipv6())).await?,
        };
        if let Some(other) = st.decap_iface.as_ref().filter(|i| **i != iface) {
            bail!("the decapsulation program is on {other} already (run --down first)");
        }
        if let Err(e) = attach_decap(&iface, &o.pin_dir, &o.vips) {
            // Leave nothing pinned that the state file would not know about.
            if st.decap_iface.is_none() {
                let _ = fs::remove_file(o.pin_dir.join("decap_vips"));
                let _ = fs::remove_dir(&o.pin_dir);
            }
            return Err(e);
        }
        for v in &o.vips {
            if !st.decap_vips.contains(v) {
                st.decap_vips.push(*v);
            }
        }
        st.decap_iface = Some(iface.clone());
        println!(
            "decap: IPIP / IPv6-in-IPv6 for {} on {iface}",
            join(&st.decap_vips)
        );
        save_state(&o.state, &st)?;
    }
    Ok(())
}

/// Undoes what `up` changed, as recorded in the state file.
pub async fn down(o: &Options) -> anyhow::Result<()> {
    let st = load_state(&o.state)?;
    if let Some(iface) = &st.decap_iface {
        let link = o.pin_dir.join(format!("link_{iface}"));
        if let Ok(p) = PinnedLink::from_pin(&link) {
            drop(p.unpin()?);
        }
        let _ = fs::remove_file(o.pin_dir.join("decap_vips"));
        let _ = fs::remove_dir(&o.pin_dir);
        println!("removed: decapsulation program from {iface}");
    }
    for (path, old) in &st.sysctls {
        fs::write(path, old).with_context(|| format!("writing {path}"))?;
        println!("restored: {path} = {old}");
    }
    if !st.vips_added.is_empty() {
        let nl = Netlink::new()?;
        let lo = nl.link_by_name("lo").await?.index;
        for (addr, msg) in lo_addresses(&nl, lo).await? {
            if st.vips_added.contains(&addr) {
                nl.handle()
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .with_context(|| format!("removing {addr} from lo"))?;
                println!("removed: {addr}/{} from lo", host_len(&addr));
            }
        }
    }
    match fs::remove_file(&o.state) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("nothing to undo"),
        Err(e) => return Err(e).with_context(|| format!("removing {}", o.state.display())),
    }
    Ok(())
}

/// A host's prefix length: /32 or /128.
fn host_len(a: &IpAddr) -> u8 {
    if a.is_ipv6() { 128 } else { 32 }
}

/// Refuses to set up an IPv6 VIP that a proxy NDP entry on this host would answer for on the
/// segment (then two hosts would claim it).
fn check_no_proxy_ndp(vip: &IpAddr) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["-6", "neigh", "show", "proxy"])
        .output();
    // Without `ip` there is no way to have made such an entry from a script; go on.
    let Ok(out) = out else { return Ok(()) };
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = text.lines().find(|l| {
        l.split_whitespace()
            .next()
            .and_then(|a| a.parse::<IpAddr>().ok())
            == Some(*vip)
    }) {
        bail!(
            "a proxy NDP entry answers for {vip} on this host ({}): remove it, the director \
             must be the only host answering for the VIP",
            line.trim()
        );
    }
    Ok(())
}

fn join(v: &[IpAddr]) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The interface of the default route (where tunnelled packets from the director normally
/// arrive): IPv6's when every VIP is IPv6, else IPv4's.
async fn default_route_iface(nl: &Netlink, v6: bool) -> anyhow::Result<String> {
    let oif = nl.default_route_oif(v6).await?.ok_or_else(|| {
        anyhow!(
            "no {} default route: give --interface",
            if v6 { "IPv6" } else { "IPv4" }
        )
    })?;
    Ok(nl.link_by_index(oif).await?.name)
}

/// Attaches the decapsulation program to `iface` (or keeps the one there) and adds `vips` to
/// its map; both pinned under `pin_dir`, so they outlive this command.
fn attach_decap(iface: &str, pin_dir: &Path, vips: &[IpAddr]) -> anyhow::Result<()> {
    ensure_bpffs(pin_dir)?;
    fs::create_dir_all(pin_dir)?;
    let map_pin = pin_dir.join("decap_vips");
    let link_pin = pin_dir.join(format!("link_{iface}"));
    // Before layout 5 the VIP map was keyed by a 4-byte IPv4 address; such a pin cannot be
    // reused (its VIPs are written again below).
    if aya::maps::MapInfo::from_pin(&map_pin).is_ok_and(|i| i.key_size() != 16) {
        let _ = fs::remove_file(&map_pin);
    }
    let mut bpf: Ebpf = EbpfLoader::new()
        .map_pin_path(lb_common::maps::DECAP_VIPS, map_pin.as_path())
        .load(DECAP_OBJ)
        .context("loading the decapsulation program")?;
    let mut map: BpfHashMap<_, lb_common::Addr, u8> = BpfHashMap::try_from(
        bpf.map_mut(lb_common::maps::DECAP_VIPS)
            .ok_or_else(|| anyhow!("map {} missing", lb_common::maps::DECAP_VIPS))?,
    )?;
    for v in vips {
        // As the maps hold addresses: IPv4 mapped, IPv6 as its 16 bytes.
        let key = match v {
            IpAddr::V4(a) => lb_common::Addr::v4(u32::from_ne_bytes(a.octets())),
            IpAddr::V6(a) => lb_common::Addr::from_octets(a.octets()),
        };
        map.insert(key, 1, 0)?;
    }
    if link_pin.exists() {
        return Ok(());
    }
    let prog: &mut Xdp = bpf
        .program_mut(lb_common::progs::DECAP)
        .ok_or_else(|| anyhow!("program {} missing", lb_common::progs::DECAP))?
        .try_into()?;
    prog.load()?;
    let id = prog
        .attach(iface, XdpMode::Driver)
        .with_context(|| format!("attaching XDP to {iface}"))?;
    FdLink::try_from(prog.take_link(id)?)?
        .pin(&link_pin)
        .with_context(|| format!("pinning {}", link_pin.display()))?;
    Ok(())
}
