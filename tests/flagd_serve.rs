//! `chaosgate connect flagd`, the "approved out" side, on the real broker: approved-flag
//! records produced on a topic of the test's own (transactionally and not, as the worker
//! writes them), the real binary serving them (no proposed folder), and the real
//! OpenFeature consumer reading its sync service: flagd's Rust provider
//! (`open-feature-flagd`, in-process resolver, no cache), besides `GET /flags.json` and
//! the file.
//!
//! Bounds are generous (they catch hangs), except the issue's "within a second" for a
//! new approved record to reach the provider.

#[path = "support/connect.rs"]
mod connect;
#[path = "support/flagd.rs"]
mod flagd;
#[path = "support/kafka.rs"]
mod kafka;

use std::time::{Duration, Instant};

use chaosgate::contract::KafkaMessage;
use flagd::{
    Bridge, Produce, WAIT, approved_record, approved_record_in, definition, enabled, evaluate,
    produce, put, setup, wait_evaluates,
};
use open_feature_flagd::flagd::sync::v1::{
    FetchAllFlagsRequest, GetMetadataRequest, SyncFlagsRequest,
};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_approved_record_reaches_the_provider_within_a_second() {
    let (servers, topic, dir) = setup("flagd-serve-latency", 2).await;
    put(
        &servers,
        &topic,
        Produce::Committed,
        "checkout",
        enabled("one"),
    )
    .await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    // Read to the end at start: served before the first request.
    assert_eq!(bridge.served("checkout").await, Some(enabled("one")));
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    assert_eq!(
        evaluate(&provider, "new-banner").await,
        None,
        "never approved: not served"
    );

    // A new flag (plain producer), a change (transaction), a disable (the provider then
    // treats the flag as absent): each within a second of its acknowledgment or commit.
    for (how, flag, approved, evaluates) in [
        (Produce::Plain, "new-banner", enabled("two"), Some("two")),
        (
            Produce::Committed,
            "checkout",
            enabled("three"),
            Some("three"),
        ),
        (
            Produce::Plain,
            "checkout",
            definition("DISABLED", "three"),
            None,
        ),
    ] {
        let acked = put(&servers, &topic, how, flag, approved.clone()).await;
        wait_evaluates(&provider, flag, evaluates).await;
        let took = acked.elapsed();
        println!("{flag} {approved} reached the provider in {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "{flag} {approved} took {took:?}"
        );
    }
    // The document shows the disabled flag as DISABLED.
    assert_eq!(
        bridge.served("checkout").await,
        Some(definition("DISABLED", "three"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_undecodable_and_unservable_records_are_never_served() {
    let (servers, topic, dir) = setup("flagd-serve-refused", 1).await;
    let good = enabled("one");
    put(
        &servers,
        &topic,
        Produce::Committed,
        "checkout",
        good.clone(),
    )
    .await;
    // "two", only ever in aborted transactions.
    let abort_two = || {
        put(
            &servers,
            &topic,
            Produce::Aborted,
            "checkout",
            enabled("two"),
        )
    };
    // An aborted transaction last on the topic: the bridge still reads to the end.
    abort_two().await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    assert_eq!(bridge.served("checkout").await, Some(good.clone()));
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );

    // Watch the provider the whole time: it never sees anything but "one".
    let watching = tokio::spawn({
        let provider = bridge.provider(None).await;
        async move {
            let mut seen = std::collections::BTreeSet::new();
            let started = Instant::now();
            loop {
                let got = evaluate(&provider, "checkout").await;
                seen.insert(got.clone());
                if evaluate(&provider, "marker").await.is_some() || started.elapsed() > WAIT {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    abort_two().await;
    let mut undecodable = approved_record("checkout", enabled("three"));
    undecodable.value = Some(b"{\"project\": not json".to_vec());
    let mut null_default = enabled("three");
    null_default["defaultVariant"] = Value::Null;
    let mut dangling_ref = enabled("three");
    dangling_ref["targeting"] = json!({"if": [{"$ref": "is-staff"}, "three", "one"]});
    produce(
        &servers,
        &topic,
        Produce::Plain,
        &[
            undecodable,
            approved_record("checkout", null_default),
            approved_record("checkout", dangling_ref),
            approved_record("checkout", enabled("four")),
            approved_record("marker", enabled("one")),
        ],
    )
    .await;
    bridge.wait_served("marker", &enabled("one")).await;
    let seen = watching.await.expect("watcher");
    assert_eq!(
        seen,
        [Some("one".to_string())].into(),
        "the provider saw {seen:?}"
    );
    assert_eq!(bridge.served("checkout").await, Some(good));
    assert_eq!(evaluate(&provider, "marker").await.as_deref(), Some("one"));
    // Each refused record is logged with where it is and why.
    let log = bridge.log();
    for (offset, why) in [
        ("offset=6", "not a CloudEvent"),
        ("offset=7", "defaultVariant is missing or not a string"),
        ("offset=8", "$ref"),
        ("offset=9", "names no variant"),
    ] {
        assert!(
            log.lines().any(|l| l.contains("record skipped")
                && l.contains(&topic)
                && l.contains("partition=0")
                && l.contains(offset)
                && l.contains(why)),
            "no skip logged at {offset} ({why}):\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_serves_etags_and_the_file_and_the_sync_service_its_selectors() {
    let (servers, topic, dir) = setup("flagd-serve-http", 1).await;
    produce(
        &servers,
        &topic,
        Produce::Committed,
        &[
            approved_record("checkout", enabled("one")),
            approved_record_in("web", "staging", "search", enabled("two")),
        ],
    )
    .await;
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    let (status, etag, content_type, body) = bridge.get("", None).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "strong ETag: {etag}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON"),
        json!({"flags": {"checkout": enabled("one")}})
    );
    // The file holds the same bytes.
    assert_eq!(
        std::fs::read_to_string(&bridge.file).expect("the file"),
        body
    );
    // If-None-Match: 304 with no body, in every form; another tag: 200.
    for tag in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"x\", {etag}"),
        "*".into(),
    ] {
        let (status, again, _, body) = bridge.get("", Some(&tag)).await;
        assert_eq!(
            (status, again.as_str(), body.as_str()),
            (304, etag.as_str(), ""),
            "{tag}"
        );
    }
    assert_eq!(bridge.get("", Some("\"other\"")).await.0, 200);
    // Another set by selector; a bad selector is refused naming the forms.
    let (status, _, _, other) = bridge.get("?selector=web/staging", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&other).expect("JSON"),
        json!({"flags": {"search": enabled("two")}})
    );
    assert_eq!(
        bridge.get("?selector=nobody/here", None).await.3,
        r#"{"flags":{}}"#
    );
    let (status, _, _, refused) = bridge.get("?selector=flagSetId%3Dx", None).await;
    assert_eq!(status, 400);
    assert!(refused.contains("PROJECT/ENVIRONMENT"), "{refused}");

    // The sync service: FetchAllFlags = the same document; GetMetadata answers; a bad
    // selector is INVALID_ARGUMENT.
    let mut client = bridge.sync_client().await;
    let fetched = client
        .fetch_all_flags(FetchAllFlagsRequest {
            provider_id: "test".into(),
            selector: String::new(),
        })
        .await
        .expect("FetchAllFlags")
        .into_inner();
    assert_eq!(fetched.flag_configuration, body);
    let fetched = client
        .fetch_all_flags(FetchAllFlagsRequest {
            provider_id: "test".into(),
            selector: "web/staging".into(),
        })
        .await
        .expect("FetchAllFlags web/staging")
        .into_inner();
    assert_eq!(fetched.flag_configuration, other);
    // Deprecated in the proto, still in the service: an empty Struct.
    #[allow(deprecated)]
    let metadata = client.get_metadata(GetMetadataRequest {}).await;
    assert_eq!(
        metadata.expect("GetMetadata").into_inner().metadata,
        Some(Default::default())
    );
    let refused = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: "a=b".into(),
        })
        .await
        .expect_err("a bad selector is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("PROJECT/ENVIRONMENT"),
        "{}",
        refused.message()
    );
    // A provider on another set sees that set only.
    let staging = bridge.provider(Some("web/staging")).await;
    assert_eq!(evaluate(&staging, "search").await.as_deref(), Some("two"));
    assert_eq!(evaluate(&staging, "checkout").await, None);

    // A change: a new tag, the old one no longer matches, the file follows.
    bridge
        .approve(Produce::Plain, "checkout", enabled("two"))
        .await;
    let (status, new_etag, _, new_body) = bridge.get("", Some(&etag)).await;
    assert_eq!(status, 200);
    assert_ne!(new_etag, etag);
    let started = Instant::now();
    while std::fs::read_to_string(&bridge.file).unwrap_or_default() != new_body {
        assert!(
            started.elapsed() < WAIT,
            "the file did not follow the change"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leftovers: Vec<_> = std::fs::read_dir(bridge.file.parent().expect("folder"))
        .expect("served folder")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("flags.json")]);

    // Health and metrics.
    let http = reqwest::Client::new();
    let health = http
        .get(format!("{}/healthz", bridge.http))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", bridge.http))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains("chaosgate_flagd_approved_records_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("chaosgate_flagd_sync_streams 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_identical_documents_and_a_restarted_bridge_the_same_configuration() {
    let (servers, topic, dir) = setup("flagd-serve-replicas", 3).await;
    let flags = ["a", "b", "c", "d", "e", "f"];
    let records: Vec<KafkaMessage> = flags
        .iter()
        .map(|f| approved_record(f, enabled("one")))
        .collect();
    produce(&servers, &topic, Produce::Committed, &records).await;
    let later: Vec<KafkaMessage> = flags
        .iter()
        .step_by(2)
        .map(|f| approved_record(f, enabled("two")))
        .collect();
    produce(&servers, &topic, Produce::Plain, &later).await;
    let dir_b = tempfile::tempdir().expect("temp dir");
    let mut a = Bridge::start(&servers, &topic, dir.path()).await;
    let b = Bridge::start(&servers, &topic, dir_b.path()).await;
    let (_, tag_a, _, body_a) = a.get("", None).await;
    let (_, tag_b, _, body_b) = b.get("", None).await;
    assert_eq!((&tag_a, &body_a), (&tag_b, &body_b), "replicas differ");
    let served: Value = serde_json::from_str(&body_a).expect("JSON");
    assert_eq!(served["flags"]["a"], enabled("two"));
    assert_eq!(served["flags"]["b"], enabled("one"));

    let provider = a.provider(None).await;
    assert_eq!(evaluate(&provider, "a").await.as_deref(), Some("two"));
    let (status, took) = a.stop().await;
    assert!(
        status.success(),
        "the bridge exited with {status}:\n{}",
        a.log()
    );
    println!("bridge stopped in {took:?} with a provider connected");
    // While it is down: a change, which the restarted bridge must read.
    b.approve(Produce::Committed, "b", enabled("three")).await;
    a.spawn().await;
    let took = wait_evaluates(&provider, "b", Some("three")).await;
    println!("provider reconnected and saw the change in {took:?}");
    assert_eq!(evaluate(&provider, "a").await.as_deref(), Some("two"));
    let (_, tag_a, _, body_a) = a.get("", None).await;
    let (_, tag_b, _, body_b) = b.get("", None).await;
    assert_eq!(
        (&tag_a, &body_a),
        (&tag_b, &body_b),
        "the restarted replica differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_open_sync_streams_exits_promptly() {
    let (servers, topic, dir) = setup("flagd-serve-shutdown", 1).await;
    put(&servers, &topic, Produce::Plain, "checkout", enabled("one")).await;
    let mut bridge = Bridge::start(&servers, &topic, dir.path()).await;
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    // A second, raw stream: its set's document at once, then only that set's changes.
    let mut client = bridge.sync_client().await;
    let mut stream = client
        .sync_flags(SyncFlagsRequest {
            provider_id: "test".into(),
            selector: String::new(),
        })
        .await
        .expect("SyncFlags")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a message");
    assert_eq!(
        serde_json::from_str::<Value>(&first.flag_configuration).expect("JSON"),
        json!({"flags": {"checkout": enabled("one")}})
    );
    let other_set = approved_record_in("web", "staging", "search", enabled("one"));
    produce(&servers, &topic, Produce::Plain, &[other_set]).await;
    put(&servers, &topic, Produce::Plain, "checkout", enabled("two")).await;
    let next = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a second message")
        .expect("the stream is open")
        .expect("a message");
    assert_eq!(
        serde_json::from_str::<Value>(&next.flag_configuration).expect("JSON"),
        json!({"flags": {"checkout": enabled("two")}}),
        "another set's change is not sent"
    );
    wait_evaluates(&provider, "checkout", Some("two")).await;
    // Then nobody reads the stream any more.
    let (status, took) = bridge.stop().await;
    assert!(
        status.success(),
        "the bridge exited with {status}:\n{}",
        bridge.log()
    );
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}:\n{}",
        bridge.log()
    );
    println!("shutdown with two open streams took {took:?}");
    // The stream ended (cleanly or with an error), it did not hang.
    let ended = tokio::time::timeout(WAIT, stream.message()).await;
    assert!(
        matches!(ended, Ok(Ok(None)) | Ok(Err(_))),
        "stream after shutdown: {ended:?}"
    );
    // The provider keeps the last configuration while the source is down.
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("two")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_later_and_partitions_added_later_are_read() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    let servers = kafka::require_broker();
    let topic = kafka::unique_topic("flagd-serve-later");
    let dir = tempfile::tempdir().expect("temp dir");
    // No topic yet: nothing is served (an empty configuration would turn every flag
    // off in its readers), and the log says what is missing.
    let mut bridge = Bridge::configure(&servers, &topic, dir.path());
    bridge.launch();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = reqwest::get(format!("{}/flags.json", bridge.http)).await;
    assert!(
        refused.is_err(),
        "served before its topic exists: {refused:?}\n{}",
        bridge.log()
    );
    assert!(
        bridge
            .log()
            .contains(&format!("topic {topic} does not exist")),
        "{}",
        bridge.log()
    );
    kafka::create_topics(&servers, &[&topic], 1).await;
    bridge.wait_healthy().await;
    assert_eq!(bridge.get("", None).await.3, r#"{"flags":{}}"#);
    put(&servers, &topic, Produce::Plain, "first", enabled("one")).await;
    bridge.wait_served("first", &enabled("one")).await;

    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("admin client");
    let added = admin
        .create_partitions(
            &[NewPartitions::new(&topic, 3)],
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("create partitions");
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &servers)
        .create()
        .expect("producer");
    for (partition, flag) in [(1, "on-one"), (2, "on-two")] {
        let record = approved_record(flag, enabled("two"));
        producer
            .send(
                chaosgate::bus::record::to_record(&topic, &record).partition(partition),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce on a new partition");
    }
    bridge.wait_served("on-one", &enabled("two")).await;
    bridge.wait_served("on-two", &enabled("two")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_keeps_the_configuration_served_and_reading_resumes() {
    // A broker of this test's own: stopping it disturbs no other test.
    let broker = kafka::OwnBroker::start().await;
    let servers = broker.servers();
    let topic = kafka::unique_topic("flagd-serve-outage");
    kafka::create_topics(&servers, &[&topic], 1).await;
    put(&servers, &topic, Produce::Plain, "checkout", enabled("one")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bridge = Bridge::start(&servers, &topic, dir.path()).await;
    let provider = bridge.provider(None).await;
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    let (_, etag, _, body) = bridge.get("", None).await;

    broker.script("stop").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Still healthy, still serving the same document, over HTTP and to the provider.
    let health = reqwest::get(format!("{}/healthz", bridge.http))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(bridge.get("", None).await.1, etag);
    assert_eq!(bridge.get("", None).await.3, body);
    assert_eq!(
        evaluate(&provider, "checkout").await.as_deref(),
        Some("one")
    );
    let late = bridge.provider(None).await;
    assert_eq!(
        evaluate(&late, "checkout").await.as_deref(),
        Some("one"),
        "a provider connecting during the outage"
    );

    // Long enough for librdkafka to queue hundreds of error events: the reader once
    // waited after each of them, and missed records written after the brokers were back.
    tokio::time::sleep(Duration::from_secs(45)).await;
    broker.script("start").await;
    bridge
        .approve(Produce::Plain, "checkout", enabled("two"))
        .await;
    wait_evaluates(&provider, "checkout", Some("two")).await;
}
