//! The Tera templates: built-ins embedded in the binary, optionally overridden by file
//! name from a directory, and template errors unravelled into "template:line: cause".

use std::path::Path;

use anyhow::{bail, Context, Result};
use tera::Tera;

/// Built-in templates, by name. The name is also the file name an override must use.
#[rustfmt::skip]
pub const BUILTIN: &[(&str, &str)] = &[
    ("haproxy.cfg", include_str!("../templates/haproxy.cfg")),
    ("nginx.conf", include_str!("../templates/nginx.conf")),
    ("nginx-site.conf", include_str!("../templates/nginx-site.conf")),
    ("mysql-primary.cnf", include_str!("../templates/mysql-primary.cnf")),
    ("mysql-replica.cnf", include_str!("../templates/mysql-replica.cnf")),
    ("app.ini", include_str!("../templates/app.ini")),
    ("foobar-app.init", include_str!("../templates/foobar-app.init")),
    ("foobar-app.service", include_str!("../templates/foobar-app.service")),
    ("keepalived.conf", include_str!("../templates/keepalived.conf")),
    ("firewall.nft", include_str!("../templates/firewall.nft")),
    ("prometheus.yml", include_str!("../templates/prometheus.yml")),
    ("prometheus-rules.yml", include_str!("../templates/prometheus-rules.yml")),
    ("blackbox.yml", include_str!("../templates/blackbox.yml")),
];

/// The set of templates a run renders with. Each template is parsed once, by itself,
/// on its first use: parsing all of them cost every run ~10 ms (Tera's parser), and an
/// inventory renders only some. Overrides are parsed at load, so that a broken one is
/// an error even when this inventory does not render it; every built-in parses (a test).
pub struct Templates {
    entries: Vec<Entry>,
}

struct Entry {
    name: String,
    source: String,
    /// Where it came from (for messages): "built-in template X" or the override's path.
    origin: String,
    parsed: std::sync::OnceLock<Result<Tera, String>>,
}

impl Entry {
    fn parse(&self) -> Result<&Tera> {
        self.parsed
            .get_or_init(|| {
                let mut tera = Tera::default();
                tera.autoescape_on(vec![]);
                tera.add_raw_template(&self.name, &self.source)
                    .map(|_| tera)
                    .map_err(|e| format!("template {}: {}", self.origin, unravel(&e)))
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

impl Templates {
    /// The built-in templates, with the files of `overrides` (if given) replacing those
    /// with the same name. A file that matches no template is an error.
    pub fn load(overrides: Option<&Path>) -> Result<Templates> {
        let mut entries: Vec<Entry> = BUILTIN
            .iter()
            .map(|(n, s)| Entry {
                name: n.to_string(),
                source: s.to_string(),
                origin: format!("built-in template {n}"),
                parsed: Default::default(),
            })
            .collect();
        if let Some(dir) = overrides {
            let entries_in = std::fs::read_dir(dir)
                .with_context(|| format!("reading template directory {}", dir.display()))?;
            let mut names: Vec<_> = entries_in
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("reading template directory {}", dir.display()))?;
            names.sort();
            for path in names {
                if !path.is_file() {
                    continue;
                }
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let Some(slot) = entries.iter_mut().find(|e| e.name == name) else {
                    let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "{}: matches no template (known templates: {})",
                        path.display(),
                        known.join(", ")
                    );
                };
                slot.source = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading template {}", path.display()))?;
                slot.origin = path.display().to_string();
                slot.parse()?;
            }
        }
        Ok(Templates { entries })
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| anyhow::anyhow!("no template named {name}"))
    }

    /// Renders one template, with errors naming the template, the line and the cause.
    pub fn render(&self, name: &str, ctx: &tera::Context) -> Result<String> {
        let entry = self.entry(name)?;
        entry.parse()?.render(name, ctx).map_err(|e| {
            let cause = unravel(&e);
            let line = missing_variable(&cause).and_then(|v| line_of(&entry.source, &v));
            match line {
                Some(l) => anyhow::anyhow!("template {}:{l}: {cause}", entry.origin),
                None => anyhow::anyhow!("template {}: {cause}", entry.origin),
            }
        })
    }

    pub fn source(&self, name: &str) -> Option<&str> {
        self.entry(name).ok().map(|e| e.source.as_str())
    }

    /// Where a template came from: "built-in template X" or the override's path.
    pub fn origin(&self, name: &str) -> String {
        self.entry(name)
            .map(|e| e.origin.clone())
            .unwrap_or_else(|_| name.to_string())
    }
}

/// Joins Tera's error chain: its top message alone says only "Failed to render".
fn unravel(e: &tera::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts
        .into_iter()
        .filter(|p| !p.starts_with("Failed to render"))
        .collect::<Vec<_>>()
        .join(": ")
}

/// The variable named in Tera's "Variable `x.y` not found" message.
fn missing_variable(cause: &str) -> Option<String> {
    let start = cause.find("Variable `")? + "Variable `".len();
    let rest = &cause[start..];
    Some(rest[..rest.find('`')?].to_string())
}

/// The first line (1-based) of a template that uses `var` inside a tag.
fn line_of(src: &str, var: &str) -> Option<usize> {
    src.lines()
        .position(|l| (l.contains("{{") || l.contains("{%")) && l.contains(var))
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_variable_names_template_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("haproxy.cfg"),
            "global\n  maxconn {{ lb.nope }}\n",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let err = t
            .render("haproxy.cfg", &tera::Context::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("haproxy.cfg:2:"), "{err}");
        assert!(err.contains("lb.nope"), "{err}");
    }

    #[test]
    fn every_builtin_template_parses() {
        let t = Templates::load(None).unwrap();
        for (name, _) in BUILTIN {
            t.entry(name).unwrap().parse().unwrap();
        }
    }

    #[test]
    fn unknown_override_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("haproxy.cgf"), "x").unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("haproxy.cgf: matches no template"), "{err}");
    }

    #[test]
    fn syntax_error_names_template() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nginx.conf"), "a\n{% if %}\n").unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("nginx.conf"), "{err}");
        assert!(err.contains("2:"), "{err}");
    }
}
