//! Property tests of the parser: no input panics it, and typed PUBLISHJOBFINISH fields come back exactly as generated.

mod common;

use proptest::prelude::*;
use wxhook::wechat::push::Push;

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
