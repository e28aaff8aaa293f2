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

/// The set of templates a run renders with.
pub struct Templates {
    tera: Tera,
    /// Template name -> where it came from (for messages).
    origin: Vec<(String, String)>,
    sources: Vec<(String, String)>,
}

impl Templates {
    /// The built-in templates, with the files of `overrides` (if given) replacing those
    /// with the same name. A file that matches no template is an error.
    pub fn load(overrides: Option<&Path>) -> Result<Templates> {
        let mut sources: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let mut origin: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(n, _)| (n.to_string(), format!("built-in template {n}")))
            .collect();
        if let Some(dir) = overrides {
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("reading template directory {}", dir.display()))?;
            let mut names: Vec<_> = entries
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
                let Some(slot) = sources.iter_mut().find(|(n, _)| *n == name) else {
                    let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                    bail!(
                        "{}: matches no template (known templates: {})",
                        path.display(),
                        known.join(", ")
                    );
                };
                slot.1 = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading template {}", path.display()))?;
                if let Some(o) = origin.iter_mut().find(|(n, _)| *n == name) {
                    o.1 = path.display().to_string();
                }
            }
        }
        let mut tera = Tera::default();
        tera.autoescape_on(vec![]);
        for (name, src) in &sources {
            tera.add_raw_template(name, src).map_err(|e| {
                let where_ = origin_of(&origin, name);
                anyhow::anyhow!("template {where_}: {}", unravel(&e))
            })?;
        }
        Ok(Templates {
            tera,
            origin,
            sources,
        })
    }

    /// Renders one template, with errors naming the template, the line and the cause.
    pub fn render(&self, name: &str, ctx: &tera::Context) -> Result<String> {
        self.tera.render(name, ctx).map_err(|e| {
            let cause = unravel(&e);
            let line = self
                .source(name)
                .and_then(|src| missing_variable(&cause).and_then(|v| line_of(src, &v)));
            let where_ = origin_of(&self.origin, name);
            match line {
                Some(l) => anyhow::anyhow!("template {where_}:{l}: {cause}"),
                None => anyhow::anyhow!("template {where_}: {cause}"),
            }
        })
    }

    pub fn source(&self, name: &str) -> Option<&str> {
        self.sources
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_str())
    }

    /// Where a template came from: "built-in template X" or the override's path.
    pub fn origin(&self, name: &str) -> String {
        origin_of(&self.origin, name)
    }
}

fn origin_of(origin: &[(String, String)], name: &str) -> String {
    origin
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, o)| o.clone())
        .unwrap_or_else(|| name.to_string())
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
