//! Reads a push body with quick-xml into a bounded element tree: no DTDs, no custom entities, limited depth and size.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

/// Deepest nesting accepted (WeChat's pushes use four levels).
pub const MAX_DEPTH: usize = 32;
/// Most elements accepted in one body.
pub const MAX_ELEMENTS: usize = 10_000;

/// One XML element: its text (CDATA and entities resolved, kept exactly) and its children in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// The text of the first child named `name`, if that child has no children of its own.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name)
            .filter(|c| c.children.is_empty())
            .map(|c| c.text.as_str())
    }

    /// True for an element with neither children nor attributes.
    pub fn is_leaf(&self) -> bool {
        self.children.is_empty() && self.attributes.is_empty()
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

/// Parses `body` into its root element.
pub fn parse(body: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(XmlError::Empty);
    }
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(false);
    let mut tree = Tree::default();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(reader.error_position(), e.to_string()))?;
        match event {
            Event::Start(start) => {
                let element = tree.open(&start)?;
                tree.stack.push(element);
            }
            Event::Empty(start) => {
                let element = tree.open(&start)?;
                tree.close(element)?;
            }
            Event::End(_) => {
                let element = tree.stack.pop().ok_or_else(|| {
                    XmlError::Syntax(reader.buffer_position(), "unexpected end tag".into())
                })?;
                tree.close(element)?;
            }
            Event::Text(t) => tree.text(&t, reader.buffer_position())?,
            Event::CData(c) => tree.text(&c, reader.buffer_position())?,
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(ch)) => ch.to_string(),
                    Ok(None) => resolve_predefined_entity(&r)
                        .ok_or_else(|| XmlError::UnknownEntity(r.to_string()))?
                        .to_owned(),
                    Err(e) => {
                        return Err(XmlError::Syntax(reader.buffer_position(), e.to_string()));
                    }
                };
                tree.text(&resolved, reader.buffer_position())?;
            }
            Event::DocType(_) => return Err(XmlError::Doctype),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = tree.stack.last() {
        return Err(XmlError::Unclosed(open.name.clone()));
    }
    tree.root.ok_or(XmlError::Empty)
}

#[derive(Default)]
struct Tree {
    stack: Vec<Element>,
    root: Option<Element>,
    count: usize,
}

impl Tree {
    fn open(&mut self, start: &BytesStart<'_>) -> Result<Element, XmlError> {
        if self.root.is_some() {
            return Err(XmlError::Trailing);
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(XmlError::TooDeep);
        }
        self.count += 1;
        if self.count > MAX_ELEMENTS {
            return Err(XmlError::TooManyElements);
        }
        let mut attributes = Vec::new();
        for attr in start.attributes() {
            let attr = attr.map_err(|e| XmlError::Syntax(0, e.to_string()))?;
            let value = attr
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| XmlError::Syntax(0, e.to_string()))?;
            attributes.push((attr.key.as_ref().to_owned(), value.into_owned()));
        }
        Ok(Element {
            name: start.name().as_ref().to_owned(),
            attributes,
            ..Element::default()
        })
    }

    fn close(&mut self, element: Element) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(parent) => parent.children.push(element),
            None if self.root.is_some() => return Err(XmlError::Trailing),
            None => self.root = Some(element),
        }
        Ok(())
    }

    fn text(&mut self, text: &str, at: u64) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(top) => top.text.push_str(text),
            None if text.trim().is_empty() => {}
            None if self.root.is_some() => return Err(XmlError::Trailing),
            None => return Err(XmlError::Syntax(at, "text outside the root element".into())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_entities_and_newlines_are_kept() {
        let root = parse(b"<xml><a><![CDATA[x\ny]]></a><b>1 &lt; 2 &#x4e2d;</b><c/></xml>")
            .expect("parses");
        assert_eq!(root.name, "xml");
        assert_eq!(root.child_text("a"), Some("x\ny"));
        assert_eq!(root.child_text("b"), Some("1 < 2 \u{4e2d}"));
        assert_eq!(root.child_text("c"), Some(""));
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let laughs = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><xml>&lol2;</xml>";
        assert_eq!(parse(laughs), Err(XmlError::Doctype));
        assert_eq!(
            parse(b"<xml>&lol;</xml>"),
            Err(XmlError::UnknownEntity("lol".into()))
        );
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert_eq!(parse(deep.as_bytes()), Err(XmlError::TooDeep));
        let many = format!("<xml>{}</xml>", "<a/>".repeat(MAX_ELEMENTS + 1));
        assert_eq!(parse(many.as_bytes()), Err(XmlError::TooManyElements));
        assert_eq!(parse(b"<xml></xml><xml></xml>"), Err(XmlError::Trailing));
        assert!(matches!(
            parse(b"<xml><a></xml>"),
            Err(XmlError::Syntax(..))
        ));
        assert_eq!(parse(b"<xml><a>"), Err(XmlError::Unclosed("a".into())));
        assert_eq!(parse(b""), Err(XmlError::Empty));
        assert_eq!(parse(b"\xff\xfe"), Err(XmlError::NotUtf8));
        assert!(matches!(parse(b"just text"), Err(XmlError::Syntax(..))));
    }
}
