//! Where each node of a YAML document sits (line and column), keyed by its dotted path,
//! so that checks made after deserialization can still name the place in the file.
//! It also rejects repeated mapping keys, which serde_yaml would silently merge.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the inventory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of values by path (`hosts.web-01.address`, `hosts.web-01.roles[1]`).
#[derive(Debug, Default)]
pub struct SourceMap {
    values: HashMap<String, Pos>,
    /// Keys and values that carry secret placeholder text (`{{secret:`), by path.
    pub placeholder_text: Vec<(String, Pos)>,
}

/// A key that appears twice in one mapping.
#[derive(Debug)]
pub struct DuplicateKey {
    pub path: String,
    pub first: Pos,
    pub second: Pos,
}

impl SourceMap {
    /// Builds the map. Parse errors are left to serde_yaml, which reports them with the
    /// same positions; here they just end the walk.
    pub fn build(text: &str) -> (SourceMap, Vec<DuplicateKey>) {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut walker, false);
        (
            SourceMap {
                values: walker.values,
                placeholder_text: walker.placeholder_text,
            },
            walker.duplicates,
        )
    }

    /// The position of the value at `path`, or of the nearest parent that has one.
    pub fn value(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p) {
                return Some(*pos);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.values.get("").copied(),
            }
        }
    }
}

enum Frame {
    Map {
        path: String,
        /// The key just read, waiting for its value.
        pending_key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    values: HashMap<String, Pos>,
    duplicates: Vec<DuplicateKey>,
    placeholder_text: Vec<(String, Pos)>,
}

/// How a secret placeholder starts (`{{secret:NAME}}`, src/secrets.rs).
const PLACEHOLDER_START: &str = "{{secret:";

fn pos(mark: Marker) -> Pos {
    Pos {
        line: mark.line(),
        col: mark.col() + 1,
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// The path of the node that starts now, consuming the parent's pending slot.
    /// Returns None when the node is a mapping key.
    fn next_value_path(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
            Some(Frame::Map {
                path,
                pending_key,
                seen,
            }) => match pending_key.take() {
                Some(key) => Some(join(path, &key)),
                None => {
                    // This node is a key.
                    let key = scalar.unwrap_or("?").to_string();
                    let full = join(path, &key);
                    if let Some(first) = seen.get(&key) {
                        self.duplicates.push(DuplicateKey {
                            path: full.clone(),
                            first: *first,
                            second: pos(mark),
                        });
                    } else {
                        seen.insert(key.clone(), pos(mark));
                    }
                    *pending_key = Some(key);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref value, ..) => {
                let p = self.next_value_path(Some(value), mark);
                if value.contains(PLACEHOLDER_START) {
                    let path = p.clone().unwrap_or_else(|| match self.stack.last() {
                        Some(Frame::Map {
                            path,
                            pending_key: Some(key),
                            ..
                        }) => join(path, key),
                        _ => String::new(),
                    });
                    self.placeholder_text.push((path, pos(mark)));
                }
                if let Some(p) = p {
                    self.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_value_path(None, mark) {
                    self.values.entry(p).or_insert(pos(mark));
                }
            }
            Event::MappingStart(..) => {
                let path = self.next_value_path(None, mark).unwrap_or_default();
                self.values.entry(path.clone()).or_insert(pos(mark));
                self.stack.push(Frame::Map {
                    path,
                    pending_key: None,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceStart(..) => {
                let path = self.next_value_path(None, mark).unwrap_or_default();
                self.values.entry(path.clone()).or_insert(pos(mark));
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_duplicates() {
        let text = "domain: x\nhosts:\n  a:\n    address: 1.2.3.4\n    roles: [lb, web]\n  a:\n    address: 5.6.7.8\n";
        let (map, dups) = SourceMap::build(text);
        assert_eq!(map.value("hosts.a.address"), Some(Pos { line: 4, col: 14 }));
        assert_eq!(
            map.value("hosts.a.roles[1]"),
            Some(Pos { line: 5, col: 17 })
        );
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].path, "hosts.a");
        assert_eq!(dups[0].second, Pos { line: 6, col: 3 });
    }
}
