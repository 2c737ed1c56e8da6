//! Builds the running gateway from a [`Config`]: shared state, routes, listener.
//!
//! [`Application::build`] binds the listener (port 0 picks a free one, which tests read back
//! with [`Application::port`]) and starts the background work (signing-key refresh, limiter
//! eviction); [`Application::run_until_stopped`] serves until SIGTERM/SIGINT.

use crate::admit::Admission;
use crate::audit::{AdminEvent, AuditLog, AuditSink};
use crate::background::Background;
use crate::caller::keys::KeyStore;
use crate::caller::Authenticator;
use crate::config::StateBackendKind;
use crate::config::{Config, SYNC_PERMISSION};
use crate::credentials::application::ApplicationIdentities;
use crate::credentials::client_auth::ClientAuth;
use crate::credentials::endpoint::EntraClient;
use crate::credentials::obo::OboClient;
use crate::credentials::service_identity::{ServiceIdentities, SessionHealth};
use crate::credentials::Credentials;
use crate::hooks::deliveries::{DeliveryStore, RedisDeliveries};
use crate::hooks::{Hooks, SourceState};
use crate::limits::{InFlight, Limits, RateStore, RedisRates, SourceLimit};
use crate::metrics::Metrics;
use crate::pipeline::{self, Gateway};
use crate::policy::CallerPolicy;
use crate::runs::schedule::Scheduler;
use crate::runs::RunPolicy;
use crate::state::Redis;
use crate::upstream::Graph;
use actix_web::body::BoxBody;
use actix_web::dev::{Server, Service};
use actix_web::http::{header, Method};
use actix_web::HttpMessage;
use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::json;
use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The audit trail (file, database, key) could not be opened.
    #[error("cannot open the audit trail {path}: {source}")]
    Audit {
        /// The configured path.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener's certificate or key (`server.tls`) cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The OTLP exporter (`telemetry.otlp_endpoint`) could not be built.
    #[error(transparent)]
    Otel(#[from] crate::otel::OtelError),
    /// An HTTP client could not be built (TLS roots, ...).
    #[error("cannot build an HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The certificate files of the client credential cannot be used.
    #[error("{key}: {source}")]
    Credential {
        /// The configuration key of the file at fault.
        key: &'static str,
        /// The cause.
        source: crate::credentials::client_auth::CertificateError,
    },
    /// The shared-state backend (`[state]`) could not be set up (not: reached; the gateway
    /// starts while Redis is down).
    #[error("state.redis_url: {0}")]
    State(#[from] crate::state::Unavailable),
}

/// A gateway bound to its port, ready to serve.
pub struct Application {
    port: u16,
    server: Server,
    keys: Arc<KeyStore>,
    runs: Scheduler,
    drain: Duration,
    grace: Duration,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    background: Background,
    stopping: Arc<AtomicBool>,
    otel: Option<Arc<crate::otel::Otel>>,
}

/// What a caller (a test, an embedding) may put in place of what the configuration says.
#[derive(Default)]
pub struct BuildOptions {
    /// Replaces the configured durable audit sink, e.g. with one that fails with `ENOSPC` or
    /// hangs, to test failing closed.
    pub audit_sink: Option<Box<dyn AuditSink>>,
    /// The clock the run scheduler decides by (default: the real one); tests give a
    /// [`crate::clock::ManualClock`] shared with the simulated Graph to run in virtual time.
    pub clock: Option<Arc<dyn crate::clock::Clock>>,
}

/// State the probes read.
struct Health {
    keys: Arc<KeyStore>,
    audit: AuditLog,
    identities: Arc<ServiceIdentities>,
    /// The identities some application acts as (`callers.apps.*.run_as`): only their sessions
    /// affect readiness.
    in_use: HashSet<String>,
    metrics: Arc<Metrics>,
    /// Set when the process was told to stop: `/readyz` answers 503 from then on.
    stopping: Arc<AtomicBool>,
    /// The Redis connection, with the redis backend.
    state: Option<Redis>,
}

impl Application {
    /// Builds the whole gateway from `config` and binds its listener.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        Self::build_with(config, BuildOptions::default()).await
    }

    /// [`Application::build`], with parts replaced by `options`.
    pub async fn build_with(
        config: Config,
        options: BuildOptions,
    ) -> Result<Application, StartError> {
        let metrics = Metrics::new();
        let entra_http = reqwest::Client::builder()
            .timeout(config.entra_timeout())
            .connect_timeout(config.entra_timeout().min(Duration::from_secs(10)))
            .build()?;
        let keys = Arc::new(
            KeyStore::new(
                entra_http.clone(),
                &config.entra.authority_host,
                &config.callers.allowed_tenants,
                Duration::from_secs(config.callers.unknown_kid_cooldown_seconds),
                Duration::from_secs(config.callers.new_kid_refresh_seconds),
                Duration::from_secs(config.callers.keys_refresh_seconds),
            )
            .with_metrics(metrics.callers.clone()),
        );
        let audit = crate::audit::open_configured(
            &config.audit,
            &config.state,
            metrics.audit.clone(),
            options.audit_sink,
        )
        .await
        .map_err(|(path, source)| StartError::Audit { path, source })?;
        // Recorded before anything is served; a failure here is the same failure every request
        // will meet (503), so it is logged rather than fatal.
        for event in [
            audit.start_event(),
            AdminEvent::ConfigLoaded {
                config_sha256: crate::audit::config_hash(&config),
            },
        ] {
            if let Err(e) = audit.admin(event).await {
                tracing::error!(error = %e, "the start of the gateway could not be recorded");
            }
        }
        // The one place choosing where shared state lives (`[state] backend`).
        let redis = match config.state.backend {
            StateBackendKind::Memory => {
                metrics.state.up.set(1);
                None
            }
            StateBackendKind::Redis => Some(Redis::new(&config.state, metrics.state.clone())?),
        };
        let limits_on_unavailable = config.state.on_unavailable.limits;
        let rate_store: Option<Arc<dyn RateStore>> = redis
            .clone()
            .map(|r| Arc::new(RedisRates::new(r)) as Arc<dyn RateStore>);
        let mut limits = Limits::new(&config.limits).with_metrics(metrics.limits.clone());
        if let Some(store) = &rate_store {
            limits = limits.with_store(store.clone(), limits_on_unavailable);
        }
        let limits = Arc::new(limits);
        let weak_limits = Arc::downgrade(&limits);
        metrics.on_scrape(move || {
            if let Some(l) = weak_limits.upgrade() {
                l.update_gauges();
            }
        });
        let client_auth =
            ClientAuth::from_config(&config.entra).map_err(|source| StartError::Credential {
                key: source.key(),
                source,
            })?;
        let entra = Arc::new(
            EntraClient::new(
                entra_http,
                &config.entra.authority_host,
                config.entra.client_id.clone(),
                client_auth,
            )
            .with_metrics(metrics.credentials.clone()),
        );
        let identities = Arc::new(ServiceIdentities::with_audit(
            &config,
            entra.clone(),
            Some(audit.clone()),
            redis.as_ref(),
        ));
        // Sessions in Redis are read once now, so `/readyz` knows them (bounded; Redis down
        // leaves them to the first request).
        identities.load_shared().await;
        // Application identities hold no session: nothing to load, nothing to keep alive.
        let applications = Arc::new(ApplicationIdentities::from_config(&config, entra.clone()));
        let graph_scope = config.graph.scope(SYNC_PERMISSION);
        let credentials = Arc::new(
            Credentials::new(OboClient::new(entra), config.entra.token_cache_capacity)
                .with_identities(identities.clone())
                .with_applications(applications)
                .with_metrics(metrics.credentials.clone()),
        );
        // Each attempt gets a little less than the caller's wait, so a caller waiting on the
        // first attempt always learns its outcome within graph.timeout_seconds.
        let wait_for_run = config.graph_timeout();
        let attempt_timeout = wait_for_run
            .saturating_sub(Duration::from_millis(250))
            .max(wait_for_run / 2);
        let graph = Arc::new(
            Graph::new(&config.graph.base_url, attempt_timeout)?
                .with_metrics(metrics.graph.clone()),
        );
        let a = &config.actions.sync;
        let runs = Scheduler::new(
            RunPolicy {
                action: "sync",
                upstream_path: a.upstream_path.clone(),
                status_path: a.status_path.clone(),
                graph_scope: graph_scope.clone(),
                cooldown: Duration::from_secs(a.cooldown_seconds),
                retry_budget: Duration::from_secs(a.retry_budget_seconds),
                max_attempts: a.max_attempts,
                retry_base: Duration::from_millis(a.retry_base_ms),
                status_poll: Duration::from_millis(a.status_poll_ms),
                status_poll_limit: a.status_poll_limit,
                retention: Duration::from_secs(a.run_retention_seconds),
                max_finished: a.max_finished_runs,
            },
            graph.clone(),
            credentials.clone(),
            audit.clone(),
            options.clock.unwrap_or_else(crate::clock::system),
            metrics.runs.clone(),
            // With the Redis backend the schedule is shared too; validation made the key
            // required there.
            redis
                .clone()
                .zip(config.state.encryption_key.as_ref().map(|(k, _)| k.clone())),
        );
        let in_flight_gauge = prometheus_client::metrics::gauge::Gauge::default();
        metrics.register(
            "sync_requests_in_flight",
            "POST /sync and GET /sync/status requests in progress (body read included), all callers together",
            in_flight_gauge.clone(),
        );
        // Nothing of OpenTelemetry is built unless `telemetry.otlp_endpoint` is set.
        let otel = match &config.telemetry.otlp {
            Some(otlp) => Some(Arc::new(crate::otel::Otel::build(otlp)?)),
            None => None,
        };
        let gateway = Gateway {
            spans: otel.clone().map(|o| o as Arc<dyn crate::trace::SpanSink>),
            admission: Admission {
                authenticator: Authenticator::new(
                    keys.clone(),
                    config.callers.audiences.clone(),
                    &config.callers.allowed_tenants,
                    config.callers.leeway_seconds,
                    config.callers.verified_cache_capacity,
                )
                .with_metrics(metrics.callers.clone()),
                policy: CallerPolicy::from_config(&config),
                limits: limits.clone(),
                in_flight: InFlight::new(config.limits.max_in_flight_per_caller, in_flight_gauge),
                request_timeout: Duration::from_secs(config.server.request_timeout_seconds),
            },
            credentials,
            runs: runs.clone(),
            graph,
            audit: audit.clone(),
            wait_for_run,
            status_scope: config.graph.status_scope(),
            hooks: Arc::new(match (&redis, &rate_store) {
                (Some(redis), Some(rates)) => {
                    let deliveries = |name: &str, window, _evicted| {
                        Arc::new(RedisDeliveries::new(redis.clone(), name, window))
                            as Arc<dyn DeliveryStore>
                    };
                    let limit = |name: &str, rate| {
                        SourceLimit::with_store(name, rate, rates.clone(), limits_on_unavailable)
                    };
                    let state = SourceState {
                        deliveries: &deliveries,
                        limit: &limit,
                    };
                    Hooks::new(&config.hooks, audit.clone(), &metrics, &state)?
                }
                _ => Hooks::new(
                    &config.hooks,
                    audit.clone(),
                    &metrics,
                    &SourceState::memory(),
                )?,
            }),
            metrics: metrics.requests.clone(),
        };

        metrics.register(
            "token_refusals",
            "Caller tokens refused, by cause (expired, unknown_key, signature, version_mismatch, ...)",
            gateway.admission.authenticator.refusals(),
        );

        let listener =
            TcpListener::bind(config.server.listen).map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.server.listen,
                source,
            })?
            .port();

        let background = Background::new();
        keys.spawn_refresh(&background);
        limits.spawn_eviction(&background);
        identities.spawn_keepalive(graph_scope, &background);

        let gateway = web::Data::new(gateway);
        let stopping = Arc::new(AtomicBool::new(false));
        let health = web::Data::new(Health {
            keys: keys.clone(),
            audit: audit.clone(),
            identities,
            in_use: config
                .callers
                .apps
                .values()
                .map(|a| a.run_as.clone())
                .collect(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
            state: redis.clone(),
        });
        let expose_openapi = config.server.expose_openapi;
        // actix caps connections per worker; the configured figure is for the whole process.
        let (workers, per_worker) = connection_shares(
            config.server.workers,
            config.server.max_connections,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
        tracing::info!(
            workers,
            max_connections = workers * per_worker,
            per_worker,
            "connection cap"
        );
        let server = HttpServer::new(move || {
            App::new()
                // Only POST /sync and POST /hooks/{source} read a body (and close a connection
                // whose body they did not read to the end themselves). Elsewhere a chunked body
                // is never read, and actix would drain one that never ends forever after the
                // answer: hold it until the answer is sent, so that actix closes the connection
                // instead. (An unread Content-Length body actix closes for by itself.)
                .wrap_fn(|mut req, srv| {
                    let reads_body = req.method() == Method::POST
                        && (req.path() == "/sync" || req.path().starts_with("/hooks/"));
                    let unread = (req.headers().contains_key(header::TRANSFER_ENCODING)
                        && !reads_body)
                        .then(|| req.take_payload());
                    let answer = srv.call(req);
                    async move {
                        let res = answer.await?;
                        Ok::<_, actix_web::Error>(match unread {
                            Some(payload) => res.map_body(|_, body| {
                                crate::admit::holding_unread(BoxBody::new(body), payload)
                            }),
                            None => res.map_into_boxed_body(),
                        })
                    }
                })
                .app_data(gateway.clone())
                .app_data(health.clone())
                .service(
                    web::resource("/sync")
                        .route(web::post().to(pipeline::post_sync))
                        .default_service(web::to(|req, gw| {
                            pipeline::method_not_allowed(req, gw, "/sync", "POST")
                        })),
                )
                .service(
                    web::resource("/hooks/{source}")
                        .route(web::post().to(pipeline::post_hook))
                        .default_service(web::to(|req, gw| {
                            pipeline::method_not_allowed(req, gw, "/hooks/{source}", "POST")
                        })),
                )
                .service(readable("/sync/status", pipeline::get_status))
                .service(readable("/sync/runs/{id}", pipeline::get_run))
                .service(readable("/healthz", healthz))
                .service(readable("/readyz", readyz))
                .service(readable("/metrics", metrics_text))
                .configure(|cfg| {
                    if expose_openapi {
                        cfg.service(readable("/openapi.yaml", crate::openapi::document));
                    }
                })
                .default_service(web::to(pipeline::not_found))
        })
        .shutdown_timeout(config.server.shutdown_timeout_seconds)
        // The gateway handles SIGTERM/SIGINT itself (`run_until_stopped`): readiness first,
        // then a grace period, then the listener.
        .disable_signals()
        .workers(workers)
        .max_connections(per_worker);
        let server = match &config.server.tls {
            Some(tls) => server.listen_rustls_0_23(listener, crate::tls::server_config(tls)?),
            None => server.listen(listener),
        }
        .map_err(|source| StartError::Bind {
            addr: config.server.listen,
            source,
        })?;
        Ok(Application {
            port,
            server: server.run(),
            keys,
            runs,
            drain: Duration::from_secs(config.server.shutdown_timeout_seconds),
            grace: Duration::from_secs(config.server.shutdown_grace_seconds),
            audit,
            metrics,
            background,
            stopping,
            otel,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// True once signing keys are loaded for every allowed tenant.
    pub fn keys_ready(&self) -> bool {
        self.keys.is_ready()
    }

    /// The OTLP exporter, when `telemetry.otlp_endpoint` is set (a test flushes it).
    pub fn otel(&self) -> Option<Arc<crate::otel::Otel>> {
        self.otel.clone()
    }

    /// A handle to stop the server from elsewhere.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// The audit trail, for modules that record admin events (e.g. an identity login).
    pub fn audit(&self) -> AuditLog {
        self.audit.clone()
    }

    /// The metrics registry, for modules that register their own metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until the process is told to stop (SIGTERM, SIGINT or the handle), then stops the
    /// background loops (waiting for work under way), gives runs
    /// `server.shutdown_timeout_seconds` to finish and records the scheduled runs that cannot
    /// start by then as abandoned; last, records the stop and a final checkpoint.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let signals = tokio::spawn(stop_on_signal(
            self.server.handle(),
            self.stopping.clone(),
            self.grace,
            self.drain,
        ));
        let result = self.server.await;
        signals.abort();
        self.stopping.store(true, Ordering::SeqCst);
        self.background.shutdown(self.drain).await;
        self.runs.shutdown(self.drain).await;
        // After the runs, whose last Graph calls are spans too.
        if let Some(otel) = &self.otel {
            otel.shutdown().await;
        }
        if let Err(e) = self.audit.admin(AdminEvent::Stop).await {
            tracing::error!(error = %e, "the stop of the gateway could not be recorded");
        }
        self.audit.shutdown().await;
        result
    }
}

/// Waits for SIGTERM (what Kubernetes sends) or SIGINT, then stops in the order a load balancer
/// needs: `/readyz` answers 503 at once, new connections are still accepted for `grace` (while
/// endpoints are updated), then the listener closes and in-flight requests get `drain`.
async fn stop_on_signal(
    server: actix_web::dev::ServerHandle,
    stopping: Arc<AtomicBool>,
    grace: Duration,
    drain: Duration,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the gateway with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    stopping.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = name,
        grace_seconds = grace.as_secs(),
        drain_seconds = drain.as_secs(),
        "stopping: /readyz answers 503 now; new requests are still served for the grace period, \
         then the listener closes, in-flight requests and runs due within the drain get it, \
         runs due later are recorded as abandoned, and the audit trail is flushed"
    );
    tokio::time::sleep(grace).await;
    tracing::info!("grace period over: the listener is closing");
    server.stop(true).await;
}

/// A read-only resource: `GET` and `HEAD` (the same handler; actix-web sends no body for
/// `HEAD`), and 405 with `Allow: GET, HEAD` for every other method.
fn readable<F, Args>(path: &'static str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(move |req, gw| {
            pipeline::method_not_allowed(req, gw, path, "GET, HEAD")
        }))
}

/// Workers and each one's connection cap, so that all together serve at most `max_connections`.
/// Without `server.workers`, one worker per core, but never more workers than connections.
fn connection_shares(
    workers: Option<usize>,
    max_connections: usize,
    cores: usize,
) -> (usize, usize) {
    let workers = workers.unwrap_or_else(|| cores.min(max_connections)).max(1);
    // Configuration validation keeps max_connections >= workers when both are set.
    (workers, (max_connections / workers).max(1))
}

/// Raises the soft limit of open files to the hard limit (a gateway's connections are files,
/// and the soft limit is often 1024), and logs both; warns when the result leaves less than
/// [`RESERVED_FILES`] beside `max_connections`. Returns the soft limit now in force.
///
/// [`RESERVED_FILES`]: crate::config::RESERVED_FILES
pub fn raise_open_file_limit(max_connections: usize) -> Option<u64> {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    let raised = match rlimit::increase_nofile_limit(hard) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            soft
        }
    };
    tracing::info!(
        soft_before = soft,
        soft = raised,
        hard,
        "open-file limit (RLIMIT_NOFILE)"
    );
    let needed = max_connections as u64 + crate::config::RESERVED_FILES;
    if raised < needed {
        tracing::warn!(
            soft = raised,
            max_connections,
            needed,
            "the open-file limit is below server.max_connections plus the gateway's own files; \
             lower server.max_connections or raise the hard limit"
        );
    }
    Some(raised)
}

async fn metrics_text(h: web::Data<Health>) -> HttpResponse {
    // Session health is read when scraped, so the gauge is never stale.
    for (identity, status) in h.identities.statuses() {
        let login_required = i64::from(status.health != SessionHealth::Ready);
        h.metrics
            .identity_login_required
            .get_or_create(&crate::metrics::IdentityLabels { identity })
            .set(login_required);
    }
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(h.metrics.encode())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when signing keys are loaded for every tenant and the audit trail is writable, and,
/// with the redis state backend, Redis answers a `PING` (`checks.state`: `memory`,
/// `reachable` or `unreachable`). An unreachable Redis makes the answer 503 whatever
/// `state.on_unavailable.limits` says: the run schedule always fails closed, so this replica
/// would refuse every `POST /sync`; better the balancer sends them to one that reaches Redis.
/// A service identity that an application acts as, without a usable session, makes the answer
/// `degraded` (still 200: user callers are served); every identity is listed with its state and
/// whether it is in use.
async fn readyz(h: web::Data<Health>) -> HttpResponse {
    if h.stopping.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "stopping"}));
    }
    let keys = h.keys.is_ready();
    let audit = h.audit.is_healthy();
    let mut degraded = false;
    let (state, state_ok) = match &h.state {
        None => ("memory", true),
        Some(redis) => match redis.ping().await {
            Ok(()) => ("reachable", true),
            Err(_) => ("unreachable", false),
        },
    };
    let ready = keys && audit && state_ok;
    let identities: serde_json::Map<String, serde_json::Value> = h
        .identities
        .statuses()
        .into_iter()
        .map(|(name, s)| {
            let in_use = h.in_use.contains(&name);
            degraded |= in_use && s.health != SessionHealth::Ready;
            (name, json!({"state": s.health.state(), "in_use": in_use}))
        })
        .collect();
    let body = json!({
        "status": match (ready, degraded) {
            (false, _) => "not ready",
            (true, true) => "degraded",
            (true, false) => "ready",
        },
        "checks": {"signing_keys": keys, "audit": audit, "service_identities": identities, "state": state},
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[cfg(test)]
mod tests {
    use super::connection_shares;

    #[test]
    fn the_workers_share_the_connection_cap_without_exceeding_it() {
        assert_eq!(connection_shares(Some(2), 768, 8), (2, 384));
        assert_eq!(connection_shares(Some(3), 10, 8), (3, 3));
        assert_eq!(connection_shares(None, 768, 4), (4, 192));
        // More cores than connections: fewer workers, one connection each.
        assert_eq!(connection_shares(None, 2, 8), (2, 1));
    }
}
