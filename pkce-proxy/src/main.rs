//! `pkce-proxy`: put PKCE in front of a legacy OAuth 2.0 authorization server.
//!
//! `pkce-proxy --upstream http://127.0.0.1:9000`; `pkce-proxy --help` lists the settings.

fn main() -> std::process::ExitCode {
    pkce_proxy::main(std::env::args_os())
}
