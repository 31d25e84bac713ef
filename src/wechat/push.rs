//! A verified push as typed data: the common header, `PUBLISHJOBFINISH` fully typed, every other element kept as fields.

use super::xml::{self, Element};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Elements that are always lists in `fields`, even when WeChat sends one.
const LIST_ELEMENTS: [&str; 2] = ["item", "fail_idx"];
/// The header elements every push carries, typed in [`Push`].
const HEADER: [&str; 5] = [
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
];

/// One push from WeChat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Push {
    pub to_user_name: String,
    pub from_user_name: String,
    pub create_time: u64,
    pub msg_type: String,
    /// `Event` for event pushes; `None` for plain messages.
    pub event: Option<String>,
    /// The typed result of a `PUBLISHJOBFINISH` push, shaped like `freepublish/get`'s answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_event_info: Option<PublishEventInfo>,
    /// Every element not typed above, in document order: text as strings, nested elements
    /// as objects, repeated elements (and every `item`) as lists, attributes as `@name`.
    pub fields: Map<String, Value>,
}

/// `PublishEventInfo`, with the field names and types of the `freepublish/get` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishEventInfo {
    /// A string here, whether WeChat sent a number (as `freepublish/submit` does) or a string.
    #[serde(deserialize_with = "crate::publish::types::id_text")]
    pub publish_id: String,
    /// 0 success, 1 publishing, 2 original-declaration failure, 3 routine failure,
    /// 4 platform audit failure, 5 deleted by the user, 6 banned; other values kept as sent.
    pub publish_status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub article_detail: Option<ArticleDetail>,
    /// 1-based numbers of the articles that failed; empty unless the status is 2 or 4.
    #[serde(default, deserialize_with = "crate::publish::types::index_list")]
    pub fail_idx: Vec<u32>,
    /// Fields of a `freepublish/get` answer not typed above, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `article_detail` of a successful publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleDetail {
    pub count: u32,
    #[serde(default)]
    pub item: Vec<ArticleItem>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One published article.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticleItem {
    pub idx: u32,
    pub article_url: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a publish status number means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishStatus {
    Success,
    Publishing,
    OriginalFailed,
    RoutineFailed,
    AuditFailed,
    DeletedByUser,
    BannedBySystem,
    Unknown(u32),
}

impl PublishEventInfo {
    /// Any status but 1 (publishing) is final.
    pub fn is_final(&self) -> bool {
        self.publish_status != 1
    }

    pub fn status(&self) -> PublishStatus {
        match self.publish_status {
            0 => PublishStatus::Success,
            1 => PublishStatus::Publishing,
            2 => PublishStatus::OriginalFailed,
            3 => PublishStatus::RoutineFailed,
            4 => PublishStatus::AuditFailed,
            5 => PublishStatus::DeletedByUser,
            6 => PublishStatus::BannedBySystem,
            other => PublishStatus::Unknown(other),
        }
    }
}

/// Why a body is not a push. The text is the reason in the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Xml(#[from] xml::XmlError),
    #[error("root element is <{0}>, expected <xml>")]
    Root(String),
    #[error("missing element <{0}>")]
    Missing(&'static str),
    #[error("element <{0}> appears more than once")]
    Duplicate(&'static str),
    #[error("element <{0}> must hold text, not elements")]
    NotText(&'static str),
    #[error("<CreateTime> is not a number of seconds")]
    CreateTime,
    #[error("<{0}> is not a number")]
    Field(&'static str),
}

impl Push {
    /// Parses a push body.
    pub fn parse(body: &[u8]) -> Result<Push, PushError> {
        Push::from_element(xml::parse(body)?.root())
    }

    /// Builds a push from a parsed `<xml>` root.
    pub fn from_element(root: Element<'_, '_>) -> Result<Push, PushError> {
        if root.name() != "xml" {
            return Err(PushError::Root(root.name().to_owned()));
        }
        let headers = Headers::of(root);
        let create_time = headers
            .text("CreateTime")?
            .ok_or(PushError::Missing("CreateTime"))?
            .trim()
            .parse()
            .map_err(|_| PushError::CreateTime)?;
        let required = |name| headers.text(name)?.ok_or(PushError::Missing(name));
        let mut push = Push {
            to_user_name: required("ToUserName")?.into_owned(),
            from_user_name: required("FromUserName")?.into_owned(),
            create_time,
            msg_type: required("MsgType")?.into_owned(),
            event: headers.text("Event")?.map(Cow::into_owned),
            publish_event_info: None,
            fields: Map::new(),
        };
        let is_publish =
            push.msg_type == "event" && push.event.as_deref() == Some("PUBLISHJOBFINISH");
        let mut rest: Vec<Element> = Vec::new();
        for child in root.children() {
            if HEADER.contains(&child.name()) {
                continue;
            }
            if is_publish
                && child.name() == "PublishEventInfo"
                && push.publish_event_info.is_none()
                && let Some((info, complete)) = publish_event_info(child)
            {
                push.publish_event_info = Some(info);
                if complete {
                    continue;
                }
            }
            rest.push(child);
        }
        push.fields = to_map(rest.into_iter());
        Ok(push)
    }
}

/// The header elements of a push, found in one pass over the root's children.
struct Headers<'d, 'a> {
    /// Per [`HEADER`] name: its first element, and whether it appears again.
    found: [Option<(Element<'d, 'a>, bool)>; HEADER.len()],
}

impl<'d, 'a> Headers<'d, 'a> {
    fn of(root: Element<'d, 'a>) -> Self {
        let mut found = [None; HEADER.len()];
        for child in root.children() {
            if let Some(i) = HEADER.iter().position(|h| *h == child.name()) {
                match &mut found[i] {
                    Some((_, repeated)) => *repeated = true,
                    slot => *slot = Some((child, false)),
                }
            }
        }
        Headers { found }
    }

    /// The text of the header element `name`; an error if it repeats or holds elements.
    fn text(&self, name: &'static str) -> Result<Option<Cow<'a, str>>, PushError> {
        let found = HEADER
            .iter()
            .position(|h| *h == name)
            .and_then(|i| self.found[i]);
        match found {
            None => Ok(None),
            Some((_, true)) => Err(PushError::Duplicate(name)),
            Some((el, false)) if el.has_children() => Err(PushError::NotText(name)),
            Some((el, false)) => Ok(Some(el.text())),
        }
    }
}

/// The typed `PublishEventInfo`, and whether it covers every element WeChat sent.
/// `None` when it cannot be typed (then the element is kept in `fields` as sent).
fn publish_event_info(el: Element) -> Option<(PublishEventInfo, bool)> {
    let mut complete = el.attributes().is_empty();
    let (mut publish_id, mut publish_status, mut article_id, mut article_detail) =
        (None, None, None, None);
    let mut fail_idx = Vec::new();
    for child in el.children() {
        match child.name() {
            "publish_id" if publish_id.is_none() && child.is_leaf() => {
                let text = child.text();
                let id = text.trim();
                if id.is_empty() {
                    return None;
                }
                publish_id = Some(id.to_owned());
            }
            "publish_status" if publish_status.is_none() && child.is_leaf() => {
                publish_status = Some(number(child)?);
            }
            "article_id" if article_id.is_none() && child.is_leaf() => {
                article_id = Some(child.text().into_owned());
            }
            "fail_idx" if child.is_leaf() => fail_idx.push(number(child)?),
            "article_detail" if article_detail.is_none() => {
                let (detail, covered) = article_detail_of(child)?;
                complete &= covered;
                article_detail = Some(detail);
            }
            _ => complete = false,
        }
    }
    let info = PublishEventInfo {
        publish_id: publish_id?,
        publish_status: publish_status?,
        article_id,
        article_detail,
        fail_idx,
        extra: Map::new(),
    };
    Some((info, complete))
}

fn article_detail_of(el: Element) -> Option<(ArticleDetail, bool)> {
    let mut complete = el.attributes().is_empty();
    let mut count = None;
    let mut items = Vec::new();
    for child in el.children() {
        match child.name() {
            "count" if count.is_none() && child.is_leaf() => count = Some(number(child)?),
            "item" => {
                let mut idx = None;
                let mut url = None;
                complete &= child.attributes().is_empty();
                for field in child.children() {
                    match field.name() {
                        "idx" if idx.is_none() && field.is_leaf() => idx = Some(number(field)?),
                        "article_url" if url.is_none() && field.is_leaf() => {
                            url = Some(field.text().into_owned())
                        }
                        _ => complete = false,
                    }
                }
                items.push(ArticleItem {
                    idx: idx?,
                    article_url: url?,
                    extra: Map::new(),
                });
            }
            _ => complete = false,
        }
    }
    let count = match count {
        Some(count) => count,
        None => u32::try_from(items.len()).ok()?,
    };
    Some((
        ArticleDetail {
            count,
            item: items,
            extra: Map::new(),
        },
        complete,
    ))
}

fn number(el: Element) -> Option<u32> {
    el.text().trim().parse().ok()
}

/// Elements as a JSON object: repeated names (and every `item`) become lists.
pub(super) fn to_map<'d, 'a: 'd>(
    elements: impl Iterator<Item = Element<'d, 'a>>,
) -> Map<String, Value> {
    let mut map = Map::new();
    for el in elements {
        let value = to_value(el);
        match map.get_mut(el.name()) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None if LIST_ELEMENTS.contains(&el.name()) => {
                map.insert(el.name().to_owned(), Value::Array(vec![value]));
            }
            None => {
                map.insert(el.name().to_owned(), value);
            }
        }
    }
    map
}

fn to_value(el: Element) -> Value {
    if el.is_leaf() {
        return Value::String(el.text().into_owned());
    }
    let mut map = Map::new();
    for (key, value) in el.attributes() {
        map.insert(format!("@{key}"), Value::String(value.clone()));
    }
    // A container's text is assembled from its content: read it once.
    let text = el.text();
    if !text.trim().is_empty() || !el.has_children() {
        map.insert("$text".to_owned(), Value::String(text.into_owned()));
    }
    map.extend(to_map(el.children()));
    Value::Object(map)
}
