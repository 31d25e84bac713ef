//! Reads a push body with quick-xml into a bounded element tree that borrows from the body: no DTDs, no custom entities, limited depth and size.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use std::borrow::Cow;

/// Deepest nesting accepted (WeChat's pushes use four levels).
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted in one body.
pub const MAX_ELEMENTS: usize = 10_000;

/// A parsed body: its elements in document order, the root first, with text borrowed from the body
/// wherever it appears there as is (CDATA and text without entities).
#[derive(Debug)]
pub struct Document<'a> {
    nodes: Vec<Node<'a>>,
    pieces: Vec<Piece<'a>>,
}

#[derive(Debug)]
struct Node<'a> {
    name: Cow<'a, str>,
    attributes: Vec<(String, String)>,
    first_piece: Option<usize>,
    last_piece: Option<usize>,
    first_child: Option<usize>,
    last_child: Option<usize>,
    next_sibling: Option<usize>,
}

/// One run of an element's text (a text node, a CDATA section or a resolved reference).
#[derive(Debug)]
struct Piece<'a> {
    text: Cow<'a, str>,
    next: Option<usize>,
}

impl<'a> Document<'a> {
    /// The root element.
    pub fn root(&self) -> Element<'_, 'a> {
        Element {
            doc: self,
            index: 0,
        }
    }
}

/// One element of a [`Document`]: its name, attributes, text (CDATA and entities resolved,
/// kept exactly) and children in order.
#[derive(Clone, Copy)]
pub struct Element<'d, 'a> {
    doc: &'d Document<'a>,
    index: usize,
}

impl<'d, 'a> Element<'d, 'a> {
    fn node(&self) -> &'d Node<'a> {
        &self.doc.nodes[self.index]
    }

    pub fn name(&self) -> &'d str {
        &self.node().name
    }

    pub fn attributes(&self) -> &'d [(String, String)] {
        &self.node().attributes
    }

    fn pieces(&self) -> impl Iterator<Item = &'d str> + use<'d, 'a> {
        let pieces = &self.doc.pieces;
        std::iter::successors(self.node().first_piece, |&i| pieces[i].next)
            .map(|i| pieces[i].text.as_ref())
    }

    /// All of the element's own text, in order; borrowed unless it comes in several runs.
    pub fn text(&self) -> Cow<'d, str> {
        let node = self.node();
        match (node.first_piece, node.last_piece) {
            (None, _) => Cow::Borrowed(""),
            (first, last) if first == last => Cow::Borrowed(self.pieces().next().unwrap_or("")),
            _ => Cow::Owned(self.pieces().collect()),
        }
    }

    /// True when the element's own text is empty or whitespace.
    pub fn is_blank(&self) -> bool {
        self.pieces().all(|p| p.trim().is_empty())
    }

    /// The child elements, in order.
    pub fn children(&self) -> impl Iterator<Item = Element<'d, 'a>> + use<'d, 'a> {
        let doc = self.doc;
        std::iter::successors(self.node().first_child, |&i| doc.nodes[i].next_sibling)
            .map(move |index| Element { doc, index })
    }

    pub fn has_children(&self) -> bool {
        self.node().first_child.is_some()
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<Element<'d, 'a>> {
        self.children().find(|c| c.name() == name)
    }

    /// The text of the first child named `name`, if that child has no children of its own.
    pub fn child_text(&self, name: &str) -> Option<Cow<'d, str>> {
        self.child(name)
            .filter(|c| !c.has_children())
            .map(|c| c.text())
    }

    /// True for an element with neither children nor attributes.
    pub fn is_leaf(&self) -> bool {
        !self.has_children() && self.node().attributes.is_empty()
    }
}

impl std::fmt::Debug for Element<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Element")
            .field("name", &self.name())
            .field("attributes", &self.attributes())
            .field("text", &self.text())
            .field("children", &self.children().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a body is not acceptable XML. The text is the reason in the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("body is empty")]
    Empty,
    #[error("malformed XML at byte {0}: {1}")]
    Syntax(u64, String),
    #[error("DOCTYPE declarations are not accepted")]
    Doctype,
    #[error("unknown entity `&{0};`")]
    UnknownEntity(String),
    #[error("XML nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("XML has more than {MAX_ELEMENTS} elements")]
    TooManyElements,
    #[error("content after the root element")]
    Trailing,
    #[error("element <{0}> is not closed")]
    Unclosed(String),
}

/// Parses `body` into a document with one root element.
pub fn parse(body: &[u8]) -> Result<Document<'_>, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    // End tags are matched against the open element below, without the reader's own copy of every name.
    reader.config_mut().check_end_names = false;
    let mut tree = Builder {
        input: text,
        doc: Document {
            nodes: Vec::with_capacity(24),
            pieces: Vec::with_capacity(48),
        },
        stack: Vec::with_capacity(8),
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(reader.error_position(), e.to_string()))?;
        match event {
            Event::Start(start) => {
                let index = tree.open(&start)?;
                tree.stack.push(index);
            }
            Event::Empty(start) => {
                tree.open(&start)?;
            }
            Event::End(end) => {
                let at = reader.buffer_position();
                let closed = end.name();
                match tree.stack.pop() {
                    Some(open) if tree.doc.nodes[open].name.as_bytes() == closed.as_ref() => {}
                    Some(open) => {
                        let open = &tree.doc.nodes[open].name;
                        let closed = String::from_utf8_lossy(closed.as_ref());
                        let message = format!("expected </{open}>, found </{closed}>");
                        return Err(XmlError::Syntax(at, message));
                    }
                    None => return Err(XmlError::Syntax(at, "unexpected end tag".into())),
                }
            }
            Event::Text(t) => tree.text(within(text, &t)?, reader.buffer_position())?,
            Event::CData(c) => tree.text(within(text, &c)?, reader.buffer_position())?,
            Event::GeneralRef(r) => {
                let name = within(text, &r)?;
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    Ok(None) => resolve_predefined_entity(&name)
                        .ok_or_else(|| XmlError::UnknownEntity(name.to_string()))?
                        .to_owned(),
                    Err(e) => {
                        return Err(XmlError::Syntax(reader.buffer_position(), e.to_string()));
                    }
                };
                tree.text(Cow::Owned(resolved), reader.buffer_position())?;
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(&open) = tree.stack.last() {
        return Err(XmlError::Unclosed(tree.doc.nodes[open].name.to_string()));
    }
    if tree.doc.nodes.is_empty() {
        return Err(XmlError::Empty);
    }
    Ok(tree.doc)
}

/// `part` as text borrowed from `input` when it lies inside it, as everything a reader over
/// `input` yields does, so the body is checked for UTF-8 once rather than event by event;
/// otherwise a checked copy.
fn within<'a>(input: &'a str, part: &[u8]) -> Result<Cow<'a, str>, XmlError> {
    let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
    match input.get(start..start.saturating_add(part.len())) {
        Some(s) if s.as_ptr() == part.as_ptr() => Ok(Cow::Borrowed(s)),
        _ => std::str::from_utf8(part)
            .map(|s| Cow::Owned(s.to_owned()))
            .map_err(|_| XmlError::NotUtf8),
    }
}

struct Builder<'a> {
    input: &'a str,
    doc: Document<'a>,
    stack: Vec<usize>,
}

impl<'a> Builder<'a> {
    /// Adds the element `start` opens as the last child of the open element; returns its index.
    fn open(&mut self, start: &BytesStart<'_>) -> Result<usize, XmlError> {
        let parent = self.stack.last().copied();
        if parent.is_none() && !self.doc.nodes.is_empty() {
            return Err(XmlError::Trailing);
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep);
        }
        if self.doc.nodes.len() >= MAX_ELEMENTS {
            return Err(XmlError::TooManyElements);
        }
        let mut attributes = Vec::new();
        if !start.attributes_raw().trim_ascii().is_empty() {
            for attr in start.attributes() {
                let attr = attr.map_err(|e| XmlError::Syntax(0, e.to_string()))?;
                let value = attr
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| XmlError::Syntax(0, e.to_string()))?;
                let key = within(self.input, attr.key.as_ref())?;
                attributes.push((key.into_owned(), value.into_owned()));
            }
        }
        let index = self.doc.nodes.len();
        self.doc.nodes.push(Node {
            name: within(self.input, start.name().as_ref())?,
            attributes,
            first_piece: None,
            last_piece: None,
            first_child: None,
            last_child: None,
            next_sibling: None,
        });
        if let Some(parent) = parent {
            match self.doc.nodes[parent].last_child.replace(index) {
                Some(previous) => self.doc.nodes[previous].next_sibling = Some(index),
                None => self.doc.nodes[parent].first_child = Some(index),
            }
        }
        Ok(index)
    }

    /// Appends a run of text to the open element.
    fn text(&mut self, text: Cow<'a, str>, at: u64) -> Result<(), XmlError> {
        let Some(&open) = self.stack.last() else {
            if text.trim().is_empty() {
                return Ok(());
            }
            if !self.doc.nodes.is_empty() {
                return Err(XmlError::Trailing);
            }
            return Err(XmlError::Syntax(at, "text outside the root element".into()));
        };
        let index = self.doc.pieces.len();
        self.doc.pieces.push(Piece { text, next: None });
        let node = &mut self.doc.nodes[open];
        match node.last_piece.replace(index) {
            Some(previous) => self.doc.pieces[previous].next = Some(index),
            None => node.first_piece = Some(index),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_entities_and_newlines_are_kept() {
        let doc = parse(b"<xml><a><![CDATA[x\ny]]></a><b>1 &lt; 2 &#x4e2d;</b><c/></xml>")
            .expect("parses");
        let root = doc.root();
        assert_eq!(root.name(), "xml");
        assert_eq!(root.child_text("a").as_deref(), Some("x\ny"));
        assert_eq!(root.child_text("b").as_deref(), Some("1 < 2 \u{4e2d}"));
        assert_eq!(root.child_text("c").as_deref(), Some(""));
    }

    #[test]
    fn text_around_children_is_kept_in_order() {
        let doc = parse(b"<xml> x <a>1</a> y&amp;<b/>\n</xml>").expect("parses");
        let root = doc.root();
        assert_eq!(root.text(), " x  y&\n");
        assert!(!root.is_blank());
        let names: Vec<_> = root.children().map(|c| c.name()).collect();
        assert_eq!(names, ["a", "b"]);
        let blank = parse(b"<xml>\n  <a>1</a>\n</xml>").expect("parses");
        assert!(blank.root().is_blank());
        assert!(!blank.root().is_leaf());
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let laughs = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><xml>&lol2;</xml>";
        assert_eq!(parse(laughs).err(), Some(XmlError::Doctype));
        assert_eq!(
            parse(b"<xml>&lol;</xml>").err(),
            Some(XmlError::UnknownEntity("lol".into()))
        );
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert_eq!(parse(deep.as_bytes()).err(), Some(XmlError::TooDeep));
        let many = format!("<xml>{}</xml>", "<a/>".repeat(MAX_ELEMENTS + 1));
        assert_eq!(
            parse(many.as_bytes()).err(),
            Some(XmlError::TooManyElements)
        );
        assert_eq!(
            parse(b"<xml></xml><xml></xml>").err(),
            Some(XmlError::Trailing)
        );
        assert_eq!(
            parse(b"<xml><a></xml>").err(),
            Some(XmlError::Syntax(14, "expected </a>, found </xml>".into()))
        );
        assert!(matches!(
            parse(b"<xml></xml></xml>"),
            Err(XmlError::Syntax(11, _))
        ));
        assert_eq!(
            parse(b"<xml><a>").err(),
            Some(XmlError::Unclosed("a".into()))
        );
        assert_eq!(parse(b"").err(), Some(XmlError::Empty));
        assert_eq!(parse(b"\xff\xfe").err(), Some(XmlError::NotUtf8));
        assert!(matches!(parse(b"just text"), Err(XmlError::Syntax(..))));
    }
}
