//! The clip generator's error type.

use std::path::PathBuf;

/// Why a catalog or clip could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClipgenError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("{}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// The codec's error.
        source: image::ImageError,
    },
    /// An image with nothing opaque in it.
    #[error("{}: the image is fully transparent: pick clip art with a visible object", path.display())]
    EmptyImage {
        /// The file.
        path: PathBuf,
    },
    /// A bad product, show or size specification (the message names it and the expected form).
    #[error("{0}")]
    Spec(String),
    /// A show names a SKU the catalog lacks.
    #[error("show {sku:?}: no such SKU in the catalog (it has {known})")]
    UnknownSku {
        /// The SKU asked for.
        sku: String,
        /// The catalog's SKUs, comma-separated.
        known: String,
    },
    /// The catalog written or read was refused.
    #[error(transparent)]
    Catalog(#[from] spotter_protocol::CatalogError),
    /// The catalog could not be serialized.
    #[error("cannot serialize catalog.toml: {0}")]
    Toml(#[from] toml::ser::Error),
    /// The truth file could not be written or read.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's error.
        source: serde_json::Error,
    },
    /// GStreamer failed (missing plugin, bad state, stream error); the message says which.
    #[error("gstreamer: {0}")]
    Gst(String),
}

impl ClipgenError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ClipgenError::Io { path, source }
    }

    pub(crate) fn image(path: impl Into<PathBuf>) -> impl FnOnce(image::ImageError) -> Self {
        let path = path.into();
        move |source| ClipgenError::Image { path, source }
    }
}
