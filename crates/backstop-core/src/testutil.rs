//! Helpers for the unit tests.

/// Reports a test that cannot run here. Under CI (`BACKSTOP_TEST_REQUIRE_ALL`
/// set) a skip is a failure: CI installs everything the tests need.
#[allow(clippy::print_stderr)]
pub fn skip(reason: &str) {
    if std::env::var_os("BACKSTOP_TEST_REQUIRE_ALL").is_some() {
        panic!("test skipped but BACKSTOP_TEST_REQUIRE_ALL is set: {reason}");
    }
    eprintln!("skipped: {reason}");
}
