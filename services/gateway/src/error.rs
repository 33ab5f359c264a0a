//! The gateway's one error map: a gRPC status (from a service, or made
//! here for a bad REST request) → an HTTP response whose body is the JSON
//! of `google.rpc.Status`, details included.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use prost_reflect::{DescriptorPool, DynamicMessage};
use tonic::Code;
use tonic_types::StatusExt;

/// A failed REST call: a gRPC status, and the HTTP status when it is not
/// the standard mapping of the code (404 for an unknown route, 405, 413).
#[derive(Debug)]
pub struct ApiError {
    status: tonic::Status,
    http: Option<StatusCode>,
    allow: Option<String>,
}

impl ApiError {
    /// INVALID_ARGUMENT naming `field`, with a `BadRequest` violation.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        amaos_mesh::status::invalid_field(field, description).into()
    }

    /// INVALID_ARGUMENT about the request as a whole.
    pub fn invalid(message: impl Into<String>) -> Self {
        tonic::Status::invalid_argument(message).into()
    }

    /// An error of the gateway itself.
    pub fn internal(message: impl Into<String>) -> Self {
        tonic::Status::internal(message).into()
    }

    /// No route for this path.
    pub fn no_route(method: &http::Method, path: &str) -> Self {
        tonic::Status::not_found(format!("no route for {method} {path}")).into()
    }

    /// The path has routes, none for this method.
    pub fn method_not_allowed(method: &http::Method, allowed: &[http::Method]) -> Self {
        let allow = allowed
            .iter()
            .map(http::Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            status: tonic::Status::unimplemented(format!(
                "{method} is not allowed here; use {allow}"
            )),
            http: Some(StatusCode::METHOD_NOT_ALLOWED),
            allow: Some(allow),
        }
    }

    /// The body is larger than the limit.
    pub fn too_large(limit: usize) -> Self {
        Self {
            status: tonic::Status::invalid_argument(format!(
                "the request body is larger than {limit} bytes"
            )),
            http: Some(StatusCode::PAYLOAD_TOO_LARGE),
            allow: None,
        }
    }

    /// Too many streams from one client.
    pub fn too_many_streams(limit: usize) -> Self {
        amaos_mesh::status::exhausted_retry_after(
            format!("at most {limit} streams per client are open at once"),
            Duration::from_secs(1),
        )
        .into()
    }

    /// The gRPC status.
    pub fn status(&self) -> &tonic::Status {
        &self.status
    }

    /// The HTTP status this error is sent with.
    pub fn http_status(&self) -> StatusCode {
        self.http.unwrap_or_else(|| http_status(self.status.code()))
    }

    /// The JSON of `google.rpc.Status` for this error.
    pub fn body(&self, pool: &DescriptorPool) -> serde_json::Value {
        status_json(&self.status, pool)
    }

    /// The response, body rendered with `pool` (which must hold the
    /// `google.rpc` error detail types).
    pub fn into_response_with(self, pool: &DescriptorPool) -> Response {
        let body = serde_json::to_vec(&self.body(pool)).unwrap_or_default();
        let mut response = (self.http_status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            headers.insert(header::ALLOW, allow);
        }
        if let Some(delay) = retry_after(&self.status)
            && let Ok(value) = HeaderValue::from_str(&delay.to_string())
        {
            headers.insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self {
            status,
            http: None,
            allow: None,
        }
    }
}

/// The standard mapping of gRPC codes to HTTP statuses (as in
/// `google/rpc/code.proto` and grpc-gateway).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Whole seconds to wait, rounded up, from a `RetryInfo` detail.
fn retry_after(status: &tonic::Status) -> Option<u64> {
    let delay = status.get_details_retry_info()?.retry_delay?;
    let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    Some(secs.max(1))
}

/// `{"code": 3, "message": "...", "details": [{"@type": ..., ...}]}`.
pub fn status_json(status: &tonic::Status, pool: &DescriptorPool) -> serde_json::Value {
    let mut details = serde_json::Value::Array(Vec::new());
    if !status.details().is_empty()
        && let Some(descriptor) = pool.get_message_by_name("google.rpc.Status")
        && let Ok(decoded) = DynamicMessage::decode(descriptor, status.details())
        && let Ok(json) = serde_json::to_value(&decoded)
        && let Some(found) = json.get("details")
    {
        details = found.clone();
    }
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Without the pool the details cannot be expanded; code and message
        // still are. Handlers use `into_response_with`.
        let body = serde_json::json!({
            "code": self.status.code() as i32,
            "message": self.status.message(),
            "details": [],
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.http_status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> DescriptorPool {
        crate::descriptors().unwrap()
    }

    #[test]
    fn field_errors_carry_their_bad_request_detail() {
        let error = ApiError::field("retry.maxAttempts", "invalid type");
        assert_eq!(error.http_status(), StatusCode::BAD_REQUEST);
        let body = error.body(&pool());
        assert_eq!(body["code"], 3);
        let detail = &body["details"][0];
        assert_eq!(detail["@type"], "type.googleapis.com/google.rpc.BadRequest");
        assert_eq!(detail["fieldViolations"][0]["field"], "retry.maxAttempts");
    }

    #[test]
    fn retry_info_becomes_retry_after() {
        let status =
            amaos_mesh::status::exhausted_retry_after("slow down", Duration::from_millis(1500));
        let response = ApiError::from(status).into_response_with(&pool());
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn codes_map_to_the_standard_statuses() {
        assert_eq!(http_status(Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Cancelled).as_u16(), 499);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            http_status(Code::DeadlineExceeded),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
