//! `lb-ctl import keepalived FILE`: a keepalived.conf read the way keepalived's own parser
//! (lib/parser.c) reads it, turned into lb's TOML.
//!
//! Reading, as keepalived does: a comment starts at any `!` or `#` outside double quotes
//! (`\!` and `\#` are literal); a line ending in `\` continues on the next; `{` and `}` are
//! words of their own wherever they are (glued to a keyword or on a line of their own, the
//! block's `{` may also open the next line); `include PATTERN` reads every file the glob
//! matches, relative to the including file's directory. One deliberate difference: words are
//! split at any Unicode white space, not only ASCII blanks, because configs copied out of
//! web pages carry no-break spaces (U+00A0) and ideographic spaces (U+3000) between words
//! and before comments (the tutorials' files do), which keepalived would read as part of a
//! word and then fail on.
//!
//! What is carried over: `global_defs` (the mail settings and `router_id`), and every
//! `virtual_server IP PORT` with its real servers and their TCP_CHECK, HTTP_GET, SSL_GET and
//! MISC_CHECK checkers. keepalived's defaults that differ from lb's (forwarding NAT,
//! scheduler wlc) are written out explicitly. Checker settings given on the virtual or real
//! server (keepalived's inherited defaults) are copied into each checker that does not set
//! its own. The VRRP blocks (`vrrp_instance`, `vrrp_script`, `vrrp_sync_group`, and the
//! `vrrp_version`/`vrrp_garp_master_*` defaults of `global_defs`) become lb's tables of the
//! same names, keyword for keyword (see `crate::vrrp::config`). Anything else — other
//! checkers, options lb does not have, unknown keywords — is reported by name and line and
//! left out.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use super::{Diag, Outcome, Severity, Table, render};

mod vrrp;
use crate::model::Scheduler;

/// Deepest include nesting followed; deeper is taken as an include loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// keepalived's persistence timeout when `persistence_timeout` has no value, or only
/// `persistence_granularity` is given (IPVS_SVC_PERSISTENT_TIMEOUT, 6 minutes).
const DEFAULT_PERSISTENCE_TIMEOUT: i64 = 360;

/// Reads `path` (and its includes) and returns the TOML and what was not carried over.
pub fn import(path: &Path) -> Outcome {
    let mut r = Reader::default();
    let name = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => r.read_text(&String::from_utf8_lossy(&bytes), &name, path, 0),
        Err(e) => r.diag(
            None,
            Severity::Error,
            format!("cannot read the file: {e}"),
            &name,
        ),
    }
    finish(r, &name)
}

/// Imports `text` as if it were the file `name`; relative includes are looked up beside
/// `name`.
pub fn import_str(text: &str, name: &str) -> Outcome {
    let mut r = Reader::default();
    r.read_text(text, name, Path::new(name), 0);
    finish(r, name)
}

fn finish(mut r: Reader, name: &str) -> Outcome {
    let toks = std::mem::take(&mut r.toks);
    let mut pos = 0;
    let nodes = r.block(&toks, &mut pos, None);
    let mut conv = Converter {
        r,
        global: Table::default(),
        doc: Table::default(),
        services: Vec::new(),
        vrrp: VrrpBlocks::default(),
    };
    for n in &nodes {
        conv.top(n);
    }
    // After every block is read: global_defs' VRRP defaults apply wherever global_defs is.
    conv.vrrp_all();
    conv.lvs_sync_daemon();
    let first = nodes.first().map(|n| (n.src, n.line));
    let Converter {
        mut r, global, doc, ..
    } = conv;
    let clean = !r.diags.iter().any(|d| d.severity == Severity::Error);
    let mut toml = String::new();
    if clean {
        toml = render("keepalived", name, Some(&global), &doc, &r.diags);
        // The blocks were checked one by one against config.rs at their lines; this is the
        // promise as a whole: a file that imports is one `lb-ctl check` accepts.
        if let Err(e) = crate::config::parse(&toml, "the imported TOML") {
            // Every part was checked at its own line; should a combination still be refused,
            // it is reported at the file's first keyword (an error always has a line).
            r.diag(
                first,
                Severity::Error,
                format!("lb refuses the imported file: {e}"),
                name,
            );
            toml.clear();
        }
    }
    let mut diags = r.diags;
    // Lines of the same file in order; files in the order they were read.
    diags.sort_by_key(|d| (r.sources.iter().position(|s| *s == d.file), d.line));
    Outcome { toml, diags }
}

/// Whether config.rs accepts `[global]` as `global` has it; its message alone.
fn check_global(global: &Table) -> Result<(), String> {
    let text = render("keepalived", "check", Some(global), &Table::default(), &[]);
    crate::config::parse(&text, "import")
        .map(|_| ())
        .map_err(|e| e.message().to_owned())
}

/// The VRRP blocks as read, converted once the whole file (and so `global_defs`) is known.
#[derive(Default)]
struct VrrpBlocks {
    nodes: Vec<Node>,
    /// `global_defs`' `vrrp_version`, `vrrp_garp_master_delay`, `vrrp_garp_master_repeat`:
    /// the instances' defaults.
    defaults: Table,
    /// `global_defs`' `lvs_sync_daemon` line, converted once the instances are known.
    lvs_sync: Option<Node>,
}

// ---------------------------------------------------------------------------------------------
// Reading: files → words (with their file and line) → blocks.

#[derive(Clone, Debug)]
struct Tok {
    word: String,
    /// `{` or `}` outside quotes.
    brace: bool,
    src: usize,
    line: usize,
}

/// A keyword line: the keyword, its arguments, and the block that follows it, if any.
#[derive(Clone, Debug)]
struct Node {
    name: String,
    args: Vec<String>,
    block: Option<Vec<Node>>,
    src: usize,
    line: usize,
}

impl Node {
    /// The arguments as one string, as keepalived reads a command (`notify_up`, `misc_path`).
    fn rest(&self) -> String {
        self.args.join(" ")
    }
}

#[derive(Default)]
struct Reader {
    sources: Vec<String>,
    toks: Vec<Tok>,
    diags: Vec<Diag>,
}

impl Reader {
    fn diag(
        &mut self,
        at: Option<(usize, usize)>,
        severity: Severity,
        message: String,
        file: &str,
    ) {
        let (file, line) = match at {
            Some((src, line)) => (self.sources[src].clone(), line),
            None => (file.to_owned(), 0),
        };
        self.diags.push(Diag {
            file,
            line,
            severity,
            message,
        });
    }

    fn at(&mut self, src: usize, line: usize, severity: Severity, message: String) {
        self.diag(Some((src, line)), severity, message, "");
    }

    fn read_text(&mut self, text: &str, name: &str, path: &Path, depth: usize) {
        let src = self.sources.len();
        self.sources.push(name.to_owned());
        let mut pending: Option<(usize, String)> = None;
        for (i, raw) in text.lines().enumerate() {
            // Each physical line loses its own comment before a continuation joins it to
            // the next, as keepalived's read_line does.
            let (stripped, continued) = decomment(raw);
            let (start, line) = match pending.take() {
                Some((start, mut acc)) => {
                    acc.push(' ');
                    acc.push_str(&stripped);
                    (start, acc)
                }
                None => (i + 1, stripped),
            };
            if continued {
                pending = Some((start, line));
                continue;
            }
            self.read_line(&line, src, start, path, depth);
        }
        if let Some((start, line)) = pending {
            self.read_line(&line, src, start, path, depth);
        }
    }

    fn read_line(&mut self, line: &str, src: usize, n: usize, path: &Path, depth: usize) {
        let words = match split_words(line) {
            Ok(w) => w,
            Err(e) => {
                self.at(src, n, Severity::Error, e);
                return;
            }
        };
        let Some(first) = words.first() else { return };
        if !first.1 && (first.0.starts_with('$') || first.0.starts_with('@')) {
            // keepalived's parameter definitions ($NAME=…) and conditional lines (@id …).
            self.at(
                src,
                n,
                Severity::Warning,
                format!(
                    "\"{}\": keepalived's parameter substitution and conditional lines are \
                     not supported; line ignored",
                    first.0
                ),
            );
            return;
        }
        if !first.1 && first.0 == "include" {
            self.include(&words[1..], src, n, path, depth);
            return;
        }
        for (word, quoted) in words {
            let brace = !quoted && (word == "{" || word == "}");
            self.toks.push(Tok {
                word,
                brace,
                src,
                line: n,
            });
        }
    }

    fn include(
        &mut self,
        patterns: &[(String, bool)],
        src: usize,
        n: usize,
        path: &Path,
        depth: usize,
    ) {
        if patterns.is_empty() {
            self.at(src, n, Severity::Error, "include needs a file name".into());
            return;
        }
        if depth >= MAX_INCLUDE_DEPTH {
            self.at(
                src,
                n,
                Severity::Error,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH} (an include loop?)"),
            );
            return;
        }
        let base = path.parent().unwrap_or(Path::new(""));
        for (pattern, _) in patterns {
            let full: PathBuf = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                base.join(pattern)
            };
            let full_text = full.to_string_lossy().into_owned();
            let matches = match glob::glob(&full_text) {
                Ok(paths) => paths.filter_map(Result::ok).collect::<Vec<_>>(),
                Err(e) => {
                    self.at(
                        src,
                        n,
                        Severity::Error,
                        format!("include {pattern}: bad pattern: {e}"),
                    );
                    continue;
                }
            };
            // Directories are skipped, as keepalived does (GLOB_MARK, trailing '/').
            let files: Vec<PathBuf> = matches.into_iter().filter(|p| !p.is_dir()).collect();
            if files.is_empty() {
                // keepalived goes on without it; an import would silently lose its services.
                self.at(
                    src,
                    n,
                    Severity::Error,
                    format!("include {pattern}: no file matches {full_text}"),
                );
                continue;
            }
            for file in files {
                let name = file.display().to_string();
                match std::fs::read(&file) {
                    Ok(bytes) => {
                        self.read_text(&String::from_utf8_lossy(&bytes), &name, &file, depth + 1)
                    }
                    Err(e) => self.at(
                        src,
                        n,
                        Severity::Error,
                        format!("include {name}: cannot read the file: {e}"),
                    ),
                }
            }
        }
    }

    /// The keyword lines up to the `}` that closes the block opened at `open` (or to the end
    /// of the input at the top).
    fn block(&mut self, toks: &[Tok], pos: &mut usize, open: Option<(usize, usize)>) -> Vec<Node> {
        let mut nodes = Vec::new();
        loop {
            let Some(t) = toks.get(*pos) else {
                if let Some((src, line)) = open {
                    self.at(
                        src,
                        line,
                        Severity::Error,
                        "block opened here is never closed (missing '}')".into(),
                    );
                }
                return nodes;
            };
            if t.brace && t.word == "}" {
                *pos += 1;
                if open.is_some() {
                    return nodes;
                }
                self.at(t.src, t.line, Severity::Error, "extra '}'".into());
                continue;
            }
            if t.brace {
                // A '{' with no keyword before it: read its block to stay in step, drop it.
                *pos += 1;
                self.at(
                    t.src,
                    t.line,
                    Severity::Error,
                    "'{' without a keyword".into(),
                );
                self.block(toks, pos, Some((t.src, t.line)));
                continue;
            }
            let (src, line) = (t.src, t.line);
            let name = t.word.clone();
            *pos += 1;
            let mut args = Vec::new();
            while let Some(a) = toks.get(*pos) {
                if a.brace || a.src != src || a.line != line {
                    break;
                }
                args.push(a.word.clone());
                *pos += 1;
            }
            let block = match toks.get(*pos) {
                Some(b) if b.brace && b.word == "{" => {
                    *pos += 1;
                    Some(self.block(toks, pos, Some((src, line))))
                }
                _ => None,
            };
            nodes.push(Node {
                name,
                args,
                block,
                src,
                line,
            });
        }
    }
}

/// keepalived's `decomment`: the line without its comment and outer white space; `true` when
/// it ends in a `\` that continues it on the next line.
fn decomment(line: &str) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut quote = false;
    let mut chars = line.chars().peekable();
    let mut continued = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quote = !quote;
                out.push(c);
            }
            '\\' => match chars.peek() {
                Some(&n) if !quote && (n == '#' || n == '!') => {
                    out.push(n);
                    chars.next();
                }
                Some(&n) => {
                    out.push(c);
                    out.push(n);
                    chars.next();
                }
                None => {
                    continued = true;
                }
            },
            '!' | '#' if !quote => break,
            _ => out.push(c),
        }
    }
    (out.trim().to_owned(), continued)
}

/// The words of a comment-free line: split at white space, `"…"` one word (quotes removed),
/// `{` and `}` outside quotes words of their own. Each word comes with whether it was quoted.
fn split_words(line: &str) -> Result<Vec<(String, bool)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            let mut q = String::new();
            let mut closed = false;
            for c in chars.by_ref() {
                if c == '"' {
                    closed = true;
                    break;
                }
                q.push(c);
            }
            if !closed {
                return Err(format!("unterminated quote in {line:?}"));
            }
            if in_word {
                // `a"b c"` — keepalived keeps it one word; so do we.
                cur.push_str(&q);
            } else {
                words.push((q, true));
            }
            continue;
        }
        if c.is_whitespace() || c == '{' || c == '}' {
            if in_word {
                words.push((std::mem::take(&mut cur), false));
                in_word = false;
            }
            if c == '{' || c == '}' {
                words.push((c.to_string(), false));
            }
            continue;
        }
        cur.push(c);
        in_word = true;
    }
    if in_word {
        words.push((cur, false));
    }
    Ok(words)
}

// ---------------------------------------------------------------------------------------------
// Converting: blocks → TOML tables.

struct Converter {
    r: Reader,
    global: Table,
    doc: Table,
    /// Services imported so far (protocol, address, port) and where, to refuse duplicates
    /// at their keepalived line rather than leave them to the TOML's.
    services: Vec<(ServiceId, (usize, usize))>,
    vrrp: VrrpBlocks,
}

/// A virtual service as IPVS keys it: protocol, address, port.
type ServiceId = (String, IpAddr, u16);

/// Checker settings keepalived lets a virtual or real server give for all its checkers.
const INHERITED: [&str; 5] = [
    "connect_timeout",
    "retry",
    "delay_before_retry",
    "warmup",
    "delay_loop",
];

/// The checkers lb has, as keepalived names them, and their TOML `type`.
const CHECKERS: [(&str, &str); 4] = [
    ("TCP_CHECK", "tcp"),
    ("HTTP_GET", "http"),
    ("SSL_GET", "ssl"),
    ("MISC_CHECK", "misc"),
];

/// keepalived checkers lb does not have.
const OTHER_CHECKERS: [&str; 6] = [
    "SMTP_CHECK",
    "DNS_CHECK",
    "UDP_CHECK",
    "PING_CHECK",
    "FILE_CHECK",
    "BFD_CHECK",
];

/// keepalived's scheduler flag keywords lb has, with the `sched_flags` name they become.
const SCHED_FLAG_KEYWORDS: [&str; 7] = [
    "flag-1",
    "flag-2",
    "flag-3",
    "sh-port",
    "sh-fallback",
    "mh-port",
    "mh-fallback",
];

/// Top-level blocks of keepalived's VRRP process that lb has no counterpart for.
fn is_other_vrrp_block(name: &str) -> bool {
    name.starts_with("vrrp_")
        || matches!(
            name,
            "static_ipaddress"
                | "static_routes"
                | "static_rules"
                | "track_file"
                | "garp_group"
                | "linkbeat_interfaces"
        )
}

/// keepalived `vrrp_instance` keywords lb does not have (reported as not supported rather
/// than unknown).
const INSTANCE_UNSUPPORTED: &[&str] = &[
    "use_vmac",
    "vmac_xmit_base",
    "native_ipv6",
    "dont_track_primary",
    "track_src_ip",
    "track_file",
    "track_process",
    "track_bfd",
    "virtual_ipaddress_excluded",
    "virtual_routes",
    "virtual_rules",
    "accept",
    "no_accept",
    "strict_mode",
    "skip_check_adv_addr",
    "check_unicast_src",
    "unicast_ttl",
    "unicast_fault_no_peer",
    "old_unicast_checksum",
    "smtp_alert",
    "notify_stop",
    "notify_deleted",
    "notify_master_rx_lower_pri",
    "lvs_sync_daemon_interface",
    "garp_refresh",
    "garp_refresh_repeat",
    "garp_lower_prio_delay",
    "garp_lower_prio_repeat",
    "lower_prio_no_advert",
    "higher_prio_send_advert",
    "kernel_rx_buf_size",
    "promote_secondaries",
    "debug",
    "linkbeat_use_polling",
    "preempt",
];

/// Words of a `virtual_ipaddress` line that lb does not apply, with how many values follow.
const VIP_OPTIONS: &[(&str, usize)] = &[
    ("brd", 1),
    ("broadcast", 1),
    ("scope", 1),
    ("peer", 1),
    ("track_group", 1),
    ("preferred_lft", 1),
    ("metric", 1),
    ("home", 0),
    ("-nodad", 0),
    ("nodad", 0),
    ("noprefixroute", 0),
    ("autojoin", 0),
    ("no_track", 0),
];

impl Converter {
    fn warn(&mut self, n: &Node, msg: String) {
        self.r.at(n.src, n.line, Severity::Warning, msg);
    }

    fn error(&mut self, n: &Node, msg: String) {
        self.r.at(n.src, n.line, Severity::Error, msg);
    }

    /// "keyword [args]" as written, for messages.
    fn shown(n: &Node) -> String {
        if n.args.is_empty() {
            n.name.clone()
        } else {
            format!("{} {}", n.name, n.args.join(" "))
        }
    }

    fn unsupported(&mut self, n: &Node, context: &str) {
        let what = if n.block.is_some() { " block" } else { "" };
        self.warn(
            n,
            format!(
                "{}{what} in {context}: not supported by lb, left out",
                Self::shown(n)
            ),
        );
    }

    fn unknown(&mut self, n: &Node, context: &str) {
        self.warn(
            n,
            format!("unknown keyword \"{}\" in {context}, left out", n.name),
        );
    }

    /// A keyword that takes values, not a block.
    fn no_block(&mut self, n: &Node) {
        if n.block.is_some() {
            self.warn(
                n,
                format!("{} takes no {{ }} block; the block is ignored", n.name),
            );
        }
    }

    /// The keyword's single value; an error (and `None`) when there is none. Extra words are
    /// reported.
    fn one<'a>(&mut self, n: &'a Node) -> Option<&'a str> {
        self.no_block(n);
        match n.args.as_slice() {
            [] => {
                self.error(n, format!("{} needs a value", n.name));
                None
            }
            [v] => Some(v),
            [v, rest @ ..] => {
                self.warn(
                    n,
                    format!(
                        "{}: extra words after \"{v}\" ignored: {}",
                        n.name,
                        rest.join(" ")
                    ),
                );
                Some(v)
            }
        }
    }

    fn integer(&mut self, n: &Node, min: i64, max: i64) -> Option<i64> {
        let v = self.one(n)?;
        self.number(n, v, min, max)
    }

    /// An integer `v` given for keyword `n` (its only value, or inline among others).
    fn number(&mut self, n: &Node, v: &str, min: i64, max: i64) -> Option<i64> {
        match v.parse::<i64>() {
            Ok(x) if (min..=max).contains(&x) => Some(x),
            _ => {
                self.error(
                    n,
                    format!(
                        "{}: invalid number \"{v}\" (an integer in {min}..={max})",
                        n.name
                    ),
                );
                None
            }
        }
    }

    /// A time in seconds; keepalived takes fractions (to the microsecond). Whole seconds
    /// stay integers in the TOML.
    fn seconds(&mut self, n: &Node) -> Option<toml::Value> {
        let v = self.one(n)?;
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x >= 0.0 && x <= u32::MAX as f64 => {
                Some(if x.fract() == 0.0 {
                    toml::Value::Integer(x as i64)
                } else {
                    toml::Value::Float(x)
                })
            }
            _ => {
                self.error(
                    n,
                    format!("{}: invalid time \"{v}\" (seconds, e.g. 3 or 1.5)", n.name),
                );
                None
            }
        }
    }

    /// keepalived's optional boolean: no value is true.
    fn flag(&mut self, n: &Node) -> Option<bool> {
        self.no_block(n);
        match n.args.first().map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("true" | "yes" | "on") => Some(true),
            Some("false" | "no" | "off") => Some(false),
            Some(_) => {
                self.error(
                    n,
                    format!(
                        "{}: \"{}\" is not true/false (yes/no, on/off)",
                        n.name, n.args[0]
                    ),
                );
                None
            }
        }
    }

    fn ipv4(&mut self, n: &Node, v: &str) -> Option<Ipv4Addr> {
        match v.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Some(a),
            Ok(IpAddr::V6(_)) => {
                self.error(
                    n,
                    format!(
                        "{}: IPv6 address {v} where only IPv4 is taken (VRRP runs over \
                         IPv4; an IPv4 virtual server's netmask)",
                        n.name
                    ),
                );
                None
            }
            Err(_) => {
                self.error(n, format!("{}: invalid IPv4 address \"{v}\"", n.name));
                None
            }
        }
    }

    /// A virtual or real server's (or checker's) address: IPv4 or IPv6, as keepalived takes
    /// them.
    fn ip(&mut self, n: &Node, v: &str) -> Option<IpAddr> {
        match v.parse::<IpAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let family = if v.contains(':') { "IPv6" } else { "IPv4" };
                self.error(n, format!("{}: invalid {family} address \"{v}\"", n.name));
                None
            }
        }
    }

    fn port(&mut self, n: &Node, v: &str) -> Option<u16> {
        match v.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                self.error(n, format!("{}: invalid port \"{v}\" (0..=65535)", n.name));
                None
            }
        }
    }

    /// A command line (`notify_up`, `misc_path`, …): the rest of the line.
    fn command(&mut self, n: &Node) -> Option<String> {
        self.no_block(n);
        if n.args.is_empty() {
            self.error(n, format!("{} needs a command", n.name));
            return None;
        }
        Some(n.rest())
    }

    fn forward(&mut self, n: &Node) -> Option<&'static str> {
        let v = self.one(n)?;
        let f = match v {
            "DR" => "dr",
            "NAT" => "nat",
            "TUN" => "tun",
            other => {
                self.error(
                    n,
                    format!("{}: unknown method \"{other}\" (NAT, DR or TUN)", n.name),
                );
                return None;
            }
        };
        // one() has reported any extra words (TUN's "type gue port N" and the like).
        Some(f)
    }

    fn block<'a>(&mut self, n: &'a Node) -> Option<&'a [Node]> {
        match &n.block {
            Some(b) => Some(b),
            None => {
                self.error(n, format!("{} needs a {{ }} block", Self::shown(n)));
                None
            }
        }
    }

    fn top(&mut self, n: &Node) {
        match n.name.as_str() {
            "global_defs" => {
                if let Some(b) = self.block(n) {
                    for c in b {
                        // Each keyword checked by config.rs as it is added, so that a value
                        // lb refuses (a malformed e-mail address) is an error at its line.
                        let before = self.global.clone();
                        self.global_def(c);
                        if self.global != before
                            && let Err(e) = check_global(&self.global)
                        {
                            self.global = before;
                            self.error(c, format!("lb refuses this: {e}"));
                        }
                    }
                }
            }
            "virtual_server" => self.virtual_server(n),
            "vrrp_instance" | "vrrp_script" | "vrrp_sync_group" => self.vrrp.nodes.push(n.clone()),
            name if is_other_vrrp_block(name) => self.unsupported(n, "keepalived.conf"),
            "virtual_server_group"
            | "SSL"
            | "net_namespace"
            | "instance"
            | "use_pid_dir"
            | "bfd_instance" => self.unsupported(n, "keepalived.conf"),
            _ => self.unknown(n, "keepalived.conf"),
        }
    }

    fn global_def(&mut self, n: &Node) {
        match n.name.as_str() {
            "router_id" => {
                if let Some(v) = self.one(n) {
                    self.global.set("router_id", v);
                }
            }
            "notification_email" => {
                let Some(b) = self.block(n) else { return };
                let mut emails: Vec<String> = Vec::new();
                for c in b {
                    emails.push(c.name.clone());
                    emails.extend(c.args.iter().cloned());
                }
                if emails.is_empty() {
                    self.warn(n, "notification_email block is empty".into());
                }
                self.global.set("notification_email", emails);
            }
            "notification_email_from" => {
                if let Some(v) = self.one(n) {
                    self.global.set("notification_email_from", v);
                }
            }
            "smtp_server" => self.smtp_server(n),
            "smtp_connect_timeout" => {
                if let Some(v) = self.integer(n, 0, u32::MAX as i64) {
                    self.global.set("smtp_connect_timeout", v);
                }
            }
            "lvs_sync_daemon" => {
                self.no_block(n);
                self.vrrp.lvs_sync = Some(n.clone());
            }
            "vrrp_version" => {
                if let Some(v) = self.integer(n, 2, 3) {
                    self.vrrp.defaults.set("version", v);
                }
            }
            "vrrp_garp_master_delay" => {
                if let Some(v) = self.integer(n, 0, 1000) {
                    self.vrrp.defaults.set("garp_master_delay", v);
                }
            }
            "vrrp_garp_master_repeat" => {
                if let Some(v) = self.integer(n, 1, 255) {
                    self.vrrp.defaults.set("garp_master_repeat", v);
                }
            }
            _ => self.unsupported(n, "global_defs"),
        }
    }

    /// `lvs_sync_daemon IFACE [INSTANCE] [id N] [maxlen N] [port N] [ttl N] [group IP]`
    /// (keepalived's `global_parser.c`) → `[[sync_daemon]]`: with an instance, one that
    /// follows it (master while it is MASTER) with the instance's vrid as default syncid;
    /// without, a master and a backup at once (keepalived's checker then starts both, with
    /// syncid 0). The old form's bare syncid after the instance is taken too.
    fn lvs_sync_daemon(&mut self) {
        let Some(n) = self.vrrp.lvs_sync.take() else {
            return;
        };
        let Some(iface) = n.args.first() else {
            self.error(&n, "lvs_sync_daemon needs an interface".into());
            return;
        };
        let mut t = Table::default();
        t.set("interface", iface.clone());
        let mut rest = &n.args[1..];
        let mut instance = None;
        if let Some(first) = rest.first()
            && !["id", "maxlen", "port", "ttl", "group"].contains(&first.as_str())
        {
            instance = Some(first.clone());
            rest = &rest[1..];
        }
        let mut syncid: Option<i64> = None;
        if let Some(old) = rest.first()
            && old.chars().next().is_some_and(|c| c.is_ascii_digit())
        {
            match old.parse::<i64>() {
                Ok(v) if (0..=255).contains(&v) => syncid = Some(v),
                _ => self.warn(
                    &n,
                    format!("lvs_sync_daemon: invalid syncid {old}, left out"),
                ),
            }
            rest = &rest[1..];
        }
        let mut i = 0;
        while i < rest.len() {
            let key = rest[i].as_str();
            let Some(val) = rest.get(i + 1) else {
                self.warn(&n, format!("lvs_sync_daemon: no value for {key}, left out"));
                break;
            };
            let num = |lo: i64, hi: i64| val.parse::<i64>().ok().filter(|v| (lo..=hi).contains(v));
            let ok = match key {
                "id" => num(0, 255).map(|v| syncid = Some(v)).is_some(),
                "maxlen" => num(1, 65535 - 28).map(|v| t.set("maxlen", v)).is_some(),
                "port" => num(1, 65535).map(|v| t.set("port", v)).is_some(),
                "ttl" => num(1, 255).map(|v| t.set("ttl", v)).is_some(),
                "group" => match val.parse::<Ipv4Addr>() {
                    Ok(g) if g.is_multicast() => {
                        t.set("group", g.to_string());
                        true
                    }
                    _ => false,
                },
                _ => {
                    self.warn(
                        &n,
                        format!("lvs_sync_daemon: unknown option {key}, left out"),
                    );
                    i += 1;
                    continue;
                }
            };
            if !ok {
                self.error(&n, format!("lvs_sync_daemon: invalid {key} {val}"));
                return;
            }
            i += 2;
        }
        match instance {
            Some(inst) => {
                let vrid = self
                    .doc
                    .subs("vrrp_instance")
                    .find(|v| v.get("name").and_then(|x| x.as_str()) == Some(inst.as_str()))
                    .and_then(|v| v.get("virtual_router_id").and_then(|x| x.as_integer()));
                let Some(vrid) = vrid else {
                    // keepalived: "Unable to find vrrp instance … clearing lvs_syncd config".
                    self.warn(
                        &n,
                        format!("lvs_sync_daemon: no vrrp_instance {inst}, left out (as keepalived does)"),
                    );
                    return;
                };
                t.set("vrrp_instance", inst);
                t.set("syncid", syncid.unwrap_or(vrid));
                self.doc.push("sync_daemon", t);
            }
            None => {
                t.set("syncid", syncid.unwrap_or(0));
                for state in ["master", "backup"] {
                    let mut r = t.clone();
                    r.set("state", state);
                    self.doc.push("sync_daemon", r);
                }
            }
        }
    }

    /// `smtp_server IP [PORT]` → "IP", "IP:PORT" or "[IPv6]:PORT".
    fn smtp_server(&mut self, n: &Node) {
        self.no_block(n);
        let (host, port) = match n.args.as_slice() {
            [h] => (h, None),
            [h, p] => (h, Some(p)),
            _ => {
                self.error(
                    n,
                    "smtp_server needs an address and an optional port".into(),
                );
                return;
            }
        };
        let Ok(ip) = host.parse::<IpAddr>() else {
            self.warn(
                n,
                format!(
                    "smtp_server {host}: host names are not supported (give an address), left out"
                ),
            );
            return;
        };
        let port = match port {
            Some(p) => match self.port(n, p) {
                Some(p) => Some(p),
                None => return,
            },
            None => None,
        };
        let text = match (ip, port) {
            (ip, None) => ip.to_string(),
            (IpAddr::V4(a), Some(p)) => format!("{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        };
        self.global.set("smtp_server", text);
    }

    fn virtual_server(&mut self, n: &Node) {
        let (addr, port) = match n.args.as_slice() {
            [kind, ..] if kind == "fwmark" || kind == "group" => {
                self.warn(
                    n,
                    format!(
                        "{}: firewall-mark and group virtual servers are not supported, left out",
                        Self::shown(n)
                    ),
                );
                return;
            }
            [a, p] => (a, p),
            _ => {
                self.error(
                    n,
                    format!("{}: expected virtual_server IP PORT", Self::shown(n)),
                );
                return;
            }
        };
        let Some(b) = self.block(n) else { return };
        let (Some(vip), Some(port)) = (self.ip(n, addr), self.port(n, port)) else {
            return;
        };
        let mut svc = Table::default();
        svc.set("address", addr.as_str());
        svc.set("port", port as i64);
        // keepalived's defaults where lb's differ, or to be explicit.
        svc.set("protocol", "tcp");
        svc.set("scheduler", Scheduler::DEFAULT.name());
        // Virtual-server defaults for its real servers and their checkers.
        let mut vs_defaults = Table::default();
        // keepalived's forwarding default is NAT (lb's is DR).
        let mut forward = "nat";
        let mut sorry_forward: Option<&'static str> = None;
        let mut sched_flags: Vec<String> = Vec::new();
        let mut granularity: Option<String> = None;
        let mut real_servers = Vec::new();
        for c in b {
            match c.name.as_str() {
                "delay_loop" => {
                    if let Some(v) = self.seconds(c) {
                        svc.set("delay_loop", v);
                    }
                }
                "lb_algo" | "lvs_sched" => {
                    if let Some(v) = self.one(c) {
                        match v.parse::<Scheduler>() {
                            Ok(s) => svc.set("scheduler", s.name()),
                            Err(e) => self.error(c, format!("{}: {e}", c.name)),
                        }
                    }
                }
                "lb_kind" | "lvs_method" => {
                    if let Some(f) = self.forward(c) {
                        forward = f;
                    }
                }
                "protocol" => {
                    if let Some(v) = self.one(c) {
                        match v.to_ascii_uppercase().as_str() {
                            "TCP" => svc.set("protocol", "tcp"),
                            "UDP" => svc.set("protocol", "udp"),
                            _ => {
                                self.error(c, format!("protocol {v}: lb balances TCP and UDP only"))
                            }
                        }
                    }
                }
                "persistence_timeout" => {
                    self.no_block(c);
                    if c.args.is_empty() {
                        svc.set("persistence_timeout", DEFAULT_PERSISTENCE_TIMEOUT);
                    } else if let Some(v) = self.integer(c, 1, 86400 * 31) {
                        svc.set("persistence_timeout", v);
                    }
                }
                // keepalived: a netmask for an IPv4 virtual server, a prefix length (1..128)
                // for an IPv6 one.
                "persistence_granularity" => {
                    if let Some(v) = self.one(c) {
                        if vip.is_ipv6() {
                            if v.parse::<u8>().is_ok_and(|n| (1..=128).contains(&n)) {
                                granularity = Some(v.to_owned());
                            } else {
                                self.error(
                                    c,
                                    format!(
                                        "persistence_granularity: invalid IPv6 prefix length \
                                         \"{v}\" (1..128)"
                                    ),
                                );
                            }
                        } else if self.ipv4(c, v).is_some() {
                            granularity = Some(v.to_owned());
                        }
                    }
                }
                "ops" => {
                    if let Some(v) = self.flag(c) {
                        svc.set("ops", v);
                    }
                }
                f if SCHED_FLAG_KEYWORDS.contains(&f) => {
                    self.no_block(c);
                    if !sched_flags.iter().any(|s| s == f) {
                        sched_flags.push(f.to_owned());
                    }
                }
                "alpha" => {
                    if let Some(v) = self.flag(c) {
                        svc.set("alpha", v);
                    }
                }
                "quorum" => {
                    if let Some(v) = self.integer(c, 1, u32::MAX as i64) {
                        svc.set("quorum", v);
                    }
                }
                "hysteresis" => {
                    if let Some(v) = self.integer(c, 0, u32::MAX as i64) {
                        svc.set("hysteresis", v);
                    }
                }
                "quorum_up" | "quorum_down" => {
                    if let Some(v) = self.command(c) {
                        svc.set(&c.name, v);
                    }
                }
                "sorry_server" => {
                    self.no_block(c);
                    match c.args.as_slice() {
                        [a] | [a, _] => {
                            let port = match c.args.get(1) {
                                Some(p) => self.port(c, p),
                                None => Some(port),
                            };
                            if let (Some(a), Some(p)) = (self.ip(c, a), port) {
                                svc.set(
                                    "sorry_server",
                                    std::net::SocketAddr::new(a, p).to_string(),
                                );
                            }
                        }
                        _ => self.error(c, "sorry_server needs IP [PORT]".into()),
                    }
                }
                "sorry_server_inhibit" => {
                    if let Some(v) = self.flag(c) {
                        svc.set("sorry_server_inhibit", v);
                    }
                }
                "sorry_server_lvs_method" => {
                    if let Some(f) = self.forward(c) {
                        sorry_forward = Some(f);
                    }
                }
                "inhibit_on_failure" => {
                    if let Some(v) = self.flag(c) {
                        vs_defaults.set("inhibit_on_failure", v);
                    }
                }
                "retry" | "nb_get_retry" => {
                    if let Some(v) = self.integer(c, 0, u32::MAX as i64) {
                        vs_defaults.set("retry", v);
                    }
                }
                "connect_timeout" | "delay_before_retry" | "warmup" => {
                    if let Some(v) = self.seconds(c) {
                        vs_defaults.set(&c.name, v);
                    }
                }
                // The family follows the address; a mismatch is config.rs's to refuse.
                "ip_family" => {
                    if !matches!(c.args.first().map(String::as_str), Some("inet" | "inet6")) {
                        self.unsupported(c, "virtual_server");
                    }
                }
                "real_server" => real_servers.push(c),
                "ha_suspend" | "smtp_alert" | "virtualhost" | "snmp_name" | "omega"
                | "persistence_engine" | "hashed" | "weight" => {
                    self.unsupported(c, "virtual_server")
                }
                _ => self.unknown(c, "virtual_server"),
            }
        }
        if !sched_flags.is_empty() {
            svc.set("sched_flags", sched_flags);
        }
        if let Some(mask) = granularity {
            if !svc.has("persistence_timeout") {
                svc.set("persistence_timeout", DEFAULT_PERSISTENCE_TIMEOUT);
            }
            svc.set("persistence_netmask", mask);
        }
        if svc.has("sorry_server") {
            // keepalived's default for the sorry server is the virtual server's method.
            svc.set("sorry_server_forward", sorry_forward.unwrap_or(forward));
        } else if sorry_forward.is_some() {
            let c = b
                .iter()
                .find(|c| c.name == "sorry_server_lvs_method")
                .expect("seen above");
            self.warn(
                c,
                "sorry_server_lvs_method without sorry_server: nothing to apply it to".into(),
            );
        }
        let proto = svc
            .get("protocol")
            .and_then(|p| p.as_str())
            .unwrap_or("tcp");
        let key = (proto.to_owned(), addr.parse().expect("checked above"), port);
        if let Some((_, (src, line))) = self.services.iter().find(|(k, _)| *k == key) {
            let first = format!("{}:{line}", self.r.sources[*src]);
            self.error(
                n,
                format!("duplicate virtual_server {addr} {port} {proto} (first at {first})"),
            );
            return;
        }
        self.services.push((key, (n.src, n.line)));
        let mut seen: Vec<((IpAddr, u16), usize)> = Vec::new();
        let mut pushed: Vec<&Node> = Vec::new();
        for rs in real_servers {
            let Some(t) = self.real_server(rs, port, forward, &vs_defaults) else {
                continue;
            };
            let addr: IpAddr = t
                .get("address")
                .and_then(|a| a.as_str())
                .unwrap()
                .parse()
                .unwrap();
            let rs_port = t
                .get("port")
                .and_then(|p| p.as_integer())
                .map_or(port, |p| p as u16);
            if let Some((_, line)) = seen.iter().find(|(k, _)| *k == (addr, rs_port)) {
                let msg = format!("duplicate real_server {addr} {rs_port} (first at line {line})");
                self.error(rs, msg);
                continue;
            }
            seen.push(((addr, rs_port), rs.line));
            svc.push("real_server", t);
            pushed.push(rs);
        }
        if self.lb_accepts(n, &svc, &pushed) {
            self.doc.push("service", svc);
        }
    }

    /// Whether lb's own config rules (the same as ipvsadm's: thresholds, one-packet
    /// scheduling, scheduler flags, …) accept the service as imported. If not, the error
    /// goes to the keepalived line of the service or of the first real server it refuses, so
    /// an import that succeeds gives a file `lb-ctl check` passes.
    fn lb_accepts(&mut self, n: &Node, svc: &Table, real_servers: &[&Node]) -> bool {
        let balancing = svc;
        let parse = |rs_count: usize| {
            let mut one = balancing.clone();
            let mut kept = 0;
            one.subs.retain(|(name, _)| {
                kept += usize::from(name == "real_server");
                name != "real_server" || kept <= rs_count
            });
            let mut doc = Table::default();
            doc.push("service", one);
            let mut text = String::new();
            doc.write(&mut text, "", 0);
            crate::config::parse(&text, "import").map_err(|e| e.message().to_owned())
        };
        if parse(usize::MAX).is_ok() {
            return true;
        }
        // Find the culprit: the service alone, then one more real server at a time.
        let mut at = n;
        let mut message = None;
        for k in 0..=real_servers.len() {
            if let Err(e) = parse(k) {
                at = if k == 0 { n } else { real_servers[k - 1] };
                message = Some(e);
                break;
            }
        }
        let message = message.unwrap_or_else(|| parse(usize::MAX).unwrap_err());
        self.error(at, format!("lb refuses this: {message}"));
        false
    }

    fn real_server(
        &mut self,
        n: &Node,
        vs_port: u16,
        vs_forward: &str,
        vs_defaults: &Table,
    ) -> Option<Table> {
        let (addr, port) = match n.args.as_slice() {
            [a] => (a, None),
            [a, p] => (a, Some(p)),
            _ => {
                self.error(
                    n,
                    format!("{}: expected real_server IP [PORT]", Self::shown(n)),
                );
                return None;
            }
        };
        self.ip(n, addr)?;
        let port = match port {
            Some(p) => Some(self.port(n, p)?),
            None => None,
        };
        let mut rs = Table::default();
        rs.set("address", addr.as_str());
        if let Some(p) = port {
            rs.set("port", p as i64);
        }
        let mut forward = vs_forward;
        let mut defaults = vs_defaults.clone();
        defaults.keys.retain(|(k, _)| k != "inhibit_on_failure");
        if let Some(v) = vs_defaults.get("inhibit_on_failure") {
            rs.set("inhibit_on_failure", v.clone());
        }
        let mut checks = Vec::new();
        let block = n.block.as_deref().unwrap_or_default();
        for c in block {
            match c.name.as_str() {
                "weight" => {
                    if let Some(v) = self.integer(c, 0, 65535) {
                        rs.set("weight", v);
                    }
                }
                "lvs_method" => {
                    if let Some(f) = self.forward(c) {
                        forward = f;
                    }
                }
                "uthreshold" | "lthreshold" => {
                    if let Some(v) = self.integer(c, 0, i32::MAX as i64) {
                        let key = if c.name == "uthreshold" {
                            "upper_threshold"
                        } else {
                            "lower_threshold"
                        };
                        rs.set(key, v);
                    }
                }
                "inhibit_on_failure" => {
                    if let Some(v) = self.flag(c) {
                        rs.set("inhibit_on_failure", v);
                    }
                }
                "notify_up" | "notify_down" => {
                    if let Some(v) = self.command(c) {
                        rs.set(&c.name, v);
                    }
                }
                "retry" | "nb_get_retry" => {
                    if let Some(v) = self.integer(c, 0, u32::MAX as i64) {
                        defaults.set("retry", v);
                    }
                }
                "connect_timeout" | "delay_before_retry" | "warmup" | "delay_loop" => {
                    if let Some(v) = self.seconds(c) {
                        defaults.set(&c.name, v);
                    }
                }
                name if CHECKERS.iter().any(|(k, _)| *k == name) => checks.push(c),
                name if OTHER_CHECKERS.contains(&name) => self.warn(
                    c,
                    format!(
                        "{name}: checker not supported by lb, left out (real server {addr} \
                         is checked by its other checkers only, or always up)"
                    ),
                ),
                "alpha" | "smtp_alert" | "virtualhost" | "snmp_name" => {
                    self.unsupported(c, "real_server")
                }
                _ => self.unknown(c, "real_server"),
            }
        }
        rs.set("forward", forward);
        if let Some(p) = port.filter(|p| *p != vs_port && forward != "nat") {
            // keepalived lets it through and IPVS ignores the port; lb refuses it (see
            // config.rs), so say so here, at the keepalived line.
            self.error(
                n,
                format!(
                    "real server port {p} differs from the virtual server's {vs_port}: only \
                     NAT can map ports ({} forwarding keeps the port)",
                    forward.to_ascii_uppercase()
                ),
            );
            return None;
        }
        for c in checks {
            if let Some(t) = self.checker(c, &defaults) {
                rs.push("check", t);
            }
        }
        Some(rs)
    }

    fn checker(&mut self, n: &Node, defaults: &Table) -> Option<Table> {
        let kind = CHECKERS
            .iter()
            .find(|(k, _)| *k == n.name)
            .map(|(_, t)| *t)
            .expect("a checker keyword");
        let b = self.block(n)?;
        let mut t = Table::default();
        t.set("type", kind);
        let mut urls = Vec::new();
        let mut misc = Table::default();
        let is_misc = kind == "misc";
        let context = n.name.clone();
        for c in b {
            match c.name.as_str() {
                "connect_ip" | "bindto" if !is_misc => {
                    if let Some(v) = self.one(c)
                        && self.ip(c, v).is_some()
                    {
                        t.set(&c.name, v);
                    }
                }
                "connect_port" | "bind_port" if !is_misc => {
                    if let Some(v) = self.one(c)
                        && let Some(p) = self.port(c, v)
                    {
                        t.set(&c.name, p as i64);
                    }
                }
                "connect_timeout" if !is_misc => {
                    if let Some(v) = self.seconds(c) {
                        t.set("connect_timeout", v);
                    }
                }
                "retry" | "nb_get_retry" => {
                    if let Some(v) = self.integer(c, 0, u32::MAX as i64) {
                        t.set("retry", v);
                    }
                }
                "delay_before_retry" | "warmup" | "delay_loop" => {
                    if let Some(v) = self.seconds(c) {
                        t.set(&c.name, v);
                    }
                }
                "url" if kind == "http" || kind == "ssl" => {
                    if let Some(u) = self.url(c) {
                        urls.push(u);
                    }
                }
                "misc_path" if is_misc => {
                    if let Some(v) = self.command(c) {
                        misc.set("misc_path", v);
                    }
                }
                "misc_timeout" if is_misc => {
                    if let Some(v) = self.seconds(c) {
                        misc.set("misc_timeout", v);
                    }
                }
                "misc_dynamic" if is_misc => {
                    if let Some(v) = self.flag(c) {
                        misc.set("misc_dynamic", v);
                    }
                }
                "user" if is_misc => {
                    self.no_block(c);
                    match c.args.as_slice() {
                        [u] => misc.set("user", u.as_str()),
                        [u, _group] => {
                            self.warn(
                                c,
                                "user: a group is not supported; the user's own group is used"
                                    .into(),
                            );
                            misc.set("user", u.as_str());
                        }
                        _ => self.error(c, "user needs a user name".into()),
                    }
                }
                "bind_if" | "fwmark" | "alpha" | "log_all_failures" | "virtualhost"
                | "http_protocol" | "enable_sni" | "sni_name" | "fast_recovery"
                | "tls_compliant" => self.unsupported(c, &context),
                _ => self.unknown(c, &context),
            }
        }
        for key in INHERITED {
            // MISC_CHECK does not connect, so it takes no connect_timeout.
            let own = t.has(key) || (is_misc && key == "connect_timeout");
            if !own && let Some(v) = defaults.get(key) {
                t.set(key, v.clone());
            }
        }
        // The schema's order: common keys, then the checker's own.
        t.keys.extend(misc.keys);
        if is_misc && !t.has("misc_path") {
            self.error(n, "MISC_CHECK needs misc_path".into());
            return None;
        }
        if (kind == "http" || kind == "ssl") && urls.is_empty() {
            self.error(n, format!("{} needs at least one url {{ path … }}", n.name));
            return None;
        }
        for u in urls {
            t.push("url", u);
        }
        Some(t)
    }

    fn url(&mut self, n: &Node) -> Option<Table> {
        let b = self.block(n)?;
        let mut u = Table::default();
        for c in b {
            match c.name.as_str() {
                "path" => {
                    if let Some(v) = self.one(c) {
                        u.set("path", v);
                    }
                }
                "digest" => {
                    if let Some(v) = self.one(c) {
                        if v.len() == 32 && v.chars().all(|c| c.is_ascii_hexdigit()) {
                            u.set("digest", v.to_ascii_lowercase());
                        } else {
                            self.error(
                                c,
                                format!("digest \"{v}\": not an MD5 sum (32 hex digits)"),
                            );
                        }
                    }
                }
                "status_code" => {
                    self.no_block(c);
                    if let Some(codes) = self.status_codes(c) {
                        u.set("status_code", codes);
                    }
                }
                "virtualhost" | "regex" | "regex_no_match" | "regex_options"
                | "regex_min_offset" | "regex_max_offset" | "regex_stack" | "tls_compliant" => {
                    self.unsupported(c, "url")
                }
                _ => self.unknown(c, "url"),
            }
        }
        if !u.has("path") {
            self.error(n, "url needs a path".into());
            return None;
        }
        Some(u)
    }

    /// `status_code 200 301-303 …`: codes and ranges, as keepalived 2 takes them.
    fn status_codes(&mut self, n: &Node) -> Option<Vec<i64>> {
        if n.args.is_empty() {
            self.error(n, "status_code needs a value".into());
            return None;
        }
        let mut codes = Vec::new();
        for a in &n.args {
            let (lo, hi) = match a.split_once('-') {
                Some((l, h)) => (l.parse::<i64>(), h.parse::<i64>()),
                None => (a.parse::<i64>(), a.parse::<i64>()),
            };
            match (lo, hi) {
                (Ok(l), Ok(h)) if (100..=599).contains(&l) && (l..=599).contains(&h) => {
                    for c in l..=h {
                        if !codes.contains(&c) {
                            codes.push(c);
                        }
                    }
                }
                _ => {
                    self.error(
                        n,
                        format!("status_code \"{a}\": not an HTTP status or range (100..=599)"),
                    );
                    return None;
                }
            }
        }
        Some(codes)
    }
}

/// `lvs_sync_daemon` in `global_defs` (crate::sync).
#[cfg(test)]
mod lvs_sync_tests {
    use super::*;

    const VI: &str = "vrrp_instance VI_1 {\n state MASTER\n interface eth0\n \
                      virtual_router_id 51\n priority 100\n advert_int 1\n \
                      virtual_ipaddress {\n  192.0.2.100\n }\n}\n";

    fn sync_tables(out: &Outcome) -> Vec<toml::Value> {
        assert!(!out.has_errors(), "{:?}", out.diags);
        let v: toml::Value = toml::from_str(&out.toml).unwrap();
        v.get("sync_daemon")
            .and_then(|s| s.as_array())
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn follows_the_instance_with_its_vrid_as_syncid() {
        let text = format!("global_defs {{\n lvs_sync_daemon eth0 VI_1\n}}\n{VI}");
        let out = import_str(&text, "k.conf");
        let t = sync_tables(&out);
        assert_eq!(t.len(), 1, "{}", out.toml);
        assert_eq!(t[0]["vrrp_instance"].as_str(), Some("VI_1"));
        assert_eq!(t[0]["interface"].as_str(), Some("eth0"));
        assert_eq!(t[0]["syncid"].as_integer(), Some(51));
        // The file it makes is one lb accepts.
        let c = crate::config::parse(&out.toml, "out").unwrap();
        assert_eq!(c.sync.daemons.len(), 1);
    }

    #[test]
    fn options_and_the_old_bare_syncid() {
        let text = format!(
            "global_defs {{\n lvs_sync_daemon eth0 VI_1 7 maxlen 1400 port 9000 ttl 2 \
             group 239.1.1.1\n}}\n{VI}"
        );
        let t = sync_tables(&import_str(&text, "k.conf"));
        assert_eq!(t[0]["syncid"].as_integer(), Some(7));
        assert_eq!(t[0]["maxlen"].as_integer(), Some(1400));
        assert_eq!(t[0]["port"].as_integer(), Some(9000));
        assert_eq!(t[0]["ttl"].as_integer(), Some(2));
        assert_eq!(t[0]["group"].as_str(), Some("239.1.1.1"));
        let text = format!("global_defs {{\n lvs_sync_daemon eth0 VI_1 id 3\n}}\n{VI}");
        assert_eq!(
            sync_tables(&import_str(&text, "k.conf"))[0]["syncid"].as_integer(),
            Some(3)
        );
    }

    #[test]
    fn without_an_instance_both_roles_run() {
        let out = import_str("global_defs {\n lvs_sync_daemon eth0\n}\n", "k.conf");
        let t = sync_tables(&out);
        let states: Vec<_> = t.iter().map(|x| x["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["master", "backup"]);
        assert_eq!(t[0]["syncid"].as_integer(), Some(0));
    }

    #[test]
    fn an_unknown_instance_or_bad_value_is_reported_at_its_line() {
        let out = import_str("global_defs {\n lvs_sync_daemon eth0 VI_9\n}\n", "k.conf");
        assert!(sync_tables(&out).is_empty());
        let w: Vec<_> = out.warnings().collect();
        assert_eq!(w.len(), 1, "{:?}", out.diags);
        assert_eq!(w[0].line, 2);
        assert!(w[0].message.contains("no vrrp_instance VI_9"), "{:?}", w[0]);
        let text = format!("global_defs {{\n lvs_sync_daemon eth0 VI_1 port 0\n}}\n{VI}");
        let out = import_str(&text, "k.conf");
        let e: Vec<_> = out.errors().collect();
        assert_eq!(e.len(), 1, "{:?}", out.diags);
        assert!(e[0].message.contains("invalid port 0"), "{:?}", e[0]);
    }
}
