//! `GET /api/v1/batches/{id}/files/{name}`: a batch's output file
//! (`crate::batches::files`), streamed: each succeeded row's lines for the
//! name, in row order, each ending with `\n`, read from the database a page
//! of rows at a time (never the whole file in memory). While the batch
//! runs, what its rows have written so far. The batch's file names are its
//! `output_files` (`GET /api/v1/batches/{id}`).

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use utoipa::OpenApi;
use uuid::Uuid;

use super::batches::{batch_id, missing, row_pages};
use super::error::{ApiError, ApiResult, ErrorBody};
use super::AppState;
use crate::batches::files::{content_type, valid_name, MAX_NAME_CHARS};
use crate::store::Store;

/// Rows read per page. A row's files are at most 64 KiB (the result
/// bound), so a page holds at most 16 MiB, and usually far less.
const FILE_PAGE: i64 = 256;

#[derive(OpenApi)]
#[openapi(paths(get_batch_file))]
pub struct BatchFilesApi;

pub fn router() -> Router<AppState> {
    Router::new().route("/batches/{id}/files/{name}", get(get_batch_file))
}

/// A batch's output file, streamed
///
/// The lines its succeeded rows returned for `name` (under `$files` in
/// their results), in row order, one per line; no empty lines. CSV
/// (`text/csv`) when the name ends in `.csv`, else `text/plain`. While the
/// batch runs, the lines written so far. The names are the batch's
/// `output_files`.
#[utoipa::path(
    get,
    path = "/api/v1/batches/{id}/files/{name}",
    tag = "batches",
    params(
        ("id" = Uuid, Path),
        ("name" = String, Path, description = "A name of the batch's `output_files`: 1 to 200 of letters, digits, `.`, `_`, `-`, not starting with `.`")
    ),
    responses(
        (status = 200, description = "The file's lines, each ending with a newline", content(
            (String = "text/plain"),
            (String = "text/csv")
        )),
        (status = 400, description = "Not a valid file name", body = ErrorBody),
        (status = 404, description = "No such batch, or no such file in it", body = ErrorBody)
    )
)]
async fn get_batch_file(
    State(app): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let id = batch_id(&id)?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "{:?} is not a valid file name (1 to {MAX_NAME_CHARS} letters, digits, . _ -; not starting with .)",
            name.chars().take(64).collect::<String>()
        )));
    }
    let batch = app
        .store
        .batch_get(id)
        .await
        .map_err(|e| ApiError::from_store(e, missing(id)))?;
    if !batch.output_files.contains(&name) {
        return Err(ApiError::NotFound(format!(
            "batch {id} has no output file {name:?} (yet)"
        )));
    }
    let content_type = content_type(&name);
    let body = Body::from_stream(pages(app.store.clone(), id, name));
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The file's text, a page of rows at a time.
fn pages(
    store: Store,
    id: Uuid,
    name: String,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    row_pages(id, "file", FILE_PAGE, move |after| {
        let (store, name) = (store.clone(), name.clone());
        async move { store.batch_file_page(id, &name, after, FILE_PAGE).await }
    })
    .map(|page| page.map(|rows| text(&rows)))
    .filter(|chunk| futures::future::ready(!matches!(chunk, Ok(b) if b.is_empty())))
}

/// A page's lines, each ending with `\n` (stored lines are never empty).
fn text(page: &[(i64, Vec<String>)]) -> Bytes {
    let mut out = String::new();
    for line in page.iter().flat_map(|(_, lines)| lines) {
        out.push_str(line);
        out.push('\n');
    }
    Bytes::from(out)
}
