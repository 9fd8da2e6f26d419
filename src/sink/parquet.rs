//! Writing one batch's rows of one date as a Parquet file: zstd level 1, the schema of
//! [`crate::order::arrow_schema`], one row group per million rows (parquet-rs's default).

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

use arrow_array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;

use crate::durable::io_error;
use crate::error::Result;

/// How the lake's files are encoded.
fn properties() -> WriterProperties {
    static PROPS: OnceLock<WriterProperties> = OnceLock::new();
    PROPS
        .get_or_init(|| {
            let compression = match ZstdLevel::try_new(1) {
                Ok(level) => Compression::ZSTD(level),
                Err(_) => Compression::SNAPPY,
            };
            WriterProperties::builder().set_compression(compression).build()
        })
        .clone()
}

/// Writes `batch` to a new file at `path` and fsyncs it; returns the file size.
pub fn write_file(path: &Path, batch: &RecordBatch) -> Result<u64> {
    let file = File::create_new(path).map_err(|e| io_error("cannot create", path, e))?;
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties())).map_err(|e| failed(path, e))?;
    writer.write(batch).map_err(|e| failed(path, e))?;
    let file = writer.into_inner().map_err(|e| failed(path, e))?;
    file.sync_all().map_err(|e| io_error("cannot fsync", path, e))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(len)
}

/// The OS error itself when there is one ("No space left on device (os error 28)").
fn failed(path: &Path, e: ParquetError) -> crate::Error {
    match e {
        ParquetError::External(inner) => io_error("cannot write", path, inner),
        other => io_error("cannot write", path, other),
    }
}
