//! Traces: OpenTelemetry spans exported over OTLP, and W3C trace context carried in
//! Kafka headers, so a flag service's trace continues through chaosgate.
//!
//! `tracing` spans become OpenTelemetry spans through `tracing-opentelemetry`; the
//! exporter is OTLP/gRPC on `tonic`, which runs on the worker's own tokio runtime (no
//! extra blocking HTTP client thread) and matches the documented `otlp_endpoint`
//! (`http://collector:4317`). Only spans of chaosgate's own code at `INFO` or above are
//! exported (targets `chaosgate::*`), independent of the log filter; never those of the
//! exporter's HTTP/2 stack, which would feed on themselves.
//!
//! The shape of a flag-change's trace, with the OpenTelemetry messaging conventions for
//! Kafka:
//!
//! ```text
//! process flag-changes      (CONSUMER, parent: the incoming traceparent) <- process_span
//!   stage <id>                                                          <- stage_span
//!     step <id>             (one per run of the step: run_id, attempt)  <- step_span
//!       fault inject <name> / fault revert <name>                       <- fault_span
//!       probe <name>        (one check: its attempts)                   <- probe_span
//!       send chaos-experiment-runs (the `running` record, PRODUCER)    <- send_span
//!   send chaos-experiment-runs, send flag-commands, send flag-changes-dlq (PRODUCER)
//! ```
//!
//! Cost without an exporter: the fault, probe and send spans use the target
//! [`SPAN_ONLY_TARGET`], which the log layer leaves out, so with no OpenTelemetry layer
//! no subscriber wants them and `tracing` skips them at the callsite (one cached check).
//! The process, stage and step spans stay: their fields (`flag`, `pipeline_id`,
//! `pipeline_execution_id`, `run_id`) are what every log line of a run carries.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Names of the OpenTelemetry semantic-convention attributes chaosgate sets on its
/// Kafka spans (messaging conventions, Kafka flavour).
pub(crate) mod semconv {
    /// The value of `messaging.system`.
    pub(crate) const KAFKA: &str = "kafka";
    /// `messaging.kafka.destination.partition`: the partition (integer).
    pub(crate) const MESSAGING_KAFKA_DESTINATION_PARTITION: &str =
        "messaging.kafka.destination.partition";
    /// `messaging.kafka.message.offset`: the record's offset (integer).
    pub(crate) const MESSAGING_KAFKA_MESSAGE_OFFSET: &str = "messaging.kafka.message.offset";
    /// Operation of a consumed record being handled.
    pub(crate) const PROCESS: &str = "process";
    /// Operation of a record being produced.
    pub(crate) const SEND: &str = "send";
}

/// W3C trace context header carrying trace id, parent span id and flags.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// W3C trace context header carrying vendor state.
pub(crate) const TRACESTATE: &str = "tracestate";

/// Target of the spans only traces show (fault inject/revert, probe checks, sends): the
/// log layer filters them out, so they cost nothing when no exporter is configured.
pub(crate) const SPAN_ONLY_TARGET: &str = "chaosgate::traces";

/// Whether `metadata` is a span only traces show (see [`SPAN_ONLY_TARGET`]).
pub(crate) fn is_span_only(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target() == SPAN_ONLY_TARGET
}

/// Name of the service in exported spans.
pub(crate) const SERVICE_NAME: &str = "chaosgate";

/// Why traces could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The OTLP/gRPC exporter needs the tokio runtime it will run on.
    #[error(
        "telemetry.otlp_endpoint is set but no tokio runtime is running: set up telemetry inside the runtime"
    )]
    NoRuntime,
    /// The exporter could not be built from the endpoint.
    #[error("telemetry.otlp_endpoint {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint (password masked).
        endpoint: String,
        /// The builder's error.
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// An OTLP/gRPC trace pipeline to `endpoint`: the provider (flush and shut it down at
/// exit) and the tracer for the `tracing` layer. Call inside the tokio runtime.
pub fn pipeline(endpoint: &str) -> Result<(SdkTracerProvider, SdkTracer), TracesError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TracesError::NoRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|source| TracesError::Exporter {
            endpoint: super::redact::url(endpoint).into_owned(),
            source,
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(ScrubbedExporter(exporter))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(SERVICE_NAME);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok((provider, tracer))
}

/// An exporter that masks the installed secrets ([`super::redact::installed`]) in every
/// text of a span (its attributes, its events' names and attributes, its error status)
/// before `E` sends it: a `tracing` event inside a span becomes a span event, and its
/// message may quote a library error that quotes a secret.
#[derive(Debug)]
struct ScrubbedExporter<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for ScrubbedExporter<E>
{
    fn export(
        &self,
        mut batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        if let Some(secrets) = super::redact::installed() {
            for span in &mut batch {
                scrub_span(&secrets, span);
            }
        }
        self.0.export(batch)
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Masks `secrets` in the texts of `span` (see [`ScrubbedExporter`]).
fn scrub_span(secrets: &super::redact::Secrets, span: &mut opentelemetry_sdk::trace::SpanData) {
    use std::borrow::Cow;
    let scrub_values = |attributes: &mut Vec<opentelemetry::KeyValue>| {
        for attribute in attributes {
            if let opentelemetry::Value::String(text) = &attribute.value
                && let Cow::Owned(clean) = secrets.scrub(text.as_str())
            {
                attribute.value = opentelemetry::Value::String(clean.into());
            }
        }
    };
    scrub_values(&mut span.attributes);
    for event in &mut span.events.events {
        if let Cow::Owned(clean) = secrets.scrub(&event.name) {
            event.name = Cow::Owned(clean);
        }
        scrub_values(&mut event.attributes);
    }
    if let opentelemetry::trace::Status::Error { description } = &span.status
        && let Cow::Owned(clean) = secrets.scrub(description)
    {
        span.status = opentelemetry::trace::Status::Error {
            description: Cow::Owned(clean),
        };
    }
}

/// Whether spans and events of `target` go to the exporter: chaosgate's own only.
pub(crate) fn is_exported_target(target: &str) -> bool {
    target == "chaosgate" || target.starts_with("chaosgate::")
}

/// Whether a span or event goes to the exporter: chaosgate's own, at `INFO` or above
/// (debug spans stay in the logs), whatever the log filter says.
pub(crate) fn is_exported(metadata: &tracing::Metadata<'_>) -> bool {
    is_exported_target(metadata.target()) && *metadata.level() <= tracing::Level::INFO
}

/// Kafka record headers read as a W3C trace-context carrier (names case-insensitive,
/// values UTF-8).
struct HeaderReader<'h>(&'h [(String, Vec<u8>)]);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .and_then(|(_, value)| std::str::from_utf8(value).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Kafka record headers written as a W3C trace-context carrier: a header set replaces
/// any earlier header of the same name.
struct HeaderWriter<'h>(&'h mut Vec<(String, Vec<u8>)>);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.retain(|(name, _)| !name.eq_ignore_ascii_case(key));
        self.0.push((key.to_string(), value.into_bytes()));
    }
}

/// The parent context named by a record's `traceparent`/`tracestate` headers (an empty
/// context when they are absent or malformed).
pub fn extract(headers: &[(String, Vec<u8>)]) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderReader(headers))
}

/// Writes `context`'s span as `traceparent` (and `tracestate` when it has one) into a
/// record's headers, replacing any there. Nothing is written for a context without a
/// valid span (no tracing set up).
pub(crate) fn inject_context(
    context: &opentelemetry::Context,
    headers: &mut Vec<(String, Vec<u8>)>,
) {
    TraceContextPropagator::new().inject_context(context, &mut HeaderWriter(headers));
}

/// Writes `span`'s trace context into a record's headers (see [`inject_context`]).
///
/// Without an exporter spans have no trace context; then the context the flag-change
/// arrived with (kept on its [`process_span`]) is written, if the current span is inside
/// one, so the flag service's trace still continues through chaosgate's outputs.
pub fn inject(span: &tracing::Span, headers: &mut Vec<(String, Vec<u8>)>) {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    if context.span().span_context().is_valid() {
        inject_context(&context, headers);
    } else if let Some(incoming) = incoming_of_current() {
        inject_context(&incoming, headers);
    }
}

/// Writes the trace context of a new `send <topic>` span (a child of the current span)
/// into the headers of a record about to be produced to `topic`, leaving out an empty
/// `tracestate` (W3C Trace Context: a vendor list that is empty is not sent; the
/// propagator writes one anyway).
pub(crate) fn inject_send(topic: &str, headers: &mut Vec<(String, Vec<u8>)>) {
    inject(&send_span(topic), headers);
    headers.retain(|(name, value)| !(name.eq_ignore_ascii_case(TRACESTATE) && value.is_empty()));
}

/// The trace context a flag-change arrived with, kept on its `process` span for
/// [`inject`] when no exporter gives spans their own.
struct Incoming(opentelemetry::Context);

fn remember_incoming(span: &tracing::Span, incoming: opentelemetry::Context) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(data) = tracing_subscriber::registry::LookupSpan::span(registry, id)
        {
            data.extensions_mut().insert(Incoming(incoming));
        }
    });
}

fn incoming_of_current() -> Option<opentelemetry::Context> {
    tracing::Span::current()
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            let span = tracing_subscriber::registry::LookupSpan::span(registry, id)?;
            span.scope()
                .find_map(|s| s.extensions().get::<Incoming>().map(|i| i.0.clone()))
        })
        .flatten()
}

/// The root span of one consumed flag-change: `process <topic>`, kind CONSUMER, with the
/// messaging attributes, continuing the trace of the record's `traceparent` header.
///
/// Fields left empty for the caller to [`tracing::Span::record`] once known, so that
/// every log line inside carries them: `flag`, `pipeline_id`, `pipeline_execution_id`,
/// `event_id`.
pub fn process_span(
    topic: &str,
    partition: i32,
    offset: i64,
    group: &str,
    headers: &[(String, Vec<u8>)],
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "process",
        otel.name = %format!("{} {topic}", semconv::PROCESS),
        otel.kind = "consumer",
        messaging.system = semconv::KAFKA,
        messaging.operation.name = semconv::PROCESS,
        messaging.operation.type = semconv::PROCESS,
        messaging.destination.name = %topic,
        messaging.kafka.destination.partition = partition,
        messaging.kafka.message.offset = offset,
        messaging.consumer.group.name = %group,
        flag = tracing::field::Empty,
        pipeline_id = tracing::field::Empty,
        pipeline_execution_id = tracing::field::Empty,
        event_id = tracing::field::Empty,
    );
    let parent = extract(headers);
    if opentelemetry::trace::TraceContextExt::has_active_span(&parent) {
        // Fails only when no OpenTelemetry layer is installed: then the incoming context
        // is passed on as it came.
        if span.set_parent(parent.clone()).is_err() {
            remember_incoming(&span, parent);
        }
    }
    span
}

/// A span for producing one record to `topic`: `send <topic>`, kind PRODUCER, a child
/// of the current span. Inject it into the record's headers with [`inject`]; record the
/// partition and offset once delivered with [`record_delivery`].
pub fn send_span(topic: &str) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_ONLY_TARGET,
        "send",
        otel.name = %format!("{} {topic}", semconv::SEND),
        otel.kind = "producer",
        messaging.system = semconv::KAFKA,
        messaging.operation.name = semconv::SEND,
        messaging.operation.type = semconv::SEND,
        messaging.destination.name = %topic,
        messaging.kafka.destination.partition = tracing::field::Empty,
        messaging.kafka.message.offset = tracing::field::Empty,
    )
}

/// Records what the worker learnt of a consumed flag-change on its [`process_span`], so
/// every log line inside names it: the flag key (`project/environment/flag`), the event
/// id, and, when it is gated, the pipeline and the pipeline execution id.
pub(crate) fn record_change(
    span: &tracing::Span,
    change: &crate::contract::FlagChange,
    pipeline_id: Option<&str>,
) {
    if span.is_disabled() {
        return;
    }
    use tracing::field::display;
    span.record("flag", display(change.flag_key()));
    span.record("event_id", display(&change.event_id));
    if let Some(pipeline_id) = pipeline_id {
        span.record("pipeline_id", display(pipeline_id));
        span.record(
            "pipeline_execution_id",
            display(crate::contract::ids::pipeline_execution_id(
                &change.event_id,
                pipeline_id,
            )),
        );
    }
}

/// The span of one stage of a pipeline execution: `stage <id>`, a child of the current
/// span (the flag-change's `process` span).
pub fn stage_span(stage_id: &str, stage_type: &str) -> tracing::Span {
    tracing::info_span!(
        "stage",
        otel.name = %format!("stage {stage_id}"),
        stage_id = %stage_id,
        stage_type = %stage_type,
    )
}

/// The span of one run of a chaos step: `step <id>`, a child of the current span (its
/// stage), carrying the run id every log line of the run shows.
pub(crate) fn step_span(
    step_id: &str,
    experiment_id: &str,
    run_id: &str,
    attempt: u32,
) -> tracing::Span {
    tracing::info_span!(
        "step",
        otel.name = %format!("step {step_id}"),
        step_id = %step_id,
        experiment_id = %experiment_id,
        run_id = %run_id,
        attempt,
    )
}

/// The span of injecting (`action` = `inject`) or reverting (`revert`) one fault:
/// `fault inject <name>`, a child of `parent` (the run's step span). `kind` is the
/// fault's kind as the catalog spells it (`command`, `network`, ...). Traces only.
pub(crate) fn fault_span(
    parent: &tracing::Span,
    action: &'static str,
    name: &str,
    kind: &str,
) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_ONLY_TARGET,
        parent: parent,
        "fault",
        otel.name = %format!("fault {action} {name}"),
        chaosgate.fault.action = action,
        chaosgate.fault.name = %name,
        chaosgate.fault.kind = kind,
    )
}

/// The span of one check of a probe (its attempts, up to the probe's `attempts`):
/// `probe <name>`, a child of `parent` (the run's step span). `probe_type` is the probe's
/// type as the catalog spells it (`http`, `tcp`, ...); `mode` its mode, recorded as its
/// `Debug` text. Traces only.
pub(crate) fn probe_span(
    parent: &tracing::Span,
    name: &str,
    probe_type: &str,
    mode: impl std::fmt::Debug,
) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_ONLY_TARGET,
        parent: parent,
        "probe",
        otel.name = %format!("probe {name}"),
        chaosgate.probe.name = %name,
        "chaosgate.probe.type" = probe_type,
        chaosgate.probe.mode = ?mode,
    )
}

/// The span of one attempt of a probe check: `probe attempt`, a child of the current
/// span (the check's [`probe_span`]). Traces only.
pub(crate) fn probe_attempt_span(attempt: u32) -> tracing::Span {
    tracing::info_span!(
        target: SPAN_ONLY_TARGET,
        "probe attempt",
        otel.name = "probe attempt",
        chaosgate.probe.attempt = attempt,
    )
}

/// Records where a produced record landed on its [`send_span`].
pub fn record_delivery(span: &tracing::Span, partition: i32, offset: i64) {
    span.record(semconv::MESSAGING_KAFKA_DESTINATION_PARTITION, partition);
    span.record(semconv::MESSAGING_KAFKA_MESSAGE_OFFSET, offset);
}

/// The trace id of a span as 32 hex digits, for log lines and records (`None` without
/// tracing).
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_spans_lose_known_secrets() {
        let mut secrets = super::super::redact::Secrets::default();
        secrets.add_url("http://chaos:t0x%40pa55@toxiproxy:8474");
        let mut events = opentelemetry_sdk::trace::SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "inject failed: http://chaos:t0x%40pa55@toxiproxy:8474/proxies",
            std::time::SystemTime::now(),
            vec![opentelemetry::KeyValue::new("error", "sent t0x@pa55")],
            0,
        ));
        let mut span = opentelemetry_sdk::trace::SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: opentelemetry::trace::SpanKind::Internal,
            name: "fault inject".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: vec![
                opentelemetry::KeyValue::new("url", "http://chaos:t0x%40pa55@toxiproxy:8474"),
                opentelemetry::KeyValue::new("attempt", 1),
            ],
            dropped_attributes_count: 0,
            events,
            links: Default::default(),
            status: opentelemetry::trace::Status::error("refused t0x%40pa55"),
            instrumentation_scope: Default::default(),
        };
        scrub_span(&secrets, &mut span);
        let text = format!("{span:?}");
        assert!(!text.contains("t0x"), "{text}");
        assert!(text.contains("http://chaos:***@toxiproxy:8474"), "{text}");
    }
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn incoming() -> Vec<(String, Vec<u8>)> {
        vec![
            ("ce_id".into(), b"e-1".to_vec()),
            (
                "TraceParent".into(),
                format!("00-{TRACE}-{PARENT}-01").into_bytes(),
            ),
            ("tracestate".into(), b"flags=on,vendor=x".to_vec()),
        ]
    }

    #[test]
    fn trace_context_round_trips_through_kafka_headers() {
        let context = extract(&incoming());
        let span = context.span().span_context().clone();
        assert!(span.is_valid() && span.is_remote());
        assert_eq!(span.trace_id().to_string(), TRACE);
        assert_eq!(span.span_id().to_string(), PARENT);
        assert!(span.is_sampled());
        assert_eq!(span.trace_state().get("vendor"), Some("x"));

        let mut out = vec![
            ("ce_type".into(), b"t".to_vec()),
            ("traceparent".into(), b"stale".to_vec()),
        ];
        inject_context(&context, &mut out);
        let back = extract(&out).span().span_context().clone();
        assert_eq!(back, span);
        assert_eq!(
            out.iter().filter(|(n, _)| n == TRACEPARENT).count(),
            1,
            "the stale traceparent is replaced"
        );
        assert_eq!(out[0].0, "ce_type");
    }

    #[test]
    fn missing_or_malformed_context_yields_no_parent() {
        assert!(!extract(&[]).has_active_span());
        let bad = vec![("traceparent".to_string(), b"00-zz-yy-01".to_vec())];
        assert!(!extract(&bad).span().span_context().is_valid());
        let mut out = Vec::new();
        inject_context(&opentelemetry::Context::new(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn an_unsampled_remote_parent_keeps_its_flags() {
        let remote = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(PARENT).unwrap(),
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        let mut out = Vec::new();
        inject_context(
            &opentelemetry::Context::new().with_remote_span_context(remote),
            &mut out,
        );
        assert_eq!(out[0].1, format!("00-{TRACE}-{PARENT}-00").into_bytes());
    }

    #[test]
    fn process_and_send_spans_continue_the_incoming_trace() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let process = process_span("flag-changes", 2, 41, "chaosgate", &incoming());
            assert_eq!(trace_id(&process).as_deref(), Some(TRACE));
            let _entered = process.enter();
            let send = send_span("flag-commands");
            let mut headers = Vec::new();
            inject(&send, &mut headers);
            let sent = extract(&headers).span().span_context().clone();
            assert_eq!(sent.trace_id().to_string(), TRACE);
            assert_ne!(sent.span_id().to_string(), PARENT);
        });
    }

    #[test]
    fn only_chaosgate_targets_are_exported() {
        assert!(is_exported_target("chaosgate::bus::worker"));
        assert!(is_exported_target("chaosgate"));
        for other in ["h2::codec", "tonic::transport", "hyper", "chaosgateway"] {
            assert!(!is_exported_target(other), "{other}");
        }
    }
}
