//! Property tests of the parser: no input panics it, and typed PUBLISHJOBFINISH fields come back exactly as generated.

mod common;

use proptest::prelude::*;
use wxhook::wechat::push::Push;
use wxhook::wechat::xml;

fn fixture_bodies() -> Vec<Vec<u8>> {
    common::fixture_files()
        .iter()
        .map(|p| std::fs::read(p).expect("fixture"))
        .collect()
}

/// Text safe inside CDATA.
fn cdata_text() -> impl Strategy<Value = String> {
    "[^\\]]{0,40}".prop_map(|s| s.replace("]]>", ""))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Push::parse(&body);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in 0usize..64,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let bodies = fixture_bodies();
        let mut body = bodies[which % bodies.len()].clone();
        for (at, byte, op) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                _ => body.truncate(i),
            }
        }
        let _ = Push::parse(&body);
    }

    #[test]
    fn publish_results_round_trip(
        publish_id in "[0-9]{1,20}",
        status in any::<u32>(),
        article_id in proptest::option::of(cdata_text()),
        items in proptest::collection::vec((any::<u32>(), cdata_text()), 0..6),
        fail_idx in proptest::collection::vec(any::<u32>(), 0..10),
        create_time in any::<u64>(),
    ) {
        let mut xml = format!(
            "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[mphelper]]></FromUserName>\
             <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[PUBLISHJOBFINISH]]></Event><PublishEventInfo>\
             <publish_id>{publish_id}</publish_id><publish_status>{status}</publish_status>"
        );
        if let Some(a) = &article_id {
            xml += &format!("<article_id><![CDATA[{a}]]></article_id>");
        }
        if !items.is_empty() {
            xml += &format!("<article_detail><count>{}</count>", items.len());
            for (idx, url) in &items {
                xml += &format!("<item><idx>{idx}</idx><article_url><![CDATA[{url}]]></article_url></item>");
            }
            xml += "</article_detail>";
        }
        for f in &fail_idx {
            xml += &format!("<fail_idx>{f}</fail_idx>");
        }
        xml += "</PublishEventInfo></xml>";

        let push = Push::parse(xml.as_bytes()).expect("generated push parses");
        prop_assert_eq!(push.create_time, create_time);
        prop_assert!(push.fields.is_empty());
        let info = push.publish_event_info.expect("typed");
        prop_assert_eq!(info.publish_id, publish_id);
        prop_assert_eq!(info.publish_status, status);
        prop_assert_eq!(info.article_id, article_id);
        prop_assert_eq!(info.fail_idx, fail_idx);
        let got: Vec<(u32, String)> = info
            .article_detail
            .map(|d| d.item.into_iter().map(|i| (i.idx, i.article_url)).collect())
            .unwrap_or_default();
        prop_assert_eq!(got, items);
    }
}

/// One piece of generated element content, and the text it stands for.
#[derive(Debug, Clone)]
enum Content {
    Text(String),
    CData(String),
    Reference(&'static str, &'static str),
    Comment,
    Element(Tree),
}

/// A generated element: what it must parse back as.
#[derive(Debug, Clone)]
struct Tree {
    name: &'static str,
    attribute: Option<String>,
    content: Vec<Content>,
}

impl Tree {
    fn xml(&self) -> String {
        let attr = match &self.attribute {
            Some(v) => format!(" k=\"{v}\""),
            None => String::new(),
        };
        if self.content.is_empty() {
            return format!("<{}{attr}/>", self.name);
        }
        let mut out = format!("<{}{attr}>", self.name);
        for c in &self.content {
            match c {
                Content::Text(t) => out += t,
                Content::CData(t) => out += &format!("<![CDATA[{t}]]>"),
                Content::Reference(r, _) => out += r,
                Content::Comment => out += "<!-- note -->",
                Content::Element(e) => out += &e.xml(),
            }
        }
        out + &format!("</{}>", self.name)
    }

    /// The element's own text: its runs of text, CDATA and references, in order.
    fn text(&self) -> String {
        self.content
            .iter()
            .map(|c| match c {
                Content::Text(t) | Content::CData(t) => t.as_str(),
                Content::Reference(_, resolved) => resolved,
                Content::Comment | Content::Element(_) => "",
            })
            .collect()
    }
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf_content = prop_oneof![
        4 => "[ \n\t]{0,3}[a-z0-9 ]{0,6}[ \n]{0,2}".prop_map(Content::Text),
        2 => "[ \n]{1,4}".prop_map(Content::Text),
        2 => "[ a-z\n<&>]{0,8}".prop_map(Content::CData),
        1 => prop_oneof![
            Just(Content::Reference("&lt;", "<")),
            Just(Content::Reference("&amp;", "&")),
            Just(Content::Reference("&#x4e2d;", "\u{4e2d}")),
            Just(Content::Reference("&#32;", " ")),
        ],
        1 => Just(Content::Comment),
    ];
    let name = prop_oneof![Just("a"), Just("item"), Just("publish_id"), Just("B")];
    let attribute = proptest::option::weighted(0.2, "[a-z]{0,3}");
    let leaf = (
        name.clone(),
        attribute.clone(),
        proptest::collection::vec(leaf_content.clone(), 0..4),
    )
        .prop_map(|(name, attribute, content)| Tree {
            name,
            attribute,
            content,
        });
    leaf.prop_recursive(4, 40, 5, move |inner| {
        let content = prop_oneof![
            2 => inner.prop_map(Content::Element),
            1 => leaf_content.clone(),
        ];
        (
            name.clone(),
            attribute.clone(),
            proptest::collection::vec(content, 0..6),
        )
            .prop_map(|(name, attribute, content)| Tree {
                name,
                attribute,
                content,
            })
    })
}

fn same(parsed: xml::Element, expected: &Tree) -> Result<(), TestCaseError> {
    prop_assert_eq!(parsed.name(), expected.name);
    let text = expected.text();
    let got = parsed.text();
    prop_assert_eq!(got.as_ref(), text.as_str());
    prop_assert_eq!(parsed.is_blank(), text.trim().is_empty());
    let attributes: Vec<(String, String)> = expected
        .attribute
        .iter()
        .map(|v| ("k".to_owned(), v.clone()))
        .collect();
    prop_assert_eq!(parsed.attributes(), attributes.as_slice());
    let children: Vec<&Tree> = expected
        .content
        .iter()
        .filter_map(|c| match c {
            Content::Element(e) => Some(e),
            _ => None,
        })
        .collect();
    prop_assert_eq!(parsed.has_children(), !children.is_empty());
    prop_assert_eq!(parsed.children().count(), children.len());
    for (child, expected) in parsed.children().zip(children) {
        same(child, expected)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Every element's name, attributes, children and exact text (whitespace, CDATA,
    /// references, text around children and comments) come back as generated.
    #[test]
    fn element_text_is_exact(root in tree(), before in "[ \n]{0,2}", after in "[ \n]{0,2}") {
        let body = format!("{before}{}{after}", root.xml());
        let doc = xml::parse(body.as_bytes()).expect("generated XML parses");
        same(doc.root(), &root)?;
    }
}
