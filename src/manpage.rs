//! The man page, generated from the command line definition: clap_mangen's sections for
//! the program, and every command (db's too) described in the same page under COMMANDS,
//! with its synopsis, options and examples. clap_mangen would instead refer to pages
//! such as foobar-infra-render(1), which nothing generates.

use std::io::Write;

use clap::Command;

pub fn render(cmd: Command, w: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = cmd;
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    writeln!(w, ".SH COMMANDS")?;
    let name = cmd.get_name().to_string();
    for sub in cmd.get_subcommands_mut().filter(|s| listed(s)) {
        command(&name, sub, w)?;
    }
    man.render_extra_section(w)?;
    man.render_version_section(w)
}

/// One command: a subsection with its synopsis, what it does, its own options and its
/// examples; a command with subcommands (db) is followed by each of them.
fn command(parent: &str, cmd: &mut Command, w: &mut dyn Write) -> std::io::Result<()> {
    let full = format!("{parent} {}", cmd.get_name());
    writeln!(w, ".SS \"{}\"", escape(&full))?;
    let usage = cmd
        .clone()
        .bin_name(&full)
        .render_usage()
        .to_string()
        .replace("Usage: ", "");
    writeln!(w, ".B {}", escape(usage.trim()))?;
    writeln!(w, ".PP")?;
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        text(&about.to_string(), w)?;
    }
    let args: Vec<_> = cmd
        .get_arguments()
        .filter(|a| {
            !a.is_hide_set()
                && !a.is_global_set()
                && !["help", "version"].contains(&a.get_id().as_str())
        })
        .collect();
    for arg in args {
        let name = match (arg.get_short(), arg.get_long()) {
            (_, None) => format!(
                "\\fI{}\\fR",
                escape(
                    &arg.get_value_names().map_or(arg.get_id().to_string(), |v| v
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" "))
                )
            ),
            (short, Some(long)) => {
                let mut n = short.map_or(String::new(), |s| format!("\\-{s}, "));
                n.push_str(&format!("\\-\\-{}", escape(long)));
                if arg.get_action().takes_values() {
                    let value = arg
                        .get_value_names()
                        .and_then(|v| v.first().map(|s| s.to_string()))
                        .unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
                    n.push_str(&format!(" \\fI{}\\fR", escape(&value)));
                }
                format!("\\fB{n}\\fR")
            }
        };
        writeln!(w, ".TP\n{name}")?;
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            text(&help.to_string(), w)?;
        }
    }
    if let Some(after) = cmd.get_after_help() {
        writeln!(w, ".PP\n.nf")?;
        for line in after.to_string().lines() {
            writeln!(w, "{}", escape(line))?;
        }
        writeln!(w, ".fi")?;
    }
    let name = full.clone();
    for sub in cmd.get_subcommands_mut().filter(|s| listed(s)) {
        command(&name, sub, w)?;
    }
    Ok(())
}

/// Commands the page describes: not hidden ones, nor clap's `help` (said once above).
fn listed(cmd: &Command) -> bool {
    !cmd.is_hide_set() && cmd.get_name() != "help"
}

fn text(s: &str, w: &mut dyn Write) -> std::io::Result<()> {
    for line in s.lines() {
        if line.trim().is_empty() {
            writeln!(w, ".PP")?;
        } else {
            writeln!(w, "{}", escape(line))?;
        }
    }
    Ok(())
}

/// Roff text: backslashes and dashes escaped, a leading `.` or `'` neutralised.
fn escape(s: &str) -> String {
    let e = s.replace('\\', "\\e").replace('-', "\\-");
    if e.starts_with(['.', '\'']) {
        format!("\\&{e}")
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    fn page() -> String {
        let mut out = Vec::new();
        super::render(crate::cli::Cli::command(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Finding 15 of issue 20: the page named foobar-infra-render(1) and others that
    /// no one generates, and said `db` was "backup, restore".
    #[test]
    fn finding_15_the_man_page_describes_every_command_itself() {
        let text = page();
        assert!(!text.contains("(1)"), "refers to another page:\n{text}");
        for command in [
            "foobar\\-infra render",
            "foobar\\-infra db backup",
            "foobar\\-infra db restore",
            "foobar\\-infra db promote",
        ] {
            assert!(text.contains(&format!(".SS \"{command}\"")), "no {command}");
        }
        assert!(text.contains("backup, restore, promote"), "{text}");
        assert!(text.contains("\\-\\-write\\-inventory"), "{text}");
    }
}
