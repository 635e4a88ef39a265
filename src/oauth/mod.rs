//! Pure, synchronous protocol code: parsers, policy and response builders, with no I/O, so
//! unit tests, benches and fuzz targets use them without a runtime.

pub(crate) mod authorize;
pub(crate) mod error;
pub(crate) mod form;
pub(crate) mod form_post;
pub(crate) mod headers;
pub(crate) mod json;
pub(crate) mod metadata;
pub(crate) mod params;
pub(crate) mod path;
pub(crate) mod redirect;
pub(crate) mod token;
