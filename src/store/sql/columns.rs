//! The columns of `request_log` that the writers fill, and a record's values for them: one list
//! in one order, bound by the SQLite writer (`sqlite_insert.rs`) and encoded by the PostgreSQL
//! one (`writer/postgres.rs`). The list is the record's field table (`record/fields.rs`);
//! [`values`] stays written out for speed and is checked against it by the tests below.

use crate::record::fields::{self, SqlType};
use crate::record::{CostSource, ValidRecord};

/// The SQL type of a column (declared with the record's fields).
pub(crate) type Kind = SqlType;

impl Kind {
    /// PostgreSQL's name of the type.
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Int8 => "int8",
            Kind::Bool => "bool",
        }
    }
}

/// How many columns a writer fills: one per field of the record.
pub(crate) const COLUMNS: usize = fields::FIELDS.len();

/// The columns a writer fills, in the order of [`values`], with their types: the `column` and
/// `sql` of every row of [`fields::FIELDS`].
pub(crate) const FIELDS: [(&str, Kind); COLUMNS] = {
    let mut out = [("", Kind::Text); COLUMNS];
    let mut i = 0;
    while i < COLUMNS {
        out[i] = (fields::FIELDS[i].column, fields::FIELDS[i].sql);
        i += 1;
    }
    out
};

/// `a, b, c`: the names of [`FIELDS`].
pub(crate) fn column_list() -> String {
    FIELDS.map(|(name, _)| name).join(", ")
}

/// One value of a row, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Text(Option<&'a str>),
    Int8(Option<i64>),
    Bool(bool),
}

/// `r.provider_chain` as JSON text, into `out` (cleared first).
pub(crate) fn provider_chain(r: &ValidRecord, out: &mut String) {
    out.clear();
    if r.provider_chain.is_empty() {
        out.push_str("[]");
        return;
    }
    match serde_json::to_string(&r.provider_chain) {
        Ok(json) => *out = json,
        // A list of strings always serializes; keep the column valid JSON regardless.
        Err(_) => out.push_str("[]"),
    }
}

/// The values of `r` in the order of [`FIELDS`]; `chain` is [`provider_chain`]'s text.
pub(crate) fn values<'a>(r: &'a ValidRecord, chain: &'a str) -> [Value<'a>; COLUMNS] {
    use Value::{Bool, Int8, Text};
    [
        Text(r.request_id.as_ref().map(|id| id.as_str())),
        Int8(Some(r.timestamp_ms)),
        Text(Some(r.namespace.as_str())),
        Text(r.instance.as_deref()),
        Text(r.user_id.as_deref().or(r.user.as_deref())),
        Text(r.user.as_deref()),
        Text(r.user_id.as_deref()),
        Text(r.key.as_deref()),
        Text(r.key_id.as_deref()),
        Text(Some(r.provider.as_str())),
        Text(Some(r.model.as_str())),
        Text(r.original_model.as_deref()),
        Text(Some(r.endpoint.as_str())),
        Text(Some(r.api_type.as_str())),
        Text(Some(r.method.as_str())),
        Int8(Some(i64::from(r.status))),
        // Whole ms (rounded): the schema's integer columns; the histograms keep the µs.
        Int8(Some(big(r.duration_ms.whole_ms()))),
        Int8(r.ttfb_ms.map(|t| big(t.whole_ms()))),
        Int8(Some(big(r.tokens.input))),
        Int8(Some(big(r.tokens.output))),
        Int8(Some(big(r.tokens.cache_write_5m))),
        Int8(Some(big(r.tokens.cache_write_1h))),
        Int8(Some(big(r.tokens.cache_read))),
        Int8(Some(big(r.cost_micros))),
        Text(Some(cost_source(r.cost_source))),
        Text(r.session_id.as_deref()),
        Int8(Some(i64::from(r.retry_count))),
        Text(Some(chain)),
        Bool(r.is_streaming),
        Text(r.error.as_deref()),
        Text(r.blocked_by.as_deref()),
        Text(r.block_reason.as_deref()),
        Text(r.user_agent.as_deref()),
        Text(r.client_ip.as_deref()),
        Int8(r.messages_count.map(i64::from)),
        Text(r.trace_id.as_deref()),
        Text(r.span_id.as_deref()),
        Text(r.provider_request_id.as_deref()),
        Text(r.cost_amount.as_deref()),
        Text(r.currency.as_deref()),
    ]
}

/// The order both writers insert a batch's rows in, as positions in `batch`: each `request_id`
/// once (its first record: the one the log keeps, as `ON CONFLICT DO NOTHING` would in arrival
/// order), sorted by session, then user, then time, then arrival. Both backends use it, so their
/// ids, and with them every answer, are the same for the same records.
///
/// Why: SQLite puts each row into every index at its key's place, and the session and user
/// indexes take a busy log's rows at thousands of places at once (one per live session or
/// user), so in arrival order nearly every row finds its page out of the cache and reads it
/// in, and evicts a dirty one. Sorted, the session index is swept once per batch, and the user
/// index too for rows without a session: `bench-log --profile live` (10,000 users and their
/// sessions), 47,000 → 77,000 rows/s (docs/benchmarks.md). The sort key is the session's first
/// 16 bytes and the user's first 8, so it costs a few ms a batch. Ids follow this order within
/// a batch, not arrival; lists are by time, then id.
pub(crate) fn insert_order(batch: &[Box<ValidRecord>]) -> Vec<usize> {
    fn prefix<const N: usize>(s: Option<&str>) -> (bool, [u8; N]) {
        let mut out = [0u8; N];
        if let Some(s) = s {
            let n = s.len().min(N);
            out[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        (s.is_some(), out)
    }
    let mut seen =
        std::collections::HashSet::with_capacity_and_hasher(batch.len(), ahash::RandomState::new());
    let mut keyed: Vec<_> = batch
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.request_id
                .as_ref()
                .is_none_or(|id| seen.insert(id.as_str()))
        })
        .map(|(i, r)| {
            let key = (
                prefix::<16>(r.session_id.as_deref()),
                prefix::<8>(r.user.as_deref()),
                r.timestamp_ms,
            );
            (key, i)
        })
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Where `request_id` is in [`FIELDS`] and [`values`].
pub(crate) const REQUEST_ID_FIELD: usize = 0;

/// The 16 bytes of a request id written as a UUID in its canonical form (lowercase hex digits,
/// hyphens after the 8th, 12th, 16th and 20th), which SQLite stores instead of the 36 characters.
/// Only that form maps to bytes, so the mapping is one-to-one and undone exactly by the
/// `SELECT` of the log's readers (`query.rs`): an uppercase or unhyphenated id stays text (a
/// different id, as it always was), and a BLOB never equals a TEXT in SQLite, so no text id can
/// meet a UUID's bytes in `request_ids` (which keeps them unique).
pub(crate) fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let b = id.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 16];
    let mut digits = b.iter().copied().filter(|&c| c != b'-');
    for byte in &mut out {
        let hi = nibble(digits.next()?)?;
        let lo = nibble(digits.next()?)?;
        *byte = hi << 4 | lo;
    }
    Some(out)
}

/// Unsigned counters as SQL BIGINT (validation keeps them far below `i64::MAX`).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The stored name of a cost source.
pub(crate) fn cost_source(c: CostSource) -> &'static str {
    c.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::fields::FieldId;

    #[test]
    fn a_batch_goes_in_by_session_user_and_time_each_id_once() {
        let rec = |id: &str, session: Option<&str>, user: &str, ts: i64| {
            let ts = 1_700_000_000_000 + ts;
            let session = session.map_or(String::new(), |s| format!(r#", "session_id": "{s}""#));
            let json = format!(
                r#"{{"request_id": "{id}", "timestamp": {ts}, "model": "m", "status": 200,
                    "duration_ms": 1, "user": "{user}"{session}}}"#
            );
            crate::record::test_record(&json, ts)
        };
        let batch = vec![
            rec("a", Some("s-2"), "u1", 5),
            rec("b", Some("s-1"), "u9", 9),
            rec("c", None, "u2", 1),
            rec("d", Some("s-1"), "u9", 3),
            rec("b", Some("s-0"), "u0", 0),
            rec("e", None, "u1", 7),
        ];
        // No session first (NULL sorts first in the index), then by session, user, time; the
        // second "b" is left out, whatever its place in the order.
        assert_eq!(insert_order(&batch), vec![5, 2, 3, 1, 0]);
    }

    #[test]
    fn every_value_has_the_type_of_its_column() {
        let json = r#"{"request_id": "r-1", "timestamp": 1700000000000, "model": "m",
            "status": 200, "duration_ms": 1, "user": "u", "session_id": "s"}"#;
        let mut r = *crate::record::test_record(json, 1_700_000_000_000);
        r.provider_chain = vec!["a".into(), "b\"".into()];
        let mut chain = String::new();
        provider_chain(&r, &mut chain);
        assert_eq!(chain, r#"["a","b\""]"#);
        for ((name, kind), v) in FIELDS.iter().zip(values(&r, &chain)) {
            let got = match v {
                Value::Text(_) => Kind::Text,
                Value::Int8(_) => Kind::Int8,
                Value::Bool(_) => Kind::Bool,
            };
            assert_eq!(got, *kind, "{name}");
        }
        r.provider_chain.clear();
        provider_chain(&r, &mut chain);
        assert_eq!(chain, "[]");
        assert_eq!(FIELDS[REQUEST_ID_FIELD].0, "request_id");
        assert!(matches!(
            values(&r, &chain)[REQUEST_ID_FIELD],
            Value::Text(Some("r-1"))
        ));
    }

    /// [`values`] puts every field in the column the table gives it: each value is the one the
    /// JSON record sent under the field's wire name.
    #[test]
    fn values_are_in_the_order_of_the_field_table() {
        let json: serde_json::Value =
            serde_json::from_str(crate::record::TEST_FULL_JSON).expect("json");
        let r = *crate::record::test_full_record();
        let mut chain = String::new();
        provider_chain(&r, &mut chain);
        let values = values(&r, &chain);
        for (def, v) in fields::FIELDS.iter().zip(values) {
            let want = match def.id {
                FieldId::UserRef => Value::Text(Some("u-1")),
                FieldId::Cost => Value::Int8(Some(1_500_000)),
                FieldId::CostSource => Value::Text(Some("reported")),
                FieldId::ProviderChain => Value::Text(Some(r#"["a","b\"c"]"#)),
                _ => match &json[def.wire.expect("a wire field")] {
                    serde_json::Value::String(s) => Value::Text(Some(s.as_str())),
                    serde_json::Value::Number(n) => Value::Int8(n.as_i64()),
                    serde_json::Value::Bool(b) => Value::Bool(*b),
                    other => panic!("{other}"),
                },
            };
            assert_eq!(v, want, "column {}", def.column);
        }
    }

    /// The log entry of the query API has one key per field with an `entry` name (plus the
    /// row id), and its `SELECT` list reads every column but the derived `user_ref`.
    #[test]
    fn the_log_entry_is_the_field_table() {
        let e = super::super::LogEntry {
            id: 1,
            request_id: None,
            timestamp_ms: 0,
            namespace: String::new(),
            instance: None,
            user: None,
            user_id: None,
            key: None,
            key_id: None,
            provider: String::new(),
            model: String::new(),
            original_model: None,
            endpoint: String::new(),
            api_type: String::new(),
            method: String::new(),
            status: 0,
            duration_ms: 0,
            ttfb_ms: None,
            input_tokens: 0,
            output_tokens: 0,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: 0,
            cost_micros: 0,
            cost_source: String::new(),
            session_id: None,
            retry_count: 0,
            provider_chain: Vec::new(),
            is_streaming: false,
            error: None,
            blocked_by: None,
            block_reason: None,
            user_agent: None,
            client_ip: None,
            messages_count: None,
            trace_id: None,
            span_id: None,
            provider_request_id: None,
            cost_amount: None,
            currency: None,
        };
        let json = serde_json::to_value(&e).expect("serializes");
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want: Vec<&str> = fields::FIELDS.iter().filter_map(|f| f.entry).collect();
        want.push("id");
        let (mut keys, mut want) = (keys, want);
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want, "LogEntry and record/fields.rs differ");

        use super::super::query::EntryColumns;
        let select: Vec<&str> = <sqlx::Postgres as EntryColumns>::COLUMNS
            .split(',')
            .map(str::trim)
            .collect();
        let mut want: Vec<&str> = vec!["id"];
        want.extend(
            fields::FIELDS
                .iter()
                .filter(|f| f.id != FieldId::UserRef)
                .map(|f| f.column),
        );
        assert_eq!(
            select, want,
            "the log entry's SELECT list and record/fields.rs differ"
        );
    }

    /// Every column the writers fill exists in the schema the migrations build: in SQLite,
    /// selected from a migrated database; in PostgreSQL, named by a migration.
    #[tokio::test]
    async fn the_migrations_create_every_column() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("open");
        sqlx::migrate::Migrator::new(super::super::Embedded(super::super::SQLITE_MIGRATIONS))
            .await
            .expect("migrations")
            .run(&pool)
            .await
            .expect("migrate");
        sqlx::query(&format!(
            "SELECT {} FROM request_log LIMIT 0",
            column_list()
        ))
        .fetch_all(&pool)
        .await
        .expect("every column exists in SQLite");
        // PostgreSQL's columns are created by its first migration, one per line, or added by
        // a later one (`ADD COLUMN`).
        let postgres = include_str!("../../../migrations/postgres/0001_request_log.sql");
        let added = [
            include_str!("../../../migrations/postgres/0008_provider_request_id_and_currency.sql"),
            include_str!("../../../migrations/postgres/0009_span_id.sql"),
        ];
        for (name, _) in FIELDS {
            assert!(
                postgres.contains(&format!("\n    {name} "))
                    || added
                        .iter()
                        .any(|m| m.contains(&format!("ADD COLUMN {name} "))),
                "no PostgreSQL migration creates {name}"
            );
        }
    }

    #[test]
    fn only_canonical_uuids_become_bytes() {
        let id = "0af76519-16cd-43dd-8448-eb211c80319c";
        let bytes = uuid_bytes(id).expect("canonical");
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(bytes[15], 0x9c);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, id.replace('-', ""));
        assert_eq!(
            uuid_bytes("ffffffff-ffff-ffff-ffff-ffffffffffff"),
            Some([0xff; 16])
        );
        assert_eq!(
            uuid_bytes("00000000-0000-0000-0000-000000000000"),
            Some([0; 16])
        );
        for other in [
            "0AF76519-16CD-43DD-8448-EB211C80319C",
            "0af76519-16cd-43dd-8448-eb211c80319C",
            "0af7651916cd43dd8448eb211c80319c",
            "{0af76519-16cd-43dd-8448-eb211c80319c}",
            "0af76519-16cd-43dd-8448-eb211c80319c ",
            "0af76519-16cd-43dd-8448eeb211c80319c",
            "0af76519-16cd-43dd-8448-eb211c80319",
            "0af76519-16cd-43dd-8448-eb211c80319g",
            "0af76519-16cd-43dd-8448-eb211c8031ü",
            "------------------------------------",
            "",
        ] {
            assert_eq!(uuid_bytes(other), None, "{other:?}");
        }
    }
}
