//! `ironic-edge`: loads the proxy conf, validates all of it (Pingora's keys, the gateway's
//! section, every plugin) before bootstrap, and runs the server. A bad configuration exits 1
//! naming the field.

use pingora::server::configuration::Opt;
use std::process::ExitCode;

fn main() -> ExitCode {
    ironic_edge::logging::init();
    let opt = Opt::parse_args();
    let prepared = match ironic_edge::server::prepare(opt.conf.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(1);
        }
    };
    if opt.test {
        // Building the plugins checks their sections too, without binding anything.
        match ironic_edge::server::check_plugins(&prepared) {
            Ok(()) => {
                println!("configuration OK");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("config error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    // The conf was read already; Pingora would warn that it ignores the path.
    let mut opt = opt;
    opt.conf = None;
    match ironic_edge::server::build(Some(opt), prepared) {
        Ok(server) => {
            // Pingora's signals, with the drain noted the moment one arrives.
            server.run(pingora::server::RunArgs {
                shutdown_signal: Box::new(ironic_edge::drain::SignalWatch),
            });
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("config error: {e}");
            ExitCode::from(1)
        }
    }
}
