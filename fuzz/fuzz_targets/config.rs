//! The configuration file: any text is accepted as settings or refused with
//! errors that can be shown, each naming a field or a line.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = tandem::config::parse(text, Path::new("tandem.toml"), tandem::config::DirChecks::Off) {
        assert!(!e.errors.is_empty(), "refused without a reason");
        let shown = e.to_string();
        assert!(shown.contains("tandem.toml"), "{shown}");
    }
});
