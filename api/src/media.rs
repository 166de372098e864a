//! Media files: `GET /api/whatsapp/media/{messageId}` streams a message's
//! file from the media store (with its type and length, and one byte
//! range when asked: 206, or 416 for a range that cannot be served) to a
//! key that may see the chat; `…/thumbnail` its thumbnail. And the
//! multipart form of a send: the file is checked against Meta's type and
//! size limits for its message type (415, 413), streamed into the media
//! store, uploaded to Meta (`POST /{phone_number_id}/media`) from there,
//! and sent by the media id Meta answers.

use std::ops::Range;

use axum::Extension;
use axum::body::Body as AxumBody;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use utoipa::ToSchema;
use uuid::Uuid;
use wapipe_domain::media::{self, Expect, MediaGraphError, PutError, Stored};
use wapipe_domain::outbox::OutboundContent;
use wapipe_domain::outbox::content::{MediaKind, MediaSource};
use wapipe_shared::entities::chats;
use wapipe_shared::entities::message_media::{self, status};

use crate::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::Id;
use crate::messages::{gate, queue, visible_message};

/// Longest text field of an upload form.
const MAX_FIELD: usize = 4096;

#[utoipa::path(get, path = "/api/whatsapp/media/{messageId}", tag = "messages",
    params(("messageId" = Uuid, Path, description = "message id"),
        ("Range" = Option<String>, Header, description = "one byte range: bytes=START-END, bytes=START- or bytes=-SUFFIX")),
    responses(
        (status = 200, description = "the whole file, with its own Content-Type and Content-Length",
            content((String = "application/octet-stream"), (String = "*/*"))),
        (status = 206, description = "the range asked for, with Content-Range",
            content((String = "application/octet-stream"), (String = "*/*"))),
        (status = 404, body = ErrorBody, description = "no such message, not visible to this key, or without a file"),
        (status = 409, body = ErrorBody, description = "the file is not stored (yet): pending, failed or refused, and why"),
        (status = 410, body = ErrorBody, description = "the file was removed after WAPIPE_MEDIA_RETENTION_DAYS"),
        (status = 416, body = ErrorBody, description = "the range cannot be served")))]
pub async fn file(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = stored_file(&state, &who, id).await?;
    let sha = row.sha256.clone().unwrap_or_default();
    let mime = row
        .mime_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    stream_object(&state, &sha, &mime, &headers).await
}

#[utoipa::path(get, path = "/api/whatsapp/media/{messageId}/thumbnail", tag = "messages",
    params(("messageId" = Uuid, Path, description = "message id")),
    responses(
        (status = 200, description = "a JPEG thumbnail of an image", content_type = "image/jpeg", body = String),
        (status = 404, body = ErrorBody, description = "no such message, not visible, or no thumbnail (not an image, or not decodable); made on the first request"),
        (status = 409, body = ErrorBody, description = "the file is not stored (yet)"),
        (status = 410, body = ErrorBody, description = "the file was removed after WAPIPE_MEDIA_RETENTION_DAYS"),
        (status = 416, body = ErrorBody, description = "the range cannot be served")))]
pub async fn thumbnail(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Id(id): Id,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let row = stored_file(&state, &who, id).await?;
    let store = state
        .media
        .as_ref()
        .ok_or_else(|| ApiError::not_found("thumbnail"))?;
    // Made on the first request for it (at most two decodes at once).
    let sha = match media::thumbnail_of(&state.db, store, &row, &state.thumbnail_decodes).await {
        Ok(sha) => sha,
        Err(media::ThumbnailError::None(why)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no thumbnail for this file: {why}"),
            ));
        }
        Err(media::ThumbnailError::Db(e)) => return Err(e.into()),
        Err(media::ThumbnailError::Store(e)) => return Err(ApiError::internal(e)),
    };
    stream_object(&state, &sha, "image/jpeg", &headers).await
}

/// The file row of a message the key may see, if the file is stored;
/// the reason it cannot be served otherwise.
async fn stored_file(
    state: &AppState,
    who: &Principal,
    id: Uuid,
) -> ApiResult<message_media::Model> {
    let (msg, _) = visible_message(state, who, id).await?;
    let row = media::files_of(&state.db, &[msg.id])
        .await?
        .remove(&msg.id)
        .ok_or_else(|| ApiError::not_found("media file"))?;
    let why = row.error.clone().unwrap_or_default();
    match row.status.as_str() {
        status::STORED => Ok(row),
        status::PRUNED => Err(ApiError::new(
            StatusCode::GONE,
            "media_pruned",
            format!("the file was removed: {why}"),
        )),
        status::PENDING => Err(ApiError::conflict(
            "media_pending",
            "the file is being fetched from Meta; try again shortly",
        )),
        other => Err(ApiError::conflict(
            &format!("media_{other}"),
            format!("the file is not stored ({other}): {why}"),
        )),
    }
}

/// Streams the object `sha` (the range the `Range` header asks for).
async fn stream_object(
    state: &AppState,
    sha: &str,
    mime: &str,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let store = state
        .media
        .as_ref()
        .ok_or_else(|| ApiError::conflict("no_media_store", "this API has no media store"))?;
    let total = store
        .size_of(sha)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("media file"))?;
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|v| parse_range(v, total)) {
            Some(r) => Some(r),
            None => {
                return Err(ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!(
                        "give one range within the file's {total} bytes: bytes=START-END, \
                         bytes=START- or bytes=-SUFFIX"
                    ),
                )
                .with_header(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{total}"))
                        .unwrap_or(HeaderValue::from_static("bytes */0")),
                ));
            }
        },
    };
    let fetched = store
        .get(sha, range.clone())
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("media file"))?;
    let len = fetched.range.end - fetched.range.start;
    let mut resp = AxumBody::from_stream(fetched.stream).into_response();
    *resp.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if range.is_some()
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{total}",
            fetched.range.start,
            fetched.range.end.saturating_sub(1)
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    // The bytes are a customer's: never sniffed into HTML, never run as a
    // page of the API's origin, and kept out of shared caches.
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    if !["image/", "video/", "audio/"]
        .iter()
        .any(|p| mime.starts_with(p))
    {
        h.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    Ok(resp)
}

/// One byte range of a file of `total` bytes (RFC 9110 §14.1.2), clipped
/// to the file; `None` when it is malformed, has several ranges, or starts
/// past the end.
pub fn parse_range(value: &str, total: u64) -> Option<Range<u64>> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') || total == 0 {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match (first.is_empty(), last.is_empty()) {
        (true, false) if digits(last) => {
            let n: u64 = last.parse().ok()?;
            (n > 0).then(|| total.saturating_sub(n)..total)
        }
        (false, true) if digits(first) => {
            let start: u64 = first.parse().ok()?;
            (start < total).then_some(start..total)
        }
        (false, false) if digits(first) && digits(last) => {
            let start: u64 = first.parse().ok()?;
            let end: u64 = last.parse().ok()?;
            (start <= end && start < total).then(|| start..end.saturating_add(1).min(total))
        }
        _ => None,
    }
}

/// Whether a request body is a multipart form.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/form-data")
        })
}

/// The multipart form of a send: `type` first, then `file`.
#[derive(Debug, ToSchema)]
#[schema(rename_all = "camelCase")]
#[allow(dead_code)]
pub struct SendUpload {
    /// `image | video | audio | document | sticker`; must come before `file`.
    #[schema(rename = "type")]
    kind: String,
    /// The file, with its Content-Type: Meta accepts image/jpeg and
    /// image/png images up to 5 MB; video/mp4 and video/3gpp videos and
    /// audio/aac, amr, mpeg, mp4 and ogg audio up to 16 MB; documents
    /// (PDF, text, Office) up to 100 MB; image/webp stickers up to 500 KB.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    caption: Option<String>,
    /// A document's file name (default: the file part's).
    file_name: Option<String>,
    /// Reply to this message of the customer (its wamid).
    reply_to: Option<String>,
}

/// An uploaded file, as wapipe keeps it.
pub struct UploadedFile {
    pub media_id: String,
    pub stored: Stored,
    pub mime_type: String,
}

fn kind_of(s: &str) -> Option<MediaKind> {
    Some(match s {
        "image" => MediaKind::Image,
        "video" => MediaKind::Video,
        "audio" => MediaKind::Audio,
        "document" => MediaKind::Document,
        "sticker" => MediaKind::Sticker,
        _ => return None,
    })
}

fn upload_invalid(message: impl Into<String>) -> ApiError {
    ApiError::unprocessable("upload_invalid", message)
}

/// What the form said besides the file.
#[derive(Default)]
struct Form {
    kind: Option<MediaKind>,
    caption: Option<String>,
    file_name: Option<String>,
    reply_to: Option<String>,
    file: Option<(Stored, String, Option<String>)>,
}

/// A multipart send (see the module's documentation).
pub async fn send_upload(
    state: AppState,
    who: Principal,
    chat: chats::Model,
    req: axum::extract::Request,
) -> ApiResult<Response> {
    let (Some(store), Some(graph), Some(meta)) = (
        state.media.clone(),
        state.upload_graph.clone(),
        state.meta.clone(),
    ) else {
        return Err(ApiError::conflict(
            "uploads_unavailable",
            "this API has no media store or no Graph API access: send media by url or mediaId",
        ));
    };
    // Nothing is read or uploaded for a send that would be refused anyway.
    let gate = gate(&state, &chat, false, None).await?;
    let boundary = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| ApiError::bad_request("a multipart body needs its boundary"))?;
    let mut multipart = multer::Multipart::new(req.into_body().into_data_stream(), boundary);
    let mut form = Form::default();
    let bad = |e: multer::Error| ApiError::bad_request(format!("bad multipart body: {e}"));
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_owned();
        if name == "file" {
            let Some(kind) = form.kind else {
                return Err(upload_invalid("send the type field before the file"));
            };
            let mime = field
                .content_type()
                .map(|m| m.essence_str().to_ascii_lowercase())
                .unwrap_or_default();
            let (limit, types) = media::send_limits(kind);
            if !types.contains(&mime.as_str()) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "media_type_refused",
                    format!(
                        "Meta does not accept {:?} for {}: use {}",
                        mime,
                        kind.as_str(),
                        types.join(", ")
                    ),
                ));
            }
            let max = limit.min(state.settings.media_max_bytes);
            let part_name = field.file_name().map(str::to_owned);
            let stored = store
                .put_stream(
                    &mut field,
                    Expect {
                        sha256: None,
                        size: None,
                        max,
                    },
                )
                .await
                .map_err(|e| match e {
                    PutError::TooLarge { limit } => ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "media_too_large",
                        format!(
                            "a {} may be at most {limit} bytes (Meta's limit, or \
                             WAPIPE_MEDIA_MAX_BYTES)",
                            kind.as_str()
                        ),
                    ),
                    PutError::Source(e) => {
                        ApiError::bad_request(format!("bad multipart body: {e}"))
                    }
                    other => ApiError::internal(other),
                })?;
            form.file = Some((stored, mime, part_name));
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad)? {
            text.extend_from_slice(&chunk);
            if text.len() > MAX_FIELD {
                return Err(ApiError::field(
                    &name,
                    format!("longer than {MAX_FIELD} bytes"),
                ));
            }
        }
        let text = String::from_utf8(text).map_err(|_| ApiError::field(&name, "not UTF-8 text"))?;
        if text.contains('\0') {
            return Err(ApiError::field(&name, "may not contain NUL"));
        }
        match name.as_str() {
            "type" => {
                form.kind = Some(kind_of(&text).ok_or_else(|| {
                    ApiError::field("type", "one of image, video, audio, document, sticker")
                })?)
            }
            "caption" => form.caption = Some(text),
            "fileName" => form.file_name = Some(text),
            "replyTo" => form.reply_to = Some(text),
            other => return Err(ApiError::field(other, "unknown field")),
        }
    }
    let (Some(kind), Some((stored, mime, part_name))) = (form.kind, form.file) else {
        return Err(upload_invalid(
            "a multipart send needs the fields type and file",
        ));
    };
    let file_name =
        form.file_name.clone().or(part_name).unwrap_or_else(|| {
            format!("{}.{}", kind.as_str(), stored.sha256.get(..8).unwrap_or(""))
        });
    let content = OutboundContent::Media {
        media: kind,
        // Replaced by Meta's id below; validated now, before the upload.
        source: MediaSource::Id("0".into()),
        caption: form.caption.clone(),
        filename: (kind == MediaKind::Document).then(|| file_name.clone()),
    };
    content
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let config = meta
        .configs
        .get(&state.db, chat.config_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found("config"))?;
    let fetched = store
        .get(&stored.sha256, None)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("the uploaded file vanished from the media store"))?;
    let body = reqwest::Body::wrap_stream(fetched.stream.map(|r| r.map_err(std::io::Error::other)));
    let media_id = graph
        .upload(
            config.graph_api_version.as_deref(),
            &config.phone_number_id,
            &config.access_token,
            &mime,
            &file_name,
            body,
            stored.size,
        )
        .await
        .map_err(|e| match e {
            MediaGraphError::Refused { code, message, .. } => ApiError::unprocessable(
                "meta_refused",
                format!("Meta refused the upload (code {code}): {message}"),
            ),
            other => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "meta_unavailable",
                format!("the upload to Meta failed: {other}"),
            ),
        })?;
    let OutboundContent::Media {
        media,
        caption,
        filename,
        ..
    } = content
    else {
        return Err(ApiError::internal("not a media send"));
    };
    let content = OutboundContent::Media {
        media,
        source: MediaSource::Id(media_id.clone()),
        caption,
        filename,
    };
    let view = queue(
        &state,
        &who,
        &chat,
        gate,
        content,
        form.reply_to,
        Some(UploadedFile {
            media_id,
            stored,
            mime_type: mime,
        }),
    )
    .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-200", 100), Some(90..100));
        assert_eq!(parse_range("bytes=10-", 100), Some(10..100));
        assert_eq!(parse_range("bytes=-5", 100), Some(95..100));
        assert_eq!(parse_range("bytes=-500", 100), Some(0..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("bytes=-0", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=a-b", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
