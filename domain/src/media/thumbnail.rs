//! Thumbnails of images (the `image` crate, pure Rust): at most
//! [`EDGE`] pixels on the longer side, as JPEG. Videos get none: no
//! pure-Rust decoder reads MP4 frames, and shelling out to ffmpeg is not
//! something every install has.
//!
//! Made when first asked for (`GET /media/{id}/thumbnail`), not when the
//! file arrives: decoding is the costliest step of a fetch (it halved the
//! media worker's rate in `make bench-media`), and most photos are never
//! shown as thumbnails.

use std::io::Cursor;

/// The longer side of a thumbnail, in pixels.
pub const EDGE: u32 = 320;
/// Images larger than this are not decoded (Meta caps images at 5 MB).
pub const MAX_SOURCE: u64 = 8 * 1024 * 1024;
/// Refuse images whose decoded size would be huge (a small file can
/// claim a giant canvas).
const MAX_PIXELS: u64 = 40_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("not a decodable image: {0}")]
    Decode(#[from] image::ImageError),
    #[error("cannot read the image: {0}")]
    Read(#[from] std::io::Error),
    #[error("the image is {0} pixels, too large to decode")]
    TooLarge(u64),
}

/// A JPEG thumbnail of an image file.
pub fn make(bytes: &[u8]) -> Result<Vec<u8>, ThumbnailError> {
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    let (w, h) = reader.into_dimensions()?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(ThumbnailError::TooLarge(pixels));
    }
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()?
        .decode()?;
    let thumb = img.thumbnail(EDGE, EDGE).into_rgb8();
    let mut out = Cursor::new(Vec::new());
    thumb.write_to(&mut out, image::ImageFormat::Jpeg)?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_png_becomes_a_small_jpeg_and_junk_is_refused() {
        let img = image::RgbImage::from_fn(1000, 500, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut png = Cursor::new(Vec::new());
        img.write_to(&mut png, image::ImageFormat::Png)
            .expect("png");
        let jpeg = make(png.get_ref()).expect("thumbnail");
        let back = image::load_from_memory(&jpeg).expect("decodes");
        assert_eq!((back.width(), back.height()), (320, 160));
        assert_eq!(
            image::guess_format(&jpeg).expect("format"),
            image::ImageFormat::Jpeg
        );
        assert!(make(b"not an image").is_err());
    }
}
