//! What every example answers to a bad request: JSON `{"detail": "..."}`, FastAPI's shape,
//! where axum's own extractors answer in plain text. Each example includes this file with
//! `#[path = "support/json.rs"] mod json;`.

#![allow(dead_code)] // each example uses a part

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

/// An answer of `status` with `{"detail": ...}`.
pub struct Detail(pub StatusCode, pub String);

impl Detail {
    /// A 422: JSON of the right shape that the handler still cannot take.
    pub fn unprocessable(detail: String) -> Detail {
        Detail(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
}

impl IntoResponse for Detail {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "detail": self.1 }))).into_response()
    }
}

/// A JSON body, or a JSON answer that says what is wrong with it: malformed JSON (400), a
/// missing or ill-typed field (422), a wrong content type (415) and a body over the route's
/// limit (413) keep axum's status and message, in `{"detail": ...}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Detail;

    async fn from_request(req: Request, state: &S) -> Result<JsonBody<T>, Detail> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(Detail(rejection.status(), rejection.body_text())),
        }
    }
}

/// `router` answering an unknown path (404) and a known path with another method (405) in
/// JSON too. Call it once every route is added: axum puts the 405 fallback on the routes
/// registered before it.
pub fn json_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { Detail(StatusCode::NOT_FOUND, "Not Found".to_owned()) })
        .method_not_allowed_fallback(|| async {
            Detail(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed".to_owned(),
            )
        })
}
