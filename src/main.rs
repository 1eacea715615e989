//! The `codeb` binary: everything lives in the library; see `codeb::cli`.

fn main() -> std::process::ExitCode {
    codeb::cli::main()
}
