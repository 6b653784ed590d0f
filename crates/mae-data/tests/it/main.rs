//! Integration tests of mae-data, in one binary so that the workspace links one test executable
//! for this crate instead of one per file.

mod bands;
mod broken;
mod channels;
mod common;
#[cfg(feature = "dicom")]
mod dicom;
mod formats;
#[cfg(feature = "hf")]
mod hf;
mod list;
mod loader;
mod real_data;
mod spec;
mod synthetic;
mod tensor_images;
mod transform;
mod wds;
