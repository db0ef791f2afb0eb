//! The reference API over real HTTP: both page styles serve every record exactly once with the
//! generator's exact bytes, malformed records carry the defect the invoice domain reports, auth is
//! enforced, and every fault switch does what it says.

use std::collections::BTreeMap;

use invoice_api::{Defect, Faults, Generator, GeneratorConfig, RunningApi};

fn generator(count: u64, malformed_share: f64) -> Generator {
    Generator::new(GeneratorConfig {
        count,
        malformed_share,
        ..GeneratorConfig::default()
    })
    .unwrap()
}

async fn start(count: u64, faults: Faults) -> RunningApi {
    RunningApi::start(
        "127.0.0.1:0",
        generator(count, 0.05),
        Some("t0k3n".into()),
        faults,
    )
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Splits a page with the invoice domain and returns (NFeID or position, exact bytes) pairs.
fn records(page: &[u8]) -> Vec<Vec<u8>> {
    nfe::split_page(page)
        .unwrap()
        .records
        .iter()
        .map(|r| r.raw.to_vec())
        .collect()
}

/// A cursor-style body, read without a JSON library: records may hold bytes that are not UTF-8.
struct Feed {
    items: Vec<Vec<u8>>,
    next_cursor: String,
    has_more: bool,
}

impl Feed {
    fn parse(body: &[u8]) -> Feed {
        let find = |needle: &[u8]| {
            body.windows(needle.len())
                .rposition(|w| w == needle)
                .unwrap_or_else(|| panic!("no {:?}", String::from_utf8_lossy(needle)))
        };
        let items_end = find(b",\"next_cursor\":\"");
        let cursor_start = items_end + b",\"next_cursor\":\"".len();
        let cursor_len = body[cursor_start..]
            .iter()
            .position(|&b| b == b'"')
            .unwrap();
        Feed {
            items: records(&body[b"{\"items\":".len()..items_end]),
            next_cursor: String::from_utf8(body[cursor_start..cursor_start + cursor_len].to_vec())
                .unwrap(),
            has_more: body[find(b"\"has_more\":")..].starts_with(b"\"has_more\":true"),
        }
    }
}

#[tokio::test]
async fn page_number_style_serves_every_record_once_with_exact_bytes() {
    let api = start(2_345, Faults::default()).await;
    let g = api.api().generator().clone();
    let c = client();
    let mut url = format!("{}/invoices?page=1&page_size=500", api.url());
    let mut seen = Vec::new();
    loop {
        let r = c.get(&url).bearer_auth("t0k3n").send().await.unwrap();
        assert_eq!(r.status(), 200);
        let next = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.bytes().await.unwrap();
        seen.extend(records(&body));
        match next {
            Some(link) => {
                let path = link.trim_start_matches('<').split('>').next().unwrap();
                url = format!("{}{path}", api.url());
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 2_345);
    for (i, rec) in seen.iter().enumerate() {
        assert_eq!(rec, &g.record(i as u64 + 1), "record {}", i + 1);
    }
}

#[tokio::test]
async fn cursor_style_resumes_after_the_last_record_and_honours_since() {
    let api = start(1_000, Faults::default()).await;
    let g = api.api().generator().clone();
    let c = client();
    let mut cursor: Option<String> = None;
    let mut ids = Vec::new();
    loop {
        let mut url = format!("{}/invoices/feed?limit=300", api.url());
        if let Some(cur) = &cursor {
            url.push_str(&format!("&cursor={cur}"));
        }
        let body = c
            .get(&url)
            .header("x-api-key", "t0k3n")
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let feed = Feed::parse(&body);
        cursor = Some(feed.next_cursor);
        ids.push(feed.items.len());
        if !feed.has_more {
            break;
        }
    }
    assert_eq!(ids, vec![300, 300, 300, 100]);
    // An incremental run from the stored cursor finds nothing new.
    let url = format!(
        "{}/invoices/feed?cursor={}",
        api.url(),
        cursor.clone().unwrap()
    );
    let body = c
        .get(&url)
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let feed = Feed::parse(&body);
    assert!(feed.items.is_empty());
    assert_eq!(Some(feed.next_cursor), cursor);
    // Records changed since the CreateDate of record 990 are 991..=1000.
    let since = g
        .create_date(990)
        .strftime("%Y-%m-%dT%H:%M:%S%.f")
        .to_string();
    let r = c
        .get(format!("{}/invoices?since={since}", api.url()))
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap();
    let recs = records(&r.bytes().await.unwrap());
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[0], g.record(991));
}

#[tokio::test]
async fn malformed_records_fail_validation_with_the_expected_code() {
    let g = generator(3_000, 0.2);
    let validator = nfe::ValidationConfig::default().build().unwrap();
    let mut by_defect: BTreeMap<String, usize> = BTreeMap::new();
    for id in 1..=3_000 {
        let raw = g.record(id);
        match (g.defect(id), validator.process(&raw)) {
            (None, Ok(inv)) => assert!(inv.item_count >= 1),
            (None, Err(e)) => panic!("record {id} should be valid: {e:?}"),
            (Some(d), Ok(_)) => panic!("record {id} has defect {d:?} but validated"),
            (Some(d), Err(e)) => {
                let codes: Vec<String> = e.codes().iter().map(|c| c.to_string()).collect();
                assert!(
                    codes.iter().any(|c| c == d.expected_code()),
                    "record {id}: {d:?} gave {codes:?}"
                );
                *by_defect.entry(format!("{d:?}")).or_default() += 1;
            }
        }
    }
    assert_eq!(by_defect.len(), Defect::ALL.len(), "{by_defect:?}");
}

#[tokio::test]
async fn requests_without_the_token_are_refused() {
    let api = start(10, Faults::default()).await;
    let c = client();
    let r = c
        .get(format!("{}/invoices", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/invoices", api.url()))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(api.api().stats().unauthorized, 2);
}

#[tokio::test]
async fn fault_switches() {
    let api = start(100, Faults::default()).await;
    let c = client();
    let url = format!("{}/invoices?page_size=10", api.url());
    let get = || c.get(&url).bearer_auth("t0k3n").send();

    api.api()
        .set_faults(Faults {
            rate_429: 1.0,
            retry_after_secs: 7,
            ..Faults::default()
        })
        .unwrap();
    let r = get().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");

    api.api()
        .set_faults(Faults {
            rate_5xx: 1.0,
            ..Faults::default()
        })
        .unwrap();
    assert!(get().await.unwrap().status().is_server_error());

    api.api()
        .set_faults(Faults {
            rate_truncate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a truncated body must fail to read"
    );

    api.api()
        .set_faults(Faults {
            rate_timeout: 1.0,
            hang_secs: 10,
            ..Faults::default()
        })
        .unwrap();
    let quick = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    let e = quick
        .get(&url)
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");

    api.api()
        .set_faults(Faults {
            rate_duplicate: 1.0,
            ..Faults::default()
        })
        .unwrap();
    let r = c
        .get(format!("{}/invoices?page=2&page_size=10", api.url()))
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap();
    let recs = records(&r.bytes().await.unwrap());
    assert_eq!(recs.len(), 11);
    assert_eq!(recs[0], api.api().generator().record(10));

    let stats = api.api().stats();
    assert_eq!(
        (
            stats.throttled,
            stats.server_errors,
            stats.truncated,
            stats.hung,
            stats.duplicated
        ),
        (1, 1, 1, 1, 1)
    );
    // Bad switches are refused.
    assert!(api
        .api()
        .set_faults(Faults {
            rate_5xx: 2.0,
            ..Faults::default()
        })
        .is_err());
}

#[tokio::test]
async fn bad_requests_get_a_clear_error() {
    let api = start(10, Faults::default()).await;
    let c = client();
    for q in ["page=0", "page_size=0", "page_size=5000", "since=yesterday"] {
        let r = c
            .get(format!("{}/invoices?{q}", api.url()))
            .bearer_auth("t0k3n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"]["message"].as_str().unwrap().len() > 10, "{q}");
    }
    let r = c
        .get(format!("{}/invoices/feed?cursor=zzz", api.url()))
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn size_switches_pad_records_and_positions() {
    let faults = Faults {
        pad_record_every: 7,
        pad_record_to_bytes: 50_000,
        pad_position_bytes: 3_000,
        ..Faults::default()
    };
    let api = start(30, faults).await;
    let c = client();
    // Cursor style: records 7, 14, 21, 28 are exactly 50,000 bytes and still one JSON object each.
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut url = format!("{}/invoices/feed?limit=10", api.url());
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let r = c.get(&url).bearer_auth("t0k3n").send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let feed = Feed::parse(&r.bytes().await.unwrap());
        assert_eq!(feed.next_cursor.len(), "after-".len() + 2 + 1 + 3_000);
        assert!(feed.next_cursor.contains('~'));
        seen.extend(feed.items);
        if !feed.has_more {
            break;
        }
        cursor = Some(feed.next_cursor);
    }
    assert_eq!(seen.len(), 30);
    for (i, rec) in seen.iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(rec, &api.api().served_record(id), "record {id}");
        if id.is_multiple_of(7) {
            assert_eq!(rec.len(), 50_000, "record {id}");
            assert!(rec.ends_with(b"xx\"}"));
        } else {
            assert_eq!(rec, &api.api().generator().record(id), "record {id}");
        }
    }
    // Page-number style: the next link carries the padding and is accepted back.
    let r = c
        .get(format!("{}/invoices?page=1&page_size=10", api.url()))
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(link.len() > 3_000, "{link}");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r = c
        .get(format!("{}{next}", api.url()))
        .bearer_auth("t0k3n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        records(&r.bytes().await.unwrap())[0],
        api.api().served_record(11)
    );
    // A 5xx under a Retry-After switch is a 503 with the header.
    api.api()
        .set_faults(Faults {
            rate_5xx: 1.0,
            retry_after_secs: 9,
            ..Faults::default()
        })
        .unwrap();
    for _ in 0..2 {
        let r = c
            .get(format!("{}/invoices", api.url()))
            .bearer_auth("t0k3n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "9");
    }
    // Padding without a length is refused.
    assert!(api
        .api()
        .set_faults(Faults {
            pad_record_every: 3,
            ..Faults::default()
        })
        .is_err());
}
