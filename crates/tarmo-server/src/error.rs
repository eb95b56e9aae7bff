//! One error shape for every route: `{"code": "...", "message": "..."}`, with
//! stable codes. Internal errors are logged and answered with an opaque 500.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tarmo_core::codes::Code;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For people; never holds personal data.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error answered with its code's status from the catalog.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// `unknown_purpose` when the purpose is the resource the path names:
    /// 404 rather than the catalog's 400 for a purpose named in a body.
    pub fn purpose_not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            ..Self::new(Code::UnknownPurpose, message)
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidApiKey, message)
    }

    pub fn overloaded() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                Code::Overloaded,
                "the ingestion queue is full; retry after the delay in Retry-After",
            )
        }
    }
}

impl ApiError {
    /// The database cannot be reached: nothing was stored; retry.
    pub fn database_unavailable() -> Self {
        Self {
            retry_after: Some(2),
            ..Self::new(
                Code::DatabaseUnavailable,
                "the database cannot be reached; nothing was stored; retry after the delay in Retry-After",
            )
        }
    }
}

impl From<tarmo_store::Error> for ApiError {
    fn from(e: tarmo_store::Error) -> Self {
        if let tarmo_store::Error::Rejected { code, message } = e {
            return Self::new(code, message);
        }
        if let tarmo_store::Error::StorageFull(why) = &e {
            tracing::error!(error = %why, "no space left: write refused");
            return Self {
                retry_after: Some(30),
                ..Self::new(
                    Code::StorageFull,
                    "the store has no space left; nothing was written. Retry once space is freed",
                )
            };
        }
        if matches!(e, tarmo_store::Error::Panicked) {
            // The panic and its place are in the log (the panic hook).
            return Self::new(
                Code::InternalError,
                "internal error: the write failed and was rolled back; it has been logged",
            );
        }
        if let tarmo_store::Error::Unavailable(why) = &e {
            tracing::warn!(error = %why, "the database is unavailable");
            return Self::database_unavailable();
        }
        if e.is_transient() {
            tracing::warn!(error = %e, "transient store fault");
            return Self {
                retry_after: Some(1),
                ..Self::new(
                    Code::TemporarilyUnavailable,
                    "the store is temporarily unavailable; retry",
                )
            };
        }
        tracing::error!(error = %e, "internal error");
        Self::new(Code::InternalError, "internal error; it has been logged")
    }
}

impl From<tarmo_core::consent::ConsentError> for ApiError {
    fn from(e: tarmo_core::consent::ConsentError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<tarmo_core::identity::IdentifierError> for ApiError {
    fn from(e: tarmo_core::identity::IdentifierError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            axum::Json(ErrorBody {
                code: self.code.as_str(),
                message: self.message,
            }),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_is_507_storage_full_and_a_panic_an_internal_error() {
        let full = ApiError::from(tarmo_store::Error::StorageFull(
            "database or disk is full".into(),
        ));
        assert_eq!(
            (full.status.as_u16(), full.code, full.retry_after),
            (507, Code::StorageFull, Some(30))
        );
        let io = ApiError::from(tarmo_store::Error::from(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert_eq!((io.status.as_u16(), io.code), (507, Code::StorageFull));
        let panicked = ApiError::from(tarmo_store::Error::Panicked);
        assert_eq!(
            (panicked.status.as_u16(), panicked.code),
            (500, Code::InternalError)
        );
        assert!(panicked.message.contains("rolled back"));
    }
}
