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
                    .map_err(|e| {
                        let cause = unravel(&e);
                        match unclosed_block(&self.source).filter(|_| at_end(&cause, &self.source))
                        {
                            Some((line, what)) => {
                                format!("template {}:{line}: {what}", self.origin)
                            }
                            None => format!("template {}: {cause}", self.origin),
                        }
                    })
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
                    bail!(
                        "{}: {}: overrides are matched by file name at the top of the \
                         templates directory, nothing else may be there",
                        path.display(),
                        if path.is_dir() {
                            "a folder"
                        } else {
                            "not a regular file"
                        }
                    );
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

    /// A hash of every template's name and text (built-ins and overrides alike): a saved
    /// plan records it, and `apply PLAN` refuses other templates.
    pub fn source_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for e in &self.entries {
            for part in [e.name.as_bytes(), e.source.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
        }
        hex::encode(h.finalize())
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
        let text = entry.parse()?.render(name, ctx).map_err(|e| {
            let cause = unravel(&e);
            let line = missing_variable(&cause).and_then(|v| line_of(&entry.source, &v));
            match line {
                Some(l) => anyhow::anyhow!("template {}:{l}: {cause}", entry.origin),
                None => anyhow::anyhow!("template {}: {cause}", entry.origin),
            }
        })?;
        // Secrets are resolved only where a template writes their placeholder: one that
        // came in through a value is refused here too (the inventory refuses them first).
        for secret in crate::secrets::placeholders_in(&text) {
            if !entry.source.contains(&crate::secrets::placeholder(&secret)) {
                bail!(
                    "template {}: renders the placeholder of secret {secret}, which the \
                     template does not write itself (it came in through a value)",
                    entry.origin
                );
            }
        }
        Ok(text)
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

/// Whether Tera's parse error points at the template's last line or past it: where
/// it notices a block that was never closed.
fn at_end(cause: &str, source: &str) -> bool {
    let Some(i) = cause.find("--> ") else {
        return false;
    };
    let line: usize = cause[i + 4..]
        .split(':')
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    line >= source.trim_end().lines().count()
}

/// The first block tag (`{% if %}`, `{% for %}`, …) whose end tag is missing or crossed,
/// with its line: Tera only says that the file ended.
fn unclosed_block(src: &str) -> Option<(usize, String)> {
    const BLOCKS: [&str; 5] = ["if", "for", "macro", "block", "filter"];
    let line_at = |i: usize| src[..i].matches('\n').count() + 1;
    let mut open: Vec<(usize, &str, &str)> = Vec::new();
    let mut i = 0;
    while let Some(start) = src[i..].find("{%").map(|s| s + i) {
        // A comment that starts before this tag hides it.
        if let Some(c) = src[i..start].find("{#").map(|c| c + i) {
            i = src[c..].find("#}").map_or(src.len(), |e| c + e + 2);
            continue;
        }
        let end = src[start..].find("%}").map(|e| start + e + 2)?;
        let tag = &src[start..end];
        let words = tag[2..tag.len() - 2].trim_matches(|c: char| c == '-' || c.is_whitespace());
        let word = words.split_whitespace().next().unwrap_or("");
        i = end;
        if word == "raw" {
            i = src[end..].find("endraw").map_or(src.len(), |e| end + e);
        } else if BLOCKS.contains(&word) {
            open.push((line_at(start), word, tag));
        } else if let Some(kind) = word.strip_prefix("end").filter(|k| BLOCKS.contains(k)) {
            match open.pop() {
                Some((_, w, _)) if w == kind => {}
                Some((line, w, tag)) => {
                    return Some((
                        line,
                        format!(
                            "`{tag}` is never closed: `{{% end{kind} %}}` at line {} comes \
                             before `{{% end{w} %}}`",
                            line_at(start)
                        ),
                    ))
                }
                None => return Some((line_at(start), format!("`{tag}` closes no block"))),
            }
        }
    }
    let (line, word, tag) = open.pop()?;
    Some((
        line,
        format!("`{tag}` is never closed (no `{{% end{word} %}}` after it)"),
    ))
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

    /// Finding 15 of issue 20: Tera reports an unclosed block at the end of the file.
    #[test]
    fn finding_15_an_unclosed_if_is_reported_where_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let src = "a\n{% if x %}\nb\n{% for i in y %}\n{%- endfor %}\nc\nd\n";
        std::fs::write(dir.path().join("nginx.conf"), src).unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(
            err.contains("nginx.conf:2: `{% if x %}` is never closed"),
            "{err}"
        );
        assert!(err.contains("{% endif %}"), "{err}");
        let crossed = "{% for i in y %}\n{% if x %}\n{% endfor %}\n";
        std::fs::write(dir.path().join("nginx.conf"), crossed).unwrap();
        let err = Templates::load(Some(dir.path())).err().unwrap().to_string();
        assert!(err.contains("nginx.conf:"), "{err}");
        let raw = "{% raw %}{% if %}{% endraw %}\n{# {% for %} #}\n{% if x %}\n";
        assert_eq!(
            unclosed_block(raw),
            Some((
                3,
                "`{% if x %}` is never closed (no `{% endif %}` after it)".into()
            ))
        );
    }

    /// Finding 15 of issue 20: a subfolder of --templates was skipped without a word.
    #[test]
    fn finding_15_a_subfolder_of_the_templates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lb")).unwrap();
        std::fs::write(dir.path().join("lb/haproxy.cfg"), "x").unwrap();
        let err = Templates::load(Some(dir.path()))
            .err()
            .map(|e| e.to_string());
        let err = err.expect("a subfolder is refused");
        assert!(err.contains("lb: a folder"), "{err}");
    }

    /// Finding 2 of issue 20: a placeholder the template does not write (it came in
    /// through a value) is not rendered, so it is never resolved.
    #[test]
    fn finding_2_only_placeholders_written_in_a_template_are_rendered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("haproxy.cfg"), "uri {{ path }}\n").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let mut ctx = tera::Context::new();
        ctx.insert("path", "/h{{secret:db_app_password}}");
        let err = t.render("haproxy.cfg", &ctx).unwrap_err().to_string();
        assert!(err.contains("db_app_password"), "{err}");
        ctx.insert("path", "/health");
        assert_eq!(t.render("haproxy.cfg", &ctx).unwrap(), "uri /health\n");
        let app = Templates::load(None).unwrap();
        assert!(app
            .source("app.ini")
            .unwrap()
            .contains("{{secret:db_app_password}}"));
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
