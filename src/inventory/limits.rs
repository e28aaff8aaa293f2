//! The size and nesting limits of an inventory file, checked by a linear pre-scan before
//! any YAML parser sees the text: libyaml (under serde_yaml) spends time quadratic in
//! the nesting depth (40,000 levels of `[` took 2.4 s, a 10 MB file minutes), so a
//! hostile or broken file is refused in milliseconds, with file:line:col.

use std::io::Read;
use std::path::Path;

/// The largest inventory accepted: a 1,000-host inventory is about 100 KiB.
pub const MAX_BYTES: usize = 1 << 20;
/// The deepest nesting accepted (mappings and sequences, block or flow); the schema
/// itself needs 4 (`hosts.web-01.ssh.user`).
pub const MAX_DEPTH: usize = 32;
/// The most entries accepted (block lines, `- ` items, flow items): a host takes about
/// five, so this is a 4,000-host inventory. Parsing costs per node (the source map
/// keeps every node's path): at this bound it stays in milliseconds in a release build,
/// where 1 MiB of one-character items took seconds.
pub const MAX_ENTRIES: usize = 20_000;

/// Which limit a text goes past.
#[derive(Debug, PartialEq, Eq)]
enum Past {
    Depth,
    Entries,
}

/// Reads a file of at most [`MAX_BYTES`], never more than one byte past the limit.
pub fn read(path: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading inventory {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading inventory {}", path.display()))?;
    if bytes.len() > MAX_BYTES {
        anyhow::bail!("{}", too_large(&path.display().to_string(), &bytes));
    }
    String::from_utf8(bytes).map_err(|e| {
        let (line, col) = line_col(e.as_bytes(), e.utf8_error().valid_up_to());
        anyhow::anyhow!(
            "{}:{line}:{col}: the inventory is not UTF-8 text",
            path.display()
        )
    })
}

fn too_large(file: &str, bytes: &[u8]) -> String {
    let (line, col) = line_col(bytes, MAX_BYTES);
    format!(
        "{file}:{line}:{col}: the inventory is larger than {} KiB (the limit; a 1,000-host \
         inventory is about 100 KiB)",
        MAX_BYTES / 1024
    )
}

/// 1-based line and column (in characters) of byte `at`.
fn line_col(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let col = String::from_utf8_lossy(&before[start..]).chars().count() + 1;
    (line, col)
}

/// Refuses a text over [`MAX_BYTES`], nested deeper than [`MAX_DEPTH`] or with more than
/// [`MAX_ENTRIES`] entries, naming the place where the limit is crossed.
pub fn check(file: &str, text: &str) -> Result<(), String> {
    if text.len() > MAX_BYTES {
        return Err(too_large(file, text.as_bytes()));
    }
    match past_limits(text) {
        Some((Past::Depth, line, col)) => Err(format!(
            "{file}:{line}:{col}: nested more than {MAX_DEPTH} levels deep (the limit; an \
             inventory needs 4)"
        )),
        Some((Past::Entries, line, col)) => Err(format!(
            "{file}:{line}:{col}: more than {MAX_ENTRIES} entries (the limit; a host takes \
             about 5)"
        )),
        None => Ok(()),
    }
}

/// Where the nesting first goes past [`MAX_DEPTH`], or the entries past [`MAX_ENTRIES`],
/// if they do. A conservative scan of the structure YAML can nest with: indentation
/// (each deeper indent, and each `- ` or `? ` that starts a line's content, opens a
/// level) and flow brackets outside quotes, comments and plain scalars. It may count a
/// level YAML would not (never fewer), which only matters for a file near the limit,
/// far beyond any inventory.
fn past_limits(text: &str) -> Option<(Past, usize, usize)> {
    let mut scan = Scan::default();
    for (n, line) in text.split('\n').enumerate() {
        let chars: Vec<char> = line.trim_end_matches('\r').chars().collect();
        if let Some((past, col)) = scan.line(&chars) {
            return Some((past, n + 1, col));
        }
    }
    None
}

/// What [`past_limits`] carries from one line to the next.
#[derive(Default)]
struct Scan {
    entries: usize,
    /// The indentation of each open block level.
    indents: Vec<usize>,
    /// How many flow collections (`[`, `{`) are open.
    flow: usize,
    /// The quote character of an open quoted scalar.
    quote: Option<char>,
    /// A block scalar (`|`, `>`): its lines, indented deeper than this, are text.
    block_scalar_above: Option<usize>,
    /// Where a flow collection may open: at the start of a value, or inside one.
    value_start: bool,
}

impl Scan {
    /// Scans one line: the limit it goes past, if any, and the column where.
    fn line(&mut self, chars: &[char]) -> Option<(Past, usize)> {
        let indent = chars.iter().take_while(|c| **c == ' ').count();
        let blank = chars[indent..].iter().all(|c| c.is_whitespace());
        if let Some(parent) = self.block_scalar_above {
            if blank || indent > parent {
                return None;
            }
            self.block_scalar_above = None;
        }
        let mut i = indent;
        if self.quote.is_none() && self.flow == 0 {
            if blank || chars[i] == '#' {
                return None;
            }
            i = match self.block_levels(chars, indent) {
                Ok(content) => content,
                Err(past) => return Some(past),
            };
        }
        self.value_start = true;
        while i < chars.len() {
            if let Some(q) = self.quote {
                i = self.in_quote(chars, i, q);
            } else if self.structure(chars, indent, &mut i) == Line::Ends {
                return None;
            } else if self.flow + self.indents.len() > MAX_DEPTH {
                return Some((Past::Depth, i + 1));
            } else if self.entries > MAX_ENTRIES {
                return Some((Past::Entries, i + 1));
            }
            i += 1;
        }
        None
    }

    /// The block levels a line opens: its indentation, and each `- ` or `? ` its content
    /// starts with (`- - - x` and `? x` nest without indentation). Returns where the
    /// content starts, or the limit it goes past.
    fn block_levels(&mut self, chars: &[char], indent: usize) -> Result<usize, (Past, usize)> {
        while self.indents.last().is_some_and(|&top| top > indent) {
            self.indents.pop();
        }
        if self.indents.last() != Some(&indent) {
            self.indents.push(indent);
        }
        self.entries += 1;
        let mut i = indent;
        while i + 1 < chars.len() && "-?".contains(chars[i]) && chars[i + 1] == ' ' {
            i += 1;
            while i < chars.len() && chars[i] == ' ' {
                i += 1;
            }
            self.indents.push(i);
            self.entries += 1;
        }
        if self.indents.len() > MAX_DEPTH {
            return Err((Past::Depth, i + 1));
        }
        if self.entries > MAX_ENTRIES {
            return Err((Past::Entries, indent + 1));
        }
        Ok(i)
    }

    /// One character `chars[i]` inside a quoted scalar opened by `q`: returns the index
    /// of the last character it takes (an escape or a doubled `''` takes two).
    fn in_quote(&mut self, chars: &[char], mut i: usize, q: char) -> usize {
        let c = chars[i];
        if q == '"' && c == '\\' {
            i += 1;
        } else if c == q {
            if q == '\'' && chars.get(i + 1) == Some(&'\'') {
                i += 1;
            } else {
                self.quote = None;
                self.value_start = false;
            }
        }
        i
    }

    /// One character outside quotes, at `*i` (moved to the last character it takes):
    /// opens or closes quotes and flow collections, counts flow entries, and skips
    /// comments, anchors, tags, aliases, block scalars and plain scalars.
    fn structure(&mut self, chars: &[char], indent: usize, i: &mut usize) -> Line {
        let c = chars[*i];
        match c {
            ' ' | '\t' => {}
            '#' if *i == 0 || chars[*i - 1] == ' ' || chars[*i - 1] == '\t' => return Line::Ends,
            '"' | '\'' if self.value_start => self.quote = Some(c),
            // An anchor or a tag comes before the node it names; an alias is one.
            '&' | '!' | '*' if self.value_start => {
                while *i + 1 < chars.len() && !chars[*i + 1].is_whitespace() {
                    *i += 1;
                }
                self.value_start = c != '*';
            }
            '[' | '{' if self.value_start || self.flow > 0 => {
                self.flow += 1;
                self.entries += 1;
                self.value_start = true;
            }
            ']' | '}' if self.flow > 0 => {
                self.flow -= 1;
                self.value_start = false;
            }
            ',' if self.flow > 0 => {
                self.entries += 1;
                self.value_start = true;
            }
            ':' | '-' | '?'
                if chars.get(*i + 1).is_none_or(|n| *n == ' ' || *n == '\t')
                    || (self.flow > 0 && c == ':') =>
            {
                self.value_start = true
            }
            '|' | '>' if self.value_start && self.flow == 0 => {
                self.block_scalar_above = Some(indent);
                return Line::Ends;
            }
            _ => {
                // A plain scalar: outside flow it runs to the end of the line (or
                // to a `: ` or ` #`); inside, to the next flow indicator.
                self.value_start = false;
                if self.flow == 0 {
                    while *i + 1 < chars.len()
                        && !(chars[*i + 1] == ':' && chars.get(*i + 2).is_none_or(|n| *n == ' '))
                        && !(chars[*i + 1] == '#' && chars[*i] == ' ')
                    {
                        *i += 1;
                    }
                }
            }
        }
        Line::Goes
    }
}

/// Whether the rest of a line can still open levels or entries.
#[derive(PartialEq, Eq)]
enum Line {
    Goes,
    /// A comment or a block scalar's indicator: the rest is text.
    Ends,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_entries_are_refused_where_the_limit_is_crossed() {
        let unit = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        let flow = format!("hosts: [{}]\n", vec![unit; 1000].join(","));
        let err = check("i.yaml", &flow).unwrap_err();
        assert!(err.starts_with("i.yaml:1:"), "{err}");
        assert!(err.contains("more than 20000 entries"), "{err}");
        let block = format!("hosts:\n{}", "  - x\n".repeat(MAX_ENTRIES));
        let err = check("i.yaml", &block).unwrap_err();
        assert!(err.starts_with("i.yaml:10001:3:"), "{err}");
        let hosts: String = (0..3000)
            .map(|i| {
                format!(
                    "  h-{i}:\n    address: 10.0.{}.{}\n    roles: [web]\n",
                    i / 250,
                    i % 250
                )
            })
            .collect();
        assert_eq!(
            check("i.yaml", &format!("domain: x.y\nhosts:\n{hosts}")),
            Ok(())
        );
    }

    #[test]
    fn an_inventory_is_far_within_the_limits() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory/inventory.yaml"),
        )
        .unwrap();
        assert_eq!(check("i.yaml", &text), Ok(()));
        let compact = "a: [1, {b: [c, d]}, 'x[[[', \"y{{{\", e[f]]\n# [[[[\nk: v[[[ # ]\n";
        assert_eq!(past_limits(compact), None);
    }

    #[test]
    fn the_level_past_the_limit_is_named() {
        let flow = format!("domain: x\nhosts: {}\n", "[".repeat(40));
        let err = check("i.yaml", &flow).unwrap_err();
        assert!(err.starts_with("i.yaml:2:39: nested more than 32"), "{err}");
        let dashes = format!("hosts:\n  {}x\n", "- ".repeat(40));
        let err = check("i.yaml", &dashes).unwrap_err();
        assert!(err.starts_with("i.yaml:2:"), "{err}");
        let tagged = format!("hosts: &a !!seq {}\n", "[".repeat(40));
        assert!(check("i.yaml", &tagged).is_err());
        let mut indented = String::new();
        for d in 0..40 {
            indented.push_str(&format!("{}k{d}:\n", " ".repeat(d)));
        }
        let err = check("i.yaml", &indented).unwrap_err();
        assert!(err.starts_with("i.yaml:33:"), "{err}");
    }

    #[test]
    fn quotes_comments_and_block_scalars_do_not_count() {
        let text = format!(
            "a: \"{}\"\nb: '{}'\n# {}\nc: |\n    {}\n      {}\nd: x{}\n",
            "[".repeat(50),
            "{".repeat(50),
            "[".repeat(50),
            "[".repeat(50),
            "- ".repeat(50),
            "[".repeat(50)
        );
        assert_eq!(check("i.yaml", &text), Ok(()));
    }

    #[test]
    fn a_file_over_the_size_limit_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yaml");
        std::fs::write(&path, "# padding\n".repeat(MAX_BYTES / 5)).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("big.yaml:104858:"), "{err}");
        assert!(err.contains("larger than 1024 KiB"), "{err}");
    }
}
