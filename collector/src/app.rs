//! The appliance's own application: its version from the file named in the configuration.
//! Health checks come later, so the status is always `unknown` for now.

use std::path::Path;

use phonehome_schema::{AppSection, AppStatus};

use crate::machine::{ATTRIBUTE_LIMIT, invalid, io_error, read_bounded};

/// `version_file` is read as given (not below `--root`): it names a file of the application,
/// not of the kernel.
pub fn collect(version_file: Option<&Path>) -> AppSection {
    let mut section = AppSection {
        version: None,
        status: AppStatus::Unknown,
        errors: Vec::new(),
    };
    let Some(path) = version_file else {
        return section;
    };
    let item = path.display().to_string();
    match read_bounded(path, ATTRIBUTE_LIMIT) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            match text.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
                Some(version) => section.version = Some(version.to_owned()),
                None => section.errors.push(invalid(&item, "first line is empty")),
            }
        }
        Err(e) => section.errors.push(io_error(&item, &e)),
    }
    section
}

#[cfg(test)]
mod tests {
    use super::*;
    use phonehome_schema::ErrorKind;

    #[test]
    fn version_is_the_first_line() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("VERSION");
        std::fs::write(&file, "  4.2.1-rc3 \nbuilt by ci\n")?;
        let app = collect(Some(&file));
        assert_eq!(app.version.as_deref(), Some("4.2.1-rc3"));
        assert_eq!(app.status, AppStatus::Unknown);
        assert!(app.errors.is_empty());

        std::fs::write(&file, "\n")?;
        assert_eq!(collect(Some(&file)).errors[0].kind, ErrorKind::Invalid);

        let missing = collect(Some(&dir.path().join("nope")));
        assert_eq!(missing.version, None);
        assert_eq!(missing.errors[0].kind, ErrorKind::NotFound);

        assert_eq!(collect(None), AppSection::default());
        Ok(())
    }
}
