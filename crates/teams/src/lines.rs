//! Source lines of YAML fields, found by walking the parser's marked events.
//!
//! serde reports the line of a syntax or type error, but not of a value that
//! deserialized fine and is wrong in context (an unknown agent name). This
//! index gives the line of any field path so those errors point at it too.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Field path → 1-based line.
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

impl Walker {
    /// The path of the value about to be read, if the parent expects a value.
    fn value_path(&self) -> Option<String> {
        match self.stack.last()? {
            Frame::Map {
                path,
                key: Some(key),
            } => Some(join(path, key)),
            Frame::Map { key: None, .. } => None,
            Frame::Seq { path, index } => Some(format!("{path}[{index}]")),
        }
    }

    /// A value was read: move the parent on to its next key or item.
    fn advance(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn note(&mut self, path: String, mark: Marker) {
        // The marker's line is 0-based in some versions of the scanner and
        // 1-based in others; `line_base` below fixes it once.
        self.lines.entry(path).or_insert(mark.line());
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                }) = self.stack.last_mut()
                {
                    let full = join(path, &value);
                    *key = Some(value);
                    self.note(full, mark);
                } else {
                    if let Some(path) = self.value_path() {
                        self.note(path, mark);
                    }
                    self.advance();
                }
            }
            Event::Alias(_) => self.advance(),
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = if self.stack.is_empty() {
                    String::new()
                } else {
                    self.value_path().unwrap_or_default()
                };
                if !path.is_empty() {
                    self.note(path.clone(), mark);
                }
                self.stack
                    .push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Map { path, key: None }
                    } else {
                        Frame::Seq { path, index: 0 }
                    });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.advance();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Indexes `yaml`; a document that does not parse gives an empty index.
    pub fn new(yaml: &str) -> Self {
        let mut walker = Walker {
            stack: Vec::new(),
            lines: HashMap::new(),
        };
        let _ = Parser::new_from_str(yaml).load(&mut walker, false);
        let base = line_base();
        Self {
            lines: walker
                .lines
                .into_iter()
                .map(|(k, v)| (k, v + base))
                .collect(),
        }
    }

    /// The line of `path`, or of its nearest indexed ancestor.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// What to add to the scanner's line numbers to make them 1-based.
fn line_base() -> usize {
    struct First(Option<usize>);
    impl MarkedEventReceiver for First {
        fn on_event(&mut self, event: Event, mark: Marker) {
            if matches!(event, Event::Scalar(..)) && self.0.is_none() {
                self.0 = Some(mark.line());
            }
        }
    }
    let mut first = First(None);
    let _ = Parser::new_from_str("a").load(&mut first, false);
    1 - first.0.unwrap_or(1).min(1)
}
