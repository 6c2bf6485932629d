//! The `baton` command; everything lives in the `cli` library so tests can run it too.

fn main() -> std::process::ExitCode {
    cli::main()
}
