use super::*;

const ENTITIES: &str = r#"
[[entity]]
name = "card"
join_key = "card_id"
value_type = "int64"

[[entity]]
name = "merchant"
value_type = "string"
"#;

const VIEWS: &str = r#"
[[feature_view]]
name = "card_txn_1h"
entities = ["card"]
ttl = "2h"
push_source = "card_push"
source = { path = "data/txn.parquet", created_timestamp_column = "created" }
stream = { type = "nats", subject = "features.txn" }
features = [
  { name = "txn_count_1h", dtype = "Int64" },
  { name = "last_amount", dtype = "float32" },
]

[[feature_view]]
name = "card_merchant"
entities = ["card", "merchant"]
features = [{ name = "visits", dtype = "int32" }]
"#;

const SERVICES: &str = r#"
[[feature_service]]
name = "fraud"
features = ["card_txn_1h", "card_merchant:visits"]
"#;

fn load(files: &[(&str, &str)]) -> Result<Registry> {
    let sources: Vec<(PathBuf, String)> = files.iter().map(|(n, t)| (PathBuf::from(n), t.to_string())).collect();
    Registry::from_sources(Path::new("/repo"), &sources)
}

fn error(files: &[(&str, &str)]) -> String {
    match load(files) {
        Ok(_) => panic!("expected a load error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_repository_loads_with_resolved_keys_ttl_streams_and_services() {
    let reg = load(&[("entities.toml", ENTITIES), ("views.toml", VIEWS), ("services.toml", SERVICES)]).unwrap();
    let txn = reg.view("card_txn_1h").unwrap();
    assert_eq!(txn.join_keys, vec![("card_id".to_string(), ValueType::Int64)]);
    assert_eq!(txn.ttl_us, 2 * 3_600_000_000);
    assert_eq!(txn.features[0].dtype, ValueType::Int64);
    assert_eq!(txn.source.as_ref().unwrap().path, PathBuf::from("/repo/data/txn.parquet"));
    assert_eq!(txn.source.as_ref().unwrap().timestamp_field, "event_timestamp");
    let stream = txn.stream.as_ref().unwrap();
    assert_eq!(stream.label(), "nats:features.txn");
    assert_eq!(stream.dead_letter, "features.txn.dead_letter");
    let pair = reg.view("card_merchant").unwrap();
    assert_eq!(pair.join_keys[1], ("merchant".to_string(), ValueType::String));
    assert_eq!(pair.ttl_us, 0);
    let service = reg.service("fraud").unwrap();
    let names: Vec<String> = service.features.iter().map(|f| reg.ref_name(*f)).collect();
    assert_eq!(names, ["card_txn_1h:txn_count_1h", "card_txn_1h:last_amount", "card_merchant:visits"]);
    assert_eq!(reg.push_target("card_push").unwrap().name, "card_txn_1h");
    assert_eq!(reg.push_target("card_merchant").unwrap().name, "card_merchant");
    assert!(reg.push_target("nope").is_err());
}

#[test]
fn errors_name_the_file_and_line() {
    let unknown_entity = VIEWS.replace(r#"entities = ["card"]"#, r#"entities = ["crad"]"#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &unknown_entity)]);
    assert!(e.starts_with("views.toml:4: feature view 'card_txn_1h': unknown entity 'crad'"), "{e}");

    let dup = VIEWS.replace(r#"{ name = "last_amount""#, r#"{ name = "txn_count_1h""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &dup)]);
    assert!(
        e.starts_with("views.toml:11: feature view 'card_txn_1h': feature 'txn_count_1h' is declared twice"),
        "{e}"
    );

    let dtype = VIEWS.replace(r#"dtype = "int32""#, r#"dtype = "decimal""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &dtype)]);
    assert!(e.starts_with("views.toml:17: feature 'card_merchant:visits': unknown dtype 'decimal'"), "{e}");

    let e = error(&[
        ("entities.toml", ENTITIES),
        ("views.toml", VIEWS),
        ("s.toml", "[[feature_service]]\nname = \"x\"\nfeatures = [\"card_txn_1h:nope\"]\n"),
    ]);
    assert!(e.starts_with("s.toml:3: feature service 'x': feature view 'card_txn_1h' has no feature 'nope'"), "{e}");

    let e = error(&[("entities.toml", "[[entity]]\nname = \"card\"\nvalue_typ = \"int64\"\n")]);
    assert!(e.starts_with("entities.toml: TOML parse error at line 3"), "{e}");
    assert!(e.contains("value_typ"), "{e}");

    let e = error(&[(
        "e.toml",
        &format!("{ENTITIES}\n[[entity]]\nname = \"card2\"\njoin_key = \"card_id\"\nvalue_type = \"string\"\n"),
    )]);
    assert!(
        e.starts_with("e.toml:13: entity 'card2': join key 'card_id' is string here but int64 in entity 'card'"),
        "{e}"
    );

    let e = error(&[("e.toml", ENTITIES), ("e2.toml", ENTITIES)]);
    assert!(e.starts_with("e2.toml:3: entity 'card' is declared twice"), "{e}");

    let ttl = VIEWS.replace(r#"ttl = "2h""#, r#"ttl = "2 hours""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &ttl)]);
    assert!(e.starts_with("views.toml:5: feature view 'card_txn_1h': ttl '2 hours' is not a duration"), "{e}");

    let stream = VIEWS.replace(r#"type = "nats""#, r#"type = "pulsar""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &stream)]);
    assert!(e.contains("views.toml:8: feature view 'card_txn_1h': stream type 'pulsar'"), "{e}");

    let key_clash = VIEWS.replace(r#"{ name = "visits""#, r#"{ name = "merchant""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &key_clash)]);
    assert!(e.contains("has the name of the view's join key"), "{e}");
}

#[test]
fn references_resolve_with_clear_errors() {
    let reg = load(&[("entities.toml", ENTITIES), ("views.toml", VIEWS)]).unwrap();
    let refs = reg.resolve(&["card_merchant:visits", "card_txn_1h"]).unwrap();
    assert_eq!(refs.len(), 3);
    let e = reg.resolve(&["nope:x"]).unwrap_err().to_string();
    assert!(e.contains("unknown feature view 'nope'") && e.contains("'card_txn_1h'"), "{e}");
    assert!(matches!(reg.service("missing"), Err(FeatureError::NotFound(_))));
}

#[test]
fn a_rabbitmq_stream_takes_defaults_and_rejects_unknown_settings() {
    let rabbit =
        VIEWS.replace(r#"type = "nats", subject = "features.txn""#, r#"type = "rabbitmq", queue = "features.cards""#);
    let reg = load(&[("entities.toml", ENTITIES), ("views.toml", &rabbit)]).unwrap();
    let stream = reg.view("card_txn_1h").unwrap().stream.clone().unwrap();
    let url = "amqp://guest:guest@127.0.0.1:5672/%2f".to_string();
    assert_eq!(stream.source, StreamSource::Rabbitmq { url, queue: "features.cards".into() });
    assert_eq!(stream.label(), "rabbitmq:features.cards");
    assert_eq!(stream.dead_letter, "features.cards.dead_letter");
    assert_eq!(stream.batch, 512);

    let set = rabbit.replace(
        r#"queue = "features.cards""#,
        r#"queue = "q", url = "amqp://u:secret@mq/%2f", dead_letter = "dl", batch = 10"#,
    );
    let reg = load(&[("entities.toml", ENTITIES), ("views.toml", &set)]).unwrap();
    let stream = reg.view("card_txn_1h").unwrap().stream.clone().unwrap();
    assert_eq!(stream.source, StreamSource::Rabbitmq { url: "amqp://u:secret@mq/%2f".into(), queue: "q".into() });
    assert_eq!((stream.label().as_str(), stream.dead_letter.as_str(), stream.batch), ("rabbitmq:q", "dl", 10));

    let unknown = rabbit.replace(r#"queue = "features.cards""#, r#"queue = "q", subject = "s""#);
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &unknown)]);
    assert!(
        e.contains(
            "unknown stream setting 'subject' for type rabbitmq (allowed: type, url, queue, dead_letter, batch)"
        ),
        "{e}"
    );

    let no_queue = rabbit.replace(r#", queue = "features.cards""#, "");
    let e = error(&[("entities.toml", ENTITIES), ("views.toml", &no_queue)]);
    assert!(e.contains("feature view 'card_txn_1h': stream needs 'queue'"), "{e}");
}

#[test]
fn a_postgres_stream_takes_defaults_and_checks_the_slot_name() {
    use std::collections::BTreeMap;
    let parse = |line: &str| {
        let table: BTreeMap<String, toml::Value> = toml::from_str(line).unwrap();
        StreamSpec::parse("card-limits", &table)
    };
    let spec = parse(
        r#"type = "postgres"
table = "public.cards""#,
    )
    .unwrap();
    match &spec.source {
        StreamSource::Postgres { url, table, slot, publication, max_lag_bytes } => {
            assert_eq!(url, "postgresql://postgres@127.0.0.1:5432/postgres");
            assert_eq!(table, "public.cards");
            assert_eq!((slot.as_str(), publication.as_str()), ("flotilla_card_limits", "flotilla_card_limits"));
            assert_eq!(*max_lag_bytes, 1024 << 20);
        }
        other => panic!("not postgres: {other:?}"),
    }
    assert_eq!(spec.label(), "postgres:public.cards");
    assert!(parse(r#"type = "postgres""#).unwrap_err().contains("needs 'table'"));
    assert!(parse("type = \"postgres\"\ntable = \"t\"\nslot = \"Bad-Slot\"").unwrap_err().contains("lower-case"));
    assert!(parse("type = \"postgres\"\ntable = \"t\"\nmax_lag_mb = 0").unwrap_err().contains("max_lag_mb"));
    assert!(parse("type = \"postgres\"\ntable = \"t\"\ntopic = \"x\"").unwrap_err().contains("unknown stream setting"));
}

#[test]
fn a_worker_with_its_own_store_consumes_under_its_own_identity() {
    use std::collections::BTreeMap;
    let parse = |text: &str| {
        let table: BTreeMap<String, toml::Value> = toml::from_str(text).unwrap();
        StreamSpec::parse("card_txn", &table).unwrap()
    };
    let nats = parse("type = \"nats\"\nsubject = \"s\"").for_consumer("vm-8010");
    assert!(matches!(&nats.source, StreamSource::Nats { durable, .. } if durable == "flotilla-card_txn-vm-8010"));
    let redis = parse("type = \"redis\"\nstream = \"s\"").for_consumer("w1");
    assert!(matches!(&redis.source, StreamSource::Redis { group, .. } if group == "flotilla-w1"));
    let pg = parse("type = \"postgres\"\ntable = \"t\"").for_consumer("VM-8010.a");
    assert!(matches!(&pg.source, StreamSource::Postgres { slot, .. } if slot == "flotilla_card_txn_vm_8010_a"));
    let long = parse("type = \"postgres\"\ntable = \"t\"").for_consumer(&"x".repeat(100));
    assert!(matches!(&long.source, StreamSource::Postgres { slot, .. } if slot.len() == 63));
    let rabbit = parse("type = \"rabbitmq\"\nqueue = \"q\"");
    assert!(rabbit.shared_by_consumers() && rabbit.for_consumer("w1") == rabbit);
}

#[test]
fn a_nats_stream_declares_its_ack_wait() {
    use std::collections::BTreeMap;
    use std::time::Duration;
    let parse = |text: &str| {
        let table: BTreeMap<String, toml::Value> = toml::from_str(text).unwrap();
        StreamSpec::parse("card_txn", &table)
    };
    let wait = |text: &str| match parse(text).unwrap().source {
        StreamSource::Nats { ack_wait, .. } => ack_wait,
        other => panic!("not nats: {other:?}"),
    };
    assert_eq!(wait("type = \"nats\"\nsubject = \"s\""), stream::DEFAULT_NATS_ACK_WAIT);
    assert_eq!(wait("type = \"nats\"\nsubject = \"s\"\nack_wait = \"2s\""), Duration::from_secs(2));
    assert_eq!(wait("type = \"nats\"\nsubject = \"s\"\nack_wait = \"1m30s\""), Duration::from_secs(90));
    for bad in ["\"500ms\"", "\"2h\"", "\"soon\"", "5"] {
        let e = parse(&format!("type = \"nats\"\nsubject = \"s\"\nack_wait = {bad}")).unwrap_err();
        assert!(e.contains("ack_wait"), "{bad}: {e}");
    }
}
