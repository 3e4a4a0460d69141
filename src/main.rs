//! The `token-broker` binary: everything lives in the library; see `cli`.

fn main() -> std::process::ExitCode {
    token_broker::cli::main()
}
