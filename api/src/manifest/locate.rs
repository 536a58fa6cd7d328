//! Where each field of a YAML stream is: a map from field path (`spec.vcpus`,
//! `spec.ports[0].host`) to the 1-based line and column of its key, per document, built
//! from yaml-rust2's positioned parse events. serde does the typing; this only locates.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Pos {
        // yaml-rust2 markers: 1-based lines, 0-based columns.
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// Field positions of one document.
#[derive(Debug, Default, Clone)]
pub struct DocPositions {
    /// Where the document's root node starts.
    pub start: Option<Pos>,
    fields: HashMap<String, Pos>,
}

impl DocPositions {
    /// The position of `path`, or of its nearest located ancestor, or of the document.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_owned();
        loop {
            if let Some(pos) = self.fields.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '[']);
            match cut {
                Some(i) => p.truncate(i),
                None => return self.start,
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Collector {
    docs: Vec<DocPositions>,
    stack: Vec<Frame>,
}

impl Collector {
    /// The path of the node about to start under the current frame.
    fn child_path(&self) -> Option<String> {
        match self.stack.last()? {
            Frame::Map { path, key: Some(k) } => Some(if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            }),
            Frame::Map { key: None, .. } => None,
            Frame::Seq { path, index } => Some(format!("{path}[{index}]")),
        }
    }

    /// The current frame consumed one value.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }

    fn record(&mut self, path: String, pos: Pos) {
        if let Some(doc) = self.docs.last_mut() {
            doc.fields.entry(path).or_insert(pos);
        }
    }

    fn start_node(&mut self, pos: Pos) -> String {
        if self.stack.is_empty() {
            if let Some(doc) = self.docs.last_mut() {
                doc.start.get_or_insert(pos);
            }
            return String::new();
        }
        let path = self.child_path().unwrap_or_default();
        if matches!(self.stack.last(), Some(Frame::Seq { .. })) {
            self.record(path.clone(), pos);
        }
        path
    }
}

impl MarkedEventReceiver for Collector {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::DocumentStart => {
                self.docs.push(DocPositions::default());
                self.stack.clear();
            }
            Event::MappingStart(..) => {
                let path = self.start_node(pos);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.start_node(pos);
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map { key: None, .. }) = self.stack.last() {
                    // A mapping key: record where the field is written.
                    let parent = match self.stack.last() {
                        Some(Frame::Map { path, .. }) => path.clone(),
                        _ => String::new(),
                    };
                    let path = if parent.is_empty() {
                        value.clone()
                    } else {
                        format!("{parent}.{value}")
                    };
                    self.record(path, pos);
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                } else {
                    self.start_node(pos);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                self.start_node(pos);
                self.value_done();
            }
            _ => {}
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Field positions for every document of a YAML stream.
pub fn document_positions(text: &str) -> Result<Vec<DocPositions>, SyntaxError> {
    let mut collector = Collector::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut collector, true).map_err(|e| SyntaxError {
        pos: Pos::from_marker(*e.marker()),
        message: e.info().to_owned(),
    })?;
    Ok(collector.docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
apiVersion: otherix.dev/v1
kind: VM
metadata:
  name: web-1
spec:
  arch: amd64
  vcpus: 0
  ports:
    - host: 2222
      guest: 22
---
kind: Pool
metadata: {name: fast}
";

    #[test]
    fn document_positions_locate_keys_one_based() {
        let docs = document_positions(TEXT).unwrap();
        assert_eq!(docs.len(), 2);
        let at = |d: usize, p: &str| docs[d].find(p).map(|p| (p.line, p.column));
        assert_eq!(at(0, "apiVersion"), Some((1, 1)));
        assert_eq!(at(0, "metadata.name"), Some((4, 3)));
        assert_eq!(at(0, "spec.vcpus"), Some((7, 3)));
        assert_eq!(at(0, "spec.ports[0].guest"), Some((10, 7)));
        assert_eq!(at(1, "kind"), Some((12, 1)));
        assert_eq!(at(1, "metadata.name"), Some((13, 12)));
    }

    #[test]
    fn document_positions_unknown_path_falls_back_to_ancestor() {
        let docs = document_positions(TEXT).unwrap();
        let pos = docs[0].find("spec.nonexistent").unwrap();
        assert_eq!((pos.line, pos.column), (5, 1));
    }

    #[test]
    fn document_positions_syntax_error_has_position() {
        let err = document_positions("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }
}
