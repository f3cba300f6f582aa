//! The OpenAPI document, assembled from the handlers' `#[utoipa::path]` annotations and the
//! wire types' schemas, so that it cannot drift from the code.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Self-hosted event tracking: ingest CloudEvents, query them with one filter language, watch and act on them."
    ),
    paths(
        crate::ingest::ingest,
        crate::query::list_events,
        crate::query::get_event,
        crate::query::list_public,
        crate::stream::public_stream,
        crate::auth::create_key,
        crate::auth::list_keys,
        crate::auth::revoke_key,
        crate::viewer::issue,
        crate::viewer::revoke,
        crate::stream::stream,
        crate::registry::list_types,
        crate::registry::get_type,
        crate::registry::put_type,
        crate::registry::delete_type,
        crate::registry::put_schema,
        crate::registry::get_schema,
        crate::registry::list_optout,
        crate::registry::put_optout,
        crate::registry::delete_optout,
        crate::pipeline::list_quarantine,
        crate::pipeline::replay,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::metrics,
        crate::ops::openapi,
    ),
    components(schemas(
        herald_wire::Event,
        herald_wire::EventPage,
        herald_wire::IngestResponse,
        herald_wire::IngestResult,
        herald_wire::IngestStatus,
        herald_wire::Problem,
        herald_wire::Severity,
        herald_wire::Visibility,
        herald_wire::SchemaError,
        crate::registry::Catalog,
        crate::registry::CatalogEntry,
        crate::registry::Counts,
        crate::registry::SchemaInfo,
        crate::registry::PublishResult,
        crate::registry::OptOutList,
        crate::pipeline::QuarantinePage,
        crate::pipeline::QuarantinedEvent,
        crate::pipeline::ReplayRequest,
        crate::pipeline::ReplayResponse,
        crate::pipeline::ReplayResult,
        crate::auth::NewKey,
        crate::auth::KeyView,
        crate::auth::CreatedKey,
        crate::viewer::NewViewerToken,
        crate::viewer::ViewerToken,
    )),
    tags(
        (name = "events", description = "Ingest and query events"),
        (name = "stream", description = "Live events as server-sent events, with gap-free resume"),
        (name = "keys", description = "API keys (admin)"),
        (name = "types", description = "Event types: settings, schemas, catalog, quarantine, opt-out"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_json().unwrap_or_else(|_| "{}".to_owned())
}
