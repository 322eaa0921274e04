//! The `walsync` binary: parses the command line, runs it, and turns errors
//! into the documented exit codes.

fn main() {
    let cli = walsync::cli::parse();
    if let Err(e) = walsync::cli::run(cli) {
        eprintln!("walsync: {e}");
        std::process::exit(e.exit_code());
    }
}
