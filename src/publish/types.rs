//! The `freepublish` answers as typed data that accepts what WeChat really sends (numbers or strings for ids, optional fields, unknown fields kept).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Reads an id that WeChat sends as a JSON number or a string; always a string here.
pub fn id_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Value::Number(n) if n.is_u64() => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected an id (a string or a whole number), found {other}"
        ))),
    }
}

/// Like [`id_text`] for an id that may be absent or `null`.
pub fn optional_id_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(serde::de::Error::custom(format!(
            "expected an id (a string or a number), found {other}"
        ))),
    }
}

/// `fail_idx` as a list, whether WeChat sends a list, one number, or nothing.
pub fn index_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    let one = |v: &Value| -> Result<u32, D::Error> {
        match v {
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| serde::de::Error::custom(format!("`{v}` is not an article number")))
    };
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(&other)?]),
    }
}

/// `freepublish/submit`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submitted {
    #[serde(deserialize_with = "id_text")]
    pub publish_id: String,
    #[serde(default, deserialize_with = "optional_id_text")]
    pub msg_data_id: Option<String>,
}

/// `freepublish/getarticle`'s answer (and a `batchget` item's `content`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    #[serde(default)]
    pub news_item: Vec<Map<String, Value>>,
    /// Everything else WeChat sent (`update_time`, `create_time`, …), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One `freepublish/batchget` item: `update_time` may sit beside `content` or inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedArticle {
    #[serde(deserialize_with = "id_text")]
    pub article_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Article>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ListedArticle {
    /// The update time wherever WeChat put it.
    pub fn updated_at(&self) -> Option<i64> {
        self.update_time.or_else(|| {
            self.content
                .as_ref()
                .and_then(|c| c.extra.get("update_time"))
                .and_then(Value::as_i64)
        })
    }
}

/// One page of `freepublish/batchget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArticlePage {
    #[serde(default)]
    pub total_count: u64,
    #[serde(default)]
    pub item_count: u64,
    #[serde(default)]
    pub item: Vec<ListedArticle>,
}

/// `cgi-bin/getcallbackip`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackIps {
    pub ip_list: Vec<String>,
}

/// A token answer: `stable_token`'s, an `access_token_url`'s, `api_component_token`'s
/// (`component_access_token`) or `api_authorizer_token`'s (`authorizer_access_token`).
#[derive(Clone, Deserialize)]
pub struct TokenAnswer {
    #[serde(alias = "component_access_token", alias = "authorizer_access_token")]
    pub access_token: String,
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
}

fn default_expires_in() -> u64 {
    7200
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::push::PublishEventInfo;

    #[test]
    fn ids_arrive_as_numbers_or_strings_and_leave_as_strings() {
        let s: Submitted =
            serde_json::from_str(r#"{"errcode":0,"errmsg":"ok","publish_id":2650177668}"#)
                .expect("number");
        assert_eq!(s.publish_id, "2650177668");
        assert_eq!(s.msg_data_id, None);
        let s: Submitted = serde_json::from_str(r#"{"publish_id":"100000001","msg_data_id":2247}"#)
            .expect("string");
        assert_eq!(s.publish_id, "100000001");
        assert_eq!(s.msg_data_id.as_deref(), Some("2247"));
        assert_eq!(
            serde_json::to_string(&s).expect("json"),
            r#"{"publish_id":"100000001","msg_data_id":"2247"}"#
        );
        assert!(serde_json::from_str::<Submitted>(r#"{"publish_id":-3}"#).is_err());
        assert!(serde_json::from_str::<Submitted>(r#"{"publish_id":""}"#).is_err());
    }

    #[test]
    fn publish_status_answers_share_the_push_type() {
        let info: PublishEventInfo = serde_json::from_str(
            r#"{"publish_id":2247503051,"publish_status":9,"fail_idx":3,"new_field":{"a":1}}"#,
        )
        .expect("parses");
        assert_eq!(info.publish_id, "2247503051");
        assert_eq!(info.publish_status, 9);
        assert_eq!(info.fail_idx, vec![3]);
        assert_eq!(
            serde_json::to_string(&info).expect("json"),
            r#"{"publish_id":"2247503051","publish_status":9,"fail_idx":[3],"new_field":{"a":1}}"#
        );
        let ok: PublishEventInfo = serde_json::from_str(
            r#"{"publish_id":"100000001","publish_status":0,"article_id":"ARTICLE_ID","article_detail":{"count":1,"item":[{"idx":1,"article_url":"ARTICLE_URL"}]},"fail_idx":[]}"#,
        )
        .expect("seed example");
        assert_eq!(
            ok.article_detail.expect("detail").item[0].article_url,
            "ARTICLE_URL"
        );
    }

    #[test]
    fn batchget_items_carry_update_time_beside_or_inside_content() {
        let page: ArticlePage = serde_json::from_str(
            r#"{"total_count":2,"item_count":2,"item":[
                {"article_id":"A","content":{"news_item":[{"title":"t"}]},"update_time":1627891234},
                {"article_id":"B","content":{"news_item":[],"update_time":1627890000,"create_time":1627800000}}]}"#,
        )
        .expect("parses");
        assert_eq!(page.item[0].updated_at(), Some(1627891234));
        assert_eq!(page.item[1].updated_at(), Some(1627890000));
        let back = serde_json::to_string(&page.item[1]).expect("json");
        assert!(back.contains(r#""create_time":1627800000"#), "{back}");
    }
}
