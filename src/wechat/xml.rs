//! Reads a push body with quick-xml into a bounded element tree that borrows from the body: no DTDs, no custom entities, limited depth and size.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};
use std::borrow::Cow;

/// Deepest nesting accepted (WeChat's pushes use four levels).
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted in one body.
pub const MAX_ELEMENTS: usize = 10_000;

/// A parsed body: its elements in document order, the root first. Names and text are
/// positions in the body; text is read from there when asked for, borrowed wherever the
/// body holds it as is (plain text, or one CDATA section).
#[derive(Debug)]
pub struct Document<'a> {
    input: &'a str,
    nodes: Vec<Node<'a>>,
    attributes: Vec<(String, String)>,
}

/// A range of byte positions in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy)]
struct Node<'a> {
    name: &'a str,
    /// Everything between the start and the end tag (empty for `<a/>`).
    content: Span,
    text: Text,
    /// The element's range in [`Document::attributes`].
    attributes: (usize, usize),
    first_child: Option<u32>,
    last_child: Option<u32>,
    next_sibling: Option<u32>,
}

/// How an element's text is found in its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Text {
    /// The content is plain text (or nothing): the text is the content as is.
    Plain,
    /// The content is one CDATA section: the text is its inside.
    Section(Span),
    /// References, several CDATA sections, comments or child elements: the text is
    /// assembled from the content's runs when asked for.
    Mixed,
}

impl<'a> Document<'a> {
    /// The root element.
    pub fn root(&self) -> Element<'_, 'a> {
        Element {
            doc: self,
            index: 0,
        }
    }

    fn slice(&self, span: Span) -> &'a str {
        self.input.get(span.start..span.end).unwrap_or_default()
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

    pub fn name(&self) -> &'a str {
        self.node().name
    }

    pub fn attributes(&self) -> &'d [(String, String)] {
        let (start, end) = self.node().attributes;
        self.doc.attributes.get(start..end).unwrap_or_default()
    }

    /// All of the element's own text, in order; borrowed unless it has to be assembled.
    pub fn text(&self) -> Cow<'a, str> {
        let node = self.node();
        match node.text {
            Text::Plain => Cow::Borrowed(self.doc.slice(node.content)),
            Text::Section(inside) => Cow::Borrowed(self.doc.slice(inside)),
            Text::Mixed => Cow::Owned(own_text(self.doc.slice(node.content))),
        }
    }

    /// True when the element's own text is empty or whitespace.
    pub fn is_blank(&self) -> bool {
        self.text().trim().is_empty()
    }

    /// The child elements, in order.
    pub fn children(&self) -> impl Iterator<Item = Element<'d, 'a>> + use<'d, 'a> {
        let doc = self.doc;
        std::iter::successors(self.node().first_child, |&i| {
            doc.nodes[i as usize].next_sibling
        })
        .map(move |index| Element {
            doc,
            index: index as usize,
        })
    }

    pub fn has_children(&self) -> bool {
        self.node().first_child.is_some()
    }

    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<Element<'d, 'a>> {
        self.children().find(|c| c.name() == name)
    }

    /// The text of the first child named `name`, if that child has no children of its own.
    pub fn child_text(&self, name: &str) -> Option<Cow<'a, str>> {
        self.child(name)
            .filter(|c| !c.has_children())
            .map(|c| c.text())
    }

    /// True for an element with neither children nor attributes.
    pub fn is_leaf(&self) -> bool {
        let (start, end) = self.node().attributes;
        !self.has_children() && start == end
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
    // Whitespace-only runs between tags produce no event; the text of every element is
    // read from its content's positions instead, so none of it is lost.
    reader.config_mut().trim_text_start = true;
    reader.config_mut().trim_text_end = false;
    // End tags are matched against the open element below.
    reader.config_mut().check_end_names = false;
    let mut tree = Builder {
        doc: Document {
            input: text,
            nodes: Vec::with_capacity(24),
            attributes: Vec::new(),
        },
        stack: Vec::with_capacity(8),
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(reader.error_position(), e.to_string()))?;
        let at = reader.buffer_position();
        match event {
            Event::Start(start) => {
                let index = tree.open(&start, position(at))?;
                tree.stack.push(index);
            }
            Event::Empty(start) => {
                tree.open(&start, position(at))?;
            }
            Event::End(end) => tree.close(end.name().as_ref(), at)?,
            Event::Text(t) if tree.stack.is_empty() => {
                tree.outside(&String::from_utf8_lossy(&t), at)?;
            }
            Event::CData(c) if tree.stack.is_empty() => {
                tree.outside(&String::from_utf8_lossy(&c), at)?;
            }
            Event::Text(_) => tree.run(None),
            Event::CData(c) => {
                let (inside, _) = tree.locate(&c)?;
                tree.run(Some(inside));
            }
            Event::GeneralRef(r) => {
                let resolved = resolve(&r, at)?;
                if tree.stack.is_empty() {
                    tree.outside(&resolved, at)?;
                }
                tree.mixed();
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Comment(_) | Event::PI(_) | Event::Decl(_) => tree.mixed(),
            Event::Eof => break,
        }
    }
    if let Some(&open) = tree.stack.last() {
        return Err(XmlError::Unclosed(tree.doc.nodes[open].name.to_owned()));
    }
    if tree.doc.nodes.is_empty() {
        return Err(XmlError::Empty);
    }
    Ok(tree.doc)
}

fn position(at: u64) -> usize {
    usize::try_from(at).unwrap_or(usize::MAX)
}

/// The text a character or entity reference stands for.
fn resolve(r: &BytesRef<'_>, at: u64) -> Result<Cow<'static, str>, XmlError> {
    match r.resolve_char_ref() {
        Ok(Some(ch)) => Ok(Cow::Owned(ch.to_string())),
        Ok(None) => {
            let name = String::from_utf8_lossy(r);
            resolve_predefined_entity(&name)
                .map(Cow::Borrowed)
                .ok_or_else(|| XmlError::UnknownEntity(name.into_owned()))
        }
        Err(e) => Err(XmlError::Syntax(at, e.to_string())),
    }
}

/// The own text of an element whose content is `content`: its runs of text, CDATA and
/// references, without its children's. `content` was read once already, so it parses.
fn own_text(content: &str) -> String {
    let mut reader = Reader::from_str(content);
    reader.config_mut().check_end_names = false;
    let mut text = String::new();
    let mut depth = 0usize;
    while let Ok(event) = reader.read_event() {
        match event {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) if depth == 0 => text.push_str(&String::from_utf8_lossy(&t)),
            Event::CData(c) if depth == 0 => text.push_str(&String::from_utf8_lossy(&c)),
            Event::GeneralRef(r) if depth == 0 => {
                if let Ok(resolved) = resolve(&r, 0) {
                    text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    text
}

struct Builder<'a> {
    doc: Document<'a>,
    stack: Vec<usize>,
}

impl<'a> Builder<'a> {
    /// Where `part`, a slice the reader took from the body, lies in it, and its text there.
    fn locate(&self, part: &[u8]) -> Result<(Span, &'a str), XmlError> {
        let input = self.doc.input;
        let start = (part.as_ptr() as usize).wrapping_sub(input.as_ptr() as usize);
        let end = start.saturating_add(part.len());
        match input.get(start..end) {
            Some(s) if s.as_ptr() == part.as_ptr() => Ok((Span { start, end }, s)),
            _ => Err(XmlError::Syntax(
                0,
                "the reader returned text outside the body".into(),
            )),
        }
    }

    /// Adds the element `start` opens as the last child of the open element; returns its
    /// index. Its content starts at `content`.
    fn open(&mut self, start: &BytesStart<'_>, content: usize) -> Result<usize, XmlError> {
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
        let first_attribute = self.doc.attributes.len();
        if !start.attributes_raw().trim_ascii().is_empty() {
            for attr in start.attributes() {
                let attr = attr.map_err(|e| XmlError::Syntax(0, e.to_string()))?;
                let value = attr
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|e| XmlError::Syntax(0, e.to_string()))?;
                let (_, key) = self.locate(attr.key.as_ref())?;
                self.doc
                    .attributes
                    .push((key.to_owned(), value.into_owned()));
            }
        }
        let index = self.doc.nodes.len();
        self.doc.nodes.push(Node {
            name: self.locate(start.name().as_ref())?.1,
            content: Span {
                start: content,
                end: content,
            },
            text: Text::Plain,
            attributes: (first_attribute, self.doc.attributes.len()),
            first_child: None,
            last_child: None,
            next_sibling: None,
        });
        if let Some(parent) = parent {
            // MAX_ELEMENTS keeps every index well inside u32.
            let child = u32::try_from(index).ok();
            let node = &mut self.doc.nodes[parent];
            node.text = Text::Mixed;
            match std::mem::replace(&mut node.last_child, child) {
                Some(previous) => self.doc.nodes[previous as usize].next_sibling = child,
                None => node.first_child = child,
            }
        }
        Ok(index)
    }

    /// Closes the open element with the end tag `</name>`, which ends at `at`.
    fn close(&mut self, name: &[u8], at: u64) -> Result<(), XmlError> {
        let Some(open) = self.stack.pop() else {
            return Err(XmlError::Syntax(at, "unexpected end tag".into()));
        };
        let expected = self.doc.nodes[open].name;
        if expected.as_bytes() != name {
            let found = String::from_utf8_lossy(name);
            let message = format!("expected </{expected}>, found </{found}>");
            return Err(XmlError::Syntax(at, message));
        }
        // The content ends where `</` starts, right before the name.
        let end = self.locate(name)?.0.start.saturating_sub(2);
        let node = &mut self.doc.nodes[open];
        node.content.end = end.max(node.content.start);
        if let Text::Section(inside) = node.text
            && inside.end + "]]>".len() != node.content.end
        {
            node.text = Text::Mixed;
        }
        Ok(())
    }

    /// A run of text (`None`) or a CDATA section with this inside in the open element.
    fn run(&mut self, section: Option<Span>) {
        let Some(&open) = self.stack.last() else {
            return;
        };
        let node = &mut self.doc.nodes[open];
        node.text = match (node.text, section) {
            (Text::Plain, None) => Text::Plain,
            (Text::Plain, Some(inside))
                if inside.start == node.content.start + "<![CDATA[".len() =>
            {
                Text::Section(inside)
            }
            _ => Text::Mixed,
        };
    }

    /// Text outside the root element: an error unless it is blank.
    fn outside(&self, text: &str, at: u64) -> Result<(), XmlError> {
        if text.trim().is_empty() {
            Ok(())
        } else if self.doc.nodes.is_empty() {
            Err(XmlError::Syntax(at, "text outside the root element".into()))
        } else {
            Err(XmlError::Trailing)
        }
    }

    /// Marks the open element's text as needing assembly (a reference, comment or PI in it).
    fn mixed(&mut self) {
        if let Some(&open) = self.stack.last() {
            self.doc.nodes[open].text = Text::Mixed;
        }
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
