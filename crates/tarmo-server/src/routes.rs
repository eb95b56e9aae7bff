//! Every route, once: its method, path, handler, what it needs of the
//! caller and, for the API, its operation in the OpenAPI document.
//!
//! [`ROUTES`] feeds the router (`app()`), the document ([`openapi`]) and
//! the access check (`auth::need`, enforced by `auth::GuardLayer`), so a route
//! cannot be served without a requirement or documented apart from what is
//! served. What it must keep: every route's requirement exactly as the
//! access tests pin it; the document as committed in `docs/openapi.json`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, LazyLock};

use axum::http::Method;
use axum::routing::{MethodFilter, MethodRouter};
use tarmo_core::access::Permission as P;
use utoipa::OpenApi;
use utoipa::openapi::RefOr;
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::Schema;

use crate::auth::Need::{self, *};
use crate::{
    AppState, automations, consent, console, imports, ingest, pages, processors, profiles,
    requests, ropa, segments, signals, staff,
};

/// One route: one method on one path.
pub(crate) struct Route {
    pub method: Method,
    /// The path template, as axum matches it and the document names it.
    pub path: &'static str,
    pub need: Need,
    /// The handler, on this method only.
    pub handler: fn() -> MethodRouter<Arc<AppState>>,
    /// Its operation in the OpenAPI document (from the handler's
    /// `#[utoipa::path]`); `None` for the console's pages, which are not
    /// part of the API.
    pub doc: Option<fn() -> Doc>,
}

/// A documented operation, as `#[derive(OpenApi)]` would list it.
pub(crate) struct Doc {
    pub path: String,
    pub methods: Vec<HttpMethod>,
    pub operation: Operation,
    pub schemas: Vec<(String, RefOr<Schema>)>,
}

/// The operation `#[utoipa::path]` declared on a handler, tagged with the
/// handler's module when it names no tag, as `#[derive(OpenApi)]` tags it.
fn doc<D>() -> Doc
where
    D: utoipa::Path + utoipa::__dev::SchemaReferences + for<'t> utoipa::__dev::Tags<'t>,
{
    let mut schemas = Vec::new();
    D::schemas(&mut schemas);
    let mut operation = D::operation();
    let mut tags = <D as utoipa::__dev::Tags>::tags();
    // `tarmo_server::ingest::__path_identify` -> `ingest`.
    let name = std::any::type_name::<D>();
    let module = name
        .rsplit_once("::")
        .map_or("", |(m, _)| m)
        .split_once("::")
        .map_or("", |(_, m)| m);
    if !module.is_empty() && tags.is_empty() {
        tags.push(module);
    }
    operation
        .tags
        .get_or_insert_with(Vec::new)
        .extend(tags.iter().map(ToString::to_string));
    Doc {
        path: D::path(),
        methods: D::methods(),
        operation,
        schemas,
    }
}

macro_rules! table {
    ($( $method:ident $path:literal => $handler:path, $need:expr $(, doc $doc:ty)? ;)*) => {
        /// Every route. A path's first row is what a method it does not
        /// have needs (so a wrong method is refused before it is told 405,
        /// as it always was).
        pub(crate) static ROUTES: &[Route] = &[$(
            Route {
                method: Method::$method,
                path: $path,
                need: $need,
                handler: || axum::routing::on(MethodFilter::$method, $handler),
                doc: table!(@doc $($doc)?),
            },
        )*];
    };
    (@doc) => { None };
    (@doc $doc:ty) => { Some(doc::<$doc>) };
}

table! {
    // Ingestion (Segment's API): a write key, checked by the handler.
    POST "/v1/identify" => ingest::identify, Ingest, doc ingest::__path_identify;
    POST "/v1/track" => ingest::track, Ingest, doc ingest::__path_track;
    POST "/v1/page" => ingest::page, Ingest, doc ingest::__path_page;
    POST "/v1/screen" => ingest::screen, Ingest, doc ingest::__path_screen;
    POST "/v1/group" => ingest::group, Ingest, doc ingest::__path_group;
    POST "/v1/alias" => ingest::alias, Ingest, doc ingest::__path_alias;
    POST "/v1/batch" => ingest::batch, Ingest, doc ingest::__path_batch;
    POST "/v1/import" => ingest::import, Ingest, doc ingest::__path_import;
    // The SMS provider's callback carries its own token (checked by the handler).
    POST "/v1/sms/inbound" => automations::sms_inbound, Public, doc automations::__path_sms_inbound;

    // People.
    GET "/api/v1/profiles/lookup" => profiles::lookup, Staff(P::ProfilesRead), doc profiles::__path_lookup;
    GET "/api/v1/profiles/{id}" => profiles::get_profile, Staff(P::ProfilesRead), doc profiles::__path_get_profile;
    GET "/api/v1/profiles/{id}/events" => profiles::events, Staff(P::ProfilesRead), doc profiles::__path_events;
    GET "/api/v1/profiles/{id}/consents" => consent::profile_consents, Staff(P::ConsentsRead), doc consent::__path_profile_consents;
    POST "/api/v1/profiles/{id}/preference-link" => consent::preference_link, Staff(P::ConsentsWrite), doc consent::__path_preference_link;
    GET "/api/v1/profiles/{id}/segments" => segments::of_profile, Staff(P::ProfilesRead), doc segments::__path_of_profile;

    // Purposes, consent, decisions, subscriptions, messages.
    GET "/api/v1/purposes" => consent::list_purposes, Staff(P::PurposesRead), doc consent::__path_list_purposes;
    GET "/api/v1/purposes/{id}" => consent::get_purpose, Staff(P::PurposesRead), doc consent::__path_get_purpose;
    PUT "/api/v1/purposes/{id}" => consent::put_purpose, Staff(P::PurposesWrite), doc consent::__path_put_purpose;
    POST "/api/v1/consents" => consent::record, Staff(P::ConsentsWrite), doc consent::__path_record;
    POST "/api/v1/consents/signals" => signals::record_signal, Staff(P::ConsentsWrite), doc signals::__path_record_signal;
    GET "/api/v1/decisions" => consent::decision, Staff(P::DecisionsRead), doc consent::__path_decision;
    POST "/api/v1/decisions" => consent::decisions_batch, Staff(P::DecisionsRead), doc consent::__path_decisions_batch;
    POST "/api/v1/subscriptions" => consent::subscribe, Staff(P::Subscribe), doc consent::__path_subscribe;
    POST "/api/v1/messages/email" => consent::send_email, Staff(P::MessagesSend), doc consent::__path_send_email;

    // Data subject requests.
    POST "/api/v1/requests" => requests::create, Staff(P::RequestsCreate), doc requests::__path_create;
    GET "/api/v1/requests" => requests::list, Staff(P::RequestsManage), doc requests::__path_list;
    GET "/api/v1/requests/{id}" => requests::get, Staff(P::RequestsManage), doc requests::__path_get;
    POST "/api/v1/requests/{id}/verify" => requests::verify, Staff(P::RequestsManage), doc requests::__path_verify;
    POST "/api/v1/requests/{id}/refuse" => requests::refuse, Staff(P::RequestsManage), doc requests::__path_refuse;
    POST "/api/v1/requests/{id}/extend" => requests::extend, Staff(P::RequestsManage), doc requests::__path_extend;
    POST "/api/v1/requests/{id}/lift" => requests::lift, Staff(P::RequestsManage), doc requests::__path_lift;
    GET "/api/v1/requests/{id}/export" => requests::export, Staff(P::RequestsManage), doc requests::__path_export;

    // Pages people open from messages: anyone, limited per address.
    GET "/c/{token}" => pages::confirm_page, Page, doc pages::__path_confirm_page;
    POST "/c/{token}" => pages::confirm_post, Page, doc pages::__path_confirm_post;
    GET "/u/{token}" => pages::unsubscribe_page, Page, doc pages::__path_unsubscribe_page;
    POST "/u/{token}" => pages::unsubscribe_post, Page, doc pages::__path_unsubscribe_post;
    GET "/p/{token}" => pages::preferences_page, Page, doc pages::__path_preferences_page;
    POST "/p/{token}" => pages::preferences_post, Page, doc pages::__path_preferences_post;
    POST "/p/{token}/request" => pages::self_service_request, Page, doc pages::__path_self_service_request;
    GET "/r/{token}" => pages::verify_request_page, Page, doc pages::__path_verify_request_page;
    POST "/r/{token}" => pages::verify_request_post, Page, doc pages::__path_verify_request_post;
    GET "/r/download/{token}" => pages::download, Page, doc pages::__path_download;
    GET "/.well-known/gpc.json" => pages::gpc_json, Public, doc pages::__path_gpc_json;

    // Processors and the record of processing.
    GET "/api/v1/processors" => processors::list_processors, Staff(P::ProcessorsManage), doc processors::__path_list_processors;
    POST "/api/v1/processors" => processors::register_processor, Staff(P::ProcessorsManage), doc processors::__path_register_processor;
    GET "/api/v1/processors/{id}" => processors::get_processor, Staff(P::ProcessorsManage), doc processors::__path_get_processor;
    PUT "/api/v1/processors/{id}" => processors::update_processor, Staff(P::ProcessorsManage), doc processors::__path_update_processor;
    POST "/api/v1/processors/{id}/exports" => processors::export, Staff(P::ProcessorsExport), doc processors::__path_export;
    GET "/api/v1/records-of-processing" => ropa::records_of_processing, Staff(P::RecordsRead), doc ropa::__path_records_of_processing;

    // Staff: sessions, the access log, figures, keys.
    POST "/api/v1/sessions" => staff::login, SignIn, doc staff::__path_login;
    DELETE "/api/v1/sessions/current" => staff::sign_out, AnyStaffKey, doc staff::__path_sign_out;
    GET "/api/v1/audit" => staff::audit, Staff(P::AuditRead), doc staff::__path_audit;
    GET "/api/v1/stats" => staff::stats, Staff(P::StatsRead), doc staff::__path_stats;
    GET "/api/v1/keys" => staff::list_keys, Staff(P::KeysManage), doc staff::__path_list_keys;
    POST "/api/v1/keys" => staff::create_key, Staff(P::KeysManage), doc staff::__path_create_key;
    POST "/api/v1/keys/{id}/revoke" => staff::revoke_key, Staff(P::KeysManage), doc staff::__path_revoke_key;

    // Segments and audiences.
    GET "/api/v1/segments" => segments::list, Staff(P::SegmentsRead), doc segments::__path_list;
    POST "/api/v1/segments" => segments::create, Staff(P::SegmentsManage), doc segments::__path_create;
    POST "/api/v1/segments/preview" => segments::preview, Staff(P::SegmentsManage), doc segments::__path_preview;
    GET "/api/v1/segments/{id}" => segments::get, Staff(P::SegmentsRead), doc segments::__path_get;
    PUT "/api/v1/segments/{id}" => segments::update, Staff(P::SegmentsManage), doc segments::__path_update;
    DELETE "/api/v1/segments/{id}" => segments::delete, Staff(P::SegmentsManage), doc segments::__path_delete;
    GET "/api/v1/segments/{id}/members" => segments::members, Staff(P::SegmentsRead), doc segments::__path_members;
    GET "/api/v1/lifecycle" => segments::lifecycle, Staff(P::StatsRead), doc segments::__path_lifecycle;
    GET "/api/v1/audiences" => segments::list_audiences, Staff(P::SegmentsRead), doc segments::__path_list_audiences;
    POST "/api/v1/audiences" => segments::create_audience, Staff(P::SegmentsManage), doc segments::__path_create_audience;
    GET "/api/v1/audiences/{id}" => segments::get_audience, Staff(P::SegmentsRead), doc segments::__path_get_audience;
    // A sync decides and discloses people to a processor: an export.
    POST "/api/v1/audiences/{id}/sync" => segments::sync_audience, Staff(P::ProcessorsExport), doc segments::__path_sync_audience;
    GET "/api/v1/audiences/{id}/syncs/{n}/file" => segments::sync_file, Staff(P::ProcessorsExport), doc segments::__path_sync_file;

    // Imports.
    POST "/api/v1/imports" => imports::create, Staff(P::ImportsWrite), doc imports::__path_create;
    GET "/api/v1/imports/{id}" => imports::get, Staff(P::ImportsWrite), doc imports::__path_get;

    // Templates, automations, campaigns.
    GET "/api/v1/templates" => automations::list_templates, Staff(P::AutomationsRead), doc automations::__path_list_templates;
    POST "/api/v1/templates" => automations::create_template, Staff(P::AutomationsManage), doc automations::__path_create_template;
    GET "/api/v1/templates/{id}" => automations::get_template, Staff(P::AutomationsRead), doc automations::__path_get_template;
    PUT "/api/v1/templates/{id}" => automations::put_template, Staff(P::AutomationsManage), doc automations::__path_put_template;
    DELETE "/api/v1/templates/{id}" => automations::delete_template, Staff(P::AutomationsManage), doc automations::__path_delete_template;
    GET "/api/v1/automations" => automations::list_automations, Staff(P::AutomationsRead), doc automations::__path_list_automations;
    POST "/api/v1/automations" => automations::create_automation, Staff(P::AutomationsManage), doc automations::__path_create_automation;
    GET "/api/v1/automations/{id}" => automations::get_automation, Staff(P::AutomationsRead), doc automations::__path_get_automation;
    PUT "/api/v1/automations/{id}" => automations::put_automation, Staff(P::AutomationsManage), doc automations::__path_put_automation;
    DELETE "/api/v1/automations/{id}" => automations::delete_automation, Staff(P::AutomationsManage), doc automations::__path_delete_automation;
    POST "/api/v1/automations/{id}/dry-run" => automations::dry_run, Staff(P::AutomationsManage), doc automations::__path_dry_run;
    POST "/api/v1/campaigns" => automations::create_campaign, Staff(P::AutomationsManage), doc automations::__path_create_campaign;
    GET "/api/v1/campaigns/{id}" => automations::get_campaign, Staff(P::AutomationsRead), doc automations::__path_get_campaign;
    POST "/api/v1/campaigns/{id}/cancel" => automations::cancel_campaign, Staff(P::AutomationsManage), doc automations::__path_cancel_campaign;

    // Operations.
    GET "/healthz" => crate::healthz, Public, doc crate::__path_healthz;
    GET "/readyz" => crate::readyz, Public, doc crate::__path_readyz;
    GET "/metrics" => crate::metrics_route, Staff(P::MetricsRead), doc crate::__path_metrics_route;
    GET "/api/openapi.json" => crate::openapi_json, Public, doc crate::__path_openapi_json;

    // The staff console: public routes that check the session cookie
    // themselves, against this same table for each API route a page
    // stands for (`console::Staff`).
    GET "/" => console::root, Public;
    GET "/console" => console::home, Public;
    GET "/console/sign-in" => console::sign_in_page, Public;
    POST "/console/sign-in" => console::sign_in, SignIn;
    POST "/console/sign-out" => console::sign_out, Public;
    GET "/console/assets/{file}" => console::asset, Public;
    GET "/console/search" => console::people::search, Public;
    GET "/console/people/{id}" => console::people::customer, Public;
    POST "/console/people/{id}/consents" => console::people::record_consent, Public;
    GET "/console/requests" => console::queue::requests, Public;
    POST "/console/requests/{id}/{action}" => console::queue::act, Public;
    GET "/console/access-log" => console::queue::access_log, Public;
    GET "/console/dashboard" => console::dashboard::page, Public;
    GET "/console/segments" => console::segments::list, Public;
    GET "/console/segments/new" => console::segments::builder, Public;
    POST "/console/segments/new" => console::segments::build, Public;
    POST "/console/segments/count" => console::segments::live_count, Public;
    GET "/console/automations" => console::admin::automations, Public;
    POST "/console/automations/{id}/dry-run" => console::admin::dry_run, Public;
    GET "/console/processors" => console::admin::processors, Public;
    GET "/console/keys" => console::admin::keys, Public;
    POST "/console/keys" => console::admin::create_key, Public;
    POST "/console/keys/{id}/revoke" => console::admin::revoke_key, Public;
    POST "/console/users" => console::admin::create_user, Public;
    POST "/console/users/{id}/roles" => console::admin::user_roles, Public;
    POST "/console/users/{id}/disable" => console::admin::disable_user, Public;
}

/// The router of every route in [`ROUTES`]; rows of one path share a
/// method router.
pub(crate) fn router() -> axum::Router<Arc<AppState>> {
    ROUTES.iter().fold(axum::Router::new(), |r, row| {
        r.route(row.path, (row.handler)())
    })
}

/// What `method path` needs: its row's need, or for a method the path does
/// not have, its first row's; `None` for a path that is not a route.
pub(crate) fn need(method: &Method, path: &str) -> Option<Need> {
    /// Each path's needs by method, the first row's first.
    type Index = HashMap<&'static str, Vec<(Method, Need)>, BuildHasherDefault<Fx>>;
    static INDEX: LazyLock<Index> = LazyLock::new(|| {
        let mut index: HashMap<_, Vec<(Method, Need)>, _> = HashMap::default();
        for r in ROUTES {
            index
                .entry(r.path)
                .or_default()
                .push((r.method.clone(), r.need));
        }
        index
    });
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let rows = INDEX.get(path)?;
    rows.iter()
        .find(|(m, _)| m == method)
        .or(rows.first())
        .map(|(_, n)| *n)
}

/// The need lookup's hash (it runs on every request): a multiply-rotate
/// over 8-byte words. Its keys are the route templates axum matched, never
/// a path a client chose, so a hash-flooding-proof hasher buys nothing.
#[derive(Default)]
struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for word in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..word.len()].copy_from_slice(word);
            self.0 =
                (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

/// The OpenAPI document: the API's description and shared schemas
/// (`ApiDoc`), with the operations of every documented route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = crate::ApiDoc::openapi();
    let mut schemas = Vec::new();
    for row in ROUTES {
        let Some(doc) = row.doc else { continue };
        let d = doc();
        api.paths.add_path_operation(d.path, d.methods, d.operation);
        schemas.extend(d.schemas);
    }
    api.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    api
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The access table as it was written before the route table (a match
    /// on path templates), kept to prove every route kept its requirement.
    /// `Page` and `SignIn` were `Public` with the guard's prefix checks.
    fn need_before_the_table(method: &Method, route: &str) -> Option<Need> {
        use Need::*;
        use tarmo_core::access::Permission as P;
        let get = method == Method::GET || method == Method::HEAD;
        Some(match route {
            // The SMS provider's callback carries its own token (checked by the handler).
            "/v1/sms/inbound" => Public,
            r if r.starts_with("/v1/") => Ingest,
            "/healthz" | "/readyz" | "/api/openapi.json" | "/.well-known/gpc.json" => Public,
            "/metrics" => Staff(P::MetricsRead),
            "/c/{token}"
            | "/u/{token}"
            | "/p/{token}"
            | "/p/{token}/request"
            | "/r/{token}"
            | "/r/download/{token}" => Public,
            "/api/v1/sessions" => Public,
            // The staff console checks its session cookie itself, against this
            // same table for each API route a page stands for (`console::Staff`).
            "/" => Public,
            r if r == "/console" || r.starts_with("/console/") => Public,
            "/api/v1/sessions/current" => AnyStaffKey,
            "/api/v1/profiles/lookup"
            | "/api/v1/profiles/{id}"
            | "/api/v1/profiles/{id}/events" => Staff(P::ProfilesRead),
            "/api/v1/profiles/{id}/consents" => Staff(P::ConsentsRead),
            "/api/v1/profiles/{id}/preference-link" => Staff(P::ConsentsWrite),
            "/api/v1/stats" => Staff(P::StatsRead),
            "/api/v1/purposes" | "/api/v1/purposes/{id}" if get => Staff(P::PurposesRead),
            "/api/v1/purposes/{id}" => Staff(P::PurposesWrite),
            "/api/v1/consents" | "/api/v1/consents/signals" => Staff(P::ConsentsWrite),
            "/api/v1/decisions" => Staff(P::DecisionsRead),
            "/api/v1/subscriptions" => Staff(P::Subscribe),
            "/api/v1/messages/email" => Staff(P::MessagesSend),
            "/api/v1/requests" if !get => Staff(P::RequestsCreate),
            r if r.starts_with("/api/v1/requests") => Staff(P::RequestsManage),
            "/api/v1/processors/{id}/exports" => Staff(P::ProcessorsExport),
            r if r.starts_with("/api/v1/processors") => Staff(P::ProcessorsManage),
            "/api/v1/records-of-processing" => Staff(P::RecordsRead),
            "/api/v1/audit" => Staff(P::AuditRead),
            "/api/v1/keys" | "/api/v1/keys/{id}/revoke" => Staff(P::KeysManage),
            "/api/v1/segments" | "/api/v1/segments/{id}" | "/api/v1/segments/{id}/members"
                if get =>
            {
                Staff(P::SegmentsRead)
            }
            "/api/v1/segments" | "/api/v1/segments/{id}" | "/api/v1/segments/preview" => {
                Staff(P::SegmentsManage)
            }
            "/api/v1/profiles/{id}/segments" => Staff(P::ProfilesRead),
            "/api/v1/lifecycle" => Staff(P::StatsRead),
            "/api/v1/audiences" | "/api/v1/audiences/{id}" if get => Staff(P::SegmentsRead),
            "/api/v1/audiences" => Staff(P::SegmentsManage),
            "/api/v1/imports" | "/api/v1/imports/{id}" => Staff(P::ImportsWrite),
            // A sync decides and discloses people to a processor: an export.
            "/api/v1/audiences/{id}/sync" | "/api/v1/audiences/{id}/syncs/{n}/file" => {
                Staff(P::ProcessorsExport)
            }
            "/api/v1/templates"
            | "/api/v1/templates/{id}"
            | "/api/v1/automations"
            | "/api/v1/automations/{id}"
            | "/api/v1/campaigns/{id}"
                if get =>
            {
                Staff(P::AutomationsRead)
            }
            "/api/v1/templates"
            | "/api/v1/templates/{id}"
            | "/api/v1/automations"
            | "/api/v1/automations/{id}"
            | "/api/v1/automations/{id}/dry-run"
            | "/api/v1/campaigns"
            | "/api/v1/campaigns/{id}/cancel" => Staff(P::AutomationsManage),
            _ => return None,
        })
    }

    #[test]
    fn every_route_keeps_the_requirement_it_had() {
        for r in ROUTES {
            let before = need_before_the_table(&r.method, r.path);
            let now = match r.need {
                Page | SignIn => Public,
                n => n,
            };
            assert_eq!(Some(now), before, "{} {}", r.method, r.path);
            // What the guard metered by prefix is what `Page` and `SignIn` say.
            let login = r.path == "/api/v1/sessions"
                || (r.path == console::SIGN_IN_ROUTE && r.method == Method::POST);
            let metered = ["/c/", "/u/", "/p/", "/r/"]
                .iter()
                .any(|p| r.path.starts_with(p));
            assert_eq!(r.need == SignIn, login, "{} {}", r.method, r.path);
            assert_eq!(r.need == Page, metered && !login, "{} {}", r.method, r.path);
        }
    }

    #[test]
    fn each_route_is_declared_once_and_the_api_is_what_is_documented() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.clone(), r.path)),
                "{} {} twice",
                r.method,
                r.path
            );
            // Only the console's pages are left out of the document.
            let console = r.path == "/" || r.path.starts_with("/console");
            assert_eq!(r.doc.is_none(), console, "{} {}", r.method, r.path);
            if let Some(doc) = r.doc {
                let d = doc();
                assert_eq!(d.path, r.path, "{} {}", r.method, r.path);
                let m = match r.method.as_str() {
                    "GET" => HttpMethod::Get,
                    "POST" => HttpMethod::Post,
                    "PUT" => HttpMethod::Put,
                    "DELETE" => HttpMethod::Delete,
                    m => panic!("unexpected method {m}"),
                };
                assert!(d.methods == [m], "{} {}", r.method, r.path);
            }
        }
        // The document's operations are exactly the table's API routes.
        let doc = openapi();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (m, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    documented.push((m.to_owned(), path.clone()));
                }
            }
            assert!(item.patch.is_none() && item.head.is_none() && item.options.is_none());
        }
        let mut api: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|r| r.doc.is_some())
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        documented.sort();
        api.sort();
        assert_eq!(documented, api);
    }

    #[test]
    fn a_method_a_path_does_not_have_needs_what_its_first_route_needs() {
        assert_eq!(
            need(&Method::PUT, "/api/v1/decisions"),
            Some(Staff(P::DecisionsRead))
        );
        assert_eq!(
            need(&Method::HEAD, "/api/v1/stats"),
            Some(Staff(P::StatsRead))
        );
        assert_eq!(need(&Method::GET, "/api/v1/nothing-here"), None);
    }
}
