//! A private temporary directory (`$TMPDIR/lbt-<run id>-<n>-<label>`) removed on drop.
use std::path::{Path, PathBuf};

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory; the name carries the run id so stale ones can be found.
    pub fn new(label: &str) -> TempDir {
        let path = std::env::temp_dir().join(crate::unique_name(label));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}
