//! Helpers shared by the fuzz targets: splitting an input into lines, and a current-thread runtime.
//!
//! Inputs are mostly text, one field per line, so seeds stay readable and libFuzzer's dictionaries and
//! comparison hooks can splice in tokens; a line that is absent means "header not sent".

use std::sync::OnceLock;

/// Splits `data` at `\n` (a trailing `\r` stays in the line: servers see it too).
pub fn lines(data: &[u8]) -> Vec<&[u8]> {
    data.split(|b| *b == b'\n').collect()
}

/// A current-thread Tokio runtime, built once per process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("current-thread runtime")
    })
}
