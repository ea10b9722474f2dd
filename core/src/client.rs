//! The Kubernetes client of the operator and the facade: kube's own stack (base URI,
//! authentication, extra headers, retries of 5xx, its timeouts) over a connector that sets
//! `TCP_NODELAY`. kube's connector leaves Nagle's algorithm on (kube-rs/kube#2056): the
//! first request on each new TLS connection then waits for the API server's delayed ACK
//! of the handshake's last flight, about 40 ms, which every watch a WebSocket follower
//! opens, and every burst of reconciles, paid again (docs/BENCHMARKS.md, #17).

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::retry::RetryLayer;
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder, ServiceExt};

/// The service under a [`kube::Client`] built here.
pub type Service = BoxService<http::Request<Body>, http::Response<Box<DynBody>>, BoxError>;

/// A client builder for `config`, as `kube::client::ClientBuilder::try_from(config)`
/// makes one, but for `TCP_NODELAY` (and without kube's tracing spans and gzip, which
/// our builds do not enable).
pub fn builder(config: kube::Config) -> Result<ClientBuilder<Service>, kube::Error> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let mut connector = hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(tcp)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http)
        .map_response(|r| r.map(|body| Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>))
        .boxed();
    Ok(ClientBuilder::new(service, config.default_namespace))
}

/// A client from the environment's configuration (in a pod, its service account; else
/// `KUBECONFIG`), as `kube::Client::try_default`.
pub async fn infer() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
    Ok(builder(config)?.build())
}
