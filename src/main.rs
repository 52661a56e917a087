#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tokengate::cli::main()
}
