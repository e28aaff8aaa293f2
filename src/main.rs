//! Entry point: parse arguments, run, map the result to an exit code.

use clap::Parser;
use foobar_infra::cli::{Cli, EX_USAGE};
use foobar_infra::remote::connector;
use foobar_infra::{exit_code, output::Printer, run};

fn main() {
    // Internal entry points, outside the command line definition (so not in --help, man
    // or completions): this binary as the shell ssh runs ProxyCommand with, and ssh's
    // ProxyCommand for this binary's own connections (src/remote/connector.rs).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = connector::as_shell(&args) {
        std::process::exit(code);
    }
    if args.get(1).is_some_and(|a| a == connector::SUBCOMMAND) {
        std::process::exit(connector::main(&args[2..]));
    }
    // clap exits 2 on a usage error, which `diff` uses for "changes pending".
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { EX_USAGE } else { 0 })
    });
    connector::enable();
    let printer = std::sync::Arc::new(Printer::new(&cli.global));
    let result = run(&cli, &printer);
    printer.finish_all();
    if let Err(e) = &result {
        printer.error(format!("{e:#}"));
        printer.json_error(e);
    }
    std::process::exit(exit_code(&result));
}
