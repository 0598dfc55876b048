//! `lb-ctl import keepalived|ipvsadm FILE`: an existing keepalived or ipvsadm user's file
//! turned into lb's TOML configuration, with every keyword that is not carried over reported
//! by file and line.
//!
//! The readers collect what they find into [`Table`]s (ordered keys, then arrays of
//! sub-tables) and [`Diag`]nostics; nothing here touches a running daemon. A file with an
//! error (broken syntax, a bad address or number in a service) gives no TOML at all: a
//! half-imported table would send clients to fewer servers than the admin configured.

pub mod ipvsadm;
pub mod keepalived;

use std::fmt::{self, Write as _};

/// How bad a [`Diag`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The file cannot be imported as written; no TOML is produced.
    Error,
    /// Imported, but something in the file is not carried over (named, with its line).
    Warning,
}

/// One problem, at a line of a file (line 0: the file as a whole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diag {
    pub file: String,
    pub line: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "{}: {kind}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {kind}: {}", self.file, self.line, self.message)
        }
    }
}

/// What an import produced: the TOML (empty when there are errors) and every diagnostic, in
/// file order.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub toml: String,
    pub diags: Vec<Diag>,
}

impl Outcome {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn errors(&self) -> impl Iterator<Item = &Diag> {
        self.diags.iter().filter(|d| d.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Diag> {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }
}

/// A TOML table being built: keys in the order they are set, then arrays of tables
/// (`[[service]]`, `[[service.real_server]]`, …) in the order they were added. Written by
/// hand rather than through serde so that the keys come out in a readable order and the
/// nested headers are indented like the examples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    keys: Vec<(String, toml::Value)>,
    subs: Vec<(String, Table)>,
}

impl Table {
    /// Sets `key`, replacing an earlier value in place (keepalived keeps the last of a
    /// repeated keyword).
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        let value = value.into();
        match self.keys.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.keys.push((key.to_owned(), value)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Appends `table` to the array of tables `name`.
    pub fn push(&mut self, name: &str, table: Table) {
        self.subs.push((name.to_owned(), table));
    }

    /// The tables of the array `name`, in order.
    pub fn subs<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Table> + 'a {
        self.subs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, t)| t)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.subs.is_empty()
    }

    /// Writes the keys, then each sub-table under `[[path.name]]`, indented two spaces per
    /// level below the top.
    fn write(&self, out: &mut String, path: &str, depth: usize) {
        let indent = "  ".repeat(depth.saturating_sub(1));
        for (k, v) in &self.keys {
            let _ = writeln!(out, "{indent}{k} = {}", value_text(v));
        }
        for (name, sub) in &self.subs {
            let full = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            let sub_indent = "  ".repeat(depth);
            let _ = writeln!(out, "\n{sub_indent}[[{full}]]");
            sub.write(out, &full, depth + 1);
        }
    }
}

/// A value as TOML text (inline; the values here are strings, numbers, booleans, flat
/// arrays of those, and small tables such as a VRRP instance's `authentication`, written
/// inline as the schema's examples show them).
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let items: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", value_text(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
        toml::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(value_text).collect();
            format!("[{}]", items.join(", "))
        }
        toml::Value::Float(f) if f.fract() == 0.0 && f.is_finite() => format!("{f:.1}"),
        other => other.to_string(),
    }
}

/// The whole file: a header comment naming the source and what was not carried over, an
/// optional `[global]` table, then the document's keys and arrays.
pub fn render(
    command: &str,
    source: &str,
    global: Option<&Table>,
    doc: &Table,
    diags: &[Diag],
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Imported by `lb-ctl import {command}` from {}.",
        comment_text(source)
    );
    let warnings: Vec<&Diag> = diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    if !warnings.is_empty() {
        let _ = writeln!(out, "# Not carried over (also printed on stderr):");
        for d in warnings {
            let where_ = if d.line == 0 {
                d.file.clone()
            } else {
                format!("{}:{}", d.file, d.line)
            };
            let _ = writeln!(
                out,
                "#   {}: {}",
                comment_text(&where_),
                comment_text(&d.message)
            );
        }
    }
    if let Some(g) = global.filter(|g| !g.is_empty()) {
        let _ = writeln!(out, "\n[global]");
        g.write(&mut out, "global", 1);
    }
    if !doc.keys.is_empty() {
        out.push('\n');
    }
    doc.write(&mut out, "", 0);
    out
}

/// `s` fit for a TOML comment, which may not hold control characters (a message quotes
/// words of the input file, which can hold anything): those are written as `\u{..}`.
fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                format!("\\u{{{:x}}}", c as u32)
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_as_parseable_nested_toml() {
        let mut rs = Table::default();
        rs.set("address", "192.0.2.11");
        rs.set("weight", 2i64);
        let mut check = Table::default();
        check.set("type", "tcp");
        check.set("connect_timeout", 1.5f64);
        let mut url = Table::default();
        url.set("status_code", vec![200i64, 301]);
        check.push("url", url);
        rs.push("check", check);
        let mut svc = Table::default();
        svc.set("address", "192.0.2.100");
        svc.set("port", 80i64);
        svc.set("port", 81i64);
        svc.push("real_server", rs);
        let mut doc = Table::default();
        doc.push("service", svc);
        let mut global = Table::default();
        global.set("router_id", "a \"quoted\" id");
        let text = render("test", "x.conf", Some(&global), &doc, &[]);
        let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(v["global"]["router_id"].as_str(), Some("a \"quoted\" id"));
        let s = &v["service"][0];
        assert_eq!(s["port"].as_integer(), Some(81), "{text}");
        let c = &s["real_server"][0]["check"][0];
        assert_eq!(c["connect_timeout"].as_float(), Some(1.5));
        assert_eq!(
            c["url"][0]["status_code"].as_array().map(|a| a.len()),
            Some(2)
        );
        assert!(text.starts_with("# Imported by `lb-ctl import test` from x.conf.\n"));
        assert!(
            text.contains("\n  [[service.real_server]]\n  address = "),
            "{text}"
        );
    }

    #[test]
    fn control_characters_in_notes_keep_the_comments_valid() {
        let d = Diag {
            file: "a\nb.conf".into(),
            line: 3,
            severity: Severity::Warning,
            message: "word \u{12}\r\u{7f} left out".into(),
        };
        let text = render("test", "x\ny.conf", None, &Table::default(), &[d]);
        toml::from_str::<toml::Value>(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(
            text.contains("#   a\\u{a}b.conf:3: word \\u{12}\\u{d}\\u{7f} left out\n"),
            "{text}"
        );
    }
}
