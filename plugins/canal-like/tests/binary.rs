//! The `trellis-canal` binary as a runtime sees it before the overlay agent (in canal mode) is
//! ready: the checks every Trellis plugin passes, in `trellis_plugin::testing`.

#[test]
fn before_the_agent_is_ready_the_binary_answers_50_and_11_and_writes_nothing() {
    trellis_plugin::testing::check_before_ready(
        std::path::Path::new(env!("CARGO_BIN_EXE_trellis-canal")),
        "trellis-canal",
    );
}
