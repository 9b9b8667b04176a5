//! TensorBoard event files (`events.out.tfevents.*`), written without TensorFlow or protoc.
//!
//! The format (tensorflow/core/lib/io/record_writer.cc and core/util/event.proto): a sequence of
//! records, each `len: u64 LE | masked_crc32c(len bytes): u32 LE | data | masked_crc32c(data): u32 LE`,
//! where `data` is a serialized `tensorflow.Event` and `mask(c) = rotr(c, 15) + 0xa282ead8`.
//! The first record carries `file_version = "brain.Event:2"`; the others a `Summary` of scalars
//! (`simple_value`). Only the handful of protobuf fields TensorBoard needs for scalars are
//! defined here; `oneof what` is declared as two optional fields, which is the same wire format.

use crate::error::{Error, Result};
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tensorflow.Event` (the fields used for scalars).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with `simple_value` (a scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The CRC TFRecord stores: CRC32C rotated right by 15 bits plus a constant (so that a CRC of
/// data that itself contains CRCs is not trivially zero).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Frames one record: length, its CRC, the payload, its CRC.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Appends scalar events to one event file; every call writes whole records and flushes, so a
/// crash loses at most the record being written (TensorBoard skips a truncated tail).
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.<host>.<pid>.<n>` (TensorBoard's naming; a new file
    /// per session, so a resumed run adds a file instead of rewriting one).
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let secs = wall_time() as u64;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty() && !h.contains('/'))
            .unwrap_or_else(|| "localhost".into());
        let pid = std::process::id();
        let mut n = 0;
        loop {
            let path = dir.join(format!("events.out.tfevents.{secs}.{host}.{pid}.{n}"));
            match OpenOptions::new().create_new(true).write(true).open(&path) {
                Ok(file) => {
                    let mut w = EventWriter { path, file };
                    let first = Event { wall_time: wall_time(), step: 0, file_version: Some("brain.Event:2".into()), summary: None };
                    w.write_event(&first)?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_event(&mut self, event: &Event) -> Result<()> {
        let record = encode_record(&event.encode_to_vec());
        self.file.write_all(&record).and_then(|_| self.file.flush()).map_err(|e| Error::io(&self.path, e))
    }

    /// One event holding every `(tag, value)` at `step` (frames, as the x axis).
    /// Non-finite values are skipped: TensorBoard would plot them as gaps anyway.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(tag, v)| SummaryValue { tag: tag.clone(), simple_value: Some(*v as f32) })
            .collect();
        let event = Event { wall_time: wall_time(), step: step as i64, file_version: None, summary: Some(Summary { value }) };
        self.write_event(&event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        // RFC 3720 B.4 / the iSCSI check value of "123456789".
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn record_framing() {
        let r = encode_record(b"abc");
        assert_eq!(r.len(), 3 + 16);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }
}
