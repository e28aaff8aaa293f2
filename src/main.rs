//! Entry point: parse arguments, run, map the result to an exit code.

use clap::Parser;
use foobar_infra::remote::connector;
use foobar_infra::{cli::Cli, exit_code, output::Printer, run};

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
    let cli = Cli::parse();
    connector::enable();
    let printer = std::sync::Arc::new(Printer::new(&cli.global));
    let result = run(&cli, &printer);
    printer.finish_all();
    if let Err(e) = &result {
        printer.error(format!("{e:#}"));
    }
    std::process::exit(exit_code(&result));
}
