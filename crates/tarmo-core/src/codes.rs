//! The error catalog: every error code Tarmo answers with, its HTTP status
//! and what it means, in one place.
//!
//! A code is the stable, machine-readable half of an error
//! (`{"code": "...", "message": "..."}`); clients match on it, so its wire
//! form never changes once released. Nothing else in Tarmo spells a code as
//! a string: errors carry a [`Code`], and the HTTP status comes from here.
//! The README's list of codes is checked against this table by a test.

use std::fmt;

macro_rules! catalog {
    ($($variant:ident = ($wire:literal, $status:literal, $meaning:literal),)*) => {
        /// An error code, with its wire form ([`Code::as_str`]), its HTTP
        /// status ([`Code::status`]) and a one-line meaning ([`Code::meaning`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every code, in the catalog's (alphabetical) order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The wire form, e.g. `"unknown_purpose"`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $wire,)* }
            }

            /// The HTTP status an answer with this code carries.
            pub const fn status(self) -> u16 {
                match self { $(Code::$variant => $status,)* }
            }

            /// What the code means, in one line, for the README and for people
            /// reading logs.
            pub const fn meaning(self) -> &'static str {
                match self { $(Code::$variant => $meaning,)* }
            }
        }
    };
}

impl Code {
    /// The code of a wire form, if there is one.
    pub fn parse(wire: &str) -> Option<Code> {
        Code::ALL.iter().copied().find(|c| c.as_str() == wire)
    }

    /// The catalog as the Markdown table the README carries.
    pub fn markdown_table() -> String {
        let mut s = String::from("| code | status | meaning |\n|---|---:|---|\n");
        for c in Code::ALL {
            s.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.as_str(),
                c.status(),
                c.meaning()
            ));
        }
        s
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

catalog! {
    AlreadyExtended = ("already_extended", 409, "The request's deadline was already extended once (at most two months, once)."),
    AlreadyVerified = ("already_verified", 409, "The request's identity was already verified."),
    AudienceExists = ("audience_exists", 409, "An audience with that id exists."),
    AudienceNotFound = ("audience_not_found", 404, "No audience with that id."),
    AutomationExists = ("automation_exists", 409, "An automation with that id exists."),
    AutomationNotFound = ("automation_not_found", 404, "No automation with that id (or this key may not see it)."),
    BatchTooLarge = ("batch_too_large", 400, "The ingestion body is over the batch limit (500 KB after decompression)."),
    BodyTimeout = ("body_timeout", 408, "The request body did not arrive in time."),
    BodyTooLarge = ("body_too_large", 413, "The request body is over the route's size limit."),
    CampaignExists = ("campaign_exists", 409, "A campaign with that id exists."),
    CampaignNotFound = ("campaign_not_found", 404, "No campaign with that id (or this key may not see it)."),
    ChannelNotCovered = ("channel_not_covered", 400, "The purpose does not cover that channel."),
    ChannelWithoutConsent = ("channel_without_consent", 400, "A choice about one channel needs the person's record for the purpose first."),
    CronNeverFires = ("cron_never_fires", 400, "The cron schedule never fires (e.g. 31 February)."),
    CrossOrigin = ("cross_origin", 403, "A form was posted from another site (the Origin header is not this server's)."),
    CsrfFailed = ("csrf_failed", 403, "The console form's CSRF token is missing or stale; reload the page."),
    DataKindNotPermitted = ("data_kind_not_permitted", 403, "The key's purpose may not see the data kinds asked for."),
    DatabaseUnavailable = ("database_unavailable", 503, "The database cannot be reached; nothing was stored; retry after Retry-After."),
    DisableSelf = ("disable_self", 400, "Staff cannot disable their own account."),
    DpaSignedOnInFuture = ("dpa_signed_on_in_future", 400, "The processor's DPA signing date is in the future."),
    DuplicateRequest = ("duplicate_request", 409, "A request of the same type for the same person is still open."),
    Forbidden = ("forbidden", 403, "The key's or user's roles do not include the permission the route needs."),
    ImportNotFound = ("import_not_found", 404, "No import with that id."),
    InternalError = ("internal_error", 500, "Something failed inside Tarmo; it was logged and nothing half-done was kept."),
    InvalidAlias = ("invalid_alias", 400, "An alias call lacks `previousId` or `userId`."),
    InvalidApiKey = ("invalid_api_key", 401, "The API key or session is missing, unknown, revoked or expired."),
    InvalidAudience = ("invalid_audience", 400, "The audience definition does not parse; the message names the field."),
    InvalidAudienceId = ("invalid_audience_id", 400, "An audience id is 1-64 of a-z, 0-9 and _, starting with a letter."),
    InvalidAutomation = ("invalid_automation", 400, "The automation definition does not parse; the message names the field."),
    InvalidAutomationId = ("invalid_automation_id", 400, "An automation id is 1-64 of a-z, 0-9 and _, starting with a letter."),
    InvalidCampaign = ("invalid_campaign", 400, "The campaign definition does not parse; the message names the field."),
    InvalidCampaignId = ("invalid_campaign_id", 400, "A campaign id is 1-64 of a-z, 0-9 and _, starting with a letter."),
    InvalidCaps = ("invalid_caps", 400, "The per-person caps are not positive numbers per day and week."),
    InvalidChannel = ("invalid_channel", 400, "The sending channel is not email, sms or webhook."),
    InvalidChannelDecision = ("invalid_channel_decision", 400, "A choice about one channel of a purpose is a grant, a refusal or a withdrawal."),
    InvalidConfiguration = ("invalid_configuration", 400, "The configuration value is invalid; the message says which."),
    InvalidConsent = ("invalid_consent", 400, "The consent body does not parse; the message names the field."),
    InvalidCountry = ("invalid_country", 400, "A country is an ISO 3166-1 alpha-2 code."),
    InvalidCron = ("invalid_cron", 400, "The cron expression does not parse."),
    InvalidDataCategories = ("invalid_data_categories", 400, "A data category is unknown or listed twice."),
    InvalidDpaReference = ("invalid_dpa_reference", 400, "The DPA reference is empty or too long."),
    InvalidDpaSignedOn = ("invalid_dpa_signed_on", 400, "The DPA signing date is not a YYYY-MM-DD date."),
    InvalidEmail = ("invalid_email", 400, "The value is not an email address."),
    InvalidErasureWebhook = ("invalid_erasure_webhook", 400, "The erasure webhook is not a valid https URL."),
    InvalidExpiry = ("invalid_expiry", 400, "`expires_in_hours` is out of range (at most ten years)."),
    InvalidExport = ("invalid_export", 400, "The export query does not parse; the message names the parameter."),
    InvalidFieldType = ("invalid_field_type", 400, "A Segment message field has the wrong JSON type; the message names it."),
    InvalidFile = ("invalid_file", 400, "The uploaded file does not parse (CSV header or row); the message says where."),
    InvalidForm = ("invalid_form", 400, "A form field is missing or invalid; the message names it."),
    InvalidGppString = ("invalid_gpp_string", 400, "The GPP string does not decode; the message gives the bit offset."),
    InvalidGzip = ("invalid_gzip", 400, "The body is not valid gzip."),
    InvalidIdentifier = ("invalid_identifier", 400, "An identifier value is invalid for its kind."),
    InvalidImport = ("invalid_import", 400, "The import request does not parse; the message names the field."),
    InvalidImportDocumentation = ("invalid_import_documentation", 400, "`documentation` must say where the proof of lawful collection is kept."),
    InvalidImportFormat = ("invalid_import_format", 400, "`format` is csv or jsonl."),
    InvalidImportId = ("invalid_import_id", 400, "An import id is a number."),
    InvalidImportKind = ("invalid_import_kind", 400, "`kind` is customers, orders, products, stores or stock."),
    InvalidImportSource = ("invalid_import_source", 400, "`source` names where the file comes from, in 1 to 200 characters."),
    InvalidInboundSms = ("invalid_inbound_sms", 400, "The inbound SMS body lacks a sender or text."),
    InvalidJson = ("invalid_json", 400, "The body is not the JSON this route takes; the message names the field."),
    InvalidKey = ("invalid_key", 400, "The key definition does not parse; the message names the field."),
    InvalidKeyId = ("invalid_key_id", 400, "A key id is an integer."),
    InvalidLanguage = ("invalid_language", 400, "`language` is a tag like en, fi or pt-BR."),
    InvalidLogin = ("invalid_login", 400, "The sign-in body does not parse; the message names the field."),
    InvalidMapping = ("invalid_mapping", 400, "The import's column mapping is invalid; the message names the column."),
    InvalidMessage = ("invalid_message", 400, "A Segment message does not parse; the message names the field."),
    InvalidMessageType = ("invalid_message_type", 400, "A Segment message's `type` is not identify, track, page, screen, group or alias."),
    InvalidPerMinute = ("invalid_per_minute", 400, "A campaign's `per_minute` is not a positive number."),
    InvalidPhone = ("invalid_phone", 400, "The value is not a phone number in international form."),
    InvalidProcessor = ("invalid_processor", 400, "The processor definition does not parse; the message names the field."),
    InvalidProcessorId = ("invalid_processor_id", 400, "A processor id is a positive integer."),
    InvalidProcessorName = ("invalid_processor_name", 400, "A processor's name is 1 to 200 characters."),
    InvalidProcessorPurposes = ("invalid_processor_purposes", 400, "A processor lists no purposes, or one twice."),
    InvalidProcessorRole = ("invalid_processor_role", 400, "A processor's role is empty or too long."),
    InvalidProfileId = ("invalid_profile_id", 400, "A profile id is a positive integer."),
    InvalidPurpose = ("invalid_purpose", 400, "The purpose definition is invalid; the message names the field."),
    InvalidPurposeId = ("invalid_purpose_id", 400, "A purpose id is 1-64 of a-z, 0-9 and _, starting with a letter."),
    InvalidQuery = ("invalid_query", 400, "A query parameter is invalid; the message names it."),
    InvalidQuietHours = ("invalid_quiet_hours", 400, "Quiet hours are two times HH:MM."),
    InvalidRequest = ("invalid_request", 400, "The request could not be read (a malformed path, query or body)."),
    InvalidRequestId = ("invalid_request_id", 400, "A request id is a positive integer."),
    InvalidRole = ("invalid_role", 400, "A role is unknown, or none was chosen."),
    InvalidRule = ("invalid_rule", 400, "The segment rule is malformed; the message names its path or line and column."),
    InvalidSegment = ("invalid_segment", 400, "The segment definition does not parse; the message names the field."),
    InvalidSegmentId = ("invalid_segment_id", 400, "A segment id is 1-64 of a-z, 0-9 and _, starting with a letter."),
    InvalidSegmentName = ("invalid_segment_name", 400, "A segment's name is 1-200 bytes."),
    InvalidSendAt = ("invalid_send_at", 400, "A campaign's `send_at` is not an RFC 3339 time."),
    InvalidSignal = ("invalid_signal", 400, "The consent signal body does not parse; the message names the field."),
    InvalidSignalMap = ("invalid_signal_map", 400, "The TCF/GPP signal mapping names an unknown purpose or field."),
    InvalidSource = ("invalid_source", 400, "`source` names where the decision was collected."),
    InvalidSubject = ("invalid_subject", 400, "Name the person by `profile` or by `type` and `value`, not both."),
    InvalidSubscription = ("invalid_subscription", 400, "The subscription body does not parse; the message names the field."),
    InvalidSync = ("invalid_sync", 400, "A sync number is a positive integer."),
    InvalidTcString = ("invalid_tc_string", 400, "The TCF string does not decode; the message gives the bit offset."),
    InvalidTemplate = ("invalid_template", 400, "The template does not parse; the message names the field."),
    InvalidTemplateSyntax = ("invalid_template_syntax", 400, "The template's text is not valid template syntax; the message says where."),
    InvalidTimestamp = ("invalid_timestamp", 400, "A timestamp is not ISO 8601."),
    InvalidToken = ("invalid_token", 401, "The SMS provider's bearer token is missing or wrong."),
    InvalidTransferSafeguard = ("invalid_transfer_safeguard", 400, "The transfer safeguard is not one Tarmo knows (adequacy, SCC, BCR, ...)."),
    InvalidTrigger = ("invalid_trigger", 400, "The automation's trigger is invalid; the message names the field."),
    InvalidTrust = ("invalid_trust", 400, "Trust is `client` or `server`."),
    InvalidUnsubscribe = ("invalid_unsubscribe", 400, "A one-click unsubscribe must post List-Unsubscribe=One-Click (RFC 8058)."),
    InvalidUser = ("invalid_user", 400, "A user name is 1 to 100 characters."),
    InvalidUserId = ("invalid_user_id", 400, "A user id is an integer."),
    InvalidWebhook = ("invalid_webhook", 400, "A webhook flow lacks its processor or list kind."),
    InvalidWebhookToken = ("invalid_webhook_token", 400, "The processor's webhook token is empty or too long."),
    InvalidWebhookUrl = ("invalid_webhook_url", 400, "The webhook URL does not parse."),
    InvalidWriteKey = ("invalid_write_key", 401, "The write key is unknown, revoked, or not a write key."),
    KeyNotFound = ("key_not_found", 404, "No active key with that id."),
    LinkInvalid = ("link_invalid", 404, "The link's signature does not verify."),
    MasterKeyRotationConflict = ("master_key_rotation_conflict", 400, "Another rotation of the master key ran at the same time; nothing changed."),
    MasterKeyUnchanged = ("master_key_unchanged", 400, "The new master key is the current one."),
    MessageTooLarge = ("message_too_large", 400, "One Segment message is over 32 KB."),
    MethodNotAllowed = ("method_not_allowed", 405, "The route does not take that method."),
    MissingBatch = ("missing_batch", 400, "The batch body needs a `batch` array."),
    MissingCorrections = ("missing_corrections", 400, "A rectification names the corrected values."),
    MissingEventName = ("missing_event_name", 400, "A track call has no `event`."),
    MissingIdentity = ("missing_identity", 400, "A message has neither `userId` nor `anonymousId`."),
    MissingPurposes = ("missing_purposes", 400, "A subscription names at least one purpose."),
    MissingReason = ("missing_reason", 400, "Staff say why (how the person's identity was verified)."),
    MissingWriteKey = ("missing_write_key", 401, "No write key: Basic auth with the key as user name, or `writeKey` in the body."),
    NoBundle = ("no_bundle", 409, "Only access and portability requests have a bundle."),
    NoCommonDataCategories = ("no_common_data_categories", 403, "The purpose and the processor share no data category."),
    NoDataHeld = ("no_data_held", 404, "No data is held about the person."),
    NoEmailAddress = ("no_email_address", 400, "The person has no email address on record."),
    NoExportableCategories = ("no_exportable_categories", 400, "The shared categories stand for no data Tarmo exports."),
    NotARestriction = ("not_a_restriction", 409, "Only a completed restriction request can be lifted."),
    NotASession = ("not_a_session", 400, "The key is not a login session (revoke keys with POST /api/v1/keys/{id}/revoke)."),
    NotReady = ("not_ready", 409, "Not ready yet: a request's bundle before it is completed (in /readyz, 503: a part is down)."),
    ObjectionNotApplicable = ("objection_not_applicable", 400, "An objection applies only to purposes on legitimate interests or consent."),
    Overloaded = ("overloaded", 429, "The ingestion queue is full; retry after Retry-After."),
    ProcessorNameTaken = ("processor_name_taken", 409, "Another processor has that name."),
    ProcessorNotFound = ("processor_not_found", 404, "No processor with that id."),
    ProcessorPurposeNotRegistered = ("processor_purpose_not_registered", 400, "The processor is not registered for the flow's purpose."),
    ProcessorWithoutWebhook = ("processor_without_webhook", 400, "The processor has no webhook to deliver to."),
    ProfileNotFound = ("profile_not_found", 404, "No profile with that id (or this key may not see it)."),
    PurposeNotConsentBased = ("purpose_not_consent_based", 400, "The purpose's legal basis is not consent, so consent cannot be recorded for it."),
    PurposeNotPermitted = ("purpose_not_permitted", 403, "The key is bound to other purposes than the one asked for."),
    QuietHoursWholeDay = ("quiet_hours_whole_day", 400, "Quiet hours cover the whole day, so nothing could ever be sent."),
    RateLimited = ("rate_limited", 429, "Too many requests; retry after Retry-After."),
    ReconsentNeedsNewNotice = ("reconsent_needs_new_notice", 400, "Asking for consent again needs a new notice version."),
    RequestClosed = ("request_closed", 409, "The request is completed or refused; it cannot change."),
    RequestNotFound = ("request_not_found", 404, "No request with that id."),
    RouteNotFound = ("route_not_found", 404, "No such route or action."),
    RuleDataNotPermitted = ("rule_data_not_permitted", 400, "The rule reads data the segment's purpose does not use."),
    SegmentCycle = ("segment_cycle", 400, "The segment would depend on itself through segment references."),
    SegmentExists = ("segment_exists", 409, "A segment with that id exists; PUT changes it."),
    SegmentInUse = ("segment_in_use", 409, "Another segment, automation or audience names this segment."),
    SegmentNotFound = ("segment_not_found", 404, "No segment with that id (or this key may not see it)."),
    SpecialCategoryNeedsConsent = ("special_category_needs_consent", 400, "Special-category (Art. 9) data needs explicit consent as the legal basis."),
    StorageFull = ("storage_full", 507, "The disk is full; nothing was written; retry once space is freed."),
    SyncNotFound = ("sync_not_found", 404, "No audience sync with that number."),
    TemplateChannelMismatch = ("template_channel_mismatch", 400, "The template is for another channel than the flow's."),
    TemplateExists = ("template_exists", 409, "A template with that id exists."),
    TemplateFieldNotPermitted = ("template_field_not_permitted", 400, "The template reads data the purpose does not use."),
    TemplateInUse = ("template_in_use", 409, "An automation or campaign uses this template."),
    TemplateNotFound = ("template_not_found", 404, "No template with that id."),
    TemporarilyUnavailable = ("temporarily_unavailable", 503, "The store is busy for a moment; retry."),
    TokenExpired = ("token_expired", 410, "The link has expired; ask for a new one."),
    TokenUnknown = ("token_unknown", 404, "The link is not valid."),
    TokenUsed = ("token_used", 410, "The link was already used; each link works once."),
    TooManySubjects = ("too_many_subjects", 400, "At most 10,000 people a request."),
    TransferSafeguardRequired = ("transfer_safeguard_required", 400, "A processor outside the EEA needs a transfer safeguard."),
    UnknownChannel = ("unknown_channel", 400, "The channel is not one of email, sms, push, phone, post, web, ads."),
    UnknownDecision = ("unknown_decision", 400, "The decision is not one a caller may record (pending_confirmation and expired come from Tarmo)."),
    UnknownFormat = ("unknown_format", 400, "An audience format is meta_custom_audience or google_customer_match."),
    UnknownIdentifierType = ("unknown_identifier_type", 400, "The identifier kind is not configured."),
    UnknownMethod = ("unknown_method", 400, "The consent method is not one a caller may record (web_form, api, staff, import)."),
    UnknownNoticeVersion = ("unknown_notice_version", 400, "The purpose never had that notice version."),
    UnknownProcessor = ("unknown_processor", 400, "No processor with that id."),
    UnknownPurpose = ("unknown_purpose", 400, "No such purpose (404 when the purpose is the one the path names)."),
    UnknownRequestType = ("unknown_request_type", 400, "The request type is not one of the rights Tarmo handles."),
    UnknownSegment = ("unknown_segment", 400, "The rule or definition names a segment that does not exist."),
    UnknownStatus = ("unknown_status", 400, "`status` is one of received, awaiting_verification, in_progress, completed, refused."),
    UnknownTemplate = ("unknown_template", 400, "The automation names a template that does not exist."),
    UnsupportedContentEncoding = ("unsupported_content_encoding", 400, "Content-Encoding is gzip or none."),
    UnsupportedMediaType = ("unsupported_media_type", 415, "The Content-Type is not one this route takes."),
    UserExists = ("user_exists", 409, "A staff user with that name exists."),
    UserNotFound = ("user_not_found", 404, "No active staff account with that id."),
    WeakPassword = ("weak_password", 400, "The password is too short."),
    WebhookTargetPrivate = ("webhook_target_private", 400, "A webhook may not point at a private, loopback or link-local address."),
    WebhookUrlNotHttps = ("webhook_url_not_https", 400, "A webhook URL must be https."),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms_are_unique_snake_case_and_sorted() {
        let mut seen = std::collections::HashSet::new();
        for w in Code::ALL.windows(2) {
            assert!(w[0].as_str() < w[1].as_str(), "{} before {}", w[0], w[1]);
        }
        for c in Code::ALL {
            let w = c.as_str();
            assert!(seen.insert(w), "{w} twice");
            assert!(
                w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    && !w.starts_with('_')
                    && !w.ends_with('_'),
                "{w} is not snake_case"
            );
            assert_eq!(Code::parse(w), Some(*c));
        }
        assert_eq!(Code::parse("no_such_code_anywhere"), None);
    }

    /// The README's table of codes is this catalog. To rewrite it after a
    /// change: `TARMO_WRITE_README=1 cargo test -p tarmo-core readme`.
    #[test]
    fn the_readme_lists_exactly_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (start, end) = ("<!-- error codes: start -->\n", "<!-- error codes: end -->");
        let a = readme
            .find(start)
            .expect("README has the error-codes markers")
            + start.len();
        let b = readme
            .find(end)
            .expect("README has the error-codes end marker");
        let table = Code::markdown_table();
        if readme[a..b] != table {
            if std::env::var_os("TARMO_WRITE_README").is_some() {
                std::fs::write(path, format!("{}{table}{}", &readme[..a], &readme[b..])).unwrap();
            } else {
                panic!(
                    "README's error codes differ from the catalog; rerun with TARMO_WRITE_README=1"
                );
            }
        }
    }

    #[test]
    fn statuses_are_errors_and_meanings_one_line() {
        for c in Code::ALL {
            assert!((400..600).contains(&c.status()), "{c}: {}", c.status());
            let m = c.meaning();
            assert!(
                !m.is_empty() && !m.contains('\n') && m.len() < 200,
                "{c}: {m:?}"
            );
            assert!(m.ends_with('.'), "{c}: {m:?}");
        }
    }
}
