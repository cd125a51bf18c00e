//! Reading a file herald was told to read (config files, secrets, images,
//! CA certificates) without letting the file decide how long that takes or
//! how much memory it costs: only regular files, opened without blocking
//! (a FIFO cannot hang the open), read up to a bound that holds even when
//! the file reports a size of 0 (`/proc` files, devices behind symlinks).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file: a FIFO, a device, a socket or a directory.
    #[error("it is {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    /// Longer than the limit; `size` is what the file system reports, when
    /// that is already over the limit.
    #[error("{}", too_large(*.size, *.limit))]
    TooLarge { size: Option<u64>, limit: u64 },
}

fn too_large(size: Option<u64>, limit: u64) -> String {
    match size {
        Some(size) => format!("it is {size} bytes; the limit is {limit} bytes"),
        None => format!("it holds more than the limit of {limit} bytes"),
    }
}

/// What a file that is not a regular file is, in words.
fn kind_of(kind: std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Open `path` for reading (following symbolic links) if it is a regular
/// file; the open never blocks and never acquires a terminal, whatever the
/// file is.
pub fn open_regular(path: &Path) -> Result<(File, u64), FileError> {
    // NONBLOCK: a FIFO without a writer cannot hold the open; NOCTTY: a
    // terminal named by mistake never becomes the daemon's controlling one.
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY;
    let file = OpenOptions::new().read(true).custom_flags(flags.bits() as i32).open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(FileError::NotRegular { kind: kind_of(meta.file_type()) });
    }
    Ok((file, meta.len()))
}

/// Read the whole of the regular file at `path`, at most `limit` bytes.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(FileError::TooLarge { size: Some(size), limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte over the limit tells a file at the limit from a longer one.
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { size: None, limit });
    }
    Ok(bytes)
}

/// [`read_bounded`] off the async workers.
pub async fn read_bounded_async(path: &str, limit: u64) -> Result<Vec<u8>, FileError> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || read_bounded(Path::new(&path), limit))
        .await
        .map_err(|e| FileError::Io(std::io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_whole_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        let err = read_bounded(&path, 4).unwrap_err();
        assert_eq!(err.to_string(), "it is 5 bytes; the limit is 4 bytes");
    }

    #[test]
    fn devices_fifos_and_directories_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from_raw_mode(0o600)).unwrap();
        // No writer: a blocking open would never return.
        assert_eq!(read_bounded(&fifo, 10).unwrap_err().to_string(), "it is a named pipe (FIFO), not a regular file");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(read_bounded(&zero, 10).unwrap_err().to_string(), "it is a character device, not a regular file");
        assert!(read_bounded(dir.path(), 10).unwrap_err().to_string().contains("a directory"));
    }

    #[test]
    fn a_file_reporting_size_zero_is_still_bounded() {
        // /proc files report 0 bytes and hold more.
        let err = read_bounded(Path::new("/proc/self/status"), 16).unwrap_err();
        assert_eq!(err.to_string(), "it holds more than the limit of 16 bytes");
    }
}
