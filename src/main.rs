//! The `walsync` binary: parses the command line, runs it, and turns errors
//! into the documented exit codes.

fn main() {
    // One process watches thousands of databases whose memory is allocated
    // by many threads over its life: glibc's malloc would keep an arena per
    // thread (each fragmenting on its own); two are plenty here.
    // (musl's allocator, in the static build, has no arenas.)
    // SAFETY: mallopt only changes the allocator's settings, before any
    // thread starts.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = walsync::cli::parse();
    if let Err(e) = walsync::cli::run(cli) {
        eprintln!("walsync: {e}");
        std::process::exit(e.exit_code());
    }
}
