//! TensorBoard event files, so that `tensorboard --logdir runs/` shows a run: scalars (loss, lr,
//! gradient norm, images/s, evaluations) and images (the reconstruction grid).
//!
//! An event file is a sequence of TFRecords (`u64` length, masked CRC-32C of the length, the
//! bytes, masked CRC-32C of the bytes), each holding one `Event` protocol buffer
//! (tensorboard/compat/proto/event.proto, summary.proto). We write the few fields TensorBoard
//! reads for scalars and images by hand: a protobuf encoder for five message fields is shorter
//! than a dependency, and the test suite checks the bytes against files written by the
//! `tensorboard` package itself (fixtures/tensorboard_events.bin, `make_fixtures.py --only
//! tensorboard`). Every record is flushed, so a killed run keeps what it logged, as metrics.jsonl.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Result, TrainError};

/// An open event file in a run folder.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates `events.out.tfevents.<seconds>.<host>.<pid>.mae` in `dir` (TensorBoard reads every
    /// file whose name holds `tfevents`; a resumed run adds a file beside the first, and
    /// TensorBoard shows the union, later values of a step replacing earlier ones).
    pub fn create(dir: &Path) -> Result<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let name = format!("events.out.tfevents.{}.{host}.{}.mae", now.as_secs(), std::process::id());
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| TrainError::io(&path, e))?;
        let mut writer = Self { path, file };
        writer.write_event(&file_version_event(now.as_secs_f64()))?;
        Ok(writer)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar at `step` (TensorBoard's `simple_value`, an f32).
    pub fn scalar(&mut self, tag: &str, step: i64, value: f64) -> Result<()> {
        self.write_event(&scalar_event(wall_time(), step, tag, value as f32))
    }

    /// A PNG image at `step`; its size comes from the PNG header.
    pub fn png(&mut self, tag: &str, step: i64, png: &[u8]) -> Result<()> {
        let Some((width, height, channels)) = png_header(png) else {
            return Err(TrainError::Model(format!("tensorboard image {tag}: not a PNG")));
        };
        self.write_event(&image_event(wall_time(), step, tag, height, width, channels, png))
    }

    /// The PNG file at `path` as an image at `step`.
    pub fn png_file(&mut self, tag: &str, step: i64, path: &std::path::Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        self.png(tag, step, &bytes)
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        let record = record(event);
        self.file
            .write_all(&record)
            .and_then(|_| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// The first event of every file: `file_version: "brain.Event:2"`.
pub fn file_version_event(wall_time: f64) -> Vec<u8> {
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    put_bytes(&mut e, 3, b"brain.Event:2");
    e
}

/// `Event { wall_time, step, summary { value { tag, simple_value } } }`.
pub fn scalar_event(wall_time: f64, step: i64, tag: &str, value: f32) -> Vec<u8> {
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    put_float_member(&mut v, 2, value);
    summary_event(wall_time, step, &v)
}

/// `Event { wall_time, step, summary { value { tag, image { height, width, colorspace,
/// encoded_image_string } } } }`.
pub fn image_event(
    wall_time: f64,
    step: i64,
    tag: &str,
    height: u32,
    width: u32,
    channels: u32,
    png: &[u8],
) -> Vec<u8> {
    let mut image = Vec::new();
    put_varint_field(&mut image, 1, height as u64);
    put_varint_field(&mut image, 2, width as u64);
    put_varint_field(&mut image, 3, channels as u64);
    put_bytes(&mut image, 4, png);
    let mut v = Vec::new();
    put_bytes(&mut v, 1, tag.as_bytes());
    put_message(&mut v, 4, &image);
    summary_event(wall_time, step, &v)
}

fn summary_event(wall_time: f64, step: i64, value: &[u8]) -> Vec<u8> {
    let mut summary = Vec::new();
    put_message(&mut summary, 1, value);
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    put_varint_field(&mut e, 2, step as u64);
    put_message(&mut e, 5, &summary);
    e
}

/// Width, height and channel count (TensorBoard's `colorspace`) from a PNG's IHDR chunk.
fn png_header(png: &[u8]) -> Option<(u32, u32, u32)> {
    if png.len() < 26 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    let channels = match png[25] {
        0 | 3 => 1, // grey, palette
        4 => 2,     // grey + alpha
        2 => 3,     // RGB
        6 => 4,     // RGBA
        _ => return None,
    };
    Some((be(16), be(20), channels))
}

// Protocol buffer fields (wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32).
// The messages are proto3: a scalar field equal to its default (0, 0.0, "") is not written, and
// the bytes match protobuf's own encoder only if we leave them out the same way.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
}

fn put_double(out: &mut Vec<u8>, field: u64, v: f64) {
    if v.to_bits() != 0 {
        put_varint(out, (field << 3) | 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A float of a `oneof` (`Summary.Value.simple_value`): members of a oneof have presence, so a
/// 0.0 is written too.
fn put_float_member(out: &mut Vec<u8>, field: u64, v: f32) {
    put_varint(out, (field << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

/// A string or bytes field (left out when empty).
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_message(out, field, bytes);
    }
}

/// A sub-message (written even when empty: message fields have presence).
fn put_message(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One TFRecord: length, its masked CRC, the data, the data's masked CRC.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's CRC: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit through a byte table.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *entry = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn png_header_gives_size_and_channels() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&300u32.to_be_bytes());
        png.extend_from_slice(&20u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0]);
        assert_eq!(png_header(&png), Some((300, 20, 3)));
        assert_eq!(png_header(b"GIF89a"), None);
    }
}
